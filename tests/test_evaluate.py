"""vgg.evaluate: the test-set predictions a run keeps, and the hidden representations of every class."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from streamlit.testing.v1 import AppTest

from tests.test_page_evaluate import array
from vgg.evaluate import HIDDEN_ROWS, EvalResult, Predictions, load_run_predictions
from vgg.runs import RunStore

REPO = Path(__file__).resolve().parent.parent
CLASSES = tuple(f"class {i}" for i in range(10))


def sorted_result(per_class: int = 200) -> EvalResult:
    """An evaluation of a class-sorted test set (all of class 0, then class 1, ...), as an image
    folder's test/ split or CIFAR-10's JPEG folders give one."""
    labels = torch.arange(10).repeat_interleave(per_class)
    probabilities = torch.nn.functional.one_hot(labels, 10).float() * 0.9 + 0.01
    hidden = torch.randn(len(labels), 4096, generator=torch.Generator().manual_seed(0))
    return EvalResult(0.5, 1.0, labels, probabilities, hidden)


def test_the_hidden_sample_holds_every_class_of_a_class_sorted_test_set() -> None:
    result = sorted_result()
    p = Predictions.from_eval(result, CLASSES)
    rows = p.hidden_rows
    assert len(rows) == HIDDEN_ROWS == 1000 and p.hidden.shape == (1000, 4096)
    counts = np.bincount(p.labels.numpy()[rows], minlength=10)
    assert counts.tolist() == [100] * 10  # the first 1,000 rows would be classes 0 to 4 only
    assert torch.equal(p.hidden[3].float(), result.hidden[rows[3]].half().float())  # rows and index agree
    small = Predictions.from_eval(sorted_result(per_class=20), CLASSES)  # 200 images: all are kept
    assert small.hidden_rows.tolist() == list(range(200))


def test_predictions_round_trip_with_their_sample(tmp_path: Path) -> None:
    p = Predictions.from_eval(sorted_result(), CLASSES)
    p.save(tmp_path / "predictions.pt", "test")
    again = Predictions.load(tmp_path / "predictions.pt")
    assert np.array_equal(again.hidden_rows, p.hidden_rows) and again.loss == pytest.approx(0.5)
    assert again.accuracy == p.accuracy == 1.0 and again.classes == CLASSES
    assert again.confusion().trace() == 2000 and again.per_class()["images"].tolist() == [200] * 10


def test_the_evaluate_page_plots_the_hidden_layer_of_every_class(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store = RunStore(tmp_path / "runs")
    config = {"config": "A", "batch_norm": True, "data": {"source": "synthetic", "input_size": 32}}
    with store.create(config, name="sorted") as writer:
        writer.save_predictions(Predictions.from_eval(sorted_result(), CLASSES))
        writer.save_checkpoint("best", {"x": torch.zeros(1)}, {})
        writer.set_status("done", "done", test_accuracy=1.0)
    assert len(load_run_predictions(store, writer.run_id).hidden_rows) == 1000
    monkeypatch.setenv("VGG_RUNS_DIR", str(store.root))
    at = AppTest.from_file(str(REPO / "pages" / "evaluate.py"), default_timeout=120)
    at.session_state["evaluate_section"] = "Representations"
    at.session_state["repr_kind"] = "hidden"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (pca,) = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    shown = {trace["name"]: len(array(trace["x"])) for trace in pca["data"] if "x" in trace}
    assert shown == {name: 100 for name in CLASSES}
