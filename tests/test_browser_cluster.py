"""The Train page in Chromium against a server started with VGG_RAY_ADDRESS: the sidebar shows the
cluster, a training runs as a Ray task with live curves, and its run folder is written by the server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.browser import assert_no_exception, goto_page, run_and_wait, screenshot, wait_for_app, wait_for_plotly
from tests.conftest import serve
from tests.test_browser_training import JOB_TIMEOUT_MS, SIDEBAR, set_number

pytestmark = [pytest.mark.browser, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def ray_server(ray_cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """A second app server whose jobs run on the test cluster; yields (URL, its base folder)."""
    base = tmp_path_factory.mktemp("ray-server")
    with serve(base, base / "streamlit-ray-server.log", {"VGG_RAY_ADDRESS": ray_cluster}) as url:
        yield url, base


def test_the_train_page_trains_on_the_ray_cluster(page: Page, ray_server: tuple[str, Path]) -> None:
    url, base = ray_server
    goto_page(page, url, "Train")
    sidebar = page.locator(SIDEBAR)
    expect(sidebar).to_contain_text(re.compile(r"Ray cluster: 2 machines, 2 CPUs"), timeout=60_000)
    set_number(page, "Images per class", 20)
    set_number(page, "Epochs", 2)
    set_number(page, "Batch size", 32)
    run_and_wait(page, page.get_by_role("button", name="Start training").click)
    wait_for_plotly(page)  # the live step curve, from the worker's events
    page.get_by_text("Test accuracy").first.wait_for(timeout=JOB_TIMEOUT_MS)
    wait_for_app(page)
    assert_no_exception(page)
    screenshot(page, "train-on-ray")
    [run] = [p for p in (base / "runs").iterdir() if p.is_dir()]
    status = json.loads((run / "status.json").read_text())
    assert status["status"] == "done", status
    assert (run / "best.pt").is_file() and (run / "predictions.pt").is_file()
