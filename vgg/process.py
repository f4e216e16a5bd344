"""Whether the process that writes a run is still alive (a run whose writer died is "interrupted").

``status.json`` records the writing process: its pid, a random token of this process, the host and
(on Linux) the process's start time, since pids are reused (a server in a container is often pid 1
on every start).
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

# Identifies this process in status.json: a pid alone is not enough, since pids are reused (a
# server in a container is often pid 1 on every start).
_PROCESS_TOKEN = uuid.uuid4().hex
_HOST = socket.gethostname()


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from ``/proc/<pid>/stat``; None if unknowable."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    try:
        fields = text[text.rindex(")") + 2:].split()  # the name in parentheses may hold spaces
        return fields[0], int(fields[19])
    except (ValueError, IndexError):
        return None


def _own_start_time() -> int | None:
    stat = _proc_stat(os.getpid())
    return None if stat is None else stat[1]


_PROCESS_START = _own_start_time()


def owner_record() -> dict[str, Any]:
    """What status.json records about the writing process."""
    return {"pid": os.getpid(), "token": _PROCESS_TOKEN, "host": _HOST,
            "process_start": _PROCESS_START}


def _pid_exists(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it just belongs to someone else
        return True
    except OSError:
        return True
    return True


def owner_alive(status: Mapping[str, Any]) -> bool:
    """Whether the process recorded in a status.json record is still alive.

    This very process compares its token; on the same host another pid counts as alive if it
    exists, is no zombie, and (on Linux) started at the recorded time. A run written on another
    host cannot be checked and counts as alive.
    """
    pid = status.get("pid")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    host = status.get("host")
    if host is not None and host != _HOST:
        return True
    if pid == os.getpid():
        return status.get("token") == _PROCESS_TOKEN
    if not _pid_exists(pid):
        return False
    stat = _proc_stat(pid)
    if stat is None:
        return True
    state, start = stat
    if state in ("Z", "X"):  # killed but not yet reaped
        return False
    recorded = status.get("process_start")
    return not (isinstance(recorded, int) and recorded != start)
