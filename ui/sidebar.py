"""The sidebar's job list: what runs and what waits on this server, for every session alike.

It runs on every page as one small fragment that always polls: while jobs run at the pace of the
live views, and idle at the watchers' pace (every 3 s alone, up to 15 s with a class of 30), so
an idle page notices a new job. When one appears, a page that shows jobs (``page_shows_jobs``)
reruns once to show it.
"""

from __future__ import annotations

import streamlit as st

from ui.common import (
    job_manager, may_control, owner_label, poll_interval, rerun_when_finished, status_badge, watcher_pace,
)
from ui.jobs import cancel_job, format_seconds
from vgg.jobs import JobSnapshot, JobStatus

# The list's pace on a page with a live view of its own, as a multiple of that view's pace.
SLOWER_ON_LIVE_PAGES = 3.0


def job_line(snap: JobSnapshot, starts_in: float | None = None) -> str:
    """One Markdown line: status badge, title, whose it is, and when a queued one should start."""
    who = owner_label(snap.owner)
    whose = " · *yours*" if who == "you" else f" · {who}"
    where = ""
    if snap.queue_position:
        when = f", starts in about {format_seconds(starts_in)}" if starts_in is not None else ""
        where = f" · #{snap.queue_position} in the queue{when}"
    return f"{status_badge(snap.status)} **{snap.title}**{whose}{where}"


def draw_job(snap: JobSnapshot, starts_in: float | None = None) -> None:
    st.markdown(job_line(snap, starts_in))
    if snap.status is JobStatus.RUNNING:
        st.progress(max(snap.progress, 0.01), text=snap.message or "starting")  # see ui.live.job_header
    if not may_control(snap.owner):  # only its owner and the teacher see Stop
        return
    stopping = snap.status is JobStatus.RUNNING and snap.message.startswith("cancelling")
    label = "Stopping…" if stopping else ("Stop" if snap.status is JobStatus.RUNNING else "Remove from queue")
    st.button(label, key=f"sidebar-stop-{snap.id}", icon=":material/stop_circle:", disabled=stopping,
              on_click=cancel_job, args=(snap.id,))


def sidebar_jobs(*, page_shows_jobs: bool = False) -> None:
    """Running and queued jobs of the shared job manager, with progress and a Stop button each.

    Call inside ``with st.sidebar:`` (a fragment cannot write outside its own container). With
    ``page_shows_jobs`` (the page has a live view of its own: Train, LR finder, Compare), the list
    polls ``SLOWER_ON_LIVE_PAGES`` times less often: a watcher's browser then redraws one live
    fragment per interval instead of two.
    """
    manager = job_manager()
    active = manager.active()
    slower = SLOWER_ON_LIVE_PAGES if page_shows_jobs else 1.0
    st.session_state["_newest_job"] = manager.newest()  # what this page run shows

    @st.fragment(run_every=poll_interval(active, "sidebar-jobs", slower=slower) or watcher_pace())
    def jobs() -> None:
        snaps = manager.active()
        rerun_when_finished("sidebar-jobs", snaps)
        if page_shows_jobs and manager.newest() != st.session_state.get("_newest_job"):
            st.rerun(scope="app")  # a new job: the page moves on to it
        if not snaps:
            st.caption(":material/hourglass_empty: No jobs running or queued.")
            return
        running = sum(s.status is JobStatus.RUNNING for s in snaps)
        st.markdown(f":material/pending_actions: **Jobs:** {running} running, {len(snaps) - running} queued")
        starts = manager.start_estimates()
        for snap in snaps:
            draw_job(snap, starts.get(snap.id))

    jobs()
