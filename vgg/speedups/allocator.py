"""Keep large CPU buffers in the process instead of mapping them afresh on every training step.

glibc's malloc serves every block above 32 MB (less for threads other than the main one: their
arenas hold at most 64 MB) with a fresh ``mmap`` and gives it back with ``munmap`` when freed. A
VGG training step on the CPU allocates and frees such blocks every step (the gradients of the
4096×4096 layer, the activations of a batch), so every step pays for page faults on hundreds of
megabytes: measured on this project's 2-core reference machine, a frozen-feature step took
155–181 ms as it comes and 104–121 ms tuned, a full VGG11-BN step at 32 px 0.44–0.75 s against
0.38–0.49 s.

The settings: serve everything from one heap (arena_max 1, so training threads share the main
heap), never ``mmap`` (mmap_max 0), trim the heap's top only beyond 2 GB (trim_threshold): freed
blocks are reused by the next step. The cost: memory a run freed stays with the process (for the
next run to reuse) rather than going back to the system. Elsewhere than glibc (macOS, musl)
nothing changes. ``VGG_MALLOC_TUNING=0`` turns both ways below off.

Two ways to apply them:

- ``tune_allocator()`` (``mallopt``) from the main thread, before other threads start: the CLI and
  the benchmarks, whose training runs on the main thread.
- ``GLIBC_TUNABLES`` in the environment when the process starts (``tuned_environ()``; ``python -m
  vgg.speedups.allocator COMMAND…`` runs a Python command so): the app's server. By the time ``app.py`` runs,
  Streamlit's threads have their own arenas, and a job thread started later takes over one of them
  (an exited thread's arena is reused whatever ``mallopt`` says), so ``mallopt`` there is too late:
  the server's training thread took 8,192 page faults per freed-and-reallocated 64 MB block
  (``tests/test_allocator.py``) and 25 % of its CPU time in the kernel, against none with the
  environment variable. ``make run`` starts the server this way.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: trim only a free top of 2 GB and more
# The same settings as glibc tunables, read when a process starts.
TUNABLES = f"glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold={_TRIM_THRESHOLD}"

_done: bool | None = None


def tune_allocator() -> bool:
    """Apply the settings above once per process; True when glibc took them."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not enabled():
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = all(mallopt(option, value) == 1 for option, value in (
        (M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, _TRIM_THRESHOLD)))
    return _done


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """Whether tuning applies here: glibc's Linux, and not turned off with ``VGG_MALLOC_TUNING=0``."""
    env = os.environ if env is None else env
    return sys.platform.startswith("linux") and env.get("VGG_MALLOC_TUNING", "1") != "0"


def tuned_environ(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """A copy of ``env`` (default: this process's) whose ``GLIBC_TUNABLES`` also holds ``TUNABLES``,
    for a process to start with (tunables already there are kept; ours win where they overlap)."""
    out = dict(os.environ if env is None else env)
    if enabled(out):
        ours = {item.split("=", 1)[0] for item in TUNABLES.split(":")}
        kept = [item for item in out.get("GLIBC_TUNABLES", "").split(":")
                if item and item.split("=", 1)[0] not in ours]
        out["GLIBC_TUNABLES"] = ":".join([*kept, TUNABLES])
    return out


def started_tuned() -> bool:
    """Whether this process started with ``TUNABLES`` in its environment (see the module's text)."""
    present = set(os.environ.get("GLIBC_TUNABLES", "").split(":"))
    return all(item in present for item in TUNABLES.split(":"))


_noticed = False


def late_notice() -> str | None:
    """Once per process, when tuning is on but the process did not start tuned: a line for its log."""
    global _noticed
    if _noticed or not enabled() or started_tuned():
        return None
    _noticed = True
    return ("vgg.speedups.allocator: this server started without GLIBC_TUNABLES, so a training in it pays for page "
            "faults on its big buffers every step; start it with `make run` (or `python -m vgg.speedups.allocator "
            "-m streamlit run app.py`) for the faster way.")


def main(argv: list[str]) -> int:
    """``python -m vgg.speedups.allocator ARGS…``: run ``python ARGS…`` (e.g. ``-m streamlit run app.py``)
    in this process's place, with ``GLIBC_TUNABLES`` set."""
    if not argv:
        print("usage: python -m vgg.speedups.allocator ARGS...   (runs python ARGS... with the tuned allocator)",
              file=sys.stderr)
        return 2
    os.execve(sys.executable, [sys.executable, *argv], tuned_environ())
    return 1  # not reached: execve replaces this process or raises


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
