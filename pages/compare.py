"""Compare page: overlay runs' curves, a table of final metrics, and the race scratch vs pretrained."""

from __future__ import annotations

from dataclasses import replace

import plotly.graph_objects as go
import streamlit as st

from ui.common import (
    current_data,
    data_label,
    data_registry,
    job_manager,
    poll_interval,
    rerun_when_finished,
    run_store,
    session_id,
    show_error,
    watcher_pace,
)
from ui.jobs import job_header
from ui.lessons import Lessons
from ui.live import live_figure
from ui.shell import ensure_app_shell
from vgg import compare
from vgg.data import CIFAR10_CLASSES
from vgg.data.synthetic import SHAPE_CLASSES
from vgg.errors import VGGError
from vgg.figures import compare as figures
from vgg.jobs import JobSnapshot, UnknownJobError
from vgg.model import pretrained_available, weights_cache_dir, weights_file_name
from vgg.runs import RunInfo
from vgg.train import TrainConfig

lesson = Lessons("compare")
RACE_MODEL = ("A", True)  # VGG11 with batch norm: the cheapest model with published ImageNet weights
TABLE_ORDER = ("run", "status", "init", "best_val_accuracy", "test_accuracy", "epochs", "seconds",
               "images_per_second", "model", "data", "classes")
TABLE_COLUMNS = {
    "best_val_accuracy": st.column_config.NumberColumn("best val acc", format="percent"),
    "test_accuracy": st.column_config.NumberColumn("test acc", format="percent"),
    "seconds": st.column_config.NumberColumn("seconds", format="%.0f"),
    "images_per_second": st.column_config.NumberColumn("images/s", format="%.0f"),
}


def run_label(info: RunInfo) -> str:
    acc = info.summary.get("best_val_accuracy")
    return f"{info.run_id} · {info.status}" + (f" · {acc:.0%}" if isinstance(acc, (int, float)) else "")


def compare_runs(runs: list[RunInfo]) -> None:
    by_id = {info.run_id: info for info in runs}
    newest = [info.run_id for info in runs if info.finished][:2]
    kept = st.session_state.get("compare_runs")
    if kept is not None and any(r not in by_id for r in kept):  # drop runs deleted since they were chosen
        st.session_state["compare_runs"] = [r for r in kept if r in by_id]
    chosen = st.multiselect("Runs", list(by_id), default=newest if kept is None else None, key="compare_runs",
                            format_func=lambda r: run_label(by_id[r]), persist_state="session")
    if not chosen:
        st.info("Choose runs to compare.")
        return
    left, right = st.columns([2, 3])
    x = left.segmented_control("x axis", list(compare.X_AXES), default="images_seen", required=True,
                               format_func=compare.X_AXES.get, key="compare_x", persist_state="session")
    x = x or "images_seen"
    smoothing = right.slider("Smoothing of the training loss", 0.0, 0.99, 0.8, key="compare_smoothing")
    running = any(not by_id[r].finished for r in chosen)

    @st.fragment(run_every=watcher_pace() if running else None)  # curves of running runs grow
    def curves() -> None:
        metrics = {run: run_store().metrics(run) for run in chosen}
        x_title = compare.X_AXES[x]
        accuracy, loss = st.columns(2)
        accuracy.plotly_chart(figures.overlay_figure(
            compare.align_curves(metrics, "val_accuracy", x), x_title=x_title, y_title="validation accuracy",
            percent=True, title="Validation accuracy"), key="compare_accuracy")
        loss.plotly_chart(figures.overlay_figure(
            compare.align_curves(metrics, "train_loss", x, smoothing=smoothing), x_title=x_title,
            y_title="training loss", title="Training loss (smoothed)"), key="compare_loss")
        infos = [run_store().get(run) for run in chosen]
        if running and all(info.finished for info in infos):
            st.rerun()  # a full rerun stops this timer
        st.dataframe(compare.final_metrics(infos), hide_index=True, column_config=TABLE_COLUMNS,
                     column_order=TABLE_ORDER)

    curves()


def known_classes(source: str) -> tuple[str, ...] | None:
    if source == "synthetic":
        return SHAPE_CLASSES
    if source == "cifar10":
        return CIFAR10_CLASSES
    splits = data_registry().peek(current_data())
    return None if splits is None else splits.classes


def race_budget() -> tuple[TrainConfig, int]:
    """The race's budget widgets → the base TrainConfig, and the offline pretraining's images per class."""
    data = current_data()
    cols = st.columns(5)
    epochs = cols[0].number_input("Epochs", 1, 50, 3, key="race_epochs")
    per_class = cols[1].number_input("Images per class", 10, 5000, 100, step=10, key="race_per_class")
    batch = cols[2].number_input("Batch size", 8, 512, 32, step=8, key="race_batch")
    seed = cols[3].number_input("Seed", 0, 2**31 - 1, 0, key="race_seed")
    pretrain = cols[4].number_input("Pretraining images per class", 10, 5000, data.images_per_class or 500,
                                    step=50, key="race_pretrain", help="Offline version only: step 1's size")
    base = TrainConfig(config=RACE_MODEL[0], batch_norm=RACE_MODEL[1], epochs=int(epochs),
                       batch_size=int(batch), seed=int(seed),
                       data=replace(data, images_per_class=int(per_class)))
    return base, int(pretrain)


def start_race(base: TrainConfig, pretrain_per_class: int, online: bool) -> None:
    manager, registry, store = job_manager(), data_registry(), run_store()
    try:
        if online:
            ids = compare.submit_race(manager, compare.race_pair(base), registry, store, owner=session_id())
            st.session_state["race"] = {"jobs": ids}
        else:
            plan = compare.TransferPlan(base, pretrain_images_per_class=pretrain_per_class)
            task = compare.transfer_task(plan, registry, store, manager, owner=session_id())
            job = manager.submit("train", "Race · step 1: pretraining", task, key=f"transfer:{plan!r}",
                                 owner=session_id())
            st.session_state["race"] = {"chain": job}
    except VGGError as error:
        show_error(error)


def race_jobs() -> list[tuple[str, JobSnapshot]]:
    """(role, snapshot) of this session's race: "pretraining" (offline only), "scratch", "pretrained"."""
    race, manager = st.session_state.get("race") or {}, job_manager()
    try:
        out, ids = [], list(race.get("jobs", ()))
        if "chain" in race:
            chain = manager.snapshot(race["chain"])
            out.append(("pretraining", chain))
            ids = list(chain.extra.get("followups", ()))
        roles = ("scratch", "pretrained")[: len(ids)]  # the follow-ups exist once the pretraining is done
        return out + [(role, manager.snapshot(i)) for role, i in zip(roles, ids, strict=True)]
    except UnknownJobError:  # forgotten by the manager (restarted server)
        return []


def race_view() -> None:
    snaps = [snap for _, snap in race_jobs()]
    if not snaps:
        return

    @st.fragment(run_every=poll_interval(snaps, "race"))
    def live() -> None:
        jobs = race_jobs()
        rerun_when_finished("race", [snap for _, snap in jobs])
        for role, snap in jobs:
            job_header(snap, stop_key=f"race-stop-{snap.id}")
            result = snap.result if snap.finished else None
            if getattr(result, "test_accuracy", None) is not None:
                st.caption(f"Run {result.run_id}: test accuracy {result.test_accuracy:.1%}, "
                           f"{result.seconds:.0f} s")
        pre = dict(jobs).get("pretraining")
        if pre is not None and pre.extra.get("source_classes"):
            source, target = (", ".join(pre.extra[k]) for k in ("source_classes", "target_classes"))
            st.caption(f"Step 1 pretrains on {source}; the race fine-tunes on {target}.")
        racing = [(role, snap) for role, snap in jobs if role != "pretraining"]
        if not racing:
            st.caption("The race starts when the pretraining is done.")
            return

        def figure() -> go.Figure:
            return figures.race_figure([(snap.title.removeprefix("Race · "), role,
                                         *compare.race_curves(snap.history)) for role, snap in racing])

        snaps = [snap for _, snap in racing]  # each job's version only grows: so does their sum
        st.plotly_chart(live_figure(("race", tuple(s.id for s in snaps)), sum(s.version for s in snaps),
                                    snaps, figure), key="race_chart")
        run_ids = [getattr(snap.result, "run_id", None) for _, snap in racing if snap.finished]
        if len(run_ids) == 2 and all(run_ids):
            st.button("Overlay these two runs above", icon=":material/stacked_line_chart:",
                      key="race_compare", on_click=st.session_state.__setitem__, args=("compare_runs", run_ids))
            if st.session_state.get("race_compare"):
                st.rerun(scope="app")  # the run picker above is outside this fragment

    live()


def race_section() -> None:
    st.subheader("Scratch vs pretrained")
    lesson("race")
    base, pretrain_per_class = race_budget()
    online = pretrained_available(*RACE_MODEL)
    st.caption(f"Data: {data_label(base.data)} (the data set chosen on the Data page) · VGG11-BN · "
               f"same seed {base.seed}, {base.epochs} epoch(s), batch {base.batch_size}, lr {base.lr:g} "
               "for both runs.")
    if not online:
        classes = known_classes(base.data.source)
        try:
            source, target = compare.transfer_classes(classes) if classes else (None, None)
        except VGGError as error:
            show_error(error)
            return
        lesson("offline", file=weights_file_name(*RACE_MODEL), folder=str(weights_cache_dir()),
               source=", ".join(source) if source else "the first 60 % of the classes",
               target=", ".join(target) if target else "the others")
    label = "Scratch vs pretrained" + ("" if online else " (offline: transfer from an earlier run)")
    if st.button(label, type="primary", icon=":material/sports_score:", key="race_start"):
        start_race(base, pretrain_per_class, online)
    lesson("queue")
    race_view()


ensure_app_shell()
st.title("Compare")
lesson("intro")
runs = run_store().list_runs()
if runs:
    compare_runs(runs)
else:
    st.info("No runs yet: train one on the Train page, or start the race below.")
race_section()
