"""vgg.allocator: with it, a training-sized buffer freed and allocated again costs no page faults."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent("""
    import resource, sys
    from vgg.allocator import tune_allocator
    tuned = tune_allocator() if sys.argv[1] == "1" else False
    import torch
    def step():
        buffer = torch.empty(64 * 2**20 // 4)  # 64 MB, as the gradient of a 4096x4096 layer
        buffer.fill_(1.0)  # touch every page
        garbage = [object() for _ in range(1000)]  # small objects land between the big blocks
        del buffer
    def faults_and_rss(steps):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(steps):
            step()
        rss = int(next(l for l in open("/proc/self/status") if l.startswith("VmRSS")).split()[1]) // 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, rss
    faults_and_rss(20)  # the first steps map new pages either way
    faults, rss = faults_and_rss(10)
    later_faults, later_rss = faults_and_rss(20)
    print(tuned, faults, later_rss - rss)
""")


def steady_state(tuned: bool) -> tuple[str, int, int]:
    """(tuned?, page faults in 10 steps, growth of the resident set over 20 more) after 20 steps."""
    out = subprocess.run([sys.executable, "-c", PROBE, "1" if tuned else "0"], cwd=REPO, capture_output=True,
                         text=True, timeout=120, check=True).stdout.split()
    return out[0], int(out[1]), int(out[2])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_64_mb_buffer_is_reused_without_page_faults_and_memory_stays_bounded() -> None:
    flag, untuned, _ = steady_state(False)
    assert flag == "False" and untuned > 10 * 10_000  # 64 MB of 4 KB pages mapped afresh every step
    flag, tuned, growth_mb = steady_state(True)
    assert flag == "True" and tuned < 5_000, tuned
    assert growth_mb < 64, growth_mb  # the heap reuses its blocks: no growth step after step


def test_it_can_be_turned_off(monkeypatch) -> None:
    from vgg import allocator

    monkeypatch.setenv("VGG_MALLOC_TUNING", "0")
    monkeypatch.setattr(allocator, "_done", None)
    assert allocator.tune_allocator() is False
