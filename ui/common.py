"""What every page shares: the one job manager, the run store, the data choice, live polling.

This is the UI edge: Streamlit caching lives here, ``vgg`` stays free of Streamlit.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import streamlit as st

from vgg import cluster
from vgg.classroom import Classroom, ClassLocks, teacher_code
from vgg.data import DataConfig, DataSplits
from vgg.jobs import JobManager, JobSnapshot, JobStatus
from vgg.runs import RunStore, source_name
from vgg.settings import data_dir, runs_dir
from vgg.tasks import DataRegistry, data_task

# Live views: the person who started a job polls fast, everyone else slower, and slower still
# the more sessions poll (a class of 30 watching must not starve the training): watchers together
# rerun about WATCHER_RERUNS_PER_S live views per second, each every 3 to 15 s.
OWNER_INTERVAL_S = 1.0
WATCHER_INTERVAL_S = 3.0
MAX_WATCHER_INTERVAL_S = 15.0
WATCHER_RERUNS_PER_S = 2.0
POLLER_MEMORY_S = 2 * MAX_WATCHER_INTERVAL_S  # a session that has not polled for this long is gone

DEFAULT_DATA = DataConfig()  # the synthetic set, every image (DataConfig's defaults)


@st.cache_resource
def job_manager() -> JobManager:
    """The one process-wide job manager (trainings and LR range tests). On a Ray cluster
    (``VGG_RAY_ADDRESS``) as many jobs run at once as it has CPUs (Ray schedules them, and keeps
    what does not fit waiting); in this process one at a time, unless ``VGG_MAX_JOBS`` says otherwise."""
    status = cluster.cluster_status()
    default = max(1, int(status.cpus)) if status is not None and status.reachable else 1
    return JobManager(max_running=int(os.environ.get("VGG_MAX_JOBS", str(default))),
                      max_queued=int(os.environ.get("VGG_MAX_QUEUE", "20")))


@st.cache_data(ttl=10, show_spinner=False)
def cluster_line() -> str | None:
    """The sidebar's line about the Ray cluster (None without one), refreshed every 10 s at most."""
    status = cluster.cluster_status()
    if status is None:
        return None
    if not status.reachable:
        return (f":material/cloud_off: **Ray cluster** at `{status.address}` cannot be reached: new trainings "
                f"and range tests are refused until it is back ({status.problem}).")
    gpus = f", {status.gpus:g} GPU" if status.gpus else ""
    return (f":material/hub: **Ray cluster:** {status.nodes} machine{'s' if status.nodes != 1 else ''}, "
            f"{status.cpus:g} CPUs{gpus}: trainings and range tests run there.")


@st.cache_resource
def data_jobs() -> JobManager:
    """Decoding data sets runs beside training, never queued behind it."""
    return JobManager(max_running=1, max_queued=5)


@st.cache_resource
def data_registry() -> DataRegistry:
    return DataRegistry()


@st.cache_resource
def _run_store(root: str) -> RunStore:
    return RunStore(Path(root))


def run_store() -> RunStore:
    """The run store of ``$VGG_RUNS_DIR``."""
    return _run_store(str(runs_dir()))


def session_id() -> str:
    """A stable id of this browser session (for the pace of live views)."""
    if "session_id" not in st.session_state:
        st.session_state["session_id"] = uuid.uuid4().hex[:12]
    return st.session_state["session_id"]


# -- who is who (vgg.classroom) ------------------------------------------------------------------

NAME = "user_name"  # st.session_state: the pupil's name; the address carries it as ?name=
ANONYMOUS = "session-"  # owners without a name: "session-<id>"


def user_name() -> str | None:
    return st.session_state.get(NAME)


def owner() -> str:
    """Who this session is to jobs and runs: the name given (it survives a reload), else the session."""
    return user_name() or ANONYMOUS + session_id()


def owner_label(who: str | None) -> str:
    """How an owner is shown: "you", the name, or "someone without a name"."""
    if who == owner():
        return "you"
    return "someone without a name" if not who or who.startswith(ANONYMOUS) else who


@st.cache_resource
def classroom() -> Classroom:
    """The class's locks, shared by every session (kept in the runs dir)."""
    return Classroom(runs_dir())


def teacher_mode() -> bool:
    """Whether the server was started with a teacher's code (VGG_TEACHER_CODE)."""
    return teacher_code() is not None


def is_teacher() -> bool:
    return teacher_mode() and bool(st.session_state.get("teacher"))


def may_control(who: str | None) -> bool:
    """Whether this session may stop or delete what ``who`` started: its own, the teacher
    anything, and everyone everything when there is no teacher."""
    return not teacher_mode() or is_teacher() or who == owner()


def locks() -> ClassLocks:
    """What the teacher fixed for pupils (nothing for the teacher, who sets them)."""
    return ClassLocks() if is_teacher() else classroom().locks


# -- the data set in use (chosen on the Data page, used everywhere) -----------------------------


def current_data() -> DataConfig:
    """The data set in use: the class's when the teacher fixed it, else this session's choice."""
    fixed = locks().data
    return fixed if fixed is not None else st.session_state.get("data_config", DEFAULT_DATA)


def set_current_data(cfg: DataConfig, label: str | None = None) -> None:
    st.session_state["data_config"] = cfg
    st.session_state["dataset_label"] = label or data_label(cfg)


def data_label(cfg: DataConfig) -> str:
    name = source_name(cfg.source)
    per_class = f", {cfg.images_per_class}/class" if cfg.images_per_class else ""
    return f"{name} · {cfg.input_size} px{per_class}"


def loaded_data(cfg: DataConfig) -> DataSplits | None:
    """The data for ``cfg`` if loaded; otherwise start loading it in the background (None)."""
    splits = data_registry().peek(cfg)
    last = data_job(cfg)
    if splits is None and (last is None or last.status is not JobStatus.FAILED):
        data_jobs().submit("data", f"Loading {data_label(cfg)}", data_task(cfg, data_registry()),
                           key=f"data:{cfg!r}", owner=owner())
    return splits


def data_job(cfg: DataConfig) -> JobSnapshot | None:
    """The newest loading job of ``cfg`` (to show its progress or its error)."""
    key = f"data:{cfg!r}"
    mine = [s for s in data_jobs().snapshots(kind="data") if s.key == key]
    return mine[-1] if mine else None


def show_data_loading(cfg: DataConfig) -> DataSplits | None:
    """Draw a progress bar while ``cfg`` loads (polling), its error if it failed; the data when ready."""
    splits = loaded_data(cfg)
    if splits is not None:
        return splits

    @st.fragment(run_every=OWNER_INTERVAL_S)
    def progress() -> None:
        snap = data_job(cfg)
        if snap is None or snap.status is JobStatus.DONE or data_registry().peek(cfg) is not None:
            st.rerun()
        if snap.status is JobStatus.FAILED:
            st.error(snap.error or "loading failed")
            if st.button("Try again", key="data-retry"):
                data_jobs().submit("data", f"Loading {data_label(cfg)}", data_task(cfg, data_registry()),
                                   key=f"data:{cfg!r}", owner=owner())
            return
        st.progress(snap.progress or 0.0, text=f"Loading the data set: {snap.message or 'starting'}")

    progress()
    return None


# -- live polling -------------------------------------------------------------------------------


class Pollers:
    """When each browser session last polled a live view (thread-safe, process-wide)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._seen: dict[str, float] = {}

    def touch(self, session: str, now: float | None = None) -> int:
        """Note that ``session`` polls now; returns how many sessions polled recently."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._seen[session] = now
            for sid in [sid for sid, t in self._seen.items() if now - t > POLLER_MEMORY_S]:
                del self._seen[sid]
            return len(self._seen)

    def count(self, now: float | None = None) -> int:
        """How many sessions polled recently."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return sum(1 for t in self._seen.values() if now - t <= POLLER_MEMORY_S)


@st.cache_resource
def pollers() -> Pollers:
    return Pollers()


def watcher_interval(sessions: int) -> float:
    """Seconds between reruns of a watcher's live view when ``sessions`` sessions poll."""
    return min(MAX_WATCHER_INTERVAL_S, max(WATCHER_INTERVAL_S, sessions / WATCHER_RERUNS_PER_S))


def watcher_pace() -> float:
    """``watcher_interval`` now, counting this session as one that polls."""
    return watcher_interval(pollers().touch(session_id()))


def poll_interval(snapshots: list[JobSnapshot], key: str | None = None, *, slower: float = 1.0) -> float | None:
    """How often a live view reruns: None when nothing runs (the timer stops). The owner of a
    running job: every second; everyone else, and an owner whose job still waits in the queue:
    ``watcher_interval`` of the sessions polling now. ``slower`` multiplies that (the sidebar's job
    list on a page that shows the job itself). With ``key`` (the fragment's), the interval is
    remembered for ``rerun_when_finished``."""
    active = [s for s in snapshots if not s.status.finished]
    interval = None
    if active:
        pace = watcher_pace()
        running_mine = any(s.owner == owner() and s.status is JobStatus.RUNNING for s in active)
        interval = (OWNER_INTERVAL_S if running_mine else pace) * slower
    if key is not None:
        st.session_state[f"_interval:{key}"] = interval
        st.session_state[f"_slower:{key}"] = slower
    return interval


def rerun_when_finished(key: str, snapshots: list[JobSnapshot]) -> None:
    """Call from a live fragment (registered with ``poll_interval(..., key)``) on every rerun: a
    full rerun once the watched jobs finish, so the timer stops, and when the class watching grew
    or shrank so much that the timer should run at half or twice its pace (or this session's
    queued job started: its owner then polls every second)."""
    active = any(not s.status.finished for s in snapshots)
    was_active = st.session_state.get(f"_active:{key}", False)
    st.session_state[f"_active:{key}"] = active
    if was_active and not active:
        st.rerun(scope="app")
    registered = st.session_state.get(f"_interval:{key}")
    if active and registered:
        wanted = poll_interval(snapshots, slower=st.session_state.get(f"_slower:{key}", 1.0))
        if wanted is not None and not registered / 2 < wanted < registered * 2:
            st.rerun(scope="app")  # registers the fragment again with the new pace


def show_error(error: BaseException | str) -> None:
    st.error(str(error), icon=":material/error:")


def status_badge(status: JobStatus | str) -> str:
    name = status.value if isinstance(status, JobStatus) else str(status)
    colours = {"running": "blue", "queued": "gray", "done": "green", "failed": "red",
               "cancelled": "orange", "diverged": "red", "interrupted": "orange"}
    return f":{colours.get(name.lower(), 'gray')}-badge[{name}]"


def image_folders() -> list[str]:
    """Folders inside the data dir that look like image-folder data sets (for a selectbox)."""
    root = data_dir()
    out = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and not p.name.startswith(".") and p.name not in ("cifar-10-batches-py",):
            out.append(p.name)
    return out


def with_data(cfg: Any, data: DataConfig) -> Any:
    return replace(cfg, data=data)
