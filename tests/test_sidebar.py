"""The sidebar's job list (ui/sidebar.py): every session sees running and queued jobs and can stop them."""

from __future__ import annotations

import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

from ui.common import job_manager
from vgg.jobs import JobContext, JobStatus


def sidebar_script() -> None:
    import streamlit as st

    from ui.sidebar import sidebar_jobs

    with st.sidebar:
        sidebar_jobs()


def blocking_job(started: threading.Event) -> object:
    """A job that reports progress and then waits until it is cancelled."""

    def run(ctx: JobContext) -> None:
        ctx.publish(progress=0.4, message="step 4 of 10")
        started.set()
        ctx.cancel_event.wait(60)

    return run


@pytest.fixture
def manager():
    jobs = job_manager()
    yield jobs
    for snap in jobs.active():
        jobs.cancel(snap.id)
    for snap in jobs.snapshots():
        jobs.wait(snap.id, timeout=10)


def sidebar_text(at: AppTest) -> str:
    return "\n".join(str(e.value) for e in [*at.sidebar.markdown, *at.sidebar.caption])


def test_no_jobs_says_so(manager) -> None:
    at = AppTest.from_function(sidebar_script).run()
    assert not at.exception
    assert "No jobs running or queued" in sidebar_text(at)


def test_running_and_queued_jobs_are_listed_with_progress_and_stop(manager) -> None:
    started = threading.Event()
    running = manager.submit("train", "Training · A-BN", blocking_job(started), owner="someone-else")
    queued = manager.submit("lr_find", "LR range test · A-BN", blocking_job(threading.Event()), owner="x")
    assert started.wait(10)

    at = AppTest.from_function(sidebar_script).run()
    assert not at.exception
    text = sidebar_text(at)
    assert "1 running, 1 queued" in text
    assert ":blue-badge[running] **Training · A-BN**" in text
    assert ":gray-badge[queued] **LR range test · A-BN** · #1 in the queue" in text
    [bar] = at.sidebar.get("progress")
    assert bar.proto.value == 40 and "step 4 of 10" in bar.proto.text
    assert {b.key for b in at.sidebar.button} == {f"sidebar-stop-{running}", f"sidebar-stop-{queued}"}

    at.sidebar.button(key=f"sidebar-stop-{queued}").click().run()
    assert manager.snapshot(queued).status is JobStatus.CANCELLED
    at.sidebar.button(key=f"sidebar-stop-{running}").click().run()
    assert manager.wait(running, timeout=10).status is JobStatus.CANCELLED

    deadline = time.monotonic() + 30
    while "No jobs running or queued" not in sidebar_text(at):
        assert time.monotonic() < deadline, sidebar_text(at)
        at.run()
    assert not at.exception


def test_own_jobs_are_marked_as_yours(manager) -> None:
    started = threading.Event()
    at = AppTest.from_function(sidebar_script).run()
    owner = at.session_state["session_id"] if "session_id" in at.session_state else None
    if owner is None:  # the sidebar asks for the session id only while jobs are listed
        at.session_state["session_id"] = owner = "me-123"
    manager.submit("train", "My training", blocking_job(started), owner=owner)
    assert started.wait(10)
    at.run()
    assert "**My training** · *yours*" in sidebar_text(at)
