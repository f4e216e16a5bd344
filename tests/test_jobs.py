"""The job manager: queueing, idempotency, cancel, failures, immutable snapshots, bounds."""

from __future__ import annotations

import dataclasses
import logging
import threading
from typing import Any

import pytest

from vgg.errors import ConfigError, VGGError
from vgg.jobs import JobContext, JobManager, JobSnapshot, JobStatus, QueueFullError, UnknownJobError

TIMEOUT = 10.0  # generous upper bound for condition waits; no test sleeps for a fixed time


class Gate:
    """A job function that signals when it started and runs until released (or cancelled)."""

    def __init__(self, result: Any = "ok", check_cancel: bool = True) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.result = result
        self.check_cancel = check_cancel

    def __call__(self, ctx: JobContext) -> Any:
        self.started.set()
        while not self.release.wait(0.005):
            if self.check_cancel and ctx.cancelled:
                return "stopped early"
        return self.result


@pytest.fixture
def manager() -> Any:
    mgr = JobManager(max_running=1, max_queued=5)
    yield mgr
    mgr.shutdown(cancel=True, timeout=TIMEOUT)


def test_second_job_waits_in_the_queue_with_its_position(manager: JobManager) -> None:
    first, second, third = Gate("a"), Gate("b"), Gate("c")
    id1 = manager.submit("train", "first", first)
    id2 = manager.submit("train", "second", second)
    id3 = manager.submit("train", "third", third)
    assert first.started.wait(TIMEOUT)
    assert manager.snapshot(id1).status is JobStatus.RUNNING
    assert manager.snapshot(id1).queue_position is None
    assert (manager.snapshot(id2).status, manager.snapshot(id2).queue_position) == (JobStatus.QUEUED, 1)
    assert (manager.snapshot(id3).status, manager.snapshot(id3).queue_position) == (JobStatus.QUEUED, 2)
    assert not second.started.is_set()

    first.release.set()
    assert manager.wait(id1, TIMEOUT).status is JobStatus.DONE
    assert second.started.wait(TIMEOUT)  # the scheduler started the next one by itself
    assert manager.snapshot(id2).status is JobStatus.RUNNING
    assert manager.snapshot(id3).queue_position == 1
    second.release.set()
    third.release.set()
    assert manager.wait(id3, TIMEOUT).result == "c"
    assert [s.id for s in manager.snapshots()] == [id1, id2, id3]
    assert [s.result for s in manager.snapshots()] == ["a", "b", "c"]
    assert manager.active() == []


def test_two_slots_run_two_jobs_at_once() -> None:
    mgr = JobManager(max_running=2)
    a, b = Gate(), Gate()
    try:
        ida, idb = mgr.submit("x", "a", a), mgr.submit("x", "b", b)
        assert a.started.wait(TIMEOUT) and b.started.wait(TIMEOUT)
        assert {s.status for s in mgr.active()} == {JobStatus.RUNNING}
        a.release.set()
        b.release.set()
        assert mgr.wait(ida, TIMEOUT).finished and mgr.wait(idb, TIMEOUT).finished
    finally:
        mgr.shutdown(timeout=TIMEOUT)


def test_same_key_returns_the_same_job(manager: JobManager) -> None:
    gate = Gate()
    calls: list[int] = []

    def counted(ctx: JobContext) -> Any:
        calls.append(1)
        return gate(ctx)

    id1 = manager.submit("train", "run", counted, key="start-button")
    id2 = manager.submit("train", "run again", counted, key="start-button")
    assert id1 == id2
    assert gate.started.wait(TIMEOUT)
    assert manager.find("start-button").id == id1
    gate.release.set()
    manager.wait(id1, TIMEOUT)
    assert len(calls) == 1
    assert manager.find("start-button") is None
    # Once finished, the key is free again and starts a new job.
    id3 = manager.submit("train", "run", lambda ctx: "second", key="start-button")
    assert id3 != id1
    assert manager.wait(id3, TIMEOUT).result == "second"


def test_cancel_a_queued_job_ends_it_at_once(manager: JobManager) -> None:
    running, queued, later = Gate(), Gate(), Gate()
    id1 = manager.submit("x", "running", running)
    id2 = manager.submit("x", "queued", queued)
    id3 = manager.submit("x", "later", later)
    assert running.started.wait(TIMEOUT)
    assert manager.snapshot(id3).queue_position == 2
    snap = manager.cancel(id2)
    assert snap.status is JobStatus.CANCELLED and snap.finished_at is not None
    assert manager.snapshot(id3).queue_position == 1
    running.release.set()
    later.release.set()
    assert manager.wait(id3, TIMEOUT).status is JobStatus.DONE
    assert not queued.started.is_set()


def test_cancel_a_running_job_takes_effect_when_it_checks(manager: JobManager) -> None:
    gate = Gate()
    job_id = manager.submit("x", "long", gate)
    assert gate.started.wait(TIMEOUT)
    manager.cancel(job_id)
    snap = manager.wait(job_id, TIMEOUT)
    assert snap.status is JobStatus.CANCELLED
    assert snap.result == "stopped early"  # what the function returned is kept
    assert snap.error is None


def test_check_cancelled_raises_and_ends_as_cancelled(manager: JobManager) -> None:
    started = threading.Event()

    def job(ctx: JobContext) -> None:
        started.set()
        while True:
            ctx.cancel_event.wait(0.005)
            ctx.check_cancelled()

    job_id = manager.submit("x", "loop", job)
    assert started.wait(TIMEOUT)
    manager.cancel(job_id)
    assert manager.wait(job_id, TIMEOUT).status is JobStatus.CANCELLED


def test_exception_becomes_failed_with_its_message(manager: JobManager,
                                                   caplog: pytest.LogCaptureFixture) -> None:
    def broken(ctx: JobContext) -> None:
        raise ValueError("bad value 42")

    def user_error(ctx: JobContext) -> None:
        raise ConfigError("lr must be in (0, 10], got -1")

    with caplog.at_level(logging.ERROR, logger="vgg.jobs"):
        snap = manager.wait(manager.submit("x", "broken", broken), TIMEOUT)
    assert snap.status is JobStatus.FAILED
    assert snap.error == "ValueError: bad value 42"
    assert any(r.exc_info and "bad value 42" in str(r.exc_info[1]) for r in caplog.records)

    snap = manager.wait(manager.submit("x", "user", user_error), TIMEOUT)
    assert (snap.status, snap.error) == (JobStatus.FAILED, "lr must be in (0, 10], got -1")
    # The manager keeps working after failures.
    assert manager.wait(manager.submit("x", "fine", lambda ctx: 1), TIMEOUT).result == 1


class FakeCudaOOM(RuntimeError):
    pass


FakeCudaOOM.__name__ = "OutOfMemoryError"  # what torch.cuda.OutOfMemoryError is called


@pytest.mark.parametrize("exc", [
    MemoryError(),
    RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 8 bytes. Error code 12 (Cannot allocate memory) out of memory"),
    FakeCudaOOM("no detail"),
])
def test_out_of_memory_suggests_smaller_batch_or_input(manager: JobManager, exc: BaseException) -> None:
    def hungry(ctx: JobContext) -> None:
        raise exc

    snap = manager.wait(manager.submit("train", "big", hungry), TIMEOUT)
    assert snap.status is JobStatus.FAILED
    assert "out of memory" in snap.error
    assert "smaller batch size" in snap.error and "input size" in snap.error
    assert "\n" not in snap.error


def test_real_torch_oom_class_is_recognised() -> None:
    torch = pytest.importorskip("torch")
    from vgg.jobs import describe_exception

    message = describe_exception(torch.cuda.OutOfMemoryError("CUDA error: out of memory"))
    assert "smaller batch size" in message


def test_snapshots_are_immutable_and_versions_increase(manager: JobManager) -> None:
    step = threading.Event()
    proceed = threading.Event()

    def job(ctx: JobContext) -> str:
        for i in range(3):
            ctx.publish(progress=(i + 1) / 3, message=f"step {i}", append={"loss": float(i)},
                        extra={"last": i})
            step.set()
            assert proceed.wait(TIMEOUT)
            proceed.clear()
        return "done"

    job_id = manager.submit("x", "steps", job)
    assert step.wait(TIMEOUT)
    first = manager.snapshot(job_id)
    assert manager.snapshot(job_id) is first  # unchanged → the same object, no copying
    assert first.history == ({"loss": 0.0},)
    assert isinstance(first.history, tuple)
    assert first.extra["last"] == 0
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.status = JobStatus.DONE  # type: ignore[misc]
    with pytest.raises(TypeError):
        first.extra["last"] = 5  # type: ignore[index]

    step.clear()
    proceed.set()
    assert step.wait(TIMEOUT)
    second = manager.snapshot(job_id)
    assert second.version > first.version
    assert first.history == ({"loss": 0.0},)  # the old snapshot did not change
    assert first.extra["last"] == 0 and second.extra["last"] == 1
    assert second.history == ({"loss": 0.0}, {"loss": 1.0})
    assert second.progress == pytest.approx(2 / 3)
    step.clear()
    proceed.set()
    assert step.wait(TIMEOUT)
    proceed.set()
    final = manager.wait(job_id, TIMEOUT)
    assert final.version > second.version
    assert (final.status, final.progress, final.result) == (JobStatus.DONE, 1.0, "done")
    assert len(final.history) == 3
    assert final.started_at is not None and final.finished_at >= final.started_at


def test_wait_for_change_wakes_on_publish(manager: JobManager) -> None:
    go = threading.Event()

    def job(ctx: JobContext) -> None:
        assert go.wait(TIMEOUT)
        ctx.publish(message="hello")

    job_id = manager.submit("x", "one publish", job)
    before = manager.snapshot(job_id)
    go.set()
    after = manager.wait_for_change(job_id, before.version, TIMEOUT)
    assert after.version > before.version
    manager.wait(job_id, TIMEOUT)


def test_queue_full_is_refused_with_a_message() -> None:
    mgr = JobManager(max_running=1, max_queued=2)
    gate = Gate()
    try:
        mgr.submit("x", "running", gate)
        mgr.submit("x", "q1", Gate())
        mgr.submit("x", "q2", Gate())
        with pytest.raises(QueueFullError, match=r"the queue is full \(2 jobs waiting\)"):
            mgr.submit("x", "q3", Gate())
        assert isinstance(QueueFullError("x"), VGGError)
    finally:
        mgr.shutdown(cancel=True, timeout=TIMEOUT)


def test_thirty_clicks_from_threads_one_runs_rest_queue_or_are_refused() -> None:
    mgr = JobManager(max_running=1, max_queued=20)
    gates = [Gate() for _ in range(30)]
    barrier = threading.Barrier(30)
    ids: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def click(i: int) -> None:
        barrier.wait(TIMEOUT)
        try:
            job_id = mgr.submit("train", f"click {i}", gates[i])
            with lock:
                ids.append(job_id)
        except QueueFullError as exc:
            with lock:
                refused.append(str(exc))

    threads = [threading.Thread(target=click, args=(i,)) for i in range(30)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert len(ids) == 21 and len(refused) == 9
        assert all("queue is full" in m for m in refused)
        states = [mgr.snapshot(i) for i in ids]
        running = [s for s in states if s.status is JobStatus.RUNNING]
        queued = [s for s in states if s.status is JobStatus.QUEUED]
        assert len(running) == 1 and len(queued) == 20
        assert sorted(s.queue_position for s in queued) == list(range(1, 21))
        assert sum(g.started.is_set() for g in gates) <= 1
    finally:
        mgr.shutdown(cancel=True, timeout=TIMEOUT)
    assert all(mgr.snapshot(i).finished for i in ids)


def test_thirty_clicks_with_one_key_start_one_job() -> None:
    mgr = JobManager()
    gate = Gate()
    barrier = threading.Barrier(30)
    ids: set[str] = set()
    lock = threading.Lock()

    def click() -> None:
        barrier.wait(TIMEOUT)
        job_id = mgr.submit("train", "start", gate, key="train:vgg11")
        with lock:
            ids.add(job_id)

    threads = [threading.Thread(target=click) for _ in range(30)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT)
        assert len(ids) == 1
        assert len(mgr.snapshots()) == 1
    finally:
        mgr.shutdown(cancel=True, timeout=TIMEOUT)


def test_finished_jobs_are_bounded() -> None:
    mgr = JobManager(max_finished=5)
    try:
        ids = [mgr.submit("x", f"job {i}", lambda ctx, i=i: i) for i in range(12)]
        # One runs at a time, in order: once the last is done all are (waiting for the first ones
        # raced with their pruning).
        mgr.wait(ids[-1], TIMEOUT)
        kept = mgr.snapshots()
        assert [s.id for s in kept] == ids[-5:]
        with pytest.raises(UnknownJobError, match="unknown job"):
            mgr.snapshot(ids[0])
    finally:
        mgr.shutdown(timeout=TIMEOUT)


def test_unknown_job_and_bad_settings() -> None:
    mgr = JobManager()
    with pytest.raises(UnknownJobError, match="'nope'"):
        mgr.snapshot("nope")
    with pytest.raises(UnknownJobError):
        mgr.cancel("nope")
    with pytest.raises(ConfigError, match="max_running"):
        JobManager(max_running=0)
    with pytest.raises(ConfigError, match="max_queued"):
        JobManager(max_queued=-1)


def test_shutdown_cancels_and_refuses_new_jobs() -> None:
    mgr = JobManager()
    gate, waiting = Gate(), Gate()
    id1 = mgr.submit("x", "running", gate)
    id2 = mgr.submit("x", "waiting", waiting)
    assert gate.started.wait(TIMEOUT)
    mgr.shutdown(cancel=True, timeout=TIMEOUT)
    assert mgr.snapshot(id1).status is JobStatus.CANCELLED
    assert mgr.snapshot(id2).status is JobStatus.CANCELLED
    with pytest.raises(VGGError, match="shut down"):
        mgr.submit("x", "late", Gate())


def test_snapshot_type_is_public() -> None:
    mgr = JobManager()
    job_id = mgr.submit("x", "t", lambda ctx: None)
    snap = mgr.wait(job_id, TIMEOUT)
    assert isinstance(snap, JobSnapshot) and snap.status.finished and snap.result is None
    mgr.shutdown()


# -- a fair queue: one job each, with start estimates ---------------------------------------


def test_one_job_per_owner_explains_the_second_and_frees_the_slot_when_the_first_ends(manager: JobManager) -> None:
    from vgg.jobs import OwnerBusyError

    ann = Gate()
    first = manager.submit("train", "Ann's run", ann, owner="Ann", one_per_owner=True)
    assert ann.started.wait(TIMEOUT)
    with pytest.raises(OwnerBusyError, match=r"you already have a job running \(Ann's run\)"):
        manager.submit("train", "Ann's second", Gate(), owner="Ann", one_per_owner=True)
    bob = manager.submit("train", "Bob's run", Gate(), owner="Bob", one_per_owner=True)  # others still may
    with pytest.raises(OwnerBusyError, match="number 1 in the queue"):
        manager.submit("train", "Bob's second", Gate(), owner="Bob", one_per_owner=True)
    manager.submit("train", "teacher's", Gate(), owner="Bob")  # without the rule (the teacher): accepted
    ann.release.set()
    assert manager.wait(first, TIMEOUT).status is JobStatus.DONE
    again = manager.submit("train", "Ann's second", Gate(), owner="Ann", one_per_owner=True)
    assert again not in (first, bob)


def test_start_estimates_add_up_what_runs_and_what_waits_ahead() -> None:
    mgr = JobManager(max_running=1, max_queued=5)
    gate = Gate()
    try:
        running = mgr.submit("train", "running", gate, estimate_s=100.0)
        assert gate.started.wait(TIMEOUT)
        second = mgr.submit("train", "second", Gate(), estimate_s=30.0)
        third = mgr.submit("train", "third", Gate())  # no estimate: the mean of the others'
        started = mgr.snapshot(running).started_at
        starts = mgr.start_estimates(now=started + 40.0)
        assert set(starts) == {second, third}
        assert starts[second] == pytest.approx(60.0)  # 100 s estimated, 40 s ran
        assert starts[third] == pytest.approx(90.0)  # then the second's 30 s
        assert mgr.newest() == third
    finally:
        gate.release.set()
        mgr.shutdown(cancel=True, timeout=TIMEOUT)


EXIT_SCRIPT = """
import signal, sys, threading, torch
from vgg.jobs import JobManager

def train(ctx):
    model, x = torch.nn.Conv2d(3, 64, 3), torch.randn(64, 3, 64, 64)
    started.set()
    while not ctx.cancelled:  # a training step after another, as a run does
        model(x).sum().backward()
    print("the job saw the cancel", flush=True)
    return "cancelled"

started = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # as the server does: stop, then a normal exit
JobManager().submit("train", "a run", train)
started.wait(60)
signal.raise_signal(signal.SIGTERM)
"""


def test_a_process_stopped_while_a_job_runs_ends_the_job_and_exits_cleanly() -> None:
    """Before, the worker thread died inside a torch operation at interpreter exit and the process
    aborted with "terminate called without an active exception" (exit status 134)."""
    import subprocess
    import sys
    from pathlib import Path

    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT], capture_output=True, text=True, timeout=240,
                          cwd=Path(__file__).resolve().parent.parent)
    assert "terminate called" not in done.stderr, done.stderr
    assert done.returncode == 0, done.stderr
    assert "the job saw the cancel" in done.stdout
