"""End to end: Evaluate and Classify on the real server in headless Chromium.

A tiny run (VGG11-BN, synthetic shapes at 32 px, 20 images per class, 1 epoch) is trained with
``vgg.train.fit`` straight into the server's runs dir, which the server lists like any other run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Locator, Page, expect

from tests.browser import (
    assert_no_exception,
    goto_page,
    run_and_wait,
    run_tag,
    screenshot,
    wait_for_app,
    wait_for_plotly,
)
from vgg.data import DataConfig
from vgg.runs import RunStore
from vgg.train import TrainConfig, fit

pytestmark = pytest.mark.browser

CONFTEST = Path(__file__).resolve().parent / "conftest.py"
PLOTLY_SVG = '[data-testid="stPlotlyChart"] .main-svg'
UPLOAD_INPUT = '[data-testid="stFileUploaderDropzoneInput"]'


def server_base(request: pytest.FixtureRequest) -> Path:
    """The folder holding the server's data, runs and torch dirs (next to its log, see conftest)."""
    conftest = next(
        module
        for module in list(sys.modules.values())
        if getattr(module, "__file__", None) and Path(module.__file__).resolve() == CONFTEST
    )
    return request.config.stash[conftest.SERVER_LOG].parent


@pytest.fixture(scope="module")
def server_run(streamlit_server: str, request: pytest.FixtureRequest) -> str:
    base = server_base(request)
    data = DataConfig(source="synthetic", input_size=32, images_per_class=20, data_dir=base / "data")
    result = fit(
        TrainConfig(config="A", batch_norm=True, epochs=1, batch_size=256, data=data, device="cpu"),
        store=RunStore(base / "runs"),
    )
    assert result.status == "done" and result.run_id
    return result.run_id


def combobox(page: Page, label: str) -> Locator:
    return page.get_by_role("combobox", name=label, exact=True)


def select_run(page: Page, run_id: str) -> None:
    """Choose the run (the newest is preselected, so this is usually a no-op)."""
    box = combobox(page, "Run")
    tag = f" · {run_tag(run_id)} · "  # the readable run name ends with the id's random tag
    if tag not in box.input_value():
        box.click()
        choice = (
            page.locator('[data-testid="stSelectboxVirtualDropdown"]')
            .get_by_role("option")
            .filter(has_text=tag)
        )
        run_and_wait(page, choice.click)
    expect(box).to_have_value(re.compile(re.escape(tag)))


def test_evaluate_shows_metrics_and_a_clickable_confusion_matrix(
    page: Page, streamlit_server: str, server_run: str
) -> None:
    goto_page(page, streamlit_server, "Evaluate")
    select_run(page, server_run)
    expect(page.get_by_text("Test accuracy", exact=True)).to_be_visible()
    # The test images load in the background; the page reruns once they are there.
    expect(page.locator('[data-testid="stProgress"]')).to_have_count(0, timeout=120_000)
    wait_for_app(page)
    wait_for_plotly(page)  # per-class accuracy
    assert_no_exception(page)
    run_and_wait(page, page.get_by_role("tab", name="Confusion matrix").click)
    chart = page.locator('[data-testid="stPlotlyChart"]').filter(has=page.locator(".heatmaplayer"))
    expect(chart.locator(".main-svg").first).to_be_visible()
    expect(chart.locator(".heatmaplayer")).to_be_visible()
    assert_no_exception(page)

    # Click the cell "true class 3 (diamond) → predicted 3": the page's class pickers follow.
    drag = chart.locator(".nsewdrag").first
    drag.scroll_into_view_if_needed()
    box = drag.bounding_box()
    assert box is not None
    n = 10
    run_and_wait(
        page, lambda: page.mouse.click(box["x"] + 3.5 * box["width"] / n, box["y"] + 3.5 * box["height"] / n)
    )
    expect(combobox(page, "True class")).to_have_value("diamond")
    expect(combobox(page, "Predicted as")).to_have_value("diamond")
    expect(page.get_by_text("test images of diamond predicted as diamond")).to_be_visible()
    assert_no_exception(page)
    screenshot(page, "evaluate-confusion")
    page.get_by_text("test images of diamond predicted as diamond").scroll_into_view_if_needed()
    wait_for_images(page)
    screenshot(page, "evaluate-confusion-images")

    run_and_wait(page, page.get_by_role("tab", name="Mistakes").click)
    grid = page.locator('[data-testid="stImage"]')
    expect(grid.first).to_be_visible()
    expect(grid.first).to_contain_text("→")  # caption: true class → predicted class, with probabilities
    grid.first.scroll_into_view_if_needed()
    assert_no_exception(page)
    wait_for_images(page)
    screenshot(page, "evaluate-mistakes")

    run_and_wait(page, page.get_by_role("tab", name="Representations").click)
    scatter = page.locator('[data-testid="stPlotlyChart"]').first
    expect(scatter.locator(".main-svg").first).to_be_visible()
    scatter.scroll_into_view_if_needed()
    assert_no_exception(page)
    screenshot(page, "evaluate-pca")

    run_and_wait(page, page.get_by_role("tab", name="Filters").click)
    expect(page.get_by_text("filter 0").first).to_be_visible()
    wait_for_images(page)
    assert page.locator('[data-testid="stImage"] img').count() >= 64 + 3 * 9, (
        "64 filters, 3 images × (1 + 8 maps)"
    )
    page.get_by_text("filter 0").first.scroll_into_view_if_needed()
    assert_no_exception(page)
    wait_for_images(page)
    screenshot(page, "evaluate-filters")


def wait_for_images(page: Page) -> None:
    """Wait until every picture on the page has loaded (a screenshot does not wait for them)."""
    page.wait_for_function("""() => Array.from(document.querySelectorAll('[data-testid="stImage"] img'))
        .every(img => img.complete && img.naturalWidth > 0)""")


def png_file(folder: Path) -> Path:
    pixels = np.zeros((90, 120, 3), dtype=np.uint8)
    pixels[20:70, 35:85] = (220, 60, 40)  # a red square on black
    path = folder / "square.png"
    Image.fromarray(pixels).save(path)
    return path


def test_classify_an_upload_and_refuse_a_text_file(
    page: Page, streamlit_server: str, server_run: str, tmp_path: Path
) -> None:
    goto_page(page, streamlit_server, "Classify")
    select_run(page, server_run)
    upload = page.locator(UPLOAD_INPUT)
    run_and_wait(page, lambda: upload.set_input_files(str(png_file(tmp_path))))
    expect(page.get_by_role("heading", name="square.png")).to_be_visible()
    wait_for_plotly(page)
    top5 = page.locator('[data-testid="stPlotlyChart"]').first
    expect(top5.locator(".main-svg").first).to_be_visible()
    expect(top5.locator(".bars .point")).to_have_count(5)
    expect(page.get_by_text("Grad-CAM: where the evidence", exact=False)).to_be_visible()
    assert_no_exception(page)
    top5.scroll_into_view_if_needed()
    wait_for_images(page)
    screenshot(page, "classify-upload")
    page.get_by_text("Preprocessing step by step").click()  # opens in the browser, no rerun
    expect(page.get_by_text("2 · squashed to 32×32")).to_be_visible()
    page.get_by_text("2 · squashed to 32×32").scroll_into_view_if_needed()
    wait_for_images(page)
    screenshot(page, "classify-preprocessing")

    notes = tmp_path / "notes.jpg"
    notes.write_text("Dear class, please bring a picture of a cat tomorrow.\n")
    run_and_wait(page, lambda: upload.set_input_files(str(notes)))
    error = page.locator('[data-testid="stAlertContentError"]')
    expect(error).to_contain_text("notes.jpg is a text file, not an image")
    expect(top5.locator(".bars .point")).to_have_count(5)  # the good picture is still classified
    assert_no_exception(page)
    error.scroll_into_view_if_needed()
    wait_for_images(page)
    screenshot(page, "classify-text-file")
