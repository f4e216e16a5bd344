"""Fixtures shared by all tests.

- Every test gets its own empty data dir, runs dir and TORCH_HOME (nothing is downloaded,
  nothing of a teacher's ``./data`` or ``./runs`` is touched).
- Streamlit's caches are cleared before each test once streamlit has been imported
  (``st.cache_resource`` survives between AppTest instances in one process).
- ``streamlit_server``: the real app served on a free port (session-wide, its own dirs);
  ``browser``: headless Debian Chromium driven by playwright; ``page``: a fresh 1400×900 tab.
  Helpers for browser tests live in ``tests/browser.py``; mark such tests ``@pytest.mark.browser``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from vgg.speedups.allocator import tuned_environ

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # a camera for the Data and Classify pages: Chromium's test pattern, allowed without a prompt
    "--use-fake-device-for-media-stream",
    "--use-fake-ui-for-media-stream",
]
SERVER_START_S = 120.0  # importing torch on a busy 2-core machine takes a while
SERVER_LOG = pytest.StashKey[Path]()
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


def isolated_env(base: Path) -> dict[str, str]:
    """Fresh VGG_DATA_DIR, VGG_RUNS_DIR and TORCH_HOME folders under ``base``."""
    env = {}
    for name, folder in (("VGG_DATA_DIR", "data"), ("VGG_RUNS_DIR", "runs"), ("TORCH_HOME", "torch")):
        path = base / folder
        path.mkdir(parents=True, exist_ok=True)
        env[name] = str(path)
    return env


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch,
                  request: pytest.FixtureRequest) -> Iterator[dict[str, Path]]:
    """Point the data dir, runs dir and torch's cache at empty temporary folders.

    They are removed after a test that passed (a run's checkpoints are hundreds of MB); a failed
    test's stay for a look, as its ``tmp_path`` does (``tmp_path_retention_policy``)."""
    base = tmp_path_factory.mktemp("env")
    env = isolated_env(base)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    yield {name: Path(value) for name, value in env.items()}
    call = request.node.stash.get(REPORTS, {}).get("call")
    if call is not None and call.passed:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Path]:
    """An empty folder for what one test module shares (trained runs), removed when the module is
    done, so that the whole suite never holds more than a few runs on the disk at once."""
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(autouse=True)
def clear_streamlit_caches() -> None:
    """Start each test with empty ``st.cache_data`` / ``st.cache_resource`` (free without streamlit)."""
    st = sys.modules.get("streamlit")
    if st is not None:
        st.cache_data.clear()
        st.cache_resource.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the item; attach the server log to failed browser tests."""
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    log = item.config.stash.get(SERVER_LOG, None)
    if report.failed and log is not None and "streamlit_server" in getattr(item, "fixturenames", ()):
        report.sections.append(("streamlit server log (last 80 lines)", tail(log, 80)))
    return report


def tail(path: Path, lines: int) -> str:
    if not path.exists():
        return f"(no log at {path})"
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_health(url: str, process: subprocess.Popen[bytes], log: Path, deadline_s: float) -> None:
    """Poll Streamlit's health endpoint until it answers "ok"; fail early if the server died."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"streamlit exited with {process.returncode}:\n{tail(log, 80)}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.read().decode().strip() == "ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.2)  # polling interval, not a wait for an assumed duration
    pytest.fail(f"streamlit did not answer {url} within {deadline_s:.0f} s:\n{tail(log, 80)}")


@pytest.fixture(scope="session")
def server_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder of the test server's data, runs and torch dirs (``data/``, ``runs/``, ``torch/``)."""
    return tmp_path_factory.mktemp("server")


@contextlib.contextmanager
def serve(base: Path, log: Path, extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Serve ``app.py`` on a free port with the data, runs and torch dirs under ``base`` (and
    ``extra_env``); yield the base URL; the server's output goes to ``log``."""
    port = free_port()
    env = tuned_environ({**os.environ, **isolated_env(base), "PYTHONUNBUFFERED": "1", **(extra_env or {})})
    command = [
        sys.executable, "-m", "streamlit", "run", "app.py",
        "--server.port", str(port),
        "--server.address", "127.0.0.1",
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--browser.gatherUsageStats", "false",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_health(f"http://127.0.0.1:{port}/_stcore/health", process, log, SERVER_START_S)
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        ARTIFACTS.mkdir(exist_ok=True)
        shutil.copyfile(log, ARTIFACTS / log.name)


@pytest.fixture(scope="session")
def streamlit_server(request: pytest.FixtureRequest, server_home: Path) -> Iterator[str]:
    """Serve ``app.py`` on a free port with its own data, runs and torch dirs; yield the base URL."""
    log = server_home / "streamlit-server.log"
    request.config.stash[SERVER_LOG] = log
    with serve(server_home, log) as url:
        yield url


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real local Ray cluster for the tests (``ray start``): a head and one more node, 1 CPU each,
    no dashboard; yields its address. Stopped (``ray stop``) when the session ends."""
    ray = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    head = [ray, "start", "--head", f"--port={port}", "--include-dashboard=false",
            f"--temp-dir={tmp_path_factory.mktemp('ray')}", *common]
    try:
        subprocess.run(head, check=True, env=env, capture_output=True, timeout=180)
        subprocess.run([ray, "start", f"--address={address}", *common], check=True, env=env, capture_output=True,
                       timeout=180)
        yield address
    finally:
        from vgg import cluster

        cluster.stop_on_exit()
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """Headless Debian Chromium driven by playwright (``make test`` installs it; never a download)."""
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=20_000)  # assertions wait for reruns on a busy 2-core machine

    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"no Chromium at {CHROMIUM}: run `make test` (installs Debian's chromium) or set CHROMIUM")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A new browser context and tab (1400×900); a failed test leaves a screenshot in tests/artifacts."""
    from tests.browser import new_context

    context = new_context(browser)
    context.set_default_timeout(60_000)
    tab = context.new_page()
    yield tab
    call = request.node.stash.get(REPORTS, {}).get("call")
    if call is not None and call.failed:
        ARTIFACTS.mkdir(exist_ok=True)
        try:
            tab.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"), full_page=True)
        except Exception as error:  # the tab may be gone; the test's own failure is what counts
            print(f"no failure screenshot: {error}")
    context.close()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Browser tests drive a real server on a shared 2-core machine: retry a failure once more.

    A test that fails twice in a row still fails the suite.
    """
    for item in items:
        if (item.get_closest_marker("browser") is not None and item.get_closest_marker("flaky") is None
                and config.pluginmanager.hasplugin("rerunfailures")):
            item.add_marker(pytest.mark.flaky(reruns=1, reruns_delay=2))
