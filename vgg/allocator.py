"""Keep large CPU buffers in the process instead of mapping them afresh on every training step.

glibc's malloc serves every block above 32 MB (less for threads other than the main one: their
arenas hold at most 64 MB) with a fresh ``mmap`` and gives it back with ``munmap`` when freed. A
VGG training step on the CPU allocates and frees such blocks every step (the gradients of the
4096×4096 layer, the activations of a batch), so every step pays for page faults on hundreds of
megabytes: measured on this project's 2-core reference machine, a frozen-feature step took
155–181 ms as it comes and 104–121 ms with ``tune_allocator()``, a full VGG11-BN step at 32 px
0.44–0.75 s against 0.38–0.49 s.

``tune_allocator()`` asks glibc (through ``mallopt``) to serve everything from one heap
(``M_ARENA_MAX`` 1, so training threads share the main heap), never to ``mmap`` (``M_MMAP_MAX``
0) and to trim the heap's top only beyond 2 GB (``M_TRIM_THRESHOLD``): freed blocks are reused
by the next step. The cost: memory a run freed stays with the process (for the next run to reuse) rather than
going back to the system. Call it once, early, before threads start (the app, the CLI and the
benchmarks do). Elsewhere than glibc (macOS, musl) it does nothing. ``VGG_MALLOC_TUNING=0`` turns
it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_TRIM_THRESHOLD = 2**31 - 1  # mallopt takes an int: trim only a free top of 2 GB and more

_done: bool | None = None


def tune_allocator() -> bool:
    """Apply the settings above once per process; True when glibc took them."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux") or os.environ.get("VGG_MALLOC_TUNING", "1") == "0":
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
