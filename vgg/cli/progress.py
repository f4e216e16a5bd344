"""The command line's progress bar (tqdm on stderr) and Ctrl-C that cancels work cleanly."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")
EXIT_INTERRUPTED = 130
LOG_INTERVAL_S = 5.0  # on a pipe or a log file, a new line at most this often


class Progress:
    """A tqdm bar on ``stream`` (stderr) showing a fraction done and a short status text.

    On a terminal it is redrawn in place; on a pipe or log file a line is written at most every
    ``log_interval`` seconds; disabled (``--json``), it writes nothing. ``message`` prints a
    permanent line above the bar (an epoch's summary).
    """

    def __init__(self, stream: TextIO, *, enabled: bool = True, log_interval: float = LOG_INTERVAL_S) -> None:
        self.enabled = enabled
        tty = _isatty(stream)
        # On a terminal the bar is cleared at the end; in a log its last line stays.
        self.bar = tqdm(total=1.0, file=stream, disable=not enabled, leave=not tty, dynamic_ncols=tty,
                        mininterval=0.1 if tty else log_interval,
                        bar_format="{percentage:3.0f}%|{bar:24}| {elapsed}<{remaining}  {desc}" if tty
                        else "{percentage:3.0f}%  {elapsed}<{remaining}  {desc}\n")
        self._lock = threading.Lock()

    def restart(self) -> None:
        """Count elapsed time (and the estimate of what is left) from now on."""
        with self._lock:
            self.bar.reset(total=1.0)

    def update(self, fraction: float | None, text: str = "", *, force: bool = False) -> None:
        """Show ``fraction`` (0..1, None when unknown) done, with ``text``."""
        if not self.enabled:
            return
        with self._lock:
            if fraction is not None:
                self.bar.n = min(max(float(fraction), 0.0), 1.0)
            self.bar.set_description_str(text, refresh=False)
            if force:
                self.bar.refresh()
            else:
                self.bar.update(0)  # redraws when mininterval has passed

    def message(self, text: str) -> None:
        """A permanent line above the bar."""
        if self.enabled:
            with self._lock:
                self.bar.write(text, file=self.bar.fp)

    def close(self) -> None:
        """Clear the bar so that what follows starts on a fresh line."""
        with self._lock:
            self.bar.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Cancelled(Exception):
    """Raised inside the worker when Ctrl-C arrives before there is anything to keep."""


class Interrupted(Exception):
    """Ctrl-C: the work was cancelled; ``result`` is what it returned (None if it never did)."""

    def __init__(self, result: Any = None) -> None:
        super().__init__("interrupted")
        self.result = result


def run_cancellable(work: Callable[[], T], cancel: threading.Event, err: TextIO) -> T:
    """Run ``work`` in a worker thread; Ctrl-C sets ``cancel`` and waits for the work to wind down.

    The engine checks ``cancel`` between batches (a training stops within seconds and keeps its
    run folder), so the main thread only waits. A second Ctrl-C ends the process at once. Raises
    ``Interrupted`` after a Ctrl-C; re-raises the work's own exception otherwise.
    """
    box: dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # handed to the main thread below
            box["error"] = exc
        finally:
            finished.set()

    # Wait on an Event, not Thread.join: on Python 3.11 a Ctrl-C that lands inside join() can
    # leave the thread marked as stopped while it still runs.
    threading.Thread(target=target, name="vgg-cli-worker", daemon=True).start()
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        cancel.set()
        err.write("\ncancelling (Ctrl-C again to quit at once)…\n")
        err.flush()
        try:
            while not finished.wait(0.2):
                pass
        except KeyboardInterrupt:  # the second Ctrl-C: leave now, the worker cannot be stopped
            err.write("interrupted: quitting at once (a run in progress will be listed as interrupted)\n")
            err.flush()
            os._exit(EXIT_INTERRUPTED)
        error = box.get("error")
        if error is not None and not isinstance(error, Cancelled):
            raise error
        raise Interrupted(box.get("result")) from None
    if "error" in box:
        if isinstance(box["error"], Cancelled):
            raise Interrupted(None)
        raise box["error"]
    return box["result"]
