"""End to end in headless Chromium: the Data page shows the synthetic set, the Compare page two runs."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect

from tests.browser import assert_no_exception, goto_page, run_and_wait, run_tag, screenshot, wait_for_plotly
from vgg.data import DataConfig
from vgg.runs import RunStore
from vgg.train import TrainConfig, fit

pytestmark = pytest.mark.browser

TALL = {"width": 1400, "height": 2600}  # Streamlit scrolls inside the page: a tall window shows it all
SLOW_MS = 240_000  # loading 5,000 synthetic images or a first plotly draw on a busy 2-core machine


@pytest.fixture(scope="module")
def server_runs(streamlit_server: str, tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two tiny real runs written into the server's runs dir (conftest makes it under <basetemp>/server*)."""
    roots = sorted({path.resolve() for path in tmp_path_factory.getbasetemp().glob("server*/runs")})
    assert len(roots) == 1, f"expected the one server's runs dir, found {roots}"
    store = RunStore(roots[0])
    data = DataConfig(source="synthetic", input_size=32, images_per_class=20)
    ids = []
    for seed, schedule in ((0, "onecycle"), (1, "constant")):
        cfg = TrainConfig(data=data, epochs=1, batch_size=64, seed=seed, schedule=schedule)
        result = fit(cfg, store=store)
        assert result.status == "done", result.message
        ids.append(result.run_id)
    return ids


def test_data_page_shows_the_sample_grid_and_charts(page: Page, streamlit_server: str) -> None:
    page.set_viewport_size(TALL)
    goto_page(page, streamlit_server, "Data")
    main = page.locator('[data-testid="stMain"]')
    grid_label = main.locator('[data-testid="stMarkdownContainer"]').get_by_text("crescent", exact=True)
    expect(grid_label).to_be_visible(timeout=SLOW_MS)  # the last row of the sample grid
    wait_for_plotly(page, 2, timeout_ms=SLOW_MS)  # class counts and pixel histograms
    # the grid (8 per class), then the original and its 8 augmented views
    expect(main.locator('[data-testid="stImage"] img')).to_have_count(10 * 8 + 9)
    expect(main.locator('[data-testid="stDataFrame"]')).to_be_visible()  # ImageNet's mean/std, the set's own
    expect(main.get_by_text("ImageNet's statistics (from pretrained weights)")).to_be_visible()
    run_and_wait(page, main.get_by_role("button", name="New random views").click)
    wait_for_plotly(page, 2, timeout_ms=SLOW_MS)
    assert_no_exception(page)
    screenshot(page, "data-page")


def test_compare_page_overlays_two_runs(page: Page, streamlit_server: str, server_runs: list[str]) -> None:
    page.set_viewport_size(TALL)
    goto_page(page, streamlit_server, "Compare")
    runs = page.locator('[data-testid="stMultiSelect"]').filter(has_text="Runs")
    expect(runs).to_have_count(1)
    clear = runs.get_by_role("button", name="Clear all")
    if clear.count():  # other tests may have made runs too: choose exactly these two
        run_and_wait(page, clear.click)
    for run_id in server_runs:
        runs.get_by_role("combobox").click()
        run_and_wait(page, page.get_by_role("option").filter(has_text=f" · {run_tag(run_id)} · ").click)
    page.keyboard.press("Escape")
    wait_for_plotly(page, 2, timeout_ms=SLOW_MS)
    accuracy = page.locator('[data-testid="stPlotlyChart"]').first
    expect(accuracy.locator(".main-svg").first).to_be_visible()
    expect(accuracy.locator(".scatterlayer .trace")).to_have_count(2)
    legend = accuracy.locator(".legendtext").all_text_contents()  # SVG text has no innerText
    assert sorted(name.rsplit(" · ", 1)[-1] for name in legend) == sorted(map(run_tag, server_runs))
    table = page.locator('[data-testid="stDataFrame"]')
    expect(table).to_have_count(1)
    assert_no_exception(page)
    screenshot(page, "compare-two-runs")
    expect(page.get_by_role("button", name="Scratch vs pretrained (offline")).to_be_visible()
