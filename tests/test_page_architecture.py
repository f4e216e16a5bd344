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


def open_tab(app: AppTest, name: str) -> AppTest:
    """Select a tab as a click does (the tabs rerun the page and only the open one runs)."""
    app.session_state["architecture_section"] = name
    app.run()
    assert not app.exception, app.exception
    return app


def test_config_e_shows_torchvisions_parameter_count(app: AppTest) -> None:
    assert metrics(app)["Parameters"] == "138,357,544"  # the default: D (VGG16) without batch norm
    app.selectbox(key="config").set_value("E")
    open_tab(app, "Lessons")
    assert not app.error
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
    open_tab(app, "Lessons")
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


def test_only_the_open_tab_runs_and_a_lessons_value_survives_a_look_at_another_tab(app: AppTest) -> None:
    # Layers, the first tab: its table and two charts; nothing of the other tabs is computed or sent.
    assert [len(app.get("plotly_chart")), len(app.dataframe)] == [2, 1]
    assert "Fully connected share of parameters" not in metrics(app)
    open_tab(app, "Block diagram")
    assert [len(app.get("plotly_chart")), len(app.dataframe)] == [1, 0]
    assert any("Box height grows" in caption.value for caption in app.caption)
    open_tab(app, "Paper's Table 1")
    assert [len(app.get("plotly_chart")), len(app.dataframe)] == [0, 1]
    open_tab(app, "Lessons")
    assert len(app.get("plotly_chart")) == 3 and "Fully connected share of parameters" in metrics(app)
    app.slider(key="stack_channels").set_value(64).run()
    assert metrics(app)["2 × 3×3 (sees 5×5)"] == "73,728"  # 2 · 9 · 64²
    open_tab(app, "Layers")
    assert "2 × 3×3 (sees 5×5)" not in metrics(app)
    open_tab(app, "Lessons")
    assert app.slider(key="stack_channels").value == 64
    assert metrics(app)["2 × 3×3 (sees 5×5)"] == "73,728"


def test_the_address_sets_the_view_and_follows_the_widgets() -> None:
    app = AppTest.from_file(PAGE, default_timeout=180)
    app.query_params["config"] = "E"
    app.query_params["bn"] = "0"
    app.run()
    assert not app.exception, app.exception
    assert metrics(app)["Parameters"] == "143,667,240"
    assert not app.warning
    app.selectbox(key="config").set_value("A").run()
    app.toggle(key="batch_norm").set_value(True).run()
    assert app.query_params["config"] == "A" and app.query_params["bn"] == "1"


@pytest.mark.parametrize("param, value", [("config", "Z"), ("bn", "yes"), ("size", "10000"), ("classes", "x")])
def test_a_bad_value_in_the_address_shows_one_message_and_the_defaults(param: str, value: str) -> None:
    app = AppTest.from_file(PAGE, default_timeout=180)
    app.query_params[param] = value
    app.run()
    assert not app.exception, app.exception
    assert len(app.warning) == 1 and f"{param}=" in app.warning[0].value
    assert metrics(app)["Parameters"] == "138,357,544"  # the default view
