"""End to end in headless Chromium: an LR range test and a training started from the UI, their
live charts growing while the job runs, Stop, and two browser contexts seeing the same job."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser import assert_no_exception, goto_page, open_app, run_and_wait, screenshot, wait_for_plotly

# Each test waits for real jobs; on a loaded machine that takes longer than the suite default.
pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]

SIDEBAR = '[data-testid="stSidebar"]'
JOB_TIMEOUT_MS = 300_000  # a loaded 2-core machine; a quiet one needs a fraction of this

# Points of the first trace of the plotly chart inside the element with this Streamlit key
# (-1 while the chart has not drawn). Plotly keeps the figure's data on its div.
CHART_POINTS = """key => {
    const el = document.querySelector(`.st-key-${key} .js-plotly-plot`);
    return el && el.data && el.data.length ? el.data[0].x.length : -1;
}"""


def set_number(page: Page, label: str, value: float | int) -> None:
    """Type ``value`` into the number input labelled ``label`` and wait for the rerun."""
    box = page.locator('[data-testid="stNumberInput"]').filter(
        has=page.locator('[data-testid="stWidgetLabel"]', has_text=re.compile(rf"^{re.escape(label)}$")))
    expect(box).to_have_count(1)
    field = box.locator("input")
    field.fill(str(value))
    run_and_wait(page, lambda: field.press("Enter"))


def click_button(page: Page, name: str | re.Pattern[str]) -> None:
    run_and_wait(page, page.get_by_role("button", name=name).click)


def growth_while_running(page: Page, key: str, still_running: str, times: int = 2) -> list[int]:
    """Wait until the chart ``key`` has grown ``times`` times; at each step the element matched by
    ``still_running`` must be on the page (the job has not ended yet). Returns the point counts."""
    counts = [page.evaluate(CHART_POINTS, key)]
    for _ in range(times):
        page.wait_for_function(f"n => ({CHART_POINTS})({key!r}) > n", arg=max(counts[-1], 0),
                               timeout=JOB_TIMEOUT_MS)
        counts.append(page.evaluate(CHART_POINTS, key))
        assert page.locator(still_running).count() > 0, f"the job ended before the chart grew {times} times"
    return counts


def stop_everything(page: Page, base_url: str) -> None:
    """Stop every job from the sidebar and wait until the sidebar says none is left."""
    if not page.url.startswith(base_url):
        open_app(page, base_url)
    sidebar = page.locator(SIDEBAR)
    for button in sidebar.get_by_role("button", name=re.compile("Stop|Remove from queue")).all():
        if button.is_enabled():
            button.click()
    expect(sidebar).to_contain_text("No jobs running or queued", timeout=JOB_TIMEOUT_MS)


@pytest.fixture
def clean_jobs(page: Page, streamlit_server: str) -> Iterator[None]:
    """Leave the shared server with no job running (other tests need the one slot)."""
    yield
    stop_everything(page, streamlit_server)


def test_lr_range_test_grows_live_then_suggests(page: Page, streamlit_server: str, clean_jobs: None) -> None:
    goto_page(page, streamlit_server, "LR finder")
    page.get_by_text("Range test settings").click()
    set_number(page, "num_iter", 12)
    set_number(page, "Batch size", 8)
    click_button(page, "Start the range test")
    wait_for_plotly(page)
    counts = growth_while_running(page, "lrf-chart", ".st-key-lrf-stop button")
    assert counts[-1] > counts[1] > counts[0]
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
    lr_field = page.locator('[data-testid="stNumberInput"]').filter(has_text="Peak learning rate").locator("input")
    assert float(lr_field.input_value()) == pytest.approx(float(chosen), rel=1e-2)


def test_training_curves_grow_live_and_stop_cancels(page: Page, streamlit_server: str, clean_jobs: None) -> None:
    goto_page(page, streamlit_server, "Train")
    set_number(page, "Batch size", 16)
    expect(page.get_by_text("Seconds per epoch")).to_be_visible()  # the cost estimate came first
    click_button(page, "Start training")
    wait_for_plotly(page)
    counts = growth_while_running(page, "train-steps", ".st-key-train-stop button")
    assert counts[-1] > counts[1] > counts[0] >= 0
    expect(page.get_by_text("Images/s")).to_be_visible()
    screenshot(page, "train-running")

    stop = page.locator(".st-key-train-stop").get_by_role("button")
    stop.click()
    expect(page.get_by_text("cancelled", exact=True).first).to_be_visible(timeout=JOB_TIMEOUT_MS)
    expect(page.locator(SIDEBAR)).to_contain_text("No jobs running or queued", timeout=JOB_TIMEOUT_MS)
    assert_no_exception(page)
    screenshot(page, "train-cancelled")


def test_two_browser_contexts_see_the_same_running_job(page: Page, browser: Browser, streamlit_server: str,
                                                       clean_jobs: None) -> None:
    goto_page(page, streamlit_server, "Train")
    set_number(page, "Batch size", 16)
    click_button(page, "Start training")
    job = re.compile(r"running\s*Training · A-BN · scratch · 2 epochs")
    expect(page.locator(SIDEBAR)).to_contain_text(job)

    other = browser.new_context(viewport={"width": 1400, "height": 900})
    try:
        watcher = other.new_page()
        open_app(watcher, streamlit_server)  # another person, on another page
        expect(watcher.locator(SIDEBAR)).to_contain_text(job)
        expect(watcher.locator(SIDEBAR)).to_contain_text("1 running")
        goto_page(watcher, streamlit_server, "Train")  # the run shows where it is, started by someone else
        expect(watcher.get_by_text("started by someone else")).to_be_visible()
        assert_no_exception(watcher)
        screenshot(watcher, "two-contexts-watcher")
        screenshot(page, "two-contexts-owner")

        watcher.locator(SIDEBAR).get_by_role("button", name=re.compile("Stop")).first.click()  # anyone may stop it
        expect(page.get_by_text("cancelled", exact=True).first).to_be_visible(timeout=JOB_TIMEOUT_MS)
        expect(watcher.locator(SIDEBAR)).to_contain_text("No jobs running or queued", timeout=JOB_TIMEOUT_MS)
    finally:
        other.close()
