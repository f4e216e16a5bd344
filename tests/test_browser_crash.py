"""A crash of the real server mid-training, and hostile uploads: nothing is lost, the app keeps serving.

The server here is this module's own subprocess (not the session's shared one), since the test
kills it: a training is started from the Train page in headless Chromium, the server gets
``kill -9`` once the run has a best checkpoint and metric rows, and a new server on the same data
and runs dirs must list the run as interrupted, with every metric row flushed before the kill and
a best checkpoint that loads and can be evaluated (CLI and Evaluate page). Then the restarted
server is given hostile uploads on the Classify page and must keep serving.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, Page, expect

from tests.browser import (
    ARTIFACTS,
    assert_no_exception,
    goto_page,
    nav_links,
    new_context,
    open_app,
    run_tag,
    run_and_wait,
    screenshot,
    wait_for_app,
)
from vgg import inference
from vgg.runs import RunStore
from vgg.speedups.allocator import tuned_environ

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
SERVER_START_S = 120.0  # importing torch on a busy 2-core machine takes a while
TRAINING_S = 400.0  # until the first epoch's checkpoint, on a loaded machine
UI_TIMEOUT_MS = 120_000
COMMAND_TIMEOUT_S = 240
UPLOAD_INPUT = '[data-testid="stFileUploaderDropzoneInput"]'
SIDEBAR = '[data-testid="stSidebar"]'


# --------------------------------------------------------------------------------------- a server of our own


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VGG_DEBUG"}
    for name, folder in (("VGG_DATA_DIR", "data"), ("VGG_RUNS_DIR", "runs"), ("TORCH_HOME", "torch")):
        (base / folder).mkdir(parents=True, exist_ok=True)
        env[name] = str(base / folder)
    env.update(VGG_DEVICE="cpu", PYTHONUNBUFFERED="1")
    return tuned_environ(env)  # as make run


def start_server(base: Path, name: str, port: int | None = None) -> Server:
    """``streamlit run app.py`` on ``port`` (default: a free one) with the data and runs dirs under ``base``."""
    port = port or free_port()
    log = base / f"{name}.log"
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true",
               "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=server_env(base), stdout=out,
                                   stderr=subprocess.STDOUT)
    server = Server(process, f"http://127.0.0.1:{port}/", log)
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = log.read_text(errors="replace")[-4000:]
            pytest.fail(f"streamlit exited with {process.returncode}:\n{output}")
        if healthy(server):
            return server
        time.sleep(0.2)  # polling interval, not a wait for an assumed duration
    stop_server(server)
    pytest.fail(f"streamlit did not start within {SERVER_START_S:.0f} s")


def healthy(server: Server) -> bool:
    try:
        with urllib.request.urlopen(server.url + "_stcore/health", timeout=2) as response:
            return response.read().decode().strip() == "ok"
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def stop_server(server: Server) -> None:
    if server.process.poll() is None:
        server.process.terminate()
        try:
            server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.process.kill()
            server.process.wait()
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"crash-{server.log.name}").write_bytes(server.log.read_bytes())


def wait_until(condition: object, timeout_s: float, what: str) -> object:
    """Poll ``condition()`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()  # type: ignore[operator]
        if value:
            return value
        time.sleep(0.25)  # polling interval
    pytest.fail(f"timed out after {timeout_s:.0f} s waiting for {what}")


# ------------------------------------------------------------------------------------------------ UI helpers


def set_number(page: Page, key: str, value: int) -> None:
    """Type ``value`` into the number input with widget key ``key`` and wait for the rerun."""
    field = page.locator(f".st-key-{key} input")
    expect(field).to_have_count(1)
    field.fill(str(value))
    run_and_wait(page, lambda: field.press("Enter"))


def metric_rows(path: Path) -> list[str]:
    """The complete data rows of metrics.csv (a line being written at this moment is left out)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    lines = text.split("\n")
    return [line for line in lines[1:-1] if line]  # the last piece has no newline yet (or is "")


def checkpointed_run(runs: Path) -> tuple[str, list[str]] | None:
    """(run id, metric rows) once a run has best.pt and an epoch row; None before."""
    for folder in runs.iterdir():
        rows = metric_rows(folder / "metrics.csv")
        if (folder / "best.pt").is_file() and any(row.startswith("epoch,") for row in rows):
            return folder.name, rows
    return None


# ------------------------------------------------------------------------------------------------- the crash


@dataclass
class Crash:
    base: Path
    run_id: str
    rows_before: list[str]  # metric rows read just before the kill
    status_before: str
    server: Server  # the restarted server


@pytest.fixture(scope="module")
def crash(browser: Browser, module_tmp: Path) -> Iterator[Crash]:
    """Start a training from the UI, ``kill -9`` the server mid-run, start a new one on the same dirs."""
    base = module_tmp
    first = start_server(base, "server-before-kill")
    context = new_context(browser)
    context.set_default_timeout(UI_TIMEOUT_MS)
    try:
        page = context.new_page()
        goto_page(page, first.url, "Train", UI_TIMEOUT_MS)
        set_number(page, "train-ipc", 50)
        set_number(page, "train-epochs", 30)
        set_number(page, "train-batch", 16)
        run_and_wait(page, page.get_by_role("button", name="Start training").click, UI_TIMEOUT_MS)
        expect(page.get_by_text("Training · A-BN · scratch · 30 epochs").first).to_be_visible()
        run_id, _ = wait_until(lambda: checkpointed_run(base / "runs"), TRAINING_S,
                               "a run with best.pt and an epoch row")
        screenshot(page, "crash-training-before-kill")
        status_before = json.loads((base / "runs" / run_id / "status.json").read_text())["status"]
        rows_before = metric_rows(base / "runs" / run_id / "metrics.csv")
        os.kill(first.process.pid, signal.SIGKILL)  # kill -9: no handler, no cleanup, no flush
        assert first.process.wait(timeout=30) == -signal.SIGKILL
    finally:
        context.close()
        stop_server(first)
    second = start_server(base, "server-after-restart")
    try:
        yield Crash(base, run_id, rows_before, status_before, second)
    finally:
        stop_server(second)


def test_killed_run_is_interrupted_with_its_metrics_and_checkpoint(crash: Crash) -> None:
    assert crash.status_before == "running", "the run had ended before the kill: nothing was tested"
    runs = crash.base / "runs"
    assert not (runs / crash.run_id / "predictions.pt").exists(), "killed before its test evaluation"
    info = RunStore(runs).get(crash.run_id)
    assert info.status == "interrupted", (info.status, info.message)
    assert info.has_best
    rows_after = metric_rows(runs / crash.run_id / "metrics.csv")
    assert len(rows_after) >= len(crash.rows_before) > 0
    # Every row flushed before the kill is there, unchanged.
    assert rows_after[: len(crash.rows_before)] == crash.rows_before
    metrics = RunStore(runs).metrics(crash.run_id)  # still parses (a torn last line is tolerated)
    assert (metrics["kind"] == "epoch").sum() >= 1 and (metrics["kind"] == "step").sum() >= 1
    loaded = inference.load_model(crash.run_id, store=RunStore(runs))
    assert loaded.num_classes == 10 and loaded.meta.get("epoch", 0) >= 1

    env = server_env(crash.base)
    done = subprocess.run([sys.executable, "-m", "vgg", "evaluate", crash.run_id, "--json"], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "interrupted"
    assert isinstance(result["test_accuracy"], float) and 0.0 <= result["test_accuracy"] <= 1.0
    assert result["test_images"] > 0


def test_restarted_app_lists_the_run_as_interrupted_and_evaluates_it(crash: Crash, page: Page) -> None:
    server = crash.server
    folder = crash.base / "runs" / crash.run_id
    assert not RunStore(crash.base / "runs").get(crash.run_id).has_predictions, sorted(p.name for p in folder.iterdir())
    # The first visitor of the restarted server comes back by the page's own address (a tab that
    # reconnects, a shared link): the page still runs inside the app, with its sidebar.
    page.goto(server.url + "evaluate")
    wait_for_app(page, UI_TIMEOUT_MS)
    assert nav_links(page) == ["Architecture", "Data", "LR finder", "Train", "Compare", "Evaluate",
                               "Classify"]
    expect(page.locator(SIDEBAR).get_by_text("Device:")).to_be_visible()
    expect(page.get_by_role("heading", name="Evaluate", exact=True)).to_be_visible()
    goto_page(page, server.url, "Evaluate", UI_TIMEOUT_MS)
    run_box = page.get_by_role("combobox", name="Run", exact=True)
    listed = re.compile(rf" · {re.escape(run_tag(crash.run_id))} · interrupted")
    expect(run_box).to_have_value(listed, timeout=UI_TIMEOUT_MS)
    expect(page.get_by_text("interrupted", exact=True).first).to_be_visible()  # the status badge
    assert_no_exception(page)
    screenshot(page, "crash-evaluate-interrupted")
    evaluate_now = page.get_by_role("button", name="Evaluate the best checkpoint now")
    run_and_wait(page, evaluate_now.click, UI_TIMEOUT_MS)
    expect(page.get_by_text("Test accuracy", exact=True)).to_be_visible(timeout=UI_TIMEOUT_MS)
    wait_for_app(page, UI_TIMEOUT_MS)
    assert_no_exception(page)
    screenshot(page, "crash-evaluate-after-restart")

    goto_page(page, server.url, "Compare", UI_TIMEOUT_MS)
    runs = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Runs to overlay")
    expect(runs).to_contain_text(f" · {run_tag(crash.run_id)} · interrupted")  # chosen: the newest ended run
    assert_no_exception(page)


# ------------------------------------------------------------------------------------- a restart mid-lesson


def test_the_first_edit_after_a_server_restart_is_kept(browser: Browser, tmp_path: Path) -> None:
    """A tab left open while the server restarts reconnects to a new session; the first edit it
    sends must win over the page's starting values (it was dropped when a page wrote a widget's
    default into the session state before drawing it)."""
    server = start_server(tmp_path, "before-restart")
    port = int(server.url.rstrip("/").rsplit(":", 1)[1])
    context = new_context(browser)
    try:
        page = context.new_page()
        page.goto(server.url + "train")
        wait_for_app(page, UI_TIMEOUT_MS)
        field = page.locator(".st-key-train-lr input")
        for trial, (typed, in_address) in enumerate((("2.00e-3", "lr=0.002"), ("5.00e-4", "lr=0.0005"),
                                                     ("7.00e-4", "lr=0.0007"))):
            stop_server(server)
            page.wait_for_selector('[data-testid="stApp"]:not([data-test-connection-state="CONNECTED"])',
                                   state="attached", timeout=UI_TIMEOUT_MS)
            server = start_server(tmp_path, f"restart-{trial}", port)
            page.wait_for_selector('[data-testid="stApp"][data-test-connection-state="CONNECTED"]',
                                   state="attached", timeout=UI_TIMEOUT_MS)
            field.fill(typed)  # the first edit, as soon as the tab is connected again
            field.press("Enter")
            expect(page).to_have_url(re.compile(re.escape(in_address)), timeout=UI_TIMEOUT_MS)
            wait_for_app(page, UI_TIMEOUT_MS)
            expect(field).to_have_value(typed)
            assert_no_exception(page)
    finally:
        context.close()
        stop_server(server)


# ------------------------------------------------------------------------------------------- hostile uploads


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header declares ``width × height`` RGB pixels in a few hundred bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9))
            + chunk(b"IEND", b""))


def test_hostile_uploads_get_one_message_each_and_the_app_keeps_serving(crash: Crash, page: Page,
                                                                        tmp_path: Path) -> None:
    server = crash.server
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    (tmp_path / "drawing.png").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"/>')
    good = np.zeros((60, 80, 3), dtype=np.uint8)
    good[10:50, 20:60] = (40, 60, 220)
    Image.fromarray(good).save(tmp_path / "good.jpg")
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    expected = {"bomb.png": "decompression bomb", "drawing.png": "SVG is not supported",
                "cut.jpg": "truncated or corrupt"}

    goto_page(page, server.url, "Classify", UI_TIMEOUT_MS)
    upload = page.locator(UPLOAD_INPUT)
    files = [str(tmp_path / name) for name in (*expected, "good.jpg")]
    run_and_wait(page, lambda: upload.set_input_files(files), UI_TIMEOUT_MS)
    errors = page.locator('[data-testid="stAlertContentError"]')
    for name, fragment in expected.items():
        expect(errors.filter(has_text=name).filter(has_text=fragment)).to_have_count(1, timeout=UI_TIMEOUT_MS)
    expect(errors).to_have_count(len(expected))
    expect(page.get_by_role("heading", name="good.jpg")).to_be_visible()
    bars = page.locator('[data-testid="stPlotlyChart"] .bars .point')
    expect(bars.first).to_be_visible(timeout=UI_TIMEOUT_MS)
    assert_no_exception(page)
    errors.first.scroll_into_view_if_needed()
    screenshot(page, "crash-classify-hostile-uploads")

    assert healthy(server) and server.process.poll() is None
    goto_page(page, server.url, "Train", UI_TIMEOUT_MS)  # another page still works
    assert_no_exception(page)
    open_app(page, server.url, UI_TIMEOUT_MS)  # and a fresh load
    assert_no_exception(page)
