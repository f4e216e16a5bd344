"""Train page: every TrainConfig option, a cost estimate, one run in the background, its curves live.

Longer than most pages (about 230 lines) because it shows every option of ``TrainConfig`` and the
four playable lessons of its second tab; all computing is ``vgg``'s (the cost in ``vgg.cost``,
figures in ``vgg.figures.training``, the job in ``vgg.tasks``).
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import streamlit as st

from ui.common import current_data, data_label, data_registry, job_manager, locks, run_store, show_error
from ui.jobs import (
    config_key,
    describe_job_error,
    format_seconds,
    job_config,
    live_job_view,
    submit_job,
    watched_job,
)
from ui import urlstate as url
from ui.lessons import Lessons
from ui.people import lock_summary
from ui.live import cached_figure, shared
from ui.runs import set_chosen_run
from ui.shell import ensure_app_shell, page_link
from ui.weights import fast_start, init_ui
from vgg import advice, cost, summary
from vgg.data import DataConfig
from vgg.data.sources import SYNTHETIC_TRAIN_PER_CLASS
from vgg.errors import VGGError
from vgg.events import EpochEvent, StepEvent
from vgg.figures import training as figures
from vgg.jobs import JobSnapshot
from vgg.model import CONFIG_LABELS, CONFIG_NAMES, FREEZE_MODES
from vgg.settings import resolve_device
from vgg.tasks import train_task
from vgg.train import (
    DEVICES,
    OPTIMIZERS,
    PRECISIONS,
    SCHEDULES,
    TrainConfig,
    notebook_recipe,
    onecycle_factor,
    own_pictures_recipe,
)

lesson = Lessons("train")
JOB = "train_job"  # st.session_state key: id of this session's latest training job
S = {"persist_state": "session"}  # settings survive a visit to another page
KEEP = {"persist_state": "page"}  # a lesson's value survives a look at the other tab
D = TrainConfig()  # the defaults, written once
# The page's main settings in its address: /train?config=A&bn=1&start=scratch&epochs=3&lr=5e-4
URL = (
    url.Param("config", "train-config", url.choice(CONFIG_NAMES), D.config),
    url.Param("bn", "train-bn", url.flag, D.batch_norm, url.show_flag),
    url.Param("optimizer", "train-optimizer", url.choice(OPTIMIZERS), D.optimizer),
    url.Param("schedule", "train-schedule", url.choice(SCHEDULES), D.schedule),
    url.Param("start", "train-init", url.choice(("scratch", "imagenet", "run", "file")), "scratch"),
    url.Param("epochs", "train-epochs", url.integer(1, 1000), D.epochs),
    url.Param("batch", "train-batch", url.integer(1, 4096), D.batch_size),
    url.Param("lr", "train-lr", url.number(1e-7, 10.0), D.lr, lambda v: f"{v:.3g}"),
    url.Param("size", "train-size", url.integer(32, 512), None),
)


def lr_picked() -> None:
    """A rate picked on the LR finder page replaces the lr field's value (once per pick). The field
    itself starts at TrainConfig's default, or the address's: never through the session state, where
    it would win over an edit the browser sends to a restarted server."""
    chosen = st.session_state.get("chosen_lr")
    if chosen is not None and st.session_state.get("_train_lr_from") != chosen:
        st.session_state["train-lr"] = float(chosen)
        st.session_state["_train_lr_from"] = chosen


def use_recipe(cfg: TrainConfig) -> None:
    """Button callback: put a recipe's values into the widgets (before they are drawn again)."""
    state = st.session_state
    values = {"train-config": cfg.config, "train-bn": cfg.batch_norm, "train-optimizer": cfg.optimizer,
              "train-schedule": cfg.schedule, "train-init": cfg.start, "train-epochs": cfg.epochs,
              "train-batch": cfg.batch_size, "train-lr": cfg.lr, "train-size": cfg.input_size or cfg.data.input_size,
              "train-augment": cfg.augment, "train-dropout": cfg.dropout, "train-label-smoothing": cfg.label_smoothing,
              "train-tta": cfg.tta, "train-freeze": cfg.freeze, "train-budget": cfg.time_budget_s or 0.0}
    values[f"train-ratio-{'pretrained' if cfg.pretrained else 'scratch'}"] = cfg.effective_lr_ratio
    if cfg.start == "run":
        values["train-run"] = cfg.init.removeprefix("run:")
    state.update(values)
    state["_train_lr_from"] = state.get("chosen_lr")  # the recipe's lr wins over an older pick


def use_own_pictures_recipe(data: DataConfig) -> None:
    """Button callback: the fast fine-tune, starting where ``fast_start`` says (read at the click, not
    on every rerun: it lists the runs)."""
    use_recipe(own_pictures_recipe(data, *fast_start("A", True)))


def settings_ui() -> tuple[TrainConfig | None, bool]:
    """Every TrainConfig option; (None, False) with the reason shown when a value is refused."""
    data = current_data()
    start = url.initial(URL)  # the address's settings, or the defaults
    if locks().any:  # what the teacher fixed for the class (a teacher has no locks)
        st.info(lock_summary(locks()), icon=":material/lock:")
    left, middle, right, _ = st.columns([1.3, 1.6, 2.2, 1.2])
    left.button("Fast defaults (CPU)", key="train-recipe-fast", icon=":material/bolt:", on_click=use_recipe,
                args=(replace(D, data=data),))
    middle.button("The notebook's recipe (GPU)", key="train-recipe-notebook", icon=":material/menu_book:",
                  on_click=use_recipe, args=(notebook_recipe(data),),
                  help="ImageNet weights, 224 px, Adam 5e-4 with the features at 1/10, constant lr, 5 epochs, "
                       "dropout 0.5: the classic notebook. On a CPU an epoch of CIFAR-10 takes hours.")
    right.button("Own pictures: fast fine-tune (seconds)", key="train-recipe-own", icon=":material/photo_camera:",
                 on_click=use_own_pictures_recipe, args=(data,),
                 help="For a few dozen pictures per class (Data page → Make your own): VGG11-BN from ImageNet "
                      "weights at 224 px (offline: the newest earlier run, at its own size), everything frozen "
                      "but the last layer, which learns on features computed once and shared by every session.")
    cols = st.columns([2.2, 1, 1, 1], vertical_alignment="bottom")
    config = cols[0].selectbox("Configuration", CONFIG_NAMES, index=CONFIG_NAMES.index(start["train-config"]),
                               format_func=CONFIG_LABELS.get, key="train-config", **S)
    batch_norm = cols[1].toggle("Batch norm", value=start["train-bn"], key="train-bn", **S)
    optimizer = cols[2].selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(start["train-optimizer"]),
                                  key="train-optimizer", **S)
    schedule = cols[3].selectbox("Schedule", SCHEDULES, index=SCHEDULES.index(start["train-schedule"]),
                                 key="train-schedule", **S)
    init = init_ui(config, batch_norm, key="train", allow_file=True, start=start["train-init"])
    pretrained = init not in (None, "scratch")
    cols = st.columns(4)
    # Loose bounds: an out-of-range value reaches TrainConfig, whose message says what is allowed.
    images = cols[0].number_input("Images per class", 1, 10_000_000, data.images_per_class, key="train-ipc",
                                  placeholder="all", help="Empty: every image of the data set.", **S)
    size = cols[1].number_input("Input size (px)", 0, 10_000, start["train-size"] or data.input_size, step=32,
                                key="train-size", **S,
                                help="Images are resized on the fly when this differs from the data's size.")
    epochs = cols[2].number_input("Epochs", 0, 10_000_000, start["train-epochs"], key="train-epochs",
                                  placeholder="auto", **S,
                                  help="Empty: auto, about 45,000 training images (1 epoch of CIFAR-10, "
                                       "10 of the synthetic set).")
    batch = cols[3].number_input("Batch size", 0, 1_000_000, start["train-batch"], key="train-batch", **S)
    cols = st.columns(4, vertical_alignment="bottom")
    lr_picked()
    lr = cols[0].number_input("Peak learning rate", 0.0, 1000.0, start["train-lr"], format="%.2e", step=1e-4,
                              key="train-lr",
                              help="Set by the LR finder page's 'Use this LR'.", **S)
    ratio = cols[1].number_input("Feature LR ratio", 0.0, 100.0, 0.1 if pretrained else 1.0, format="%.3g",
                                 key=f"train-ratio-{'pretrained' if pretrained else 'scratch'}", **S,
                                 help="Discriminative fine-tuning: the convolutions learn at lr × ratio.")
    freeze = cols[2].selectbox("Freeze", FREEZE_MODES, key="train-freeze", disabled=not pretrained, **S,
                               help="Which weights stay fixed; only possible from trained weights.")
    augment = cols[3].toggle("Augmentation", value=D.augment, key="train-augment", **S,
                             help="Random flips, small rotations and crops of every training batch.")
    cols = st.columns(4, vertical_alignment="bottom")  # the tricks of fast training (Lessons tab)
    dropout = cols[0].number_input("Dropout", 0.0, 0.99, D.dropout, step=0.1, key="train-dropout", **S,
                                   help="Share of the classifier's activations switched off per step (0.5 in "
                                        "torchvision's VGG); short runs learn faster with less.")
    smoothing = cols[1].number_input("Label smoothing", 0.0, 1.0, D.label_smoothing, step=0.05,
                                     key="train-label-smoothing", **S,
                                     help="Share of each target spread over the other classes.")
    tta = cols[2].toggle("Test-time flips", value=D.tta, key="train-tta", **S,
                         help="Validation and test answers averaged with the mirror image's.")
    budget = cols[3].number_input("Time budget (s, 0 = none)", 0.0, 1e9, 0.0, key="train-budget", **S)
    with st.expander("More settings"):
        cols = st.columns(3)
        seed = cols[0].number_input("Seed", 0, 2**31 - 1, D.seed, key="train-seed", **S)
        device = cols[1].selectbox("Device", DEVICES, key="train-device", **S)
        precision = cols[2].selectbox("Precision", PRECISIONS, key="train-precision", **S)
        decay = cols[0].number_input("Weight decay", 0.0, 10.0, D.weight_decay, format="%.1e", key="train-decay",
                                     **S)
        momentum = cols[1].number_input("SGD momentum", 0.0, 10.0, D.momentum, key="train-momentum", **S,
                                        disabled=optimizer != "sgd")
    try:
        cfg = TrainConfig(
            config=config, batch_norm=batch_norm, init=init or "scratch",
            freeze=freeze if pretrained else "none", optimizer=optimizer, lr=float(lr), lr_ratio=float(ratio),
            schedule=schedule, epochs=None if epochs is None else int(epochs), batch_size=int(batch),
            data=replace(data, images_per_class=None if images is None else int(images)),
            input_size=None if int(size) == data.input_size else int(size), augment=augment, seed=int(seed),
            device=device, precision=precision, time_budget_s=float(budget) or None,
            weight_decay=float(decay), momentum=float(momentum), dropout=float(dropout),
            label_smoothing=float(smoothing), tta=tta)
        resolve_device(cfg.device)  # "cuda" without a GPU is refused here, not in the job
    except VGGError as error:
        show_error(error)
        return None, False
    return cfg, init is not None


def cost_ui(cfg: TrainConfig) -> None:
    """Multiply-adds and memory of the run; seconds per epoch once the speed probe has run."""
    splits = data_registry().peek(cfg.data)
    classes = len(splits.classes) if splits else 10  # before the data are loaded: CIFAR-10 and synthetic
    known = {"synthetic": SYNTHETIC_TRAIN_PER_CLASS, "cifar10": 5000}.get(cfg.data.source, 500)
    pool = (cfg.data.images_per_class or known) * classes
    n_train = len(splits.train) if splits else round(pool * (1 - cfg.data.val_fraction))
    n_val = len(splits.val) if splits else round(pool * cfg.data.val_fraction)
    c = cost.training_cost(cfg, classes, n_train, n_val)
    cols = st.columns(4)
    cols[0].metric("Multiply-adds per epoch", summary.format_si(c.epoch_macs),
                   help=f"{n_train:,} training images × 3 × {summary.format_si(c.forward_macs)} "
                        f"(forward + backward) + {n_val:,} validation images")
    cols[1].metric("Memory (estimate)", summary.format_bytes(c.memory.total_bytes),
                   help=f"Peak of a training step: {c.memory.describe()}")
    probe = cost.probe_key(cfg, classes)
    probed = st.session_state.setdefault("_train_probed", set())  # measured already (remembered by vgg.cost)
    if not ((c.probe_is_cheap and not job_manager().active()) or probe in probed):
        if not cols[2].button("Measure speed", key="train-probe", icon=":material/speed:"):
            cols[3].caption("The speed probe waits for a click while a job runs or for large models.")
            return
    probed.add(probe)
    try:
        with st.spinner("Measuring this device's speed (once per model, size and device)…"):
            per_step, per_image = cost.speed_probe(cfg, classes)
    except (VGGError, RuntimeError) as error:
        show_error(error)
        return
    epoch_s = c.epoch_seconds(per_step, per_image)
    cols[2].metric("Seconds per epoch", format_seconds(epoch_s),
                   help=f"Speed probe on this device: {summary.format_si(3 * c.forward_macs / per_image)} "
                        f"multiply-adds/s, plus {per_step:.2f} s per step for the optimizer's update "
                        f"({c.steps_per_epoch} steps per epoch)")
    epochs = cfg.epochs_for(n_train)
    cols[3].metric(f"{epochs} epoch{'s' if epochs > 1 else ''}", format_seconds(epoch_s * epochs))
    expect = advice.expected_outcome(cfg.to_dict(), run_store().list_runs(), classes)
    chance = f"chance is {1 / classes:.1%} ({classes} classes)"
    if expect is not None:
        st.caption(f":material/target: Runs like this one on this server reached about **{expect.test_accuracy:.1%}** "
                   f"test accuracy (median of {expect.runs}); {chance}.")
    else:
        st.caption(f":material/target: No run like this one has finished on this server yet; {chance}.")


def train_config(snap: JobSnapshot) -> TrainConfig | None:
    """The job's config: remembered by this session, else read from its run folder."""
    cfg = job_config(JOB, snap.id)
    run_id = snap.extra.get("run_id")
    if cfg is None and run_id:
        try:
            cfg = TrainConfig.from_dict(run_store().get(run_id).config)
        except (VGGError, TypeError, KeyError):
            return None
    return cfg


def prediction_grid(snap: JobSnapshot, event: EpochEvent) -> tuple[list[bytes], list[str]] | None:
    cfg = train_config(snap)
    splits = data_registry().peek(cfg.data) if cfg is not None else None
    if splits is None or not event.samples:
        return None
    images = splits.val.images[[s.index for s in event.samples]].numpy()
    return figures.prediction_grid(images, event.samples, splits.classes)


def draw_live(snap: JobSnapshot) -> None:
    steps = [e for e in snap.history[-20:] if isinstance(e, StepEvent)]
    if steps:
        cols = st.columns(4)
        rate = float(np.mean([s.images_per_second for s in steps[-10:]]))
        cols[0].metric("Training speed (images/s)", f"{rate:.1f}" if rate < 10 else f"{rate:.0f}",
                       help="Images per second of the training steps, over the last 10 steps.")
        cols[1].metric("Epoch", steps[-1].epoch)
        cols[2].metric("Images seen", f"{steps[-1].images_seen:,}")
        cols[3].metric("Loss (last step)", f"{steps[-1].loss:.3f}")
    smoothing = st.slider("Smoothing", 0.0, 0.99, 0.6, key="train-smoothing")
    classes = snap.extra.get("classes") or ()
    chance = 1 / len(classes) if classes else None
    step_fig, epoch_fig = cached_figure(
        "train", snap, lambda: figures.training_figures(snap.history, smoothing, chance=chance), smoothing)
    st.plotly_chart(step_fig, key="train-steps")
    epochs = [e for e in snap.history if isinstance(e, EpochEvent)]
    if not epochs:
        st.caption("Training against validation, per epoch, appears when the first epoch ends.")
        return
    st.plotly_chart(epoch_fig, key="train-epochs-chart")
    grid = shared("train-grid", (snap.id, len(epochs)), lambda: prediction_grid(snap, epochs[-1]))
    if grid is not None:
        st.markdown(f"**Validation predictions after epoch {epochs[-1].epoch}** "
                    "(green: right, red: wrong; the percentage is the model's confidence)")
        st.image(grid[0], caption=grid[1], width=88)


def finished(snap: JobSnapshot) -> None:
    """Outcome of a finished run, with the way to the Evaluate page."""
    describe_job_error(snap)
    result = snap.result
    if result is None or not hasattr(result, "best_val_accuracy"):
        return
    cols = st.columns(4)
    cols[0].metric("Status", result.status)
    cols[1].metric("Best validation accuracy", percent(result.best_val_accuracy))
    cols[2].metric("Test accuracy", percent(result.test_accuracy))
    total = snap.elapsed if snap.elapsed is not None else result.seconds
    cols[3].metric("Time", format_seconds(total),
                   help=f"From Start to the end, loading the data and weights included ({format_seconds(result.seconds)} "
                        f"of training). Training speed: {result.images_per_second:.0f} images/s on average over the "
                        "run's steps.")
    verdict = advice.more_time([e for e in snap.history if isinstance(e, EpochEvent)])
    if verdict is not None and result.status == "done":
        (st.info if verdict.more_time_helps else st.warning)(verdict.text, icon=":material/schedule:")
    run_id = snap.extra.get("run_id") or result.run_id
    if run_id and result.epochs_done > 0:  # a run stopped within its first epoch has no checkpoint
        if st.session_state.get("_chosen_from_job") != snap.id:  # once, so a later choice there sticks
            set_chosen_run(run_id)
            st.session_state["_chosen_from_job"] = snap.id
        st.caption(f"Run `{run_id}` is saved; the Evaluate page opens it.")
        page_link("pages/evaluate.py", "Evaluate this run", icon=":material/fact_check:")


def percent(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def lessons_tab() -> None:
    lesson("fast_training")
    lesson("one_cycle")
    cols = st.columns(3)
    peak = cols[0].number_input("Peak lr", 1e-6, 10.0, 1e-3, format="%.1e", key="lesson-peak", **KEEP)
    where = cols[1].slider("Where in the run (%)", 0, 100, 25, key="lesson-progress", **KEEP) / 100
    compare = cols[2].toggle("Constant vs one-cycle", key="lesson-constant", **KEEP)
    progress = [i / 200 for i in range(201)]
    st.plotly_chart(figures.lr_schedule_figure(progress, [peak * onecycle_factor(p) for p in progress],
                                               constant=peak / 2 if compare else None, marker=where))
    if compare:
        lesson("constant_vs_one_cycle")
    lesson("discriminative")
    ratio = st.slider("Feature LR ratio", 0.01, 1.0, 0.1, key="lesson-ratio", **KEEP)
    st.markdown(f"With a peak of {peak:.1e}: classifier **{peak:.1e}**, convolutional layers **{peak * ratio:.1e}**.")
    lesson("freezing")
    config, batch_norm = st.session_state.get("train-config", D.config), st.session_state.get("train-bn", D.batch_norm)
    trainable = summary.trainable_by_freeze(config, batch_norm=batch_norm, num_classes=10)
    mode = st.segmented_control("Freeze mode", FREEZE_MODES, default="features", key="lesson-freeze", **KEEP) or "none"
    share = trainable[mode] / trainable["total"]
    st.metric(f"Parameters that learn in {CONFIG_LABELS[config]}{' with batch norm' if batch_norm else ''}, "
              "10 classes", f"{trainable[mode]:,}", delta=f"{share:.1%} of {trainable['total']:,}", delta_color="off")
    lesson("batch_epochs")
    cols = st.columns(3)
    n = cols[0].number_input("Training images", 1, 10_000_000, 4500, key="lesson-images", **KEEP)
    bs = cols[1].select_slider("Batch size", [8, 16, 32, 64, 128, 256, 512], 128, key="lesson-batch", **KEEP)
    ep = cols[2].number_input("Epochs", 1, 1000, 2, key="lesson-epochs", **KEEP)
    per_epoch = math.ceil(n / bs)
    st.markdown(f"{per_epoch:,} steps per epoch, **{per_epoch * ep:,} optimizer steps** in all; "
                f"each image is seen {ep} time{'s' if ep > 1 else ''}.")


ensure_app_shell()
st.title("Train")
lesson("intro")
st.caption(f"Data set: {data_label(current_data())} (change it on the Data page).")
# Only the open tab runs and is sent (the Lessons tab's chart is not drawn for a watcher).
train_tab, lessons = st.tabs(["Training", "Lessons"], key="train_section", on_change="rerun")
if train_tab.open:
    with train_tab:
        with st.container(border=True):
            cfg, usable = settings_ui()
        url.publish(URL)
        if cfg is not None:
            cost_ui(cfg)
            splits = data_registry().peek(cfg.data)
            try:
                locks().check(cfg, len(splits.train) if splits else None)
            except VGGError as error:  # a setting the teacher locked
                st.warning(str(error), icon=":material/lock:")
                usable = False
        if st.button("Start training", type="primary", key="train-start", icon=":material/play_arrow:",
                     disabled=cfg is None or not usable):
            submit_job("train", cfg.title(), train_task(cfg, data_registry(), run_store()),
                       config_key("train", cfg), JOB, config=cfg)
        snap = watched_job("train", JOB)
        if snap is None:
            st.info("No training yet: choose the settings and press Start.", icon=":material/info:")
        else:
            live_job_view(snap, key="train", stop_key="train-stop", draw=draw_live)
            if snap.finished:
                finished(snap)
if lessons.open:
    with lessons:
        lessons_tab()
