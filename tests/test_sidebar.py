"""The sidebar's job list (ui/sidebar.py): every session sees running and queued jobs and can stop them."""

from __future__ import annotations

import threading
import time

import pytest
from streamlit.testing.v1 import AppTest

from ui.common import ANONYMOUS, job_manager
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
    assert ":gray-badge[queued] **LR range test · A-BN** · x · #1 in the queue, starts in about" in text
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
    if "session_id" not in at.session_state:  # the sidebar asks for the session id only while jobs are listed
        at.session_state["session_id"] = "me-123"
    owner = ANONYMOUS + at.session_state["session_id"]  # a session without a name
    manager.submit("train", "My training", blocking_job(started), owner=owner)
    assert started.wait(10)
    at.run()
    assert "**My training** · *yours*" in sidebar_text(at)


# -- the pace of live views: the more sessions poll, the slower a watcher's timer -------------------


def test_pollers_count_recent_sessions_and_forget_silent_ones() -> None:
    from ui.common import POLLER_MEMORY_S, Pollers

    pollers = Pollers()
    assert pollers.touch("a", now=100.0) == 1
    assert pollers.touch("b", now=101.0) == 2
    assert pollers.touch("a", now=102.0) == 2  # the same session twice is one
    assert pollers.touch("c", now=102.0 + POLLER_MEMORY_S + 1) == 1  # a and b went quiet


def test_watcher_interval_grows_with_the_class_within_bounds() -> None:
    from ui.common import MAX_WATCHER_INTERVAL_S, WATCHER_INTERVAL_S, WATCHER_RERUNS_PER_S, watcher_interval

    assert watcher_interval(1) == WATCHER_INTERVAL_S
    assert watcher_interval(30) == pytest.approx(min(MAX_WATCHER_INTERVAL_S, 30 / WATCHER_RERUNS_PER_S))
    assert watcher_interval(1000) == MAX_WATCHER_INTERVAL_S
    paces = [watcher_interval(n) for n in range(1, 60)]
    assert paces == sorted(paces)


def test_a_watchers_timer_slows_down_when_the_class_arrives(manager, monkeypatch) -> None:
    """A session's sidebar registered its timer at 3 s; 30 sessions start polling: its next
    poll reruns the whole app once, to register the timer at the slower pace."""
    import ui.common as common

    started = threading.Event()
    manager.submit("train", "Someone's training", blocking_job(started), owner="someone-else")
    assert started.wait(10)
    counts = iter([1] * 3 + [30] * 100)  # polls see one session at first, then a class of 30
    monkeypatch.setattr(common.Pollers, "touch", lambda self, session, now=None: next(counts))
    at = AppTest.from_function(sidebar_script).run()
    assert not at.exception
    assert at.session_state["_interval:sidebar-jobs"] == common.WATCHER_INTERVAL_S
    at.run()  # the fragment (here: the script) sees 30 sessions: registered again at their pace
    assert at.session_state["_interval:sidebar-jobs"] == common.watcher_interval(30)
    at.run()
    assert at.session_state["_interval:sidebar-jobs"] == common.watcher_interval(30)
    assert "1 running" in sidebar_text(at)


def test_pollers_count_without_touching() -> None:
    from ui.common import POLLER_MEMORY_S, Pollers

    pollers = Pollers()
    pollers.touch("a", now=0.0)
    pollers.touch("b", now=1.0)
    assert pollers.count(now=2.0) == 2
    assert pollers.count(now=0.5 + POLLER_MEMORY_S) == 1  # "a" fell silent
    assert pollers.touch("c", now=2.0) == 3  # counting forgot nobody


def test_live_figures_are_shared_and_rebuilt_at_most_once_per_max_age() -> None:
    from ui.live import LatestFigures

    now = [0.0]
    figures = LatestFigures(size=2, clock=lambda: now[0])
    builds: list[int] = []

    def build(version: int):
        return lambda: builds.append(version) or f"figure {version}"

    assert figures.get("job", 1, 2.0, build(1)) == "figure 1"
    assert figures.get("job", 1, 2.0, build(1)) == "figure 1"  # same version: no work
    now[0] = 1.0
    assert figures.get("job", 2, 2.0, build(2)) == "figure 1"  # newer, but the figure is young
    now[0] = 2.5
    assert figures.get("job", 3, 2.0, build(3)) == "figure 3"  # old enough: rebuilt
    assert figures.get("job", 4, 0.0, build(4)) == "figure 4"  # no max age: every version
    assert figures.get("job", 2, 2.0, build(2)) == "figure 2"  # an older version is never served newer
    assert figures.get("job", 4, 2.0, build(4)) == "figure 4"  # ... nor replaces the newer one
    assert builds == [1, 3, 4, 2]
    figures.get("other", 1, 2.0, build(1))
    figures.get("third", 1, 2.0, build(1))
    figures.get("job", 4, 2.0, build(4))  # evicted (two views kept): built again
    assert builds == [1, 3, 4, 2, 1, 1, 4]


def test_watchers_share_a_chart_redrawn_at_most_once_per_class_second_the_owner_sees_every_step(
        monkeypatch) -> None:
    import ui.live as live
    from vgg.jobs import JobSnapshot

    assert live.chart_max_age(1) == 0.0  # alone: every new snapshot is drawn
    assert live.chart_max_age(4) == 4 / live.CHART_REDRAWS_PER_S
    assert live.chart_max_age(30) == 30 / live.CHART_REDRAWS_PER_S  # 30 s: every other 15 s rerun
    assert live.chart_max_age(2) == live.watcher_interval(2)  # never more often than the view reruns

    now = [0.0]
    monkeypatch.setattr(live, "_latest_figures", lambda figures=live.LatestFigures(clock=lambda: now[0]): figures)
    monkeypatch.setattr(live, "pollers", lambda: type("Class", (), {"count": lambda self: 30})())
    me = ["pupil"]
    monkeypatch.setattr(live, "owner", lambda: me[0])

    def snap(version: int, status: JobStatus = JobStatus.RUNNING) -> JobSnapshot:
        return JobSnapshot(id="j1", kind="train", title="t", key=None, owner="teacher", status=status,
                           queue_position=None, progress=0.5, message="", history=(), result=None,
                           error=None, version=version)

    def figure(name: str, s: JobSnapshot) -> str:
        return live.cached_figure(name, s, lambda: f"{name} v{s.version}")

    assert figure("train", snap(1)) == "train v1"
    now[0] = 29.0
    assert figure("train", snap(9)) == "train v1"  # a pupil's chart: the class's figure, 29 s old
    me[0] = "teacher"
    assert figure("train", snap(9)) == "train v9"  # the owner's is exact, and apart
    me[0] = "pupil"
    assert figure("train", snap(10)) == "train v1"
    now[0] = 31.0
    assert figure("train", snap(11)) == "train v11"  # older than 30 s: rebuilt
    assert figure("train", snap(12, JobStatus.DONE)) == "train v12"  # a finished job: exact


def live_page_sidebar_script() -> None:
    import streamlit as st

    from ui.sidebar import sidebar_jobs

    with st.sidebar:
        sidebar_jobs(page_shows_jobs=True)


def test_on_a_page_with_its_own_live_view_the_job_list_polls_three_times_slower(manager) -> None:
    import ui.common as common
    from ui.sidebar import SLOWER_ON_LIVE_PAGES

    started = threading.Event()
    manager.submit("train", "Someone's training", blocking_job(started), owner="someone-else")
    assert started.wait(10)
    plain = AppTest.from_function(sidebar_script).run()
    live = AppTest.from_function(live_page_sidebar_script).run()
    assert not plain.exception and not live.exception
    assert plain.session_state["_interval:sidebar-jobs"] == common.WATCHER_INTERVAL_S
    assert live.session_state["_interval:sidebar-jobs"] == SLOWER_ON_LIVE_PAGES * common.WATCHER_INTERVAL_S
    live.run()  # its next poll keeps that pace (no rerun of the whole app to "correct" it)
    assert live.session_state["_interval:sidebar-jobs"] == SLOWER_ON_LIVE_PAGES * common.WATCHER_INTERVAL_S
    assert "1 running" in sidebar_text(live)


def test_an_owner_polls_every_second_only_once_its_job_runs(manager) -> None:
    """30 pupils who clicked Start wait in the queue: they poll at the watchers' pace, not every
    second, until their own job starts."""
    import ui.common as common

    first, second = threading.Event(), threading.Event()
    at = AppTest.from_function(sidebar_script).run()
    at.session_state["session_id"] = "me-123"
    ahead = manager.submit("train", "Someone's training", blocking_job(first), owner="someone-else")
    mine = manager.submit("train", "My training", blocking_job(second), owner=ANONYMOUS + "me-123")
    assert first.wait(10)
    at.run()
    assert manager.snapshot(mine).status is JobStatus.QUEUED
    assert at.session_state["_interval:sidebar-jobs"] == common.WATCHER_INTERVAL_S
    manager.cancel(ahead)
    assert second.wait(10)
    at.run()  # the poll sees its own job running: the whole app reruns to register the 1 s timer
    assert at.session_state["_interval:sidebar-jobs"] == common.OWNER_INTERVAL_S
    assert "**My training** · *yours*" in sidebar_text(at)
