"""LR finder page: the LR range test in the background, its curve live, three suggestions to pick from."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from ui.common import current_data, data_label, data_registry, locks, run_store, show_error
from ui.jobs import config_key, describe_job_error, job_config, live_job_view, submit_job, watched_job
from ui import urlstate as url
from ui.lessons import Lessons
from ui.live import cached_figure
from ui.shell import ensure_app_shell, page_link
from ui.weights import init_ui
from vgg.errors import VGGError
from vgg.figures import training as figures
from vgg.jobs import JobSnapshot
from vgg.lr_finder import MIN_POINTS, RULES, LRFinderConfig, lr_schedule
from vgg.model import CONFIG_LABELS, CONFIG_NAMES, FREEZE_MODES
from vgg.tasks import lr_find_task
from vgg.train import OPTIMIZERS, TrainConfig

lesson = Lessons("lr_finder")
JOB = "lrf_job"  # st.session_state key: id of this session's latest range test
RULE_TITLES = {"steepest": "Steepest slope", "valley": "Valley (fastai's default)",
               "min_div10": "Minimum ÷ 10"}
S = {"persist_state": "session"}  # settings survive a visit to another page
D, R = TrainConfig(), LRFinderConfig()  # the defaults, written once
# The page's main settings in its address: /lr-finder?config=A&bn=1&optimizer=sgd&batch=64
URL = (
    url.Param("config", "lrf-config", url.choice(CONFIG_NAMES), D.config),
    url.Param("bn", "lrf-bn", url.flag, D.batch_norm, url.show_flag),
    url.Param("optimizer", "lrf-optimizer", url.choice(OPTIMIZERS), D.optimizer),
    url.Param("batch", "lrf-batch", url.integer(1, 4096), D.batch_size),
    url.Param("start", "lrf-init", url.choice(("scratch", "imagenet", "run")), "scratch"),
)


def model_ui() -> tuple[TrainConfig | None, LRFinderConfig | None, bool]:
    """The model, its starting weights and the range test's settings; (None, None, False) if invalid."""
    start = url.initial(URL)  # the address's settings, or the defaults
    a, b, c, d = st.columns([2.2, 1, 1.3, 1], vertical_alignment="bottom")
    config = a.selectbox("Configuration", CONFIG_NAMES, index=CONFIG_NAMES.index(start["lrf-config"]),
                         format_func=CONFIG_LABELS.get, key="lrf-config", **S)
    batch_norm = b.toggle("Batch norm", value=start["lrf-bn"], key="lrf-bn", **S)
    optimizer = c.selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(start["lrf-optimizer"]),
                            key="lrf-optimizer", **S)
    batch_size = d.number_input("Batch size", 0, 100_000, start["lrf-batch"], key="lrf-batch", **S)
    init = init_ui(config, batch_norm, key="lrf", start=start["lrf-init"])
    freeze = st.selectbox("Freeze", FREEZE_MODES, key="lrf-freeze", disabled=init in (None, "scratch"),
                          help="Which weights stay fixed; only possible from trained weights.", **S)
    # Loose bounds: an out-of-range value reaches LRFinderConfig, whose message says what is allowed.
    with st.expander("Range test settings (the notebook's defaults)"):
        cols = st.columns(4)
        start_lr = cols[0].number_input("start_lr", 0.0, 100.0, R.start_lr, format="%.1e", key="lrf-start-lr", **S)
        end_lr = cols[1].number_input("end_lr", 0.0, 1000.0, R.end_lr, format="%.1e", key="lrf-end-lr", **S)
        num_iter = cols[2].number_input("num_iter", 0, 100_000, R.num_iter, key="lrf-num-iter", **S)
        smooth_f = cols[3].number_input("smooth_f", 0.0, 1.0, R.smooth_f, step=0.01, key="lrf-smooth", **S)
        diverge_th = cols[0].number_input("diverge_th", 0.0, 1000.0, R.diverge_th, key="lrf-diverge", **S)
        skip_start = cols[1].number_input("skip_start", 0, 10_000, R.skip_start, key="lrf-skip-start", **S)
        skip_end = cols[2].number_input("skip_end", 0, 10_000, R.skip_end, key="lrf-skip-end", **S)
    try:
        cfg = TrainConfig(config=config, batch_norm=batch_norm, init=init or "scratch",
                          freeze=freeze if init not in (None, "scratch") else "none", optimizer=optimizer,
                          batch_size=int(batch_size), data=current_data())
        lr_cfg = LRFinderConfig(start_lr=float(start_lr), end_lr=float(end_lr), num_iter=int(num_iter),
                                smooth_f=float(smooth_f), diverge_th=float(diverge_th),
                                skip_start=int(skip_start), skip_end=int(skip_end))
    except VGGError as error:
        show_error(error)
        return None, None, False
    return cfg, lr_cfg, init is not None


def range_settings() -> LRFinderConfig | None:
    """The schedule's settings as last set on the Range test tab (kept while the tab is closed)."""
    state = st.session_state
    try:
        return LRFinderConfig(start_lr=float(state.get("lrf-start-lr", R.start_lr)),
                              end_lr=float(state.get("lrf-end-lr", R.end_lr)),
                              num_iter=int(state.get("lrf-num-iter", R.num_iter)))
    except VGGError:
        return None  # the Range test tab says what is wrong


def curve_figure(snap: JobSnapshot) -> go.Figure:
    steps = snap.history
    lr_cfg = job_config(JOB, snap.id)
    marks, skips = [], (0, 0)
    if snap.result is not None:
        res = snap.result.result
        marks = [(rule, s.lr, res.smoothed[s.index]) for rule, s in res.suggestions.items() if s is not None]
        if res.recommended is not None:
            marks.insert(0, ("recommended", res.recommended.lr, res.smoothed[res.recommended.index]))
        if lr_cfg is not None and len(res.lrs) - lr_cfg.skip_start - lr_cfg.skip_end >= MIN_POINTS:
            skips = (lr_cfg.skip_start, lr_cfg.skip_end)  # else the rules used every point
    return figures.lr_finder_figure(
        [s.lr for s in steps], [s.loss for s in steps], [s.smoothed for s in steps], marks=marks,
        lr_range=(lr_cfg.start_lr, lr_cfg.end_lr) if lr_cfg is not None else None,
        skip_start=skips[0], skip_end=skips[1])


def draw_live(snap: JobSnapshot) -> None:
    st.plotly_chart(cached_figure("lr_finder", snap, lambda: curve_figure(snap), job_config(JOB, snap.id)),
                    key="lrf-chart")


def choose_lr(lr: float) -> None:
    st.session_state["chosen_lr"] = lr


def results(snap: JobSnapshot) -> None:
    """The three suggestions with "use this LR", and the line about restored weights."""
    describe_job_error(snap)
    if snap.result is None:
        return
    res = snap.result.result
    advice = res.recommended
    with st.container(border=True):
        left, right = st.columns([1, 2], vertical_alignment="center")
        left.metric(":material/recommend: Recommended learning rate", f"{advice.lr:.2e}" if advice else "—")
        left.button("Use this LR", key="lrf-use-recommended", icon=":material/check:", type="primary",
                    on_click=choose_lr, args=(float(advice.lr) if advice else 0.0,), disabled=advice is None)
        right.markdown(advice.explanation if advice else "Not enough points on the curve for a recommendation.")
        right.caption(lesson.text("recommended"))
    st.caption("The three classic rules, for the lesson (they often disagree; see the Lessons tab):")
    for col, rule in zip(st.columns(len(RULES)), RULES, strict=True):
        suggestion = res.suggestions.get(rule)
        with col.container(border=True):
            st.metric(RULE_TITLES[rule], f"{suggestion.lr:.2e}" if suggestion else "—")
            # The button before the text: the texts differ in length, the buttons stay in line.
            st.button("Use this LR", key=f"lrf-use-{rule}", icon=":material/check:", on_click=choose_lr,
                      args=(float(suggestion.lr) if suggestion else 0.0,), disabled=suggestion is None)
            st.caption(suggestion.explanation if suggestion else "Not enough points on the curve for it.")
    chosen = st.session_state.get("chosen_lr")
    if chosen is not None:  # right below the buttons that set it
        st.success(f"Learning rate for training: **{chosen:.2e}**", icon=":material/check_circle:")
        page_link("pages/train.py", "Go to the Train page", icon=":material/model_training:")
    if res.restored:
        st.success("Weights restored: after the test the model and the optimizer were put back exactly as "
                   "they were before it, so a training starts from the same weights.",
                   icon=":material/restore:")
    else:
        st.warning("The weights could not be restored after the test.", icon=":material/warning:")
    if res.stopped_early:
        lr_cfg = job_config(JOB, snap.id)
        times = f"{lr_cfg.diverge_th:g} times" if lr_cfg is not None else "several times"
        st.caption(f"Stopped after {len(res.lrs)} batches: the smoothed loss passed {times} its lowest value "
                   "(the loss has blown up; the chart's top cuts it off).")


ensure_app_shell()
st.title("LR finder")
lesson("intro")
data = current_data()
st.caption(f"Data set: {data_label(data)} (change it on the Data page).")
# Only the open tab runs and is sent.
test_tab, lessons_tab = st.tabs(["Range test", "Lessons"], key="lrf_section", on_change="rerun")
if test_tab.open:
    with test_tab:
        with st.container(border=True):
            cfg, lr_cfg, usable = model_ui()
        url.publish(URL)
        if cfg is not None:
            try:
                locks().check(cfg)
            except VGGError as error:  # a setting the teacher locked
                st.warning(str(error), icon=":material/lock:")
                usable = False
        if st.button("Start the range test", type="primary", key="lrf-start", icon=":material/play_arrow:",
                     disabled=cfg is None or not usable):
            submit_job("lr_find", cfg.title("lr_find"), lr_find_task(cfg, lr_cfg, data_registry(), run_store()),
                       config_key("lr_find", cfg, lr_cfg), JOB, config=lr_cfg)
        snap = watched_job("lr_find", JOB)
        if snap is None:
            st.info("No range test yet: choose the settings and press Start.", icon=":material/info:")
        else:
            live_job_view(snap, key="lr_finder", stop_key="lrf-stop", draw=draw_live)
            if snap.finished:
                results(snap)

if lessons_tab.open:
    with lessons_tab:
        lesson("range_test")
        chosen_cfg = range_settings()
        if chosen_cfg is not None:
            schedule = lr_schedule(chosen_cfg)
            st.plotly_chart(figures.range_test_schedule_figure(schedule))
            st.caption(f"Each batch multiplies the learning rate by {schedule[1] / schedule[0]:.3f}: "
                       f"{chosen_cfg.num_iter} batches from {chosen_cfg.start_lr:.0e} to "
                       f"{chosen_cfg.end_lr:.0e}.")
        lesson("suggestions")
        lesson("freezing")
