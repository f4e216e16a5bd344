"""Jobs as a page shows them: which job to watch, starting one, its header with progress and
Stop, and the live view that LR finder and Train share (a fragment that follows the job).
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import streamlit as st

from ui.common import (
    is_teacher, job_manager, may_control, owner, owner_label, poll_interval, rerun_when_finished, show_error,
    status_badge,
)
from vgg.errors import VGGError
from vgg.jobs import JobContext, JobSnapshot, JobStatus, UnknownJobError


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
    """The job of ``kind`` a page shows: the newest of this session's latest job, the newest running
    or queued one of anyone, and the newest that ended; so a page that shows an outcome moves on
    when someone starts a newer job (remembered, so that its result stays once it ends)."""
    candidates = [s for s in (my_job(state_key), my_job(f"{state_key}:watched")) if s is not None]
    jobs = job_manager().snapshots(kind=kind)
    active = [s for s in jobs if not s.finished]
    running = [s for s in active if s.status is JobStatus.RUNNING]
    if running or active:
        candidates.append((running or active)[-1])
    elif jobs:
        candidates.append(jobs[-1])
    if not candidates:
        return None
    mine = my_job(state_key)
    if mine is not None and not mine.finished:
        return mine  # this session's own job, while it waits or runs
    pick = max(candidates, key=lambda s: s.submitted_at)
    if pick.id != st.session_state.get(state_key):
        st.session_state[f"{state_key}:watched"] = pick.id
    return pick


def submit_job(kind: str, title: str, fn: Callable[[JobContext], Any], key: str, state_key: str,
               config: Any = None, estimate_s: float | None = None) -> None:
    """Submit a job (idempotent by ``key``), remember its id (and ``config``) in this session, and
    rerun the app so that every part of the page, the sidebar included, shows it. A refusal is
    shown instead: the queue is full, or this person already has a job waiting or running (one
    each; the teacher may queue several)."""
    try:
        job_id = job_manager().submit(kind, title, fn, key=key, owner=owner(), estimate_s=estimate_s,
                                      one_per_owner=not is_teacher())
    except VGGError as error:  # QueueFullError / OwnerBusyError say why and what to do
        show_error(error)
        return
    st.session_state[state_key] = job_id
    st.session_state.setdefault(f"{state_key}:configs", {})[job_id] = config
    st.rerun()


def job_config(state_key: str, job_id: str) -> Any:
    """The config this session submitted ``job_id`` with (None for someone else's job)."""
    return st.session_state.get(f"{state_key}:configs", {}).get(job_id)


def whose(snap: JobSnapshot) -> str:
    """"yours", or "started by Ann" / "started by someone without a name"."""
    who = owner_label(snap.owner)
    return "yours" if who == "you" else f"started by {who}"


def queue_line(snap: JobSnapshot) -> str:
    """"number 3 in the queue, starts in about 2 min" for a queued job."""
    starts = job_manager().start_estimates().get(snap.id)
    when = f", starts in about {format_seconds(starts)}" if starts is not None else ""
    return f"number {snap.queue_position} in the queue{when}"


def job_header(snap: JobSnapshot, *, stop_key: str, title: bool = True) -> None:
    """Status badge, title and who started it (unless ``title`` is False), queue position or
    progress bar, and a Stop button for whoever may stop it (its owner and the teacher)."""
    if title:
        st.markdown(f"{status_badge(snap.status)} **{snap.title}** · {whose(snap)}")
    if snap.finished:
        return
    left, right = st.columns([5, 1], vertical_alignment="bottom")
    if snap.status is JobStatus.QUEUED:
        left.info(f"Waiting: {queue_line(snap)} (one job runs at a time).", icon=":material/hourglass_top:")
    else:
        left.progress(max(snap.progress, 0.01), text=progress_text(snap))  # 0 % drew as a full bar
    if not may_control(snap.owner):
        return
    stopping = snap.message.startswith("cancelling")
    label = "Stopping…" if stopping else ("Stop" if snap.status is JobStatus.RUNNING else "Remove")
    right.button(label, key=stop_key, icon=":material/stop_circle:", disabled=stopping, width="stretch",
                 on_click=cancel_job, args=(snap.id,))


def cancel_job(job_id: str) -> None:
    """Button callback (runs before the rerun, so the rerun already shows "cancelling"); checks
    again that this session may stop the job (a button is only drawn for those who may)."""
    try:
        if may_control(job_manager().snapshot(job_id).owner):
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


def describe_job_error(snap: JobSnapshot) -> None:
    """A finished job's outcome as one message box."""
    if snap.status is JobStatus.FAILED:
        show_error(snap.error or "the job failed")
    elif snap.status is JobStatus.CANCELLED:
        detail = f" ({snap.message})" if snap.message and snap.message != "cancelled" else ""
        st.warning(f"Stopped before the end{detail}.", icon=":material/stop_circle:")




def live_job_view(first: JobSnapshot, *, key: str, stop_key: str, draw: Callable[[JobSnapshot], None]) -> None:
    """A fragment that follows a job: its header (progress, Stop), a line for the other jobs of
    its kind, then ``draw(snapshot)``; it polls while the job is queued or running (the owner every
    second, watchers slower) and reruns the page once when the job ends."""

    @st.fragment(run_every=poll_interval([first], key))
    def live() -> None:
        try:
            snap = job_manager().snapshot(first.id)
        except UnknownJobError:
            st.rerun(scope="app")
        rerun_when_finished(key, [snap])
        job_header(snap, stop_key=stop_key)
        for other in others_active(snap.kind, snap.id):
            st.caption(f"Also queued or running: {other.title} ({other.status.value}, {other.progress:.0%}).")
        draw(snap)

    live()
