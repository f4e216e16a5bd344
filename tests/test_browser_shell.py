"""End to end: the real server in headless Chromium — the shell, every page, the Architecture page."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser import (
    assert_no_exception,
    goto_page,
    nav_links,
    open_app,
    run_and_wait,
    screenshot,
    select_option,
    wait_for_plotly,
)
from vgg.settings import default_device, device_description

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parent.parent
# The lesson order of the sidebar (app.py lists the same pages).
LESSON = (
    ("architecture.py", "Architecture"),
    ("data.py", "Data"),
    ("lr-finder.py", "LR finder"),
    ("train.py", "Train"),
    ("compare.py", "Compare"),
    ("evaluate.py", "Evaluate"),
    ("classify.py", "Classify"),
)


def test_shell_shows_device_and_data_set(page: Page, streamlit_server: str) -> None:
    open_app(page, streamlit_server)
    sidebar = page.locator('[data-testid="stSidebar"]')
    expect(sidebar).to_contain_text(f"Device: {device_description(default_device())}")
    expect(sidebar).to_contain_text("Data set: synthetic")
    assert_no_exception(page)
    screenshot(page, "shell")


def test_every_page_opens_without_an_exception(page: Page, streamlit_server: str) -> None:
    open_app(page, streamlit_server)
    present = [title for file, title in LESSON if (REPO / "pages" / file).exists()]
    # Streamlit hides the navigation when there is only one page.
    assert nav_links(page) == (present if len(present) > 1 else [])
    for title in reversed(present):  # ends on the default page, which opened first
        goto_page(page, streamlit_server, title)
        assert_no_exception(page)
        screenshot(page, f"page-{title.lower().replace(' ', '-')}")


def test_architecture_page_counts_vgg19_parameters(page: Page, streamlit_server: str) -> None:
    open_app(page, streamlit_server)  # Architecture is the default page
    select_option(page, "Configuration", re.compile(r"^E\b"))
    bn_label = re.compile("batch norm", re.IGNORECASE)
    batch_norm = page.get_by_role("checkbox", name=bn_label).or_(page.get_by_role("switch", name=bn_label))
    if batch_norm.count() == 1 and batch_norm.is_checked():  # 143,667,240 is VGG19 without BN
        run_and_wait(page, lambda: batch_norm.uncheck(force=True))
    expect(page.get_by_text("143,667,240").first).to_be_visible()
    assert_no_exception(page)
    screenshot(page, "architecture-vgg19")


def test_lessons_tabs_draw_on_a_click_and_the_settings_wait_for_their_tab(page: Page,
                                                                         streamlit_server: str) -> None:
    # Only the open tab runs and is sent: a click on another tab reruns the page with its content.
    open_app(page, streamlit_server)  # Architecture, on its Layers tab: the table and two charts
    charts = page.locator(".js-plotly-plot")
    expect(charts).to_have_count(2)
    run_and_wait(page, page.get_by_role("tab", name="Lessons").click)
    expect(page.get_by_text("Fully connected share of parameters")).to_be_visible()
    expect(charts).to_have_count(3)  # the Layers tab's charts are gone, the three lesson charts drawn
    wait_for_plotly(page, 3)
    screenshot(page, "architecture-lessons")

    goto_page(page, streamlit_server, "Train")
    epochs = page.locator(".st-key-train-epochs input")
    epochs.fill("7")
    run_and_wait(page, lambda: epochs.press("Enter"))
    run_and_wait(page, page.get_by_role("tab", name="Lessons").click)
    expect(page.locator(".st-key-train-epochs")).to_have_count(0)
    expect(page.get_by_text("optimizer steps").first).to_be_visible()
    expect(page.locator(".js-plotly-plot").filter(has_text="Learning rate over the run")).to_have_count(1)
    screenshot(page, "train-lessons")
    run_and_wait(page, page.get_by_role("tab", name="Training").click)
    expect(epochs).to_have_value("7")  # kept while the Lessons tab was open

    goto_page(page, streamlit_server, "LR finder")
    run_and_wait(page, page.get_by_role("tab", name="Lessons").click)
    expect(page.get_by_text("100 batches from 1e-07 to 1e+01")).to_be_visible()
    expect(page.locator(".js-plotly-plot").filter(has_text="Learning rate of each batch")).to_have_count(1)
    assert_no_exception(page)
