"""End to end in headless Chromium: an LR range test and a training started from the UI, their
live charts growing while the job runs, Stop, and two browser contexts seeing the same job."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.browser import (
    assert_no_exception,
    goto_page,
    new_context,
    open_app,
    run_and_wait,
    screenshot,
    wait_for_app,
    wait_for_plotly,
)

# Each test waits for real jobs; on a loaded machine that takes longer than the suite default.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

SIDEBAR = '[data-testid="stSidebar"]'
JOB_TIMEOUT_MS = 300_000  # a loaded 2-core machine; a quiet one needs a fraction of this

# Points of the first trace of the plotly chart inside the element with this Streamlit key
# (-1 while the chart has not drawn). Plotly keeps the figure's data on its div. During a rerun
# Streamlit keeps the previous element too, marked data-stale="true": skip it.
CHART_POINTS = """key => {
    const el = document.querySelector(`.st-key-${key}:not([data-stale="true"]) .js-plotly-plot`);
    return el && el.data && el.data.length ? el.data[0].x.length : -1;
}"""


def keyed(key: str) -> str:
    """The current (not stale) element with this Streamlit widget or element key."""
    return f'.st-key-{key}:not([data-stale="true"])'


def set_number(page: Page, label: str, value: float | int) -> None:
    """Type ``value`` into the number input labelled ``label`` and wait for the rerun it causes.

    Enter commits the value; a keystroke that lands while the widget is being redrawn is lost,
    so a try that causes no rerun within a few seconds is repeated.
    """
    box = page.locator('[data-testid="stNumberInput"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]', has_text=re.compile(rf"^{re.escape(label)}$")))
    expect(box).to_have_count(1)
    field = box.locator("input")
    for attempt in range(3):
        def commit() -> None:
            field.fill(str(value))
            field.press("Enter")

        try:
            run_and_wait(page, commit, timeout_ms=10_000 if attempt < 2 else 60_000)
            break
        except PlaywrightTimeoutError:
            continue
    expect(field).to_have_value(re.compile(rf"^{re.escape(str(value))}(\.0+)?$"))


def click_button(page: Page, name: str | re.Pattern[str]) -> None:
    run_and_wait(page, page.get_by_role("button", name=name).click)


def growth_while_running(page: Page, key: str, stop_key: str, times: int = 3) -> list[int]:
    """Wait until the chart ``key`` has changed ``times`` times, each time to more points (so it
    grew at least ``times - 1`` times after it first had points); at each moment the job's Stop
    button (``stop_key``) must still be there, i.e. the job has not ended. Returns the counts."""
    counts = [page.evaluate(CHART_POINTS, key)]
    for _ in range(times):
        page.wait_for_function(f"n => ({CHART_POINTS})({key!r}) > n", arg=max(counts[-1], 0),
                               timeout=JOB_TIMEOUT_MS)
        counts.append(page.evaluate(CHART_POINTS, key))
        # the Stop button is drawn while the job runs (stale or not: mid-redraw it is marked stale)
        assert page.locator(f".st-key-{stop_key} button").count() > 0, \
            f"the job ended before the chart grew {times - 1} times: {counts}"
    return counts


def stop_everything(page: Page, base_url: str) -> None:
    """Stop every job from the sidebar and wait until the sidebar says none is left."""
    if not page.url.startswith(base_url):
        open_app(page, base_url)
    sidebar = page.locator(SIDEBAR)
    stop = sidebar.locator('[data-testid="stButton"]:not([data-stale="true"]) button').filter(
        has_text=re.compile("Stop|Remove from queue"))
    deadline = time.monotonic() + JOB_TIMEOUT_MS / 1000
    while "No jobs running or queued" not in sidebar.inner_text():
        assert time.monotonic() < deadline, f"jobs still listed: {sidebar.inner_text()}"
        try:
            stop.first.click(timeout=5_000)  # the button is redrawn every second: it may vanish
        except PlaywrightTimeoutError:
            pass
        page.wait_for_timeout(500)  # polling interval while the jobs stop, not an assumed duration


@pytest.fixture
def clean_jobs(page: Page, streamlit_server: str) -> Iterator[None]:
    """Leave the shared server with no job running (other tests need the one slot)."""
    yield
    stop_everything(page, streamlit_server)


def test_lr_range_test_grows_live_then_suggests(page: Page, streamlit_server: str, clean_jobs: None) -> None:
    goto_page(page, streamlit_server, "LR finder")
    page.get_by_text("Range test settings").click()
    set_number(page, "num_iter", 40)  # long enough to watch it grow (a step takes ~0.1 s)
    set_number(page, "diverge_th", 1000)  # all 40 batches: batch 8 can diverge early and end the job
    set_number(page, "Batch size", 8)
    click_button(page, "Start the range test")
    wait_for_plotly(page)
    counts = growth_while_running(page, "lrf-chart", "lrf-stop")
    assert 0 < counts[1] < counts[2] < counts[3]
    page.locator(keyed("lrf-chart")).scroll_into_view_if_needed()
    screenshot(page, "lr-finder-running")

    use = page.get_by_role("button", name="Use this LR")
    expect(use.first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.get_by_text("Weights restored")).to_be_visible()
    assert page.evaluate(CHART_POINTS, "lrf-chart") >= counts[-1]
    run_and_wait(page, use.first.click)
    chosen_line = page.get_by_text(re.compile(r"Learning rate for training: \d\.\d\de[-+]\d+"))
    expect(chosen_line).to_be_visible()
    chosen = re.search(r"\d\.\d\de[-+]\d+", chosen_line.inner_text()).group(0)
    wait_for_plotly(page)
    assert_no_exception(page)
    screenshot(page, "lr-finder-done")

    goto_page(page, streamlit_server, "Train")  # the chosen rate arrives on the Train page
    lr_box = page.locator('[data-testid="stNumberInput"]').filter(has_text="Peak learning rate")
    lr_field = lr_box.locator("input")
    assert float(lr_field.input_value()) == pytest.approx(float(chosen), rel=1e-2)


def test_training_curves_grow_live_and_stop_cancels(page: Page, streamlit_server: str,
                                                     clean_jobs: None) -> None:
    goto_page(page, streamlit_server, "Train")
    set_number(page, "Batch size", 16)
    expect(page.get_by_text("Seconds per epoch")).to_be_visible()  # the cost estimate came first
    click_button(page, "Start training")
    wait_for_plotly(page)
    counts = growth_while_running(page, "train-steps", "train-stop")
    assert 0 < counts[1] < counts[2] < counts[3]
    expect(page.get_by_text("Training speed (images/s)")).to_be_visible()
    page.locator(keyed("train-steps")).scroll_into_view_if_needed()
    screenshot(page, "train-running")

    stop = page.locator(keyed("train-stop")).get_by_role("button")
    stop.click()
    expect(page.get_by_text("cancelled", exact=True).first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator(SIDEBAR)).to_contain_text("No jobs running or queued", timeout=JOB_TIMEOUT_MS)
    wait_for_app(page)
    assert_no_exception(page)
    screenshot(page, "train-cancelled")


def test_two_browser_contexts_see_the_same_running_job(page: Page, browser: Browser, streamlit_server: str,
                                                       clean_jobs: None) -> None:
    goto_page(page, streamlit_server, "Train")
    set_number(page, "Batch size", 16)
    click_button(page, "Start training")
    job = re.compile(r"running\s*Training · A-BN · scratch · auto epochs")
    expect(page.locator(SIDEBAR)).to_contain_text(job)

    other = new_context(browser)
    try:
        watcher = other.new_page()
        open_app(watcher, streamlit_server)  # another person, on another page
        expect(watcher.locator(SIDEBAR)).to_contain_text(job)
        expect(watcher.locator(SIDEBAR)).to_contain_text("1 running")
        goto_page(watcher, streamlit_server, "Train")  # the run shows where it is, started by someone else
        expect(watcher.get_by_text("started by someone without a name")).to_be_visible()
        assert_no_exception(watcher)
        screenshot(watcher, "two-contexts-watcher")
        screenshot(page, "two-contexts-owner")

        stop = watcher.locator(SIDEBAR).locator('[data-testid="stButton"]:not([data-stale="true"]) button')
        stop.filter(has_text="Stop").first.click()  # anyone may stop it
        expect(page.get_by_text("cancelled", exact=True).first).to_be_visible(timeout=JOB_TIMEOUT_MS)
        expect(watcher.locator(SIDEBAR)).to_contain_text("No jobs running or queued", timeout=JOB_TIMEOUT_MS)
    finally:
        other.close()
