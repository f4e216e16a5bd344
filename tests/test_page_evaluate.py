"""AppTest of the Evaluate page: metrics, confusion matrix with its images, mistakes, PCA/t-SNE, filters,
downloads — and evaluating later a run that stopped before its test evaluation.

A tiny run (VGG11-BN, synthetic shapes at 32 px, 20 images per class, 1 epoch) is trained once
for the module with ``vgg.train.fit`` into a temporary runs dir that the page reads.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from vgg.data import DataConfig
from vgg.evaluate import load_run_predictions
from vgg.runs import RunStore
from vgg.train import TrainConfig, fit

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "evaluate.py")


@pytest.fixture(scope="module")
def trained(module_tmp: Path) -> tuple[Path, str]:
    base = module_tmp
    data = DataConfig(source="synthetic", input_size=32, images_per_class=20, data_dir=base / "data")
    result = fit(
        TrainConfig(config="A", batch_norm=True, epochs=1, batch_size=256, data=data, device="cpu"),
        store=RunStore(base / "runs"),
    )
    assert result.status == "done" and result.run_id
    return base / "runs", result.run_id


def run_until(at: AppTest, done: Callable[[AppTest], bool], timeout_s: float = 120.0) -> AppTest:
    """Rerun (AppTest fires no run_every timers) until ``done(at)`` or the deadline."""
    deadline = time.monotonic() + timeout_s
    at.run()
    while not done(at):
        assert not at.exception, [e.value for e in at.exception]
        assert time.monotonic() < deadline, "the page did not get there in time"
        time.sleep(0.2)  # polling interval between reruns, not a wait for an assumed duration
        at.run()
    return at


def data_loaded(at: AppTest) -> bool:
    return not at.get("progress") and bool(at.metric)


@pytest.fixture
def page(trained: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> AppTest:
    runs, run_id = trained
    monkeypatch.setenv("VGG_RUNS_DIR", str(runs))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["chosen_run"] = run_id
    return run_until(at, data_loaded)


def open_section(at: AppTest, name: str) -> AppTest:
    at.session_state["evaluate_section"] = name
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def specs(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def array(value: Any) -> np.ndarray:
    """A plotly JSON array: a list, or plotly 6's typed-array encoding {"dtype", "bdata", "shape"}."""
    if isinstance(value, dict) and "bdata" in value:
        flat = np.frombuffer(base64.b64decode(value["bdata"]), dtype=np.dtype(value["dtype"]))
        shape = [int(n) for n in str(value.get("shape", len(flat))).split(",")]
        return flat.reshape(shape)
    return np.asarray(value)


def captions(at: AppTest) -> list[str]:
    return [img.caption for block in at.get("image") for img in block.proto.imgs]


def test_without_runs_the_page_says_to_train_first(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VGG_RUNS_DIR", str(tmp_path / "empty"))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert any("train a model first" in info.value for info in at.info)


def test_metrics_and_per_class_accuracy(page: AppTest, trained: tuple[Path, str]) -> None:
    runs, run_id = trained
    summary = RunStore(runs).get(run_id).summary
    assert page.selectbox(key="evaluate_run").value == run_id
    metrics = {m.label: m.value for m in page.metric}
    assert metrics["Test accuracy"] == f"{summary['test_accuracy']:.1%}"
    assert metrics["Test loss"] == f"{summary['test_loss']:.3f}"
    assert metrics["Test images"] == "200"
    (bars,) = specs(page)
    assert len(bars["data"][0]["x"]) == 10 and bars["data"][0]["type"] == "bar"
    table = page.dataframe[0].value
    assert table["images"].sum() == 200 and table["correct"].sum() == round(summary["test_accuracy"] * 200)


def test_confusion_matrix_cells_show_their_images(page: AppTest, trained: tuple[Path, str]) -> None:
    runs, run_id = trained
    predictions = load_run_predictions(RunStore(runs), run_id)
    labels = predictions.labels.numpy()
    # the classes the run predicted (from float32): argmax of the stored float16 probabilities can
    # break a near-tie the other way, as it did for a barely trained model
    preds = predictions.predicted.numpy()
    open_section(page, "Confusion matrix")
    (figure,) = specs(page)
    heatmap = figure["data"][0]
    assert heatmap["type"] == "heatmap" and array(heatmap["z"]).sum() == 200
    classes = list(heatmap["x"])
    true_name, pred_name = page.selectbox(key="cm_true").value, page.selectbox(key="cm_pred").value
    t, p = classes.index(true_name), classes.index(pred_name)
    matrix = array(heatmap["z"])
    off = matrix - np.diag(np.diag(matrix))
    assert matrix[t, p] == off.max() and (off.max() == 0 or t != p), "starts on the most frequent confusion"
    count = int(((labels == t) & (preds == p)).sum())
    assert len(captions(page)) == min(count, 30)

    page.selectbox(key="cm_true").set_value(classes[0])
    page.selectbox(key="cm_pred").set_value(classes[0])
    page.run()
    expected = int(((labels == 0) & (preds == 0)).sum())
    assert any(
        f"**{expected}** test images of *{classes[0]}* predicted as *{classes[0]}*" in m.value
        for m in page.markdown
    )
    assert len(captions(page)) == min(expected, 30)
    page.toggle(key="cm_normalise").set_value(True).run()
    shares = array(specs(page)[0]["data"][0]["z"])
    np.testing.assert_allclose(shares.sum(1)[matrix.sum(1) > 0], 1.0)


def test_mistakes_representations_filters_and_downloads(page: AppTest) -> None:
    open_section(page, "Mistakes")
    shown = captions(page)
    assert 0 < len(shown) <= 16 and all("→" in c for c in shown)

    open_section(page, "Representations")
    (pca,) = specs(page)
    assert pca["layout"]["title"]["text"].startswith("PCA of the output probabilities")
    assert sum(len(array(trace["x"])) for trace in pca["data"]) == 200
    page.radio(key="repr_kind").set_value("hidden").run()
    page.button(key="tsne_go").click().run()
    assert not page.exception
    pca, tsne = specs(page)
    assert "hidden layer" in pca["layout"]["title"]["text"]
    assert (
        tsne["layout"]["title"]["text"].startswith("t-SNE")
        and sum(len(array(t["x"])) for t in tsne["data"]) == 200
    )

    open_section(page, "Filters")
    filters = page.get("image")[0].proto.imgs
    assert len(filters) == 64
    filtered = [block for block in page.get("image")[1:]]
    assert len(filtered) == 3 and [img.caption for img in filtered[0].proto.imgs][:2] == ["image", "filter 0"]

    open_section(page, "Downloads")
    labels = [button.proto.label for button in page.get("download_button")]
    assert labels[0] == "Metrics (metrics.csv)" and labels[2].startswith("Best checkpoint (best.pt")


def test_the_address_opens_a_section_and_follows_the_open_one(trained: tuple[Path, str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    runs, run_id = trained
    monkeypatch.setenv("VGG_RUNS_DIR", str(runs))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.query_params["run"] = run_id
    at.query_params["section"] = "confusion-matrix"
    run_until(at, data_loaded)
    assert at.session_state["evaluate_section"] == "Confusion matrix"
    open_section(at, "Mistakes")
    assert at.query_params["section"] == "mistakes"
    bad = AppTest.from_file(PAGE, default_timeout=120)
    bad.query_params["section"] = "nowhere"
    run_until(bad, data_loaded)
    assert [w.value for w in bad.warning if "section" in w.value]  # one clear line, then the default
    assert bad.session_state["evaluate_section"] == "Accuracy"


def test_an_interrupted_run_without_predictions_is_evaluated_on_request(
    trained: tuple[Path, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Runs last in the module: it turns the shared run into an interrupted one."""
    runs, run_id = trained
    folder = runs / run_id
    status = json.loads((folder / "status.json").read_text())
    status.update(status="running", pid=2**22 + 12345, token="gone", process_start=1)  # a dead writer
    status["summary"] = {}  # a run killed mid-training never wrote its summary
    (folder / "status.json").write_text(json.dumps(status))
    os.remove(folder / "predictions.pt")
    monkeypatch.setenv("VGG_RUNS_DIR", str(runs))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["chosen_run"] = run_id
    at.run()
    assert not at.exception
    assert at.selectbox(key="evaluate_run").value == run_id
    assert "interrupted" in at.caption[0].value
    assert not at.metric
    at.button(key="evaluate_now").click()
    run_until(at, lambda a: bool(a.metric), timeout_s=240)
    assert (folder / "predictions.pt").is_file()
    assert {m.label for m in at.metric} >= {"Test accuracy", "Test loss"}
    epochs = RunStore(runs).metrics(run_id).query("kind == 'epoch'")
    best_val = {m.label: m.value for m in at.metric}["Best validation accuracy"]
    assert best_val == f"{epochs['val_accuracy'].max():.1%}"  # from metrics.csv, not "—"

