"""Run folders written before the restructuring still open: Evaluate, Classify, ``python -m vgg evaluate``.

``fixtures/run-a4c7f9f.tar.xz`` is a run folder written by commit a4c7f9f (the code before
``vgg`` was reorganised): VGG11-BN, synthetic shapes at 32 px, 6 images per class, 2 epochs,
seed 3, fp32. Its ``best.pt`` is that run's checkpoint with every tensor of more than 100,000
values set to zero, so that the archive is small (the structure, names, shapes, dtypes and metadata
are the original's; ``last.pt`` is a hard link to it, as that code wrote it); ``config.json``,
``status.json``, ``metrics.csv`` and ``predictions.pt`` are as written.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from tests.test_page_evaluate import array
from vgg.evaluate import load_run_predictions
from vgg.inference import load_model, predict
from vgg.runs import RunStore

REPO = Path(__file__).resolve().parent.parent
FIXTURE = Path(__file__).resolve().parent / "fixtures" / "run-a4c7f9f.tar.xz"
RUN_ID = "20261203-052653-vgg-A-bn-scratch-f301"
SHAPES = ("circle", "square", "triangle", "diamond", "plus", "cross", "ring", "frame", "stripes", "crescent")


@pytest.fixture(scope="module")
def old_runs(module_tmp: Path) -> Path:
    runs = module_tmp / "runs"
    runs.mkdir()
    with tarfile.open(FIXTURE) as archive:
        archive.extractall(runs, filter="data")
    return runs


def test_the_old_run_is_listed_and_its_files_read(old_runs: Path) -> None:
    store = RunStore(old_runs)
    (info,) = store.list_runs()
    assert (info.run_id, info.status, info.has_best, info.has_predictions) == (RUN_ID, "done", True, True)
    predictions = load_run_predictions(store, RUN_ID)
    assert predictions.classes == SHAPES and len(predictions) == 60
    assert predictions.hidden is not None and predictions.hidden_rows.tolist() == list(range(60))
    assert predictions.loss is None  # that code kept the loss in status.json only
    assert predictions.accuracy == pytest.approx(info.summary["test_accuracy"])
    loaded = load_model(RUN_ID, store=store)
    assert (loaded.classes, loaded.input_size, loaded.config, loaded.batch_norm) == (SHAPES, 32, "A", True)
    assert len(predict(loaded, [Image.new("RGB", (40, 30), (200, 30, 30))])[0].top) == 5


def test_python_m_vgg_evaluate_reads_the_old_run(old_runs: Path, isolated_dirs: dict[str, Path]) -> None:
    env = {**{k: str(v) for k, v in isolated_dirs.items()}, "VGG_RUNS_DIR": str(old_runs), "VGG_DEVICE": "cpu",
           "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-m", "vgg", "evaluate", RUN_ID, "--json"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["test_accuracy"] == pytest.approx(0.1) and result["test_images"] == 60
    assert result["test_loss"] == pytest.approx(5.228227742513021)  # from status.json
    assert set(result["per_class_accuracy"]) == set(SHAPES)


def test_the_evaluate_page_opens_the_old_run(old_runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGG_RUNS_DIR", str(old_runs))
    at = AppTest.from_file(str(REPO / "pages" / "evaluate.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Test accuracy"] == "10.0%" and metrics["Test images"] == "60"
    assert metrics["Test loss"] == "5.228"
    at.session_state["evaluate_section"] = "Representations"
    at.session_state["repr_kind"] = "hidden"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (pca,) = [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]
    assert sum(len(array(trace["x"])) for trace in pca["data"] if "x" in trace) == 60


def test_the_classify_page_classifies_with_the_old_run(old_runs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGG_RUNS_DIR", str(old_runs))
    at = AppTest.from_file(str(REPO / "pages" / "classify.py"), default_timeout=120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.selectbox(key="classify_run").value == RUN_ID
    picture = io.BytesIO()
    Image.new("RGB", (64, 48), (30, 200, 30)).save(picture, format="PNG")
    at.file_uploader(key="classify_upload").set_value([("green.png", picture.getvalue(), "image/png")])
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    (top5,) = [s for s in (json.loads(c.proto.spec) for c in at.get("plotly_chart"))
               if s["data"][0].get("orientation") == "h"]
    assert len(top5["data"][0]["y"]) == 5 and set(top5["data"][0]["y"]) <= set(SHAPES)
