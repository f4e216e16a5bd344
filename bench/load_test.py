"""A full classroom against the real server: 30 browser sessions watching a training, then 30 Start clicks.

Not part of ``make test``: it takes about twenty minutes and the whole machine. Everything runs on
this machine and talks only to 127.0.0.1: the app (its own ``streamlit run`` subprocess with fresh
data and runs dirs, started as ``make run`` starts it) and headless Chromium (one browser, one
context per pupil). In a classroom the browsers run on the pupils' computers, so the server is
pinned to half the CPUs and this script with Chromium to the other half (``--server-cpus``; on a
2-core machine one CPU each: the training then runs on one).

Phases (each bounded, the whole script by ``--total``):

1. start the server; start a training from the Train page in one context, then close it;
2. baseline: the training's images/s with nobody watching, read from the run's ``metrics.csv``
   (``images_per_second`` of each step) over a window;
3. N contexts open the pages in waves (most on the Train page's live view, the rest on the other
   pages); page render time = from ``goto`` until the app's script state is "notRunning";
4. the same window with the N sessions watching: images/s again, the server's CPU and the number
   of fragment reruns (counted in each tab from its script-state changes); the server's CPU that
   went to the sessions is its total CPU minus that of the training's threads (identified in
   phase 2 as the threads that worked while nobody watched);
5. the watchers leave; nobody watching again for a last window: the drop is also measured
   against the mean of this window and the baseline's (a shared machine drifts);
6. "everyone, click Start": the watched training is stopped with its Stop button, N fresh
   contexts open the Train page, each sets its own epochs, and all click Start at once: jobs
   running / queued / refused (past ``--max-queue``), and the server's resident memory before and
   after.

The last lines printed are the summary. Usage::

    .venv/bin/python bench/load_test.py [--contexts 30] [--window 45] [--wave 5] [--server-cpus auto]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ui.common import watcher_interval  # noqa: E402  (the pace of a watcher's live view)
from vgg.resources import cpu_seconds, rss_bytes  # noqa: E402
from vgg.speedups.allocator import tuned_environ  # noqa: E402

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
APP_IDLE = ('[data-testid="stApp"][data-test-connection-state="CONNECTED"]'
            '[data-test-script-state="notRunning"]')
EXCEPTION = '[data-testid="stException"]'
ERROR_ALERT = '[data-testid="stAlertContentError"]'
SIDEBAR = '[data-testid="stSidebar"]'
PHASE_S = 120.0  # upper bound of each phase
OTHER_PAGES = ("", "data", "lr_finder", "compare", "evaluate", "classify")  # "" is the Architecture page

# Counts this tab's script runs (full and fragment) from now on: each run turns the app's
# script state to "running".
COUNT_RUNS = """() => {
    const app = document.querySelector('[data-testid="stApp"]');
    window.__runs = 0;
    if (window.__runObserver) window.__runObserver.disconnect();
    window.__runObserver = new MutationObserver(records => {
        for (const r of records)
            if (app.getAttribute('data-test-script-state') === 'running') window.__runs += 1;
    });
    window.__runObserver.observe(app, {attributes: true, attributeFilter: ['data-test-script-state']});
}"""


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


# ------------------------------------------------------------------------------------------ the server


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    base: Path

    @property
    def pid(self) -> int:
        return self.process.pid


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def split_cpus(spec: str) -> tuple[set[int], set[int]]:
    """The server's CPUs and the browsers': ``spec`` is "auto" (the first half for the server, the
    rest for the browsers), "none" (both everywhere) or a CPU list for the server, e.g. "0" or "0-3"."""
    available = sorted(os.sched_getaffinity(0))
    if spec == "none" or len(available) < 2:
        return set(available), set(available)
    if spec == "auto":
        server = set(available[: len(available) // 2])
    else:
        server = set()
        for part in spec.split(","):
            low, _, high = part.partition("-")
            server |= set(range(int(low), int(high or low) + 1))
        if not server <= set(available) or server == set(available):
            raise SystemExit(f"--server-cpus {spec!r}: choose some, not all, of the CPUs {available}")
    return server, set(available) - server


def cpu_list(cpus: set[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def start_server(base: Path, max_queue: int, options: list[str] | tuple[str, ...] = (),
                 cpus: set[int] | None = None, extra_env: list[str] | tuple[str, ...] = ()) -> Server:
    env = {k: v for k, v in os.environ.items() if k != "VGG_DEBUG"}
    env.update(item.split("=", 1) for item in extra_env)
    env = tuned_environ(env)  # as make run (VGG_MALLOC_TUNING=0 in --env leaves it out)
    env["VGG_MAX_QUEUE"] = str(max_queue)  # ui/common.py: jobs that may wait (the app's default is 20)
    for name, folder in (("VGG_DATA_DIR", "data"), ("VGG_RUNS_DIR", "runs"), ("TORCH_HOME", "torch")):
        (base / folder).mkdir(parents=True, exist_ok=True)
        env[name] = str(base / folder)
    env.update(VGG_DEVICE="cpu", PYTHONUNBUFFERED="1")
    port = free_port()
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true",
               "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    command += [f"--{option}" for option in options]  # e.g. runner.postScriptGC=false
    out = (base / "server.log").open("wb")
    # Pinned before exec, so every thread of the server (torch's pool sizes itself from it) stays there.
    pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                               preexec_fn=pin)
    server = Server(process, f"http://127.0.0.1:{port}/", base)
    deadline = time.monotonic() + PHASE_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}; see {base / 'server.log'}")
        try:
            with urllib.request.urlopen(server.url + "_stcore/health", timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return server
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"the server did not answer within {PHASE_S:.0f} s")


@dataclass(frozen=True)
class ThreadStat:
    user: float  # CPU seconds in user mode
    system: float  # and in the kernel (page faults among it)
    faults: int  # minor page faults

    @property
    def cpu(self) -> float:
        return self.user + self.system


def thread_stats(pid: int) -> dict[int, ThreadStat]:
    """CPU seconds and minor page faults of each live thread of ``pid`` (from /proc)."""
    ticks = os.sysconf("SC_CLK_TCK")
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        out[int(task.name)] = ThreadStat(int(fields[11]) / ticks, int(fields[12]) / ticks, int(fields[7]))
    return out


def descendants(root: int, exclude: int | None = None) -> set[int]:
    """Every process below ``root``, leaving out ``exclude`` and the processes below it."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                text = (entry / "stat").read_text()
                parents[int(entry.name)] = int(text[text.rindex(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    below, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier and pid != exclude} - below
        below |= frontier
    return below


def _autogroup(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/autogroup").read_text().split()[0]
    except (OSError, IndexError):
        return ""


def lower_priority(pids: set[int], nice: int, group_nice: int, server_pid: int) -> None:
    """Nice ``pids`` (processes they fork later inherit it). With the kernel's autogroups, nice only
    ranks processes within one session, and Chromium runs in a session of its own: ``group_nice``
    (when not 0) nices that session's autogroup too (never the server's). At 19 the browser gets so
    little CPU beside a training that pages take minutes to render."""
    server_group = _autogroup(server_pid)
    groups_done: set[str] = set()
    for pid in pids:
        try:
            os.setpriority(os.PRIO_PROCESS, pid, nice)
        except OSError:
            pass
        group = _autogroup(pid) if group_nice else ""
        if group and group != server_group and group not in groups_done:
            try:
                Path(f"/proc/{pid}/autogroup").write_text(str(group_nice))
                groups_done.add(group)
            except OSError:
                pass


def browser_pids(server: Server) -> set[int]:
    """Chromium's processes (below this script, not the server, not playwright's driver)."""
    out = set()
    for pid in descendants(os.getpid(), exclude=server.pid):
        try:
            if "chrom" in Path(f"/proc/{pid}/comm").read_text():
                out.add(pid)
        except OSError:
            continue
    return out


def signal_all(pids: set[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


async def interleaved(server: Server, metrics: Path, seconds: float, rounds: int,
                      res: Results) -> None:
    """``rounds`` pairs of windows, the browsers frozen (SIGSTOP: the sessions stay connected but
    nobody polls) and then running again: the same training, the same minutes, both conditions."""
    for i in range(rounds):
        pids = browser_pids(server)
        signal_all(pids, signal.SIGSTOP)
        try:
            frozen = await asyncio.to_thread(measure_window, server, metrics, seconds)
        finally:
            signal_all(pids, signal.SIGCONT)
        live = await asyncio.to_thread(measure_window, server, metrics, seconds)
        res.frozen_windows.append(frozen)
        res.live_windows.append(live)
        log(f"round {i + 1}/{rounds}: browsers frozen {frozen.median_ips:.1f} img/s, "
            f"running {live.median_ips:.1f} img/s")


def set_affinity(pids: set[int], cpus: set[int]) -> None:
    """Move every thread of ``pids`` to ``cpus`` (a process's threads each have their own mask)."""
    for pid in pids:
        try:
            tasks = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        for tid in tasks:
            try:
                os.sched_setaffinity(tid, cpus)
            except OSError:
                pass


def browser_cpu(server: Server) -> float:
    """CPU seconds of the browser side: every process this script started except the server."""
    total = 0.0
    for pid in descendants(os.getpid(), exclude=server.pid):
        try:
            total += cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            pass
    return total


# ------------------------------------------------------------------------------------------ the training


def the_run(runs: Path) -> Path | None:
    folders = [p for p in runs.iterdir() if (p / "metrics.csv").is_file()] if runs.is_dir() else []
    return max(folders, key=lambda p: p.stat().st_mtime) if folders else None


def step_rows(metrics: Path) -> list[dict[str, str]]:
    """Complete step rows of metrics.csv (a line being written now is left out)."""
    lines = metrics.read_text(encoding="utf-8").split("\n")
    header = lines[0].split(",")
    rows = [dict(zip(header, line.split(","))) for line in lines[1:-1] if line]
    return [row for row in rows if row.get("kind") == "step"]


@dataclass
class Window:
    steps: int
    median_ips: float  # median of the steps' images_per_second
    effective_ips: float  # images seen / training seconds over the window (validation, saving included)
    server_cpu: float
    threads: dict[int, ThreadStat]  # what each thread of the server did in the window
    seconds: float


def measure_window(server: Server, metrics: Path, seconds: float) -> Window:
    """Throughput and server CPU over ``seconds`` of wall time."""
    rows0 = step_rows(metrics)
    cpu0, threads0, t0 = cpu_seconds(server.pid), thread_stats(server.pid), time.monotonic()
    time.sleep(seconds)  # the measurement window itself
    rows1 = step_rows(metrics)
    cpu1, threads1, t1 = cpu_seconds(server.pid), thread_stats(server.pid), time.monotonic()
    new = rows1[len(rows0):]
    ips = [float(r["images_per_second"]) for r in new if r.get("images_per_second")]
    overall = float("nan")
    if rows0 and new:  # images seen between the last step before the window and the last one in it,
        first, last = rows0[-1], new[-1]  # over the training's own clock (validation and saving included)
        elapsed = float(last["seconds"]) - float(first["seconds"])
        overall = (int(last["images_seen"]) - int(first["images_seen"])) / elapsed if elapsed > 0 else overall
    zero = ThreadStat(0.0, 0.0, 0)
    delta = {tid: ThreadStat(t.user - threads0.get(tid, zero).user, t.system - threads0.get(tid, zero).system,
                             t.faults - threads0.get(tid, zero).faults) for tid, t in threads1.items()}
    median = statistics.median(ips) if ips else float("nan")
    return Window(len(new), median, overall, cpu1 - cpu0, delta, t1 - t0)


# ------------------------------------------------------------------------------------------ browser helpers


async def wait_idle(page: Any, timeout_s: float = PHASE_S) -> None:
    await page.wait_for_selector(APP_IDLE, state="attached", timeout=timeout_s * 1000)


class Frames:
    """Websocket messages a tab received from the server (counted from before its first load).

    A rerun that the server did is proven by messages arriving after the action: on a starved
    browser the page can draw a whole rerun in one go, and its script state then never shows
    "running" (a tab whose elements appear 10-20 s after it said "notRunning" was seen)."""

    def __init__(self) -> None:
        self.count = 0
        self.arrived = asyncio.Event()

    def received(self, _payload: Any) -> None:
        self.count += 1
        self.arrived.set()

    async def after(self, count: int, timeout_s: float) -> None:
        """Until more than ``count`` messages arrived."""
        async def more() -> None:
            while self.count <= count:
                self.arrived.clear()
                await self.arrived.wait()
        await asyncio.wait_for(more(), timeout_s)


FRAMES: dict[int, Frames] = {}  # by id() of the tab


def count_frames(page: Any) -> Frames:
    frames = FRAMES[id(page)] = Frames()
    page.on("websocket", lambda ws: ws.on("framereceived", frames.received))
    return frames


async def rerun(page: Any, action: Any, timeout_s: float = PHASE_S) -> None:
    """Do ``action`` and wait for the rerun it causes: the server's messages, then the page idle."""
    frames = FRAMES[id(page)]  # every tab comes from open_page
    before = frames.count
    await action()
    await frames.after(before, timeout_s)
    await wait_idle(page, timeout_s)


RETRIES: list[str] = []  # set_number calls that needed a second try (printed in the summary)


async def set_number(page: Any, key: str, value: int, timeout_s: float = PHASE_S) -> None:
    """Type ``value`` into the number input with widget key ``key`` and wait for the rerun.

    Now and then a page's edit brings no message from the server within 20 s (seen on the first
    page after a restart): the try is repeated, up to three times. The field is emptied first,
    since typing the value it already shows changes nothing, and Enter then sends nothing."""
    field = page.locator(f".st-key-{key} input")
    for attempt in range(3):
        if attempt:
            await field.fill("", timeout=timeout_s * 1000)
        await field.fill(str(value), timeout=timeout_s * 1000)
        try:
            await rerun(page, lambda: field.press("Enter", timeout=timeout_s * 1000),
                        20.0 if attempt < 2 else min(timeout_s, 30.0))
            return
        except Exception:
            if attempt == 2:
                raise
            RETRIES.append(key)


async def open_page(context: Any, url: str) -> tuple[Any, float]:
    """A new tab on ``url``; returns it and the seconds until its script first finished."""
    page = await context.new_page()
    count_frames(page)
    start = time.monotonic()
    await page.goto(url, wait_until="commit", timeout=PHASE_S * 1000)
    await wait_idle(page)
    return page, time.monotonic() - start


@dataclass
class Results:
    contexts: int = 0
    load_before: str = ""
    baseline: Window | None = None
    watched: Window | None = None
    after: Window | None = None  # nobody watching again, at the end
    frozen_windows: list[Window] = field(default_factory=list)  # the browsers stopped (SIGSTOP)
    live_windows: list[Window] = field(default_factory=list)  # and running, alternately
    renders: list[float] = field(default_factory=list)
    render_failures: int = 0
    reruns_counted: int = 0
    ui_cpu: float = float("nan")
    chromium_cpu: float = float("nan")
    exceptions: int = 0
    error_alerts: int = 0
    clicks: int = 0
    click_renders: list[float] = field(default_factory=list)  # fresh Train pages, nothing running
    stopped_status: str = ""
    exceptions_clicks: int = 0
    error_alerts_clicks: int = 0
    running: int | None = None
    queued: int | None = None
    refused: int = 0
    accepted_pages: int = 0
    sidebar_line: str = ""
    rss_before: int = 0
    rss_after: int = 0
    rss_start: int = 0
    training_threads: set[int] = field(default_factory=set)
    server_cpus: str = ""
    browser_cpus: str = ""
    notes: list[str] = field(default_factory=list)


def first_line(error: BaseException) -> str:
    """The first line of an error's text, or its type when it has none (a bare TimeoutError)."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))] if ordered else float("nan")


async def count_on_pages(pages: list[Any], selector: str) -> int:
    counts = await asyncio.gather(*(page.locator(selector).count() for page in pages), return_exceptions=True)
    return sum(c for c in counts if isinstance(c, int))


# ------------------------------------------------------------------------------------------ the phases


async def start_training(browser: Any, server: Server, epochs: int, batch: int) -> None:
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page, _ = await open_page(context, server.url + "train")
        await set_number(page, "train-epochs", epochs)
        await set_number(page, "train-batch", batch)
        await rerun(page, lambda: page.get_by_role("button", name="Start training").click())
    finally:
        await context.close()  # the run goes on without anyone watching


async def open_watchers(browser: Any, server: Server, n: int, wave: int, seconds: float,
                        res: Results) -> list[tuple[Any, Any]]:
    """``n`` contexts, two thirds on the Train page, the rest spread over the other pages, in waves
    (a wave starts only within ``seconds`` of the first)."""
    opened: list[tuple[Any, Any]] = []
    deadline = time.monotonic() + seconds

    async def one(i: int) -> tuple[Any, Any] | None:
        context = await browser.new_context(viewport={"width": 1280, "height": 800})
        path = "train" if i % 3 != 2 else OTHER_PAGES[(i // 3) % len(OTHER_PAGES)]
        try:
            page, seconds = await open_page(context, server.url + path)
        except Exception as error:  # a timeout under load is a result, not a crash of the bench
            res.render_failures += 1
            log(f"context {i} ({path or 'architecture'}) did not render: {first_line(error)}")
            return context, None
        res.renders.append(seconds)
        return context, page

    for first in range(0, n, wave):
        if time.monotonic() > deadline:
            res.notes.append(f"opened only {len(opened)} of {n} contexts within {seconds:.0f} s")
            break
        batch = await asyncio.gather(*(one(i) for i in range(first, min(n, first + wave))))
        opened += [item for item in batch if item is not None]
        log(f"{len(opened)} contexts open; render times so far: median {statistics.median(res.renders):.1f} s"
            if res.renders else f"{len(opened)} contexts open")
    return opened


async def stop_training(browser: Any, server: Server, run: Path, timeout_s: float = PHASE_S) -> str:
    """Stop the watched training with the sidebar's Stop button, as anyone in the class may;
    returns the run's status once it left "running"."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    try:
        page, _ = await open_page(context, server.url + "train")
        stop = page.locator(SIDEBAR).get_by_role("button", name="Stop")
        await stop.first.click(timeout=timeout_s * 1000)
        # Until the job has left the server's job list (its run's status is written a little
        # earlier): fresh pages must not find a live view to watch.
        await page.wait_for_function(
            "s => (document.querySelector(s) || {innerText: ''}).innerText.includes('No jobs running')",
            arg=SIDEBAR, timeout=timeout_s * 1000)
        return run_status(run)
    finally:
        await context.close()


def run_status(run: Path) -> str:
    try:
        return str(json.loads((run / "status.json").read_text())["status"])
    except (OSError, ValueError, KeyError):
        return "unknown"


async def thirty_clicks(browser: Any, server: Server, n: int, wave: int, res: Results) -> list[Any]:
    """``n`` fresh contexts on the Train page, each with its own epochs (distinct settings are
    distinct jobs), then every Start button clicked at once. Returns the contexts (to close)."""
    contexts = [await browser.new_context(viewport={"width": 1280, "height": 800}) for _ in range(n)]

    async def prepare(i: int, context: Any) -> Any:
        try:
            page, seconds = await open_page(context, server.url + "train")
            res.click_renders.append(seconds)
            await set_number(page, "train-epochs", 3 + i)  # 2, the default, would change nothing
            return page
        except Exception as error:
            log(f"context {i} could not be prepared: {first_line(error)}")
            return None

    ready = []
    for first in range(0, n, wave):
        ready += await asyncio.gather(*(prepare(i, c) for i, c in enumerate(contexts[first:first + wave], first)))
        log(f"{sum(p is not None for p in ready)} of {n} Train pages ready for the click")
    ready = [p for p in ready if p is not None]
    res.rss_before = rss_bytes(server.pid)
    if not ready:
        res.notes.append("no session could be prepared for the Start clicks")
        return contexts
    before = [FRAMES[id(page)].count for page in ready]
    start = time.monotonic()
    await asyncio.gather(*(page.get_by_role("button", name="Start training").click(timeout=PHASE_S * 1000)
                           for page in ready), return_exceptions=True)
    res.clicks = len(ready)
    log(f"{len(ready)} Start clicks sent in {time.monotonic() - start:.1f} s")
    await asyncio.gather(*(FRAMES[id(page)].after(count, PHASE_S)
                           for page, count in zip(ready, before, strict=True)), return_exceptions=True)
    await asyncio.gather(*(wait_idle(page) for page in ready), return_exceptions=True)
    texts = await asyncio.gather(*(page.locator(ERROR_ALERT).all_inner_texts() for page in ready),
                                 return_exceptions=True)
    res.refused = sum(1 for t in texts if isinstance(t, list) and any("queue is full" in x for x in t))
    res.error_alerts_clicks = sum(1 for t in texts if isinstance(t, list) and t) - res.refused
    yours = await asyncio.gather(*(page.get_by_text("yours", exact=False).count() for page in ready),
                                 return_exceptions=True)
    res.accepted_pages = sum(1 for c in yours if isinstance(c, int) and c > 0)
    # The sidebar of a fresh look at the app: "Jobs: 1 running, 20 queued".
    page = ready[0]
    await page.goto(server.url, wait_until="commit")
    await wait_idle(page)
    try:  # the job list is a fragment of its own: it can land after the page's script finished
        await page.wait_for_function(
            "s => (document.querySelector(s) || {innerText: ''}).innerText.includes('queued')",
            arg=SIDEBAR, timeout=PHASE_S * 1000)
    except Exception as error:
        res.notes.append(f"the sidebar showed no job list: {first_line(error)}")
    sidebar = await page.locator(SIDEBAR).inner_text()
    match = re.search(r"Jobs:\s*(\d+) running, (\d+) queued", sidebar)
    if match:
        res.running, res.queued = int(match.group(1)), int(match.group(2))
        res.sidebar_line = match.group(0)
    res.rss_after = rss_bytes(server.pid)
    res.exceptions_clicks = await count_on_pages(ready, EXCEPTION)
    return contexts


async def main_async(args: argparse.Namespace, res: Results) -> None:
    """All phases; what was measured lands in ``res`` even when a phase fails (noted there)."""
    from playwright.async_api import async_playwright

    base = Path(tempfile.mkdtemp(prefix="vgg-load-"))
    t_start = time.monotonic()
    log(f"load average {res.load_before}; {os.cpu_count()} CPUs; server dirs in {base}")
    server_cpus, browser_cpus = split_cpus(args.server_cpus)
    res.server_cpus, res.browser_cpus = cpu_list(server_cpus), cpu_list(browser_cpus)
    server = start_server(base, args.max_queue, args.option, server_cpus, args.env)
    os.sched_setaffinity(0, browser_cpus)  # this script, playwright's driver and Chromium inherit it
    log(f"server up at {server.url} (pid {server.pid}) after {time.monotonic() - t_start:.0f} s")
    res.rss_start = rss_bytes(server.pid)
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            if args.browser_nice:  # the pupils' browsers run on their own computers, not the server
                lower_priority(descendants(os.getpid(), exclude=server.pid), args.browser_nice,
                               args.browser_group_nice, server.pid)
            try:
                await asyncio.wait_for(start_training(browser, server, args.epochs, args.batch_size), PHASE_S)
                runs = base / "runs"
                deadline = time.monotonic() + PHASE_S
                while time.monotonic() < deadline:  # a few steps done: past the warm-up
                    run = the_run(runs)
                    if run is not None and len(step_rows(run / "metrics.csv")) >= args.warmup_steps:
                        break
                    await asyncio.sleep(0.5)
                else:
                    raise RuntimeError("the training did not start within the phase's time")
                metrics = run / "metrics.csv"
                log(f"training {run.name} is running; baseline window of {args.window:.0f} s, "
                    "nobody watching")
                res.baseline = await asyncio.to_thread(measure_window, server, metrics, args.window)
                log(f"baseline: {res.baseline.steps} steps, median {res.baseline.median_ips:.1f} img/s")

                opened = await open_watchers(browser, server, args.contexts, args.wave, args.open_time, res)
                pages = [p for _, p in opened if p is not None]
                await asyncio.gather(*(page.evaluate(COUNT_RUNS) for page in pages), return_exceptions=True)
                chromium0 = browser_cpu(server)
                log(f"watched window of {args.window:.0f} s with {len(pages)} sessions")
                res.watched = await asyncio.to_thread(measure_window, server, metrics, args.window)
                res.chromium_cpu = browser_cpu(server) - chromium0
                runs_per_page = await asyncio.gather(
                    *(page.evaluate("() => window.__runs || 0") for page in pages), return_exceptions=True)
                res.reruns_counted = sum(r for r in runs_per_page if isinstance(r, int))
                res.training_threads = {tid for tid, t in res.baseline.threads.items()
                                        if tid != server.pid and t.cpu > 0.05 * res.baseline.seconds}
                training_cpu = sum(res.watched.threads[tid].cpu for tid in res.training_threads
                                   if tid in res.watched.threads)
                res.ui_cpu = res.watched.server_cpu - training_cpu
                res.exceptions = await count_on_pages(pages, EXCEPTION)
                res.error_alerts = await count_on_pages(pages, ERROR_ALERT)
                log(f"watched: {res.watched.steps} steps, median {res.watched.median_ips:.1f} img/s; "
                    f"{res.reruns_counted} script runs counted in the tabs")

                if args.rounds:
                    log(f"{args.rounds} rounds of {args.window:.0f} s with the browsers frozen, then running")
                    await interleaved(server, metrics, args.window, args.rounds, res)
                # The throughput is measured: the watchers leave, and nobody watches for a last window.
                await asyncio.gather(*(context.close() for context, _ in opened), return_exceptions=True)
                if time.monotonic() - t_start < args.total - args.window:  # the machine may have drifted
                    log(f"nobody watching again: a last window of {args.window:.0f} s")
                    res.after = await asyncio.to_thread(measure_window, server, metrics, args.window)
                    log(f"after: {res.after.steps} steps, median {res.after.median_ips:.1f} img/s")
                if time.monotonic() - t_start < args.total - 3 * PHASE_S:
                    # "Everyone, click Start": the class's own trainings, in fresh tabs, once the
                    # watched one is stopped (its Stop button). Chromium may use every CPU now.
                    res.stopped_status = await stop_training(browser, server, run)
                    log(f"the watched training was stopped: {res.stopped_status}")
                    everything = set(range(os.cpu_count() or 1))
                    os.sched_setaffinity(0, everything)
                    set_affinity(descendants(os.getpid(), exclude=server.pid) | {os.getpid()}, everything)
                    log(f"Start clicks from {args.contexts} fresh sessions; Chromium now on every CPU")
                    clicking: list[Any] = []
                    try:
                        clicking = await asyncio.wait_for(
                            thirty_clicks(browser, server, args.contexts, args.wave, res), PHASE_S * 4)
                    except TimeoutError:
                        res.notes.append(f"the Start-click phase ran out of its {PHASE_S * 4:.0f} s")
                    await asyncio.gather(*(c.close() for c in clicking), return_exceptions=True)
                else:
                    res.notes.append("Start-click phase skipped: the time budget was spent")
            finally:
                await browser.close()
    except Exception as error:  # the summary still shows what was measured before
        detail = str(error).strip().splitlines()
        res.notes.append(f"stopped early: {type(error).__name__}" + (f": {detail[0]}" if detail else ""))
    finally:
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    log(f"done in {time.monotonic() - t_start:.0f} s")


def summary(res: Results, args: argparse.Namespace) -> str:
    b, w = res.baseline, res.watched
    lines = ["", "=" * 30 + " load test summary " + "=" * 30,
             f"machine: {os.cpu_count()} CPUs, load average at start {res.load_before}; "
             + (f"the server on CPU {res.server_cpus}, this script and Chromium on CPU {res.browser_cpus} "
                "(the pupils' browsers run on their own computers)"
                if res.server_cpus != res.browser_cpus else "server and Chromium share every CPU")
             + f"; Chromium at nice {args.browser_nice} (its autogroup at {args.browser_group_nice})"]
    if args.option or args.env:
        lines.append(f"server options: {' '.join(args.option + args.env)}")
    lines.append(f"sessions: {res.contexts} contexts requested (waves of {args.wave}); "
                 f"{len(res.renders)} rendered, {res.render_failures} failed to render")
    if res.renders or res.render_failures:
        timings = res.renders + [math.inf] * res.render_failures  # never rendered: counted as slowest
        worst = p95(timings)
        shown = f"{worst:.1f} s" if math.isfinite(worst) else f"> {PHASE_S:.0f} s (timed out)"
        lines.append(f"page render (goto -> script notRunning): p95 {shown}, median "
                     f"{statistics.median(timings):.1f} s over {len(timings)} pages "
                     f"({res.render_failures} did not render within {PHASE_S:.0f} s)")
    if b is not None:
        lines.append(f"training, nobody watching: median {b.median_ips:.1f} img/s per step "
                     f"({b.steps} steps), {b.effective_ips:.1f} img/s overall, "
                     f"server CPU {b.server_cpu:.1f} s in {b.seconds:.0f} s")
    a = res.after
    if a is not None:
        lines.append(f"training, nobody watching again at the end: median {a.median_ips:.1f} img/s per step "
                     f"({a.steps} steps), {a.effective_ips:.1f} img/s overall")
    if w is not None and b is not None:
        # against the mean of the windows before and after, when there is one after (drift of a shared machine)
        quiet = [x for x in (b, a) if x is not None and x.steps] or [b]
        ref_step = statistics.mean(x.median_ips for x in quiet)
        ref_overall = statistics.mean(x.effective_ips for x in quiet)
        drop = 1 - w.median_ips / ref_step if ref_step else float("nan")
        overall = 1 - w.effective_ips / ref_overall if ref_overall else float("nan")
        lines.append(f"training, {len(res.renders)} watching: median {w.median_ips:.1f} img/s per step "
                     f"({w.steps} steps), {w.effective_ips:.1f} img/s overall")
        against = "the mean of the windows before and after" if len(quiet) > 1 else "the window before"
        lines.append(f"throughput drop against {against}: {drop:.1%} per step, {overall:.1%} overall "
                     "(target <= 15 %)")
        for label, window in (("nobody watching", b), ("watched", w), ("nobody watching again", a)):
            if window is None:
                continue
            mine = [window.threads[t] for t in res.training_threads if t in window.threads]
            user, system = sum(t.user for t in mine), sum(t.system for t in mine)
            faults = sum(t.faults for t in mine)
            lines.append(f"training threads, {label}: {user:.1f} s user + {system:.1f} s system CPU, "
                         f"{faults / max(1, window.steps):,.0f} minor page faults per step")
        if res.live_windows:
            frozen = statistics.median(x.median_ips for x in res.frozen_windows)
            live = statistics.median(x.median_ips for x in res.live_windows)
            pairs = ", ".join(f"{f.median_ips:.0f}/{lv.median_ips:.0f}"
                              for f, lv in zip(res.frozen_windows, res.live_windows, strict=True))
            lines.append(f"interleaved, {len(res.live_windows)} rounds of {args.window:.0f} s (browsers frozen / "
                         f"running, img/s per step: {pairs}): medians {frozen:.1f} / {live:.1f} -> drop "
                         f"{1 - live / frozen:.1%} (target <= 15 %)")
            faults = [sum(x.threads[t].faults for t in res.training_threads if t in x.threads) / max(1, x.steps)
                      for x in res.live_windows]
            lines.append(f"training threads while the browsers ran: {statistics.median(faults):,.0f} minor page "
                         "faults per step (median of the rounds)")
        pace = watcher_interval(len(res.renders))
        estimate = len(res.renders) * w.seconds / pace
        counted = res.reruns_counted
        lines.append(f"script runs during the window: {counted} started, counted in the tabs; the "
                     f"watchers' pace of {pace:g} s predicts {estimate:.0f} live-view reruns "
                     f"(sessions x window / {pace:g} s)")
        per_counted = res.ui_cpu / counted if counted else float("nan")
        per_expected = res.ui_cpu / estimate if estimate else float("nan")
        lines.append(f"server CPU for the sessions: {res.ui_cpu:.1f} s in {w.seconds:.0f} s "
                     f"(total {w.server_cpu:.1f} s minus the training threads) = "
                     f"{per_counted * 1000:.0f} ms per counted run, {per_expected * 1000:.0f} ms per "
                     "timer-driven rerun")
        lines.append(f"Chromium CPU in the same window: {res.chromium_cpu:.1f} s"
                     + (f" on CPU {res.browser_cpus}, apart from the server's"
                        if res.server_cpus != res.browser_cpus else
                        f", at nice {args.browser_nice}, competing with the training"))
    lines.append(f"sessions showing an exception element: {res.exceptions}; error alerts: {res.error_alerts}")
    if res.click_renders:
        lines.append(f"Start-click phase (the watched training {res.stopped_status or 'not stopped'}): "
                     f"{len(res.click_renders)} fresh Train pages rendered, p95 {p95(res.click_renders):.1f} s, "
                     f"median {statistics.median(res.click_renders):.1f} s")
    if res.clicks:
        lines.append(f"after the clicks: exception elements {res.exceptions_clicks}, error alerts other "
                     f"than 'queue is full' {res.error_alerts_clicks}")
        lines.append(f"Start clicks: {res.clicks} at once -> running {res.running}, queued {res.queued}, "
                     f"refused with 'queue is full' {res.refused}; pages showing a job of theirs "
                     f"{res.accepted_pages} (sidebar: '{res.sidebar_line}')")
        lines.append(f"server RSS: {res.rss_start / 1e6:.0f} MB at start, "
                     f"{res.rss_before / 1e6:.0f} MB before the clicks, {res.rss_after / 1e6:.0f} MB after")
    if RETRIES:
        lines.append(f"number inputs typed again after an edit that caused no rerun: {len(RETRIES)}")
    for note in res.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=30, help="browser sessions (default 30)")
    parser.add_argument("--wave", type=int, default=5, help="contexts opened at once (default 5)")
    parser.add_argument("--window", type=float, default=45.0,
                        help="seconds of each measuring window (default 45)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the watched training (default 30)")
    parser.add_argument("--batch-size", type=int, default=32, help="its batch size (default 32)")
    parser.add_argument("--warmup-steps", type=int, default=3,
                        help="steps before the baseline window (default 3)")
    parser.add_argument("--max-queue", type=int, default=20,
                        help="the server's queue limit, VGG_MAX_QUEUE (default 20, as the app)")
    parser.add_argument("--option", action="append", default=[], metavar="SECTION.NAME=VALUE",
                        help="a Streamlit option for the server, e.g. runner.postScriptGC=false (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server, e.g. VGG_MALLOC_TUNING=0 (repeatable)")
    parser.add_argument("--server-cpus", default="auto",
                        help="CPUs of the server, e.g. 0 or 0-3; the browsers get the others. 'auto' "
                             "(default): the first half; 'none': both on every CPU")
    parser.add_argument("--browser-nice", type=int, default=0,
                        help="niceness of Chromium and playwright's driver (default 0, as the server; "
                             "useful with --server-cpus none)")
    parser.add_argument("--browser-group-nice", type=int, default=0,
                        help="niceness of Chromium's autogroup (default 0: left alone)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="interleaved pairs of windows, browsers frozen then running (default 2)")
    parser.add_argument("--open-time", type=float, default=480.0,
                        help="seconds within which the waves of contexts start (default 480: 30 "
                             "contexts on one CPU take about that)")
    parser.add_argument("--total", type=float, default=1500.0, help="time budget of the whole script in s")
    parser.add_argument("--keep", action="store_true", help="keep the server's temporary dirs and log")
    args = parser.parse_args()
    if not os.access(CHROMIUM, os.X_OK):
        print(f"no Chromium at {CHROMIUM}: install it (make test does) or set CHROMIUM", file=sys.stderr)
        return 1
    res = Results(contexts=args.contexts, load_before="%.2f %.2f %.2f" % os.getloadavg())
    try:
        asyncio.run(main_async(args, res))
    finally:
        print(summary(res, args), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
