"""Background jobs: LR range tests and trainings run in worker threads, read through snapshots.

One ``JobManager`` per process (the app wraps its factory in ``st.cache_resource``, the CLI makes
its own). At most ``max_running`` jobs run at once; the others wait in a queue whose positions are
visible, and past ``max_queued`` waiting jobs a new one is refused with ``QueueFullError``.

A job's function receives a ``JobContext``: it checks ``ctx.cancelled`` between batches and calls
``ctx.publish(...)`` after each step. Readers only ever see frozen ``JobSnapshot`` objects. An
exception inside a job becomes status ``FAILED`` with a one-line message (its traceback goes to
the ``logging`` module), never a silently dead thread.

When the process exits (the server stopped with SIGTERM or Ctrl+C), the running jobs are
cancelled and their threads joined first (``atexit``): a worker thread killed inside a torch
operation at interpreter exit aborts the process ("terminate called without an active exception")
before the run could record how it ended.
"""

from __future__ import annotations

import atexit
import itertools
import logging
import math
import sys
import threading
import time
import uuid
import weakref
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

from vgg.errors import ConfigError, VGGError

logger = logging.getLogger(__name__)

_EMPTY_EXTRA: Mapping[str, Any] = MappingProxyType({})
EXIT_JOIN_S = 60.0  # at process exit, how long the cancelled jobs get to end their current step


class QueueFullError(VGGError):
    """Too many jobs are waiting; the message says how many and what to do."""


class OwnerBusyError(VGGError):
    """This person already has a job queued or running (one each keeps the queue fair)."""


class UnknownJobError(VGGError, LookupError):
    """No job with that id (never submitted, or finished long ago and forgotten)."""


class JobCancelled(Exception):
    """Raised by ``JobContext.check_cancelled`` so a job can stop from deep inside its loop."""


class JobStatus(Enum):
    """Where a job is in its life: queued → running → done | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        """True for the three final states."""
        return self in (JobStatus.DONE, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True)
class JobSnapshot:
    """An immutable view of a job at one moment; ``version`` grows with every change."""

    id: str  # job id, unique in this process
    kind: str  # what it is, e.g. "train" or "lr_find"
    title: str  # a short human title
    key: str | None  # idempotency key: a second submit with it returns this job
    owner: str | None  # who started it (free text, e.g. a session label)
    status: JobStatus
    queue_position: int | None  # 1-based while queued, else None
    progress: float  # 0..1
    message: str  # the latest progress message
    history: tuple[Any, ...]  # every item published with ``append``, in order
    result: Any  # the function's return value (or the last published result)
    error: str | None  # one-line message when FAILED
    extra: Mapping[str, Any] = field(default_factory=lambda: _EMPTY_EXTRA)  # read-only extra values
    version: int = 0  # increases on every change of this job
    estimate_s: float | None = None  # how long it should run (a cost estimate given at submit)
    submitted_at: float = 0.0  # epoch seconds
    started_at: float | None = None
    finished_at: float | None = None

    @property
    def finished(self) -> bool:
        """True once the job is done, failed or cancelled."""
        return self.status.finished

    @property
    def elapsed(self) -> float | None:
        """Seconds it has run (so far, or in total), or None while queued."""
        if self.started_at is None:
            return None
        end = self.finished_at if self.finished_at is not None else time.time()
        return max(0.0, end - self.started_at)


class _Job:
    """The mutable state of one job; only touched while holding the manager's lock."""

    def __init__(self, job_id: str, kind: str, title: str, fn: Callable[[JobContext], Any],
                 key: str | None, owner: str | None, estimate_s: float | None = None) -> None:
        self.id = job_id
        self.estimate_s = estimate_s
        self.kind = kind
        self.title = title
        self.fn: Callable[[JobContext], Any] | None = fn
        self.key = key
        self.owner = owner
        self.status = JobStatus.QUEUED
        self.progress = 0.0
        self.message = ""
        self.history: list[Any] = []
        self.result: Any = None
        self.error: str | None = None
        self.extra: dict[str, Any] = {}
        self.version = 0
        self.submitted_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.cancel_event = threading.Event()
        self.thread: threading.Thread | None = None
        # Lazily built immutable views, rebuilt only when something changed.
        self.cached_snapshot: JobSnapshot | None = None
        self.cached_history: tuple[Any, ...] = ()
        self.cached_extra: Mapping[str, Any] = _EMPTY_EXTRA
        self.extra_dirty = False


class JobContext:
    """What a job function gets: the cancel event and a way to publish progress."""

    def __init__(self, manager: JobManager, job: _Job) -> None:
        self._manager = manager
        self._job = job

    @property
    def job_id(self) -> str:
        """The id of the job this context belongs to."""
        return self._job.id

    @property
    def owner(self) -> str | None:
        """Who started the job (None: nobody named)."""
        return self._job.owner

    @property
    def cancel_event(self) -> threading.Event:
        """Set when someone asked the job to stop; pass it to ``fit`` or ``find_lr``."""
        return self._job.cancel_event

    @property
    def cancelled(self) -> bool:
        """True once cancellation was requested."""
        return self._job.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise ``JobCancelled`` if cancellation was requested (the job ends as CANCELLED)."""
        if self._job.cancel_event.is_set():
            raise JobCancelled()

    def publish(self, *, progress: float | None = None, message: str | None = None,
                append: Any = None, extend: Iterable[Any] | None = None, result: Any = None,
                extra: Mapping[str, Any] | None = None, history_append: Any = None) -> None:
        """Publish a change: progress in 0..1, a message, one history item (``append``, alias
        ``history_append``), several (``extend``), a result, or extra values merged by key.

        ``None`` means "unchanged" for every argument. Ignored once the job has finished.
        """
        self._manager._publish(self._job, progress=progress, message=message,
                               items=_history_items(append, history_append, extend),
                               result=result, extra=extra)


def _history_items(append: Any, history_append: Any, extend: Iterable[Any] | None) -> list[Any]:
    items: list[Any] = []
    if append is not None:
        items.append(append)
    if history_append is not None:
        items.append(history_append)
    if extend is not None:
        items.extend(extend)
    return items


def _is_out_of_memory(exc: BaseException) -> bool:
    """CPU MemoryError, torch.cuda.OutOfMemoryError, or a RuntimeError saying "out of memory"."""
    if isinstance(exc, MemoryError):
        return True
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _first_line(text: str, limit: int = 300) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe_exception(exc: BaseException) -> str:
    """One line for a user: a VGGError's own message, an out-of-memory hint, or ``Type: message``."""
    if isinstance(exc, VGGError):
        return _first_line(str(exc)) or type(exc).__name__
    if _is_out_of_memory(exc):
        detail = _first_line(str(exc), 160)
        suffix = f" ({detail})" if detail else ""
        return ("ran out of memory" + suffix
                + "; try a smaller batch size or a smaller input size")
    detail = _first_line(str(exc))
    return f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__


def _release_accelerator_memory() -> None:
    """After an out-of-memory failure, hand cached GPU memory back (only if torch is loaded)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return
    try:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # best effort: never turn cleanup into a second failure
        logger.debug("could not empty the CUDA cache", exc_info=True)


class JobManager:
    """Runs jobs in background daemon threads, at most ``max_running`` at once.

    Args:
        max_running: jobs that run at the same time (1 on a CPU).
        max_queued: jobs that may wait; one more is refused with ``QueueFullError``.
        max_finished: finished jobs kept for their snapshots; older ones are forgotten.
    """

    def __init__(self, max_running: int = 1, max_queued: int = 20, max_finished: int = 50) -> None:
        for name, value, low in (("max_running", max_running, 1), ("max_queued", max_queued, 0),
                                 ("max_finished", max_finished, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"{name} must be an integer ≥ {low}, got {value!r}")
        self.max_running = max_running
        self.max_queued = max_queued
        self.max_finished = max_finished
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._jobs: dict[str, _Job] = {}  # every known job, in submission order
        self._queue: deque[_Job] = deque()
        self._running: set[str] = set()
        self._finished: deque[str] = deque()  # finished job ids, oldest first
        self._by_key: dict[str, _Job] = {}  # key → queued or running job
        self._versions = itertools.count(1)
        self._version = 0
        self._prefix = uuid.uuid4().hex[:6]
        self._serial = itertools.count(1)
        self._closed = False
        _at_exit.add(self)

    # ---------------------------------------------------------------- submitting

    def submit(self, kind: str, title: str, fn: Callable[[JobContext], Any], *,
               key: str | None = None, owner: str | None = None, estimate_s: float | None = None,
               one_per_owner: bool = False) -> str:
        """Queue ``fn(ctx)`` as a job and return its id.

        If a queued or running job has the same ``key``, its id is returned and nothing new is
        started (a second click does not start a second run). Raises ``QueueFullError`` when
        ``max_queued`` jobs are already waiting, and with ``one_per_owner`` ``OwnerBusyError`` when
        ``owner`` already has a job queued or running (a fair queue: one each). ``estimate_s`` is
        how long the job should take (for the queue's start times).
        """
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        with self._lock:
            if self._closed:
                raise VGGError("the job manager is shut down; restart the app to run jobs")
            if key is not None and key in self._by_key:
                return self._by_key[key].id
            if one_per_owner and owner is not None:
                busy = next((j for j in self._jobs.values() if j.owner == owner and not j.status.finished), None)
                if busy is not None:
                    where = (f"number {self._queue.index(busy) + 1} in the queue"
                             if busy.status is JobStatus.QUEUED else "running")
                    raise OwnerBusyError(
                        f"you already have a job {where} ({busy.title}); one job each keeps the queue "
                        "fair: wait for it to end, or stop it, then start this one")
            slot_free = len(self._running) < self.max_running and not self._queue
            if not slot_free and len(self._queue) >= self.max_queued:
                raise QueueFullError(
                    f"the queue is full ({len(self._queue)} jobs waiting); "
                    "wait for a run to finish or cancel one")
            job = _Job(f"{self._prefix}-{next(self._serial)}", kind, title, fn, key, owner, estimate_s)
            self._jobs[job.id] = job
            if key is not None:
                self._by_key[key] = job
            self._queue.append(job)
            self._touch(job)
            self._start_ready()
            return job.id

    # ---------------------------------------------------------------- reading

    @property
    def version(self) -> int:
        """The latest change of any job; a page can skip redrawing while it stays the same."""
        with self._lock:
            return self._version

    def snapshot(self, job_id: str) -> JobSnapshot:
        """The current snapshot of one job; ``UnknownJobError`` if there is no such job."""
        with self._lock:
            return self._snapshot(self._get(job_id))

    def snapshots(self, *, include_finished: bool = True, owner: str | None = None,
                  kind: str | None = None) -> list[JobSnapshot]:
        """Snapshots of all known jobs in submission order, optionally filtered."""
        with self._lock:
            return [self._snapshot(job) for job in self._jobs.values()
                    if (include_finished or not job.status.finished)
                    and (owner is None or job.owner == owner)
                    and (kind is None or job.kind == kind)]

    def active(self) -> list[JobSnapshot]:
        """Snapshots of the queued and running jobs, in submission order."""
        return self.snapshots(include_finished=False)

    def start_estimates(self, now: float | None = None) -> dict[str, float]:
        """Seconds until each queued job should start: what the running jobs have left (their
        estimate minus the time they ran, or their progress so far extrapolated) and the estimates
        of the jobs ahead of it, with ``max_running`` slots. A job without an estimate counts as
        the mean of the others' (or a minute)."""
        now = time.time() if now is None else now
        with self._lock:
            known = [j.estimate_s for j in self._jobs.values() if j.estimate_s]
            typical = sum(known) / len(known) if known else 60.0
            slots = []
            for job_id in self._running:
                job = self._jobs[job_id]
                ran = now - (job.started_at or now)
                if job.progress > 0.02:
                    left = ran * (1 - job.progress) / job.progress
                else:
                    left = max((job.estimate_s or typical) - ran, 0.0)
                slots.append(left)
            slots += [0.0] * (self.max_running - len(slots))
            starts: dict[str, float] = {}
            for job in self._queue:
                i = min(range(len(slots)), key=slots.__getitem__)
                starts[job.id] = slots[i]
                slots[i] += job.estimate_s or typical
            return starts

    def newest(self) -> str | None:
        """The id of the job submitted last (to notice a new job without reading every snapshot)."""
        with self._lock:
            return next(reversed(self._jobs), None)

    def find(self, key: str) -> JobSnapshot | None:
        """The queued or running job with this idempotency key, if any."""
        with self._lock:
            job = self._by_key.get(key)
            return None if job is None else self._snapshot(job)

    def wait(self, job_id: str, timeout: float | None = None) -> JobSnapshot:
        """Block until the job has finished (or ``timeout`` seconds passed); return its snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            job = self._get(job_id)
            while not job.status.finished:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._snapshot(job)

    def wait_for_change(self, job_id: str, version: int, timeout: float | None = None) -> JobSnapshot:
        """Block until the job's version is past ``version`` (or timeout); return its snapshot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            job = self._get(job_id)
            while job.version <= version:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                self._changed.wait(remaining)
            return self._snapshot(job)

    # ---------------------------------------------------------------- stopping

    def cancel(self, job_id: str) -> JobSnapshot:
        """Cancel a job: a queued one ends now, a running one is asked to stop (its function
        checks ``ctx.cancelled``). A finished job is left as it is."""
        with self._lock:
            job = self._get(job_id)
            if job.status is JobStatus.QUEUED:
                self._queue.remove(job)
                job.cancel_event.set()
                self._finish(job, JobStatus.CANCELLED, message="cancelled before it started")
                self._touch_queue()
            elif job.status is JobStatus.RUNNING and not job.cancel_event.is_set():
                job.cancel_event.set()
                job.message = "cancelling…"
                self._touch(job)
            return self._snapshot(job)

    def shutdown(self, cancel: bool = True, timeout: float | None = None) -> None:
        """Refuse new jobs; with ``cancel`` also cancel the queued and running ones; then wait up
        to ``timeout`` seconds for the running threads to end."""
        with self._lock:
            self._closed = True
            if cancel:
                while self._queue:
                    job = self._queue.popleft()
                    job.cancel_event.set()
                    self._finish(job, JobStatus.CANCELLED, message="cancelled at shutdown")
                for job_id in self._running:
                    self._jobs[job_id].cancel_event.set()
            threads = [t for t in (self._jobs[j].thread for j in self._running) if t is not None]
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            thread.join(remaining)

    # ---------------------------------------------------------------- internals (lock held)

    def _get(self, job_id: str) -> _Job:
        job = self._jobs.get(job_id)
        if job is None:
            raise UnknownJobError(f"unknown job {job_id!r}; it never existed or was forgotten")
        return job

    def _touch(self, job: _Job) -> None:
        self._version = next(self._versions)
        job.version = self._version
        self._changed.notify_all()

    def _touch_queue(self) -> None:
        """Queue positions changed: every queued job gets a new version."""
        for job in self._queue:
            self._touch(job)

    def _snapshot(self, job: _Job) -> JobSnapshot:
        cached = job.cached_snapshot
        if cached is not None and cached.version == job.version:
            return cached
        if len(job.cached_history) != len(job.history):
            job.cached_history = tuple(job.history)
        if job.extra_dirty:
            job.cached_extra = MappingProxyType(dict(job.extra))
            job.extra_dirty = False
        position = None
        if job.status is JobStatus.QUEUED:
            position = self._queue.index(job) + 1
        snap = JobSnapshot(
            id=job.id, kind=job.kind, title=job.title, key=job.key, owner=job.owner,
            status=job.status, queue_position=position, progress=job.progress,
            message=job.message, history=job.cached_history, result=job.result,
            error=job.error, extra=job.cached_extra, version=job.version,
            submitted_at=job.submitted_at, started_at=job.started_at,
            finished_at=job.finished_at, estimate_s=job.estimate_s)
        job.cached_snapshot = snap
        return snap

    def _start_ready(self) -> None:
        started = False
        while self._queue and len(self._running) < self.max_running and not self._closed:
            job = self._queue.popleft()
            job.status = JobStatus.RUNNING
            job.started_at = time.time()
            self._running.add(job.id)
            job.thread = threading.Thread(target=self._run, args=(job,), daemon=True,
                                          name=f"vgg-job-{job.id}")
            self._touch(job)
            job.thread.start()
            started = True
        if started:
            self._touch_queue()

    def _finish(self, job: _Job, status: JobStatus, *, message: str | None = None,
                error: str | None = None) -> None:
        job.status = status
        job.finished_at = time.time()
        job.fn = None  # drop the closure and whatever it holds (models, data)
        if error is not None:
            job.error = error
            job.message = error
        elif message is not None:
            job.message = message
        if status is JobStatus.DONE:
            job.progress = 1.0
        if job.key is not None and self._by_key.get(job.key) is job:
            del self._by_key[job.key]
        self._finished.append(job.id)
        while len(self._finished) > self.max_finished:
            self._jobs.pop(self._finished.popleft(), None)
        self._touch(job)

    def _publish(self, job: _Job, *, progress: float | None, message: str | None,
                 items: list[Any], result: Any, extra: Mapping[str, Any] | None) -> None:
        if progress is not None:
            progress = float(progress)
            if math.isnan(progress):
                progress = None
            else:
                progress = min(1.0, max(0.0, progress))
        with self._lock:
            if job.status.finished:
                return
            if progress is not None:
                job.progress = progress
            if message is not None:
                job.message = str(message)
            if items:
                job.history.extend(items)
            if result is not None:
                job.result = result
            if extra:
                job.extra.update(extra)
                job.extra_dirty = True
            self._touch(job)

    # ---------------------------------------------------------------- the worker thread

    def _run(self, job: _Job) -> None:
        status, error, result, out_of_memory = JobStatus.DONE, None, None, False
        try:
            assert job.fn is not None
            result = job.fn(JobContext(self, job))
            if job.cancel_event.is_set():
                status = JobStatus.CANCELLED
        except JobCancelled:
            status = JobStatus.CANCELLED
        except BaseException as exc:  # noqa: BLE001 - a job must never die silently
            status, error = JobStatus.FAILED, describe_exception(exc)
            out_of_memory = _is_out_of_memory(exc)
            logger.error("job %s (%s, %r) failed: %s", job.id, job.kind, job.title, error,
                         exc_info=exc)
        finally:
            if out_of_memory:  # the exception and its frames are gone by now
                _release_accelerator_memory()
            with self._lock:
                self._running.discard(job.id)
                if result is not None:
                    job.result = result
                message = "cancelled" if status is JobStatus.CANCELLED else None
                self._finish(job, status, message=message, error=error)
                self._start_ready()


_at_exit: weakref.WeakSet[JobManager] = weakref.WeakSet()  # the managers of this process


@atexit.register
def _shutdown_at_exit() -> None:
    """Cancel every manager's jobs and wait for their threads before the interpreter goes away."""
    for manager in list(_at_exit):
        manager.shutdown(cancel=True, timeout=EXIT_JOIN_S)
