"""Helpers of the live views (LR finder and Train pages): which job to watch, starting one,
its header with progress and Stop, figures cached per snapshot version, links that also work
when a page runs on its own (AppTest), and the Train page's cost estimate.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import streamlit as st
from streamlit.errors import StreamlitAPIException

from ui.common import job_manager, pollers, session_id, show_error, status_badge, watcher_interval
from vgg.errors import VGGError
from vgg.jobs import JobContext, JobSnapshot, JobStatus, UnknownJobError

# The speed probe runs on its own only when it is cheap (multiply-adds of its steps); larger
# models wait for a click, so opening the page never blocks for long.
PROBE_AUTO_MACS = 40e9
PROBE_SMALL = 2  # images in the probe's small step
PROBE_LARGE = 16  # and in its large one
# While a job runs and several sessions poll, the watchers' live charts together redraw about
# this many times per second: their shared figure is rebuilt at most every
# sessions / CHART_REDRAWS_PER_S seconds, and at most once per watcher interval
# (ui.common.watcher_interval). A chart whose figure did not change costs the browser almost
# nothing (the page keeps the drawing when the spec is the same); one that changed costs it
# 0.3-0.5 s of CPU to draw again. The numbers beside the charts are new at every rerun.
CHART_REDRAWS_PER_S = 1.0


def config_key(kind: str, *parts: Any) -> str:
    """An idempotency key for a job: the same settings give the same key."""
    digest = hashlib.sha1(repr(parts).encode()).hexdigest()[:16]
    return f"{kind}:{digest}"


def my_job(state_key: str) -> JobSnapshot | None:
    """The job this session started last (its id is kept in ``st.session_state[state_key]``)."""
    job_id = st.session_state.get(state_key)
    if job_id is None:
        return None
    try:
        return job_manager().snapshot(job_id)
    except UnknownJobError:  # forgotten by the manager (the server restarted or many jobs since)
        del st.session_state[state_key]
        return None


def others_active(kind: str, exclude: str | None) -> list[JobSnapshot]:
    """Queued or running jobs of ``kind`` other than ``exclude`` (e.g. someone else's)."""
    return [s for s in job_manager().snapshots(include_finished=False, kind=kind) if s.id != exclude]


def watched_job(kind: str, state_key: str) -> JobSnapshot | None:
    """This session's latest job of ``kind``; else the newest running or queued one of anyone
    (coming back after closing the tab shows the run where it is), remembered so that its result
    stays on the page once it ends."""
    mine = my_job(state_key)
    if mine is not None:
        return mine
    active = others_active(kind, None)
    running = [s for s in active if s.status is JobStatus.RUNNING]
    pick = (running or active or [None])[-1]
    if pick is None:
        return my_job(f"{state_key}:watched")
    st.session_state[f"{state_key}:watched"] = pick.id
    return pick


def submit_job(kind: str, title: str, fn: Callable[[JobContext], Any], key: str, state_key: str,
               config: Any = None) -> None:
    """Submit a job (idempotent by ``key``), remember its id (and ``config``) in this session, and
    rerun the app so that every part of the page, the sidebar included, shows it. A refusal (the
    queue is full) is shown instead."""
    try:
        job_id = job_manager().submit(kind, title, fn, key=key, owner=session_id())
    except VGGError as error:  # QueueFullError names how many wait and what to do
        show_error(error)
        return
    st.session_state[state_key] = job_id
    st.session_state.setdefault(f"{state_key}:configs", {})[job_id] = config
    st.rerun()


def job_config(state_key: str, job_id: str) -> Any:
    """The config this session submitted ``job_id`` with (None for someone else's job)."""
    return st.session_state.get(f"{state_key}:configs", {}).get(job_id)


def job_header(snap: JobSnapshot, *, stop_key: str) -> None:
    """Status badge, who started it, queue position or progress bar, and a Stop button."""
    whose = "yours" if snap.owner == session_id() else "started by someone else"
    st.markdown(f"{status_badge(snap.status)} **{snap.title}** · {whose}")
    if snap.finished:
        return
    left, right = st.columns([5, 1], vertical_alignment="bottom")
    if snap.status is JobStatus.QUEUED:
        left.info(f"Waiting: number {snap.queue_position} in the queue (one job runs at a time).",
                  icon=":material/hourglass_top:")
    else:
        left.progress(max(snap.progress, 0.01), text=progress_text(snap))  # 0 % drew as a full bar
    stopping = snap.message.startswith("cancelling")
    label = "Stopping…" if stopping else ("Stop" if snap.status is JobStatus.RUNNING else "Remove")
    right.button(label, key=stop_key, icon=":material/stop_circle:", disabled=stopping, width="stretch",
                 on_click=cancel_job, args=(snap.id,))


def cancel_job(job_id: str) -> None:
    """Button callback (runs before the rerun, so the rerun already shows "cancelling")."""
    try:
        job_manager().cancel(job_id)
    except UnknownJobError:
        pass  # it finished meanwhile


def progress_text(snap: JobSnapshot) -> str:
    """The job's message with the time left, estimated from its progress so far."""
    text = snap.message or "starting"
    elapsed = snap.elapsed
    if elapsed and 0.02 < snap.progress < 1.0:
        left = elapsed * (1.0 - snap.progress) / snap.progress
        text += f" · about {format_seconds(left)} left"
    return text


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = max(0, round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def chart_max_age(sessions: int) -> float:
    """How old (seconds) the watchers' shared figure of a running job may be when ``sessions``
    sessions poll: 0 for one session (every new snapshot is drawn)."""
    if sessions <= 1:
        return 0.0
    return max(watcher_interval(sessions), sessions / CHART_REDRAWS_PER_S)


def cached_figure(name: str, snap: JobSnapshot, build: Callable[[], Any], *extra: Any) -> Any:
    """The live figure of (job, ``extra``), built for the whole server: a poll with no change skips
    the work, and a class of 30 watching one job shares each figure."""
    return live_figure((name, snap.id, extra), snap.version, [snap], build)


def live_figure(key: Any, version: int, snaps: list[JobSnapshot], build: Callable[[], Any]) -> Any:
    """The figure of ``key`` drawn from the jobs ``snaps`` at ``version`` (grows with each new
    snapshot). Exact (rebuilt for every new version) for the owner of a running job and once the
    jobs finished; the other sessions share one figure at most ``chart_max_age`` old (0 when only
    one session polls), so their browsers redraw it only every other rerun or so.
    (The figure is only read afterwards: ``st.plotly_chart`` copies it.)"""
    exact = all(s.status.finished for s in snaps) or any(s.owner == session_id() for s in snaps)
    max_age = 0.0 if exact else chart_max_age(pollers().count())
    return _latest_figures().get((key, exact), version, max_age, build)


class LatestFigures:
    """The newest figure of each live view with the snapshot version and time it was built
    (thread-safe, process-wide, the ``size`` most recent views)."""

    def __init__(self, size: int = 32, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._slots: OrderedDict[Any, tuple[int, float, Any]] = OrderedDict()
        self._size = size
        self._clock = clock

    def get(self, key: Any, version: int, max_age: float, build: Callable[[], Any]) -> Any:
        """The figure of ``key``: reused when built from ``version``, or less than ``max_age``
        seconds ago from an older one; else ``build()`` (outside the lock)."""
        now = self._clock()
        with self._lock:
            slot = self._slots.get(key)
            if slot is not None and (slot[0] == version or (slot[0] < version and now - slot[1] < max_age)):
                self._slots.move_to_end(key)
                return slot[2]
        value = build()
        with self._lock:
            current = self._slots.get(key)
            if current is None or current[0] <= version:  # never replace a newer one
                self._slots[key] = (version, now, value)
                self._slots.move_to_end(key)
                while len(self._slots) > self._size:
                    self._slots.popitem(last=False)
        return value


@st.cache_resource(show_spinner=False)
def _latest_figures() -> LatestFigures:
    return LatestFigures()


def shared(name: str, stamp: Any, build: Callable[[], Any]) -> Any:
    """``build()`` once per (``name``, hashable ``stamp``) for the whole server (every session)."""
    return _shared(name, stamp, build)


@st.cache_resource(max_entries=32, show_spinner=False)
def _shared(name: str, stamp: Any, _build: Callable[[], Any]) -> Any:
    return _build()


def page_link(page: str, label: str, icon: str | None = None) -> None:
    """``st.page_link`` to ``pages/<file>``; a plain hint when the page is not routed (a page run alone)."""
    try:
        st.page_link(page, label=label, icon=icon)
    except StreamlitAPIException:
        st.markdown(f"{label}: open **{Path(page).stem.replace('_', ' ').title()}** in the sidebar.")


# -- the Train page's cost estimate -------------------------------------------------------------


@st.cache_data(show_spinner=False, max_entries=64)
def forward_totals(config: str, batch_norm: bool, input_size: int, num_classes: int) -> dict[str, int]:
    """Multiply-adds, parameters and activation bytes of one image's forward pass."""
    from vgg import summary

    table = summary.layer_table(config, batch_norm=batch_norm, input_size=input_size, num_classes=num_classes)
    return summary.table_totals(table)


@st.cache_data(show_spinner="Measuring this device's speed (once per model, size and device)…",
               max_entries=32)
def speed_probe(config: str, batch_norm: bool, input_size: int, num_classes: int, device: str, optimizer: str,
                freeze_mode: str, precision: str) -> tuple[float, float]:
    """(seconds per step, seconds per image) of training on ``device``, from the engine's own step.

    Times one step of ``PROBE_SMALL`` and one of ``PROBE_LARGE`` images after a warm-up step: a
    VGG step has a large fixed part (the optimizer updates ~130 M parameters, most of them in
    the first fully connected layer, whatever the batch) and a part that grows with the batch.
    Weights are filled with a constant (timing does not depend on their values; a real
    initialisation of 130 M parameters would take longer than the probe itself).
    """
    import torch

    from vgg.model import build_vgg, freeze
    from vgg.settings import resolve_device
    from vgg.train import TrainConfig, choose_precision, make_optimizer, train_step

    dev = resolve_device(device)
    with torch.device("meta"):
        model = build_vgg(config, batch_norm=batch_norm, num_classes=num_classes)
    model = model.to_empty(device=dev)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(1 if tensor.dtype == torch.long else 1e-3)
    freeze(model, freeze_mode)
    model = model.to(memory_format=torch.channels_last).train()
    opt = make_optimizer(model, TrainConfig(config=config, batch_norm=batch_norm, optimizer=optimizer,
                                            init="scratch" if freeze_mode == "none" else "imagenet",
                                            freeze=freeze_mode))
    autocast = choose_precision(precision, dev)

    def step(batch: int) -> float:
        x = torch.randn(batch, 3, input_size, input_size, device=dev)
        x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch,), device=dev)
        start = time.perf_counter()
        train_step(model, opt, x, y, autocast)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    step(PROBE_SMALL)  # warm-up: allocations, kernel choice, optimizer state
    small, large = step(PROBE_SMALL), step(PROBE_LARGE)
    per_image = max((large - small) / (PROBE_LARGE - PROBE_SMALL), large / PROBE_LARGE / 4)
    return max(small - PROBE_SMALL * per_image, 0.0), per_image


def probe_macs(forward_macs: int) -> float:
    """Multiply-adds the speed probe does (training ≈ 3 × forward)."""
    return 3.0 * forward_macs * (2 * PROBE_SMALL + PROBE_LARGE)


def describe_job_error(snap: JobSnapshot) -> None:
    """A finished job's outcome as one message box."""
    if snap.status is JobStatus.FAILED:
        show_error(snap.error or "the job failed")
    elif snap.status is JobStatus.CANCELLED:
        detail = f" ({snap.message})" if snap.message and snap.message != "cancelled" else ""
        st.warning(f"Stopped before the end{detail}.", icon=":material/stop_circle:")


# -- where the weights come from (LR finder and Train pages) -------------------------------------

INIT_LABELS = {"scratch": "From scratch", "imagenet": "ImageNet weights", "run": "An earlier run",
               "file": ".pth file in the data dir"}


def weights_problem(config: str, batch_norm: bool) -> str | None:
    """Why ImageNet weights cannot be used here (offline and not cached; none published), or None."""
    from vgg.model import pretrained_available, weights_cache_dir, weights_file_name

    try:
        if pretrained_available(config, batch_norm):
            return None
        return (f"ImageNet weights not available offline: put {weights_file_name(config, batch_norm)} "
                f"into {weights_cache_dir()} (or set TORCH_HOME to a folder whose hub/checkpoints holds it).")
    except VGGError as error:  # A-LRN and C: no published weights at all
        return str(error)


def earlier_runs(config: str, batch_norm: bool) -> list[tuple[str, str]]:
    """(run id, label) of finished runs with a best checkpoint of the same model, newest first."""
    from ui.common import run_store

    runs = []
    for info in run_store().list_runs():
        cfg = info.config
        if not info.has_best or cfg.get("config") != config or bool(cfg.get("batch_norm")) != batch_norm:
            continue
        accuracy = info.summary.get("best_val_accuracy")
        shown = f" · val {accuracy:.0%}" if isinstance(accuracy, int | float) else ""
        classes = info.summary.get("classes") or cfg.get("classes") or ()
        runs.append((info.run_id, f"{info.run_id} · {info.status}{shown} · {len(classes)} classes"))
    return runs


def weight_files() -> list[str]:
    """``.pth``/``.pt`` files in the data dir or one folder down (relative paths), for the file choice.

    Not deeper: a data dir holds image folders with tens of thousands of files.
    """
    from vgg.settings import data_dir

    root = data_dir()
    found = [path for pattern in ("*.pt", "*.pth", "*/*.pt", "*/*.pth") for path in root.glob(pattern)]
    return sorted(str(path.relative_to(root)) for path in found
                  if path.is_file() and not path.name.startswith("."))


def init_ui(config: str, batch_norm: bool, *, key: str, allow_file: bool = False) -> str | None:
    """Choose the starting weights; returns the ``init`` value, or None when the choice is unusable
    (the reason is shown, and the caller disables Start)."""
    from vgg.paths import resolve_inside
    from vgg.settings import data_dir

    choices = ["scratch", "imagenet", "run"] + (["file"] if allow_file else [])
    choice = st.radio("Start from", choices, format_func=INIT_LABELS.get, key=f"{key}-init", horizontal=True,
                      persist_state="session")
    if choice == "scratch":
        return "scratch"
    if choice == "imagenet":
        problem = weights_problem(config, batch_norm)
        if problem:
            st.warning(problem, icon=":material/cloud_off:")
            return None
        return "imagenet"
    if choice == "run":
        runs = dict(earlier_runs(config, batch_norm))
        if not runs:
            with_bn = "with" if batch_norm else "without"
            st.info(f"No finished run of configuration {config} {with_bn} batch norm "
                    "yet: train one on the Train page first.", icon=":material/info:")
            return None
        run_id = st.selectbox("Earlier run", list(runs), format_func=runs.get, key=f"{key}-run")
        return f"run:{run_id}"
    files = weight_files()
    if not files:
        st.info(f"No .pth file in the data dir ({data_dir()}): copy a state dict there first.",
                icon=":material/info:")
        return None
    name = st.selectbox("State-dict file", files, key=f"{key}-file")
    try:
        return str(resolve_inside(name, data_dir()))
    except VGGError as error:
        show_error(error)
        return None
