"""AppTest of the Architecture page (the shared conftest clears Streamlit's caches between tests)."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "architecture.py")


@pytest.fixture
def app() -> AppTest:
    """The page after its first run (importing torch on a busy machine takes a while)."""
    app = AppTest.from_file(PAGE, default_timeout=180).run()
    assert not app.exception, app.exception
    return app


def metrics(app: AppTest) -> dict[str, str]:
    return {metric.label: metric.value for metric in app.metric}


def test_config_e_shows_torchvisions_parameter_count(app: AppTest) -> None:
    assert metrics(app)["Parameters"] == "138,357,544"  # the default: D (VGG16) without batch norm
    app.selectbox(key="config").set_value("E").run()
    assert not app.exception and not app.error
    shown = metrics(app)
    assert shown["Parameters"] == "143,667,240"
    assert shown["Multiply-adds per image"] == "19.63 G"
    assert shown["Weight layers"] == "19"
    assert shown["Fully connected share of parameters"] == "86.1 %"
    assert shown["Added: γ and β per channel"] == "11,008"
    assert not app.info  # E has published weights

    app.toggle(key="batch_norm").set_value(True).run()
    assert metrics(app)["Parameters"] == "143,678,248"


def test_inputs_drive_the_numbers_and_lessons(app: AppTest) -> None:
    app.selectbox(key="config").set_value("C")
    app.number_input(key="input_size").set_value(32)
    app.number_input(key="num_classes").set_value(10)
    app.slider(key="stack_channels").set_value(16)
    app.run()
    assert not app.exception and not app.error
    shown = metrics(app)
    assert shown["2 × 3×3 (sees 5×5)"] == "4,608" and shown["one 7×7"] == "12,544"
    assert any("No published ImageNet weights for A-LRN and C" in info.value for info in app.info)
    assert any("leaves 512×1×1" in caption.value for caption in app.caption)
    default_macs = shown["Multiply-adds per image"]
    app.number_input(key="input_size").set_value(64).run()
    assert metrics(app)["Multiply-adds per image"] != default_macs
