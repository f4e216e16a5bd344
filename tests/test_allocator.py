"""vgg.speedups.allocator: with it, a training-sized buffer freed and allocated again costs no page faults."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

PROBE = textwrap.dedent("""
    import resource, sys
    from vgg.speedups.allocator import tune_allocator
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
    from vgg.speedups import allocator

    monkeypatch.setenv("VGG_MALLOC_TUNING", "0")
    monkeypatch.setattr(allocator, "_done", None)
    assert allocator.tune_allocator() is False


# The app's case: Streamlit's threads own arenas by the time app.py runs, and a job thread started
# later reuses one of them, so mallopt from a script thread comes too late; GLIBC_TUNABLES at the
# process's start does not.
THREADED = textwrap.dedent("""
    import resource, sys, threading
    from vgg.speedups.allocator import tune_allocator
    import torch
    def churn():  # threads that allocate and exit, as a server's do, leaving arenas behind
        [bytearray(2000) for _ in range(20000)]
    for _ in range(3):
        threads = [threading.Thread(target=churn) for _ in range(6)]
        [t.start() for t in threads]; [t.join() for t in threads]
    faults = []
    def job():  # the training thread: a 64 MB buffer freed and allocated again, step after step
        for i in range(30):
            if i == 10:
                before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
            buffer = torch.empty(64 * 2**20 // 4)
            buffer.fill_(1.0)
            garbage = [object() for _ in range(1000)]
            del buffer
        faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
    def script():  # app.py's thread: tunes, then starts the job
        churn()
        if sys.argv[1] == "mallopt":
            tune_allocator()
        worker = threading.Thread(target=job); worker.start(); worker.join()
    runner = threading.Thread(target=script); runner.start(); runner.join()
    print(faults[0] // 20)
""")


def faults_per_step_in_a_job_thread(way: str) -> int:
    from vgg.speedups.allocator import tuned_environ

    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "VGG_MALLOC_TUNING")}
    if way == "environment":
        env = tuned_environ(env)
    out = subprocess.run([sys.executable, "-c", THREADED, way], cwd=REPO, capture_output=True, text=True,
                         timeout=120, check=True, env=env).stdout
    return int(out.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's tunables")
def test_a_server_needs_the_tunables_from_its_start() -> None:
    assert faults_per_step_in_a_job_thread("mallopt") > 10_000 // 2  # 64 MB of 4 KB pages, mapped afresh
    assert faults_per_step_in_a_job_thread("environment") < 500


def test_tuned_environ_keeps_other_tunables_and_can_be_turned_off() -> None:
    from vgg.speedups.allocator import TUNABLES, tuned_environ

    env = tuned_environ({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0:glibc.malloc.arena_max=4", "X": "1"})
    assert env["X"] == "1"
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.tcache_count=0:{TUNABLES}"
    assert "GLIBC_TUNABLES" not in tuned_environ({"VGG_MALLOC_TUNING": "0"})


def test_python_dash_m_vgg_allocator_runs_a_command_tuned() -> None:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
    out = subprocess.run([sys.executable, "-m", "vgg.speedups.allocator", "-c",
                          "from vgg.speedups.allocator import started_tuned, late_notice; print(started_tuned(), late_notice())"],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=True, env=env).stdout
    assert out.split() == ["True", "None"]
    plain = subprocess.run([sys.executable, "-c", "from vgg.speedups.allocator import late_notice; print(late_notice())"],
                           cwd=REPO, capture_output=True, text=True, timeout=60, check=True, env=env).stdout
    assert "make run" in plain  # started without: the server's log says how to start it


def test_make_run_starts_the_server_through_vgg_allocator() -> None:
    result = subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True, text=True)
    assert "-m vgg.speedups.allocator -m streamlit run app.py" in result.stdout
