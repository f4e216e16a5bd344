"""Compare page: overlay runs' curves, a table of final metrics, and the race scratch vs pretrained."""

from __future__ import annotations

import plotly.graph_objects as go
import streamlit as st

from ui import urlstate as url
from ui.common import (
    ANONYMOUS,
    current_data,
    data_label,
    data_registry,
    is_teacher,
    job_manager,
    may_control,
    owner,
    poll_interval,
    rerun_when_finished,
    run_store,
    show_error,
    status_badge,
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
TABLE_ORDER = ("name", "owner", "best_val_accuracy", "test_accuracy", "data", "model", "init", "lr", "epochs",
               "seconds", "started", "status")
TABLE_COLUMNS = {
    "name": st.column_config.TextColumn("run", width="large"),
    "lr": st.column_config.NumberColumn("LR", format="%.0e"),
    "started": st.column_config.DatetimeColumn("started", format="D MMM HH:mm"),
    "best_val_accuracy": st.column_config.NumberColumn("best val acc", format="%.1f%%"),
    "test_accuracy": st.column_config.NumberColumn("test acc", format="%.1f%%"),
    "seconds": st.column_config.NumberColumn("seconds", format="%.0f"),
    "images_per_second": st.column_config.NumberColumn("images/s", format="%.0f"),
}


def run_label(info: RunInfo) -> str:
    acc = info.summary.get("best_val_accuracy")
    return f"{info.label} · {info.status}" + (f" · val {acc:.1%}" if isinstance(acc, (int, float)) else "")


def leaderboard(runs: list[RunInfo]) -> None:
    """Every run of the class in one sortable table, filtered by data set, owner or "mine"; rows
    picked in it are overlaid below, and their owner (or the teacher) may delete them."""
    table = compare.final_metrics(runs)
    table[["best_val_accuracy", "test_accuracy"]] *= 100  # shown as "33.8%", as every accuracy here
    cols = st.columns([2, 2, 1], vertical_alignment="bottom")
    data = cols[0].selectbox("Data set", ["all", *sorted(set(table["data"]))], key="board_data")
    owners = sorted({o for o in table["owner"] if o and not o.startswith(ANONYMOUS)})
    who = cols[1].selectbox("Owner", ["all", *owners], key="board_owner")
    mine = cols[2].toggle("Only mine", key="board_mine")
    shown = table[((table["data"] == data) | (data == "all")) & ((table["owner"] == who) | (who == "all"))
                  & (~mine | (table["owner"] == owner()))].reset_index(drop=True)
    st.caption(f"{len(shown)} of {len(table)} runs · click a column to sort · pick rows to overlay them below")
    anonymous = shown["owner"].str.startswith(ANONYMOUS)
    picked = st.dataframe(shown.assign(owner=shown["owner"].where(~anonymous, "(no name)")), hide_index=True, column_config=TABLE_COLUMNS, column_order=TABLE_ORDER,
                          width="stretch", on_select="rerun", selection_mode="multi-row", key="leaderboard")
    rows = [int(i) for i in picked.selection.rows] if picked is not None else []
    ids = shown.loc[rows, "run"].tolist() if rows else []
    if ids and ids != st.session_state.get("_board_picked"):
        st.session_state["_board_picked"] = ids
        st.session_state["compare_runs"] = ids
    by_id = {info.run_id: info for info in runs}
    deletable = [by_id[i] for i in ids if may_control(by_id[i].config.get("owner")) and by_id[i].finished]
    if ids:
        blocked = len(ids) - len(deletable)
        note = f" ({blocked} not yours, or still running)" if blocked else ""
        if st.button(f"Delete {len(deletable)} picked run{'s' if len(deletable) != 1 else ''}{note}",
                     icon=":material/delete:", key="board_delete", disabled=not deletable):
            confirm_delete([info.run_id for info in deletable])


@st.dialog("Delete runs")
def confirm_delete(run_ids: list[str]) -> None:
    """A second click, knowing what goes: a deleted run cannot come back."""
    st.markdown("These runs, their checkpoints and their predictions will be deleted for good:")
    for run_id in run_ids:
        st.markdown(f"- {run_store().get(run_id).label}")
    if st.button("Delete them", type="primary", icon=":material/delete_forever:", key="board_delete_confirm"):
        problems = []
        for run_id in run_ids:
            try:
                if may_control(run_store().get(run_id).config.get("owner")):
                    run_store().delete(run_id)
            except VGGError as error:
                problems.append(str(error))
        st.session_state.pop("compare_runs", None)
        st.session_state.pop("_board_picked", None)
        for problem in problems:
            st.error(problem)
        if not problems:
            st.rerun()


def url_params(by_id: dict[str, RunInfo]) -> list[url.Param]:
    """``?runs=<id>,<id>&x=seconds``: the overlaid runs and the x axis."""

    def known_runs(text: str) -> list[str]:
        ids = [part for part in text.split(",") if part]
        unknown = [i for i in ids if i not in by_id]
        if unknown:
            raise ValueError(f"no run has the id {unknown[0][:40]!r} (deleted?)")
        return ids

    return [url.Param("runs", "compare_runs", known_runs, None, ",".join),
            url.Param("x", "compare_x", url.choice(list(compare.X_AXES)), "images_seen")]


def compare_runs(runs: list[RunInfo]) -> None:
    by_id = {info.run_id: info for info in runs}
    newest = [info.run_id for info in runs if info.finished][:2]
    params = url_params(by_id)
    start = url.initial(params)  # the address's runs and axis, or the newest two and images seen
    kept = st.session_state.get("compare_runs")
    if kept is not None and any(r not in by_id for r in kept):  # drop runs deleted since they were chosen
        st.session_state["compare_runs"] = [r for r in kept if r in by_id]
    chosen = st.multiselect("Runs to overlay", list(by_id), default=(start["compare_runs"] or newest)
                            if kept is None else None, key="compare_runs", format_func=lambda r: run_label(by_id[r]),
                            persist_state="session")
    if not chosen:
        url.publish(params[:1])
        st.info("Choose runs to compare.")
        return
    left, right = st.columns([2, 3])
    x = left.segmented_control("x axis", list(compare.X_AXES), default=start["compare_x"], required=True,
                               format_func=compare.X_AXES.get, key="compare_x", persist_state="session")
    x = x or "images_seen"
    url.publish(params)
    smoothing = right.slider("Smoothing of the training loss", 0.0, 0.99, 0.8, key="compare_smoothing")
    running = any(not by_id[r].finished for r in chosen)

    counts = {len(by_id[r].summary.get("classes") or by_id[r].config.get("classes") or ()) for r in chosen}
    chance = 1 / counts.pop() if len(counts) == 1 and 0 not in counts else None  # the same for every run

    @st.fragment(run_every=watcher_pace() if running else None)  # curves of running runs grow
    def curves() -> None:
        metrics = {run: run_store().metrics(run) for run in chosen}
        x_title = compare.X_AXES[x]
        accuracy, loss = st.columns(2)
        accuracy.plotly_chart(figures.overlay_figure(
            compare.align_curves(metrics, "val_accuracy", x), x_title=x_title, y_title="validation accuracy",
            percent=True, title="Validation accuracy", labels={r: by_id[r].label for r in chosen},
            chance=chance), key="compare_accuracy")
        loss.plotly_chart(figures.overlay_figure(
            compare.align_curves(metrics, "train_loss", x, smoothing=smoothing), x_title=x_title,
            y_title="training loss", title="Training loss (smoothed)", labels={r: by_id[r].label for r in chosen}),
            key="compare_loss")
        infos = [run_store().get(run) for run in chosen]
        if running and all(info.finished for info in infos):
            st.rerun()  # a full rerun stops this timer

    curves()


def known_classes(source: str) -> tuple[str, ...] | None:
    if source == "synthetic":
        return SHAPE_CLASSES
    if source == "cifar10":
        return CIFAR10_CLASSES
    splits = data_registry().peek(current_data())
    return None if splits is None else splits.classes


def race_budget() -> tuple[TrainConfig, int | None]:
    """The race's budget widgets → the base TrainConfig, and the offline pretraining's images per class."""
    cols = st.columns(5)
    epochs = cols[0].number_input("Epochs", 1, 50, compare.RACE_EPOCHS, key="race_epochs")
    per_class = cols[1].number_input("Images per class", 10, 5000, compare.RACE_IMAGES_PER_CLASS, step=10,
                                     key="race_per_class")
    batch = cols[2].number_input("Batch size", 8, 512, compare.RACE_BATCH_SIZE, step=8, key="race_batch")
    seed = cols[3].number_input("Seed", 0, 2**31 - 1, 0, key="race_seed")
    pretrain = cols[4].number_input("Pretraining images per class", 10, 5000, None, step=50, key="race_pretrain",
                                    placeholder="all", help="Offline version only: step 1's size (empty: all)")
    base = compare.race_config(current_data(), images_per_class=int(per_class), epochs=int(epochs),
                               batch_size=int(batch), seed=int(seed))
    return base, None if pretrain is None else int(pretrain)


def start_race(base: TrainConfig, pretrain_per_class: int | None, online: bool) -> None:
    manager, registry, store = job_manager(), data_registry(), run_store()
    busy = [s for s in manager.active() if s.owner == owner()]
    if busy and not is_teacher():  # one job each keeps the queue fair; the race counts as one
        show_error(f"you already have a job queued or running ({busy[0].title}); wait for it or stop it first")
        return
    try:
        if online:
            ids = compare.submit_race(manager, compare.race_pair(base), registry, store, owner=owner())
            st.session_state["race"] = {"jobs": ids}
        else:
            plan = compare.TransferPlan(base, pretrain_images_per_class=pretrain_per_class)
            task = compare.transfer_task(plan, registry, store, manager, owner=owner())
            job = manager.submit("train", "Race · step 1: pretraining", task, key=f"transfer:{plan!r}",
                                 owner=owner())
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


def stage_line(snap: JobSnapshot, label: str) -> None:
    """One job of the race, compactly: its state, a progress bar while it runs, its result after."""
    result = snap.result if snap.finished else None
    accuracy = getattr(result, "test_accuracy", None)
    done = f" · test accuracy **{accuracy:.1%}** in {result.seconds:.0f} s" if accuracy is not None else ""
    st.markdown(f"{status_badge(snap.status)} {label}{done}")
    if not snap.finished:
        job_header(snap, stop_key=f"race-stop-{snap.id}", title=False)


def race_view() -> None:
    snaps = [snap for _, snap in race_jobs()]
    if not snaps:
        return

    @st.fragment(run_every=poll_interval(snaps, "race"))
    def live() -> None:
        jobs = race_jobs()
        rerun_when_finished("race", [snap for _, snap in jobs])
        pre = dict(jobs).get("pretraining")
        racing = [(role, snap) for role, snap in jobs if role != "pretraining"]
        target = pre.extra.get("target_classes") if pre is not None else None
        if pre is not None:  # the offline race: step 1 makes the pretrained side's weights
            source = ", ".join(pre.extra.get("source_classes") or ()) or "the first classes"
            stage_line(pre, f"**Step 1 · pretraining** on {source}: the weights the pretrained side starts from")
            st.markdown(f"**Step 2 · the race** on {', '.join(target) if target else 'the other classes'}: "
                        "the same budget from scratch and from the step 1 weights")
        for role, snap in racing:
            stage_line(snap, snap.title.removeprefix("Race · "))
        if not racing:
            st.caption("The race starts when step 1 ends.")
            return
        classes = racing[0][1].extra.get("classes") or target or ()
        chance = 1 / len(classes) if classes else None
        x_max = max(s.extra.get("planned_images", 0) for _, s in racing) or None

        def figure() -> go.Figure:
            return figures.race_figure([(snap.title.removeprefix("Race · "), role,
                                         *compare.race_curves(snap.history)) for role, snap in racing],
                                       chance=chance, x_max=x_max)

        snaps = [snap for _, snap in racing]  # each job's version only grows: so does their sum
        st.plotly_chart(live_figure(("race", tuple(s.id for s in snaps)), sum(s.version for s in snaps),
                                    snaps, figure), key="race_chart")
        accuracies = {role: getattr(snap.result, "test_accuracy", None) for role, snap in racing if snap.finished}
        if len(accuracies) == 2 and None not in accuracies.values():
            gap = accuracies["pretrained"] - accuracies["scratch"]
            st.success(f"Transfer {'wins' if gap > 0 else 'loses'} by **{abs(gap) * 100:.1f} points** of test "
                       f"accuracy ({accuracies['pretrained']:.1%} against {accuracies['scratch']:.1%}"
                       + (f"; chance {chance:.1%}" if chance is not None else "") + ").",
                       icon=":material/sports_score:")
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
               f"same seed {base.seed}, {base.epochs_label} and batch {base.batch_size} for both runs, each "
               f"at the peak learning rate it trains best at (from scratch {base.lr:g}, from weights "
               f"{compare.race_pair(base, 'run:x').pretrained.lr:g}); tested on every test image of their classes.")
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
    st.subheader("The class's runs")
    leaderboard(runs)
    compare_runs(runs)
else:
    st.info("No runs yet: train one on the Train page, or start the race below.")
race_section()
