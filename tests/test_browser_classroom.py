"""A class on one server, in three browsers: a teacher and two pupils (Ann and Bob).

One story, in the order a lesson goes: a shared link opens a prepared view; the teacher enters the
code and locks a setting; Ann gives her name, chooses a data set and settings, and a reload keeps
them; a locked setting is refused; Ann starts a training and Bob's idle page sees it within the
watchers' interval, without a Stop button; Ann's second Start is explained; the teacher stops the
run; Bob cannot delete it on the Compare page; the teacher deletes it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.browser import assert_no_exception, goto_page, new_context, run_and_wait, screenshot, wait_for_app
from tests.conftest import SERVER_START_S, free_port, isolated_env, wait_for_health
from vgg.runs import RunStore
from vgg.speedups.allocator import tuned_environ

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
CODE = "owl-42"
SIDEBAR = '[data-testid="stSidebar"]'
UI_MS = 120_000  # one step of the app on a loaded 2-core machine
SEEN_MS = 30_000  # the sidebar's watchers' interval (≤ 3 s alone, more with a class) and a margin


@pytest.fixture(scope="module")
def server(module_tmp: Path) -> Iterator[tuple[str, Path]]:
    """The app with a teacher's code; (its URL, its runs dir)."""
    env = tuned_environ({**os.environ, **isolated_env(module_tmp), "PYTHONUNBUFFERED": "1",
                         "VGG_TEACHER_CODE": CODE, "VGG_DEVICE": "cpu"})
    port, log = free_port(), module_tmp / "streamlit.log"
    command = [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port),
               "--server.address", "127.0.0.1", "--server.headless", "true",
               "--server.fileWatcherType", "none", "--browser.gatherUsageStats", "false"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_health(f"http://127.0.0.1:{port}/_stcore/health", process, log, SERVER_START_S)
        yield f"http://127.0.0.1:{port}/", module_tmp / "runs"
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()


def number(page: Page, key: str) -> Locator:
    return page.locator(f".st-key-{key} input")


def set_number(page: Page, key: str, value: str) -> None:
    """Type ``value`` into the number input with widget key ``key``; Enter commits it. A keystroke
    that lands while the widget is redrawn is lost, so a try without a rerun is repeated."""
    field = number(page, key)
    expect(field).to_have_count(1)
    for attempt in range(3):
        try:
            field.fill(value)
            run_and_wait(page, lambda: field.press("Enter"), 15_000 if attempt < 2 else UI_MS)
            return
        except PlaywrightTimeoutError:
            if attempt == 2:
                raise


def open_popover(page: Page, name: str, inside: Locator) -> None:
    """Open the sidebar's popover ``name`` (no rerun) until ``inside`` shows; a click that lands
    while the sidebar is redrawn is lost, so it is repeated."""
    wait_for_app(page, UI_MS)
    button = sidebar(page).get_by_role("button", name=re.compile(name))
    for attempt in range(3):
        button.click()
        try:
            expect(inside).to_be_visible(timeout=10_000 if attempt < 2 else UI_MS)
            return
        except AssertionError:
            if attempt == 2:
                raise


def sidebar(page: Page) -> Locator:
    return page.locator(SIDEBAR)


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    wait_for_app(page, UI_MS)
    assert_no_exception(page)


def stop_buttons(page: Page) -> Locator:
    return page.get_by_role("button", name=re.compile(r"^(stop_circle)?\s*Stop$"))


def click_leaderboard_row(page: Page, row: int) -> None:
    """Tick row ``row`` (0 = first) of the Compare page's table: the grid is a canvas, so the click
    goes to the row marker's place (a header and rows of 35 px, Streamlit's default)."""
    grid = page.locator('[data-testid="stDataFrame"]').first
    expect(grid).to_be_visible()
    box = grid.bounding_box()
    assert box is not None
    run_and_wait(page, lambda: page.mouse.click(box["x"] + 14, box["y"] + 35 + 35 * row + 17), UI_MS)


def test_a_teacher_and_two_pupils_share_one_server(browser: Browser, server: tuple[str, Path]) -> None:
    url, runs = server
    teacher, ann, bob = (new_context(browser).new_page() for _ in range(3))

    # Every page has its own address, even for a fresh server's first visitor.
    open_page(bob, url + "lr-finder")
    expect(bob.get_by_role("heading", name="LR finder")).to_be_visible()
    assert bob.get_by_text("Page not found").count() == 0
    # A link carries a view: Bob opens the teacher's prepared Architecture page.
    open_page(bob, url + "architecture?config=E&bn=0")
    expect(bob.get_by_text("143,667,240", exact=True)).to_be_visible()

    # The teacher gives the code and locks the input size for the class.
    open_page(teacher, url + "train?name=Ms%20Lee")
    code = teacher.get_by_label("Teacher's code")
    open_popover(teacher, "I am the teacher", code)
    code.fill(CODE)
    run_and_wait(teacher, lambda: code.press("Enter"), UI_MS)
    expect(sidebar(teacher).get_by_text("Ms Lee · teacher")).to_be_visible(timeout=UI_MS)
    assert CODE not in teacher.url
    open_popover(teacher, "Lock settings for the class", number(teacher, "lock_size"))
    set_number(teacher, "lock_size", "32")
    run_and_wait(teacher, teacher.get_by_role("button", name=re.compile("Apply to the class")).click, UI_MS)
    teacher.keyboard.press("Escape")

    # Ann gives her name once and chooses a data set; a reload keeps both.
    open_page(ann, url + "data")
    name = sidebar(ann).get_by_label("Your name", exact=True)
    name.fill("Ann")
    run_and_wait(ann, lambda: name.press("Enter"), UI_MS)
    expect(sidebar(ann).get_by_text("You: Ann")).to_be_visible(timeout=UI_MS)
    run_and_wait(ann, ann.locator(".st-key-data_all label").click, UI_MS)  # "All" off: a number per class
    set_number(ann, "data_per_class", "200")
    use = ann.get_by_role("button", name=re.compile("Use this data set"))
    expect(use).to_be_enabled(timeout=UI_MS)  # once it has loaded
    run_and_wait(ann, use.click, UI_MS)
    data_line = sidebar(ann).get_by_text("synthetic · 32 px, 200/class")
    expect(data_line).to_be_visible(timeout=UI_MS)
    ann.reload()
    wait_for_app(ann, UI_MS)
    expect(data_line).to_be_visible(timeout=UI_MS)
    expect(sidebar(ann).get_by_text("You: Ann")).to_be_visible()

    # Bob waits on the Train page, idle; the locked setting shows there as locked.
    open_page(bob, url + "train?name=Bob")
    locked = re.compile("The teacher locked: inputs up to 32 px")
    expect(sidebar(bob).get_by_text(locked)).to_be_visible()
    expect(bob.locator('[data-testid="stMain"]').get_by_text(locked)).to_be_visible()

    # Ann's settings live in the address: a reload keeps them. A locked setting is refused.
    open_page(ann, url + "train" + ann.url[ann.url.index("?"):])
    set_number(ann, "train-lr", "1e-3")
    set_number(ann, "train-size", "64")
    expect(ann.get_by_text(re.compile("the teacher allows inputs of at most 32 px"))).to_be_visible()
    start = ann.get_by_role("button", name=re.compile("Start training"))
    expect(start).to_be_disabled()
    set_number(ann, "train-size", "32")
    ann.reload()
    wait_for_app(ann, UI_MS)
    expect(number(ann, "train-lr")).to_have_value("1.00e-3", timeout=UI_MS)  # the browser formats %.2e so
    expect(sidebar(ann).get_by_text("synthetic · 32 px, 200/class")).to_be_visible()
    expect(start).to_be_enabled()
    run_and_wait(ann, start.click, UI_MS)
    expect(stop_buttons(ann).first).to_be_visible(timeout=UI_MS)  # hers to stop

    # Bob's idle page sees the new job within the interval, and has no Stop for it.
    expect(sidebar(bob).get_by_text(re.compile(r"· Ann"))).to_be_visible(timeout=SEEN_MS)
    wait_for_app(bob, UI_MS)
    expect(stop_buttons(bob)).to_have_count(0)
    screenshot(bob, "classroom-pupil-sees-anns-job")

    # A second Start by Ann (other settings) is explained, not queued.
    set_number(ann, "train-lr", "2e-3")
    run_and_wait(ann, start.click, UI_MS)
    expect(ann.get_by_text(re.compile("you already have a job running"))).to_be_visible(timeout=UI_MS)
    screenshot(ann, "classroom-second-start")

    # The teacher sees Ann's job with a Stop, and stops it.
    goto_page(teacher, url, "Train", UI_MS)  # by the app's own links: a reload would be a new session
    stop = sidebar(teacher).get_by_role("button", name=re.compile(r"Stop$"))
    expect(stop).to_have_count(1, timeout=SEEN_MS)
    run_and_wait(teacher, stop.click, UI_MS)
    expect(sidebar(teacher).get_by_text("No jobs running or queued.")).to_be_visible(timeout=UI_MS)
    (run,) = RunStore(runs).list_runs()
    assert run.status == "cancelled" and run.config.get("owner") == "Ann"

    # Bob cannot delete Ann's run on the Compare page; the teacher can.
    open_page(bob, url + "compare")
    click_leaderboard_row(bob, 0)
    expect(bob.get_by_role("button", name=re.compile(r"Delete 0 picked runs \(1 not yours"))).to_be_disabled()
    screenshot(bob, "classroom-pupil-cannot-delete")
    goto_page(teacher, url, "Compare", UI_MS)
    click_leaderboard_row(teacher, 0)
    delete = teacher.get_by_role("button", name=re.compile(r"Delete 1 picked run$"))
    expect(delete).to_be_enabled()
    run_and_wait(teacher, delete.click, UI_MS)
    run_and_wait(teacher, teacher.get_by_role("button", name=re.compile("Delete them")).click, UI_MS)
    assert RunStore(runs).list_runs() == []
    for page in (teacher, ann, bob):
        assert_no_exception(page)
