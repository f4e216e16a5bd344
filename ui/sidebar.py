"""The sidebar's job list: what runs and what waits on this server, for every session alike.

It runs on every page, so it is one small fragment: a few lines per job, polled only while a
job is queued or running (the timer stops when the queue is empty).
"""

from __future__ import annotations

import streamlit as st

from ui.common import job_manager, poll_interval, rerun_when_finished, session_id, status_badge
from ui.jobs import cancel_job
from vgg.jobs import JobSnapshot, JobStatus

# The list's pace on a page with a live view of its own, as a multiple of that view's pace.
SLOWER_ON_LIVE_PAGES = 3.0


def job_line(snap: JobSnapshot) -> str:
    """One Markdown line: status badge, title, and whose it is."""
    whose = " · *yours*" if snap.owner == session_id() else ""
    where = f" · #{snap.queue_position} in the queue" if snap.queue_position else ""
    return f"{status_badge(snap.status)} **{snap.title}**{where}{whose}"


def draw_job(snap: JobSnapshot) -> None:
    st.markdown(job_line(snap))
    if snap.status is JobStatus.RUNNING:
        st.progress(max(snap.progress, 0.01), text=snap.message or "starting")  # see ui.live.job_header
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
    active = job_manager().active()
    slower = SLOWER_ON_LIVE_PAGES if page_shows_jobs else 1.0

    @st.fragment(run_every=poll_interval(active, "sidebar-jobs", slower=slower))
    def jobs() -> None:
        snaps = job_manager().active()
        rerun_when_finished("sidebar-jobs", snaps)
        if not snaps:
            st.caption(":material/hourglass_empty: No jobs running or queued.")
            return
        running = sum(s.status is JobStatus.RUNNING for s in snaps)
        st.markdown(f":material/pending_actions: **Jobs:** {running} running, {len(snaps) - running} queued")
        for snap in snaps:
            draw_job(snap)

    jobs()
