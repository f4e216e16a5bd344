"""Live figures for a whole class: each job's figure is built once for the server, and the
watchers share one that is redrawn at most once per "class second" (see ``chart_max_age``).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import streamlit as st

from ui.common import owner, pollers, watcher_interval
from vgg.jobs import JobSnapshot

# While a job runs and several sessions poll, the watchers' live charts together redraw about
# this many times per second: their shared figure is rebuilt at most every
# sessions / CHART_REDRAWS_PER_S seconds, and at most once per watcher interval
# (ui.common.watcher_interval). A chart whose figure did not change costs the browser almost
# nothing (the page keeps the drawing when the spec is the same); one that changed costs it
# 0.3-0.5 s of CPU to draw again. The numbers beside the charts are new at every rerun.
CHART_REDRAWS_PER_S = 1.0


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
    exact = all(s.status.finished for s in snaps) or any(s.owner == owner() for s in snaps)
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


