"""``python -m vgg`` end to end: summary, train, lr-find, runs, evaluate, predict, and its errors.

Commands run as subprocesses (``sys.executable -m vgg``) with their own data dir, runs dir and
TORCH_HOME. One tiny training run (synthetic shapes, 20 images per class, 32 px, 1 epoch) is made
once per module and shared by the tests that need a run. Validation errors, which never reach the
engine's heavy work, are checked in-process through ``vgg.cli.main`` to keep the module quick.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vgg import cli

REPO = Path(__file__).resolve().parent.parent
TINY_RUN = ["--dataset", "synthetic", "--images-per-class", "20", "--epochs", "1", "--input-size", "32"]
COMMAND_TIMEOUT_S = 240  # importing torch on a busy 2-core machine is slow; a hang still fails


# -------------------------------------------------------------------------------------------- helpers


def make_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VGG_DEBUG"}
    for name, folder in (("VGG_DATA_DIR", "data"), ("VGG_RUNS_DIR", "runs"), ("TORCH_HOME", "torch")):
        (base / folder).mkdir(parents=True, exist_ok=True)
        env[name] = str(base / folder)
    env["VGG_DEVICE"] = "cpu"
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vgg", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S)


def run_json(env: dict[str, str], *args: str) -> dict[str, Any]:
    done = run_cli(env, *args, "--json")
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return json.loads(done.stdout)  # exactly one JSON object: json.loads rejects anything after it


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    """stderr is a single ``error: ...`` line naming every fragment, with no traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, stderr)


def in_process(*args: str) -> tuple[int, str, str]:
    """``vgg.cli.main`` with captured streams (the conftest's autouse fixture isolates the dirs)."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def write_png(path: Path, colour: tuple[int, int, int] = (200, 40, 40)) -> Path:
    from PIL import Image

    Image.new("RGB", (48, 40), colour).save(path)
    return path


@pytest.fixture(scope="module")
def env(module_tmp: Path) -> dict[str, str]:
    return make_env(module_tmp)


@pytest.fixture(scope="module")
def trained(env: dict[str, str]) -> dict[str, Any]:
    """One tiny training run through the CLI; its ``--json`` result."""
    return run_json(env, "train", *TINY_RUN, "--batch-size", "64")


# -------------------------------------------------------------------------------------------- summary


def test_summary_prints_the_layer_table_and_totals(env: dict[str, str]) -> None:
    done = run_cli(env, "summary", "--config", "A", "--batch-norm")
    assert done.returncode == 0, done.stderr
    assert "features.0" in done.stdout and "classifier.6" in done.stdout
    assert "132,868,840" in done.stdout  # vgg11_bn, as torchvision
    assert "vgg11_bn" in done.stdout


def test_summary_json_has_layers_and_totals(env: dict[str, str]) -> None:
    result = run_json(env, "summary", "--config", "A", "--batch-norm")
    assert result["total_params"] == 132_868_840
    assert abs(result["total_macs"] / 7.61e9 - 1) < 0.01
    assert result["layers"][0]["name"] == "features.0"
    assert sum(row["params"] for row in result["layers"]) == result["total_params"]
    assert result["layers"][-1]["output_shape"] == "1000"


def test_summary_json_of_vgg19_at_224() -> None:
    code, out, err = in_process("summary", "--config", "E", "--input-size", "224", "--json")
    assert code == 0, err
    assert json.loads(out)["total_params"] == 143_667_240


def test_summary_with_a_bad_config_is_one_line(env: dict[str, str]) -> None:
    done = run_cli(env, "summary", "--config", "F")
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "'F'", "A, A-LRN, B, C, D, E")
    assert done.stdout == ""


def test_usage_errors_exit_2_with_one_line() -> None:
    code, _, err = in_process("summary")  # --config missing
    assert code == 2
    assert_one_line_error(err, "--config")
    code, _, err = in_process("train", "--epochs", "two")
    assert code == 2
    assert_one_line_error(err, "--epochs", "'two'")


# -------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("args", "fragments"), [
    (["train", "--lr", "0"], ["learning rate", "0.0"]),
    (["train", "--lr", "11"], ["learning rate", "11"]),
    (["train", "--batch-size", "0"], ["batch size", "0"]),
    (["train", "--epochs", "1000000"], ["epochs", "1000000"]),
    (["train", "--input-size", "16"], ["input size", "16"]),
    (["train", "--images-per-class", "0"], ["images per class", "0"]),
    (["train", "--config", "Z"], ["'Z'", "A-LRN"]),
    (["lr-find", "--num-iter", "1"], ["num_iter", "1"]),
    (["lr-find", "--batch-size", "0"], ["batch size", "0"]),
    (["summary", "--config", "A", "--input-size", "16"], ["input size", "16"]),
    (["train", "--dataset", "../../etc"], ["outside the allowed folders"]),
    (["train", "--init", "/etc/weights.pth"], ["outside the allowed folders"]),
    (["train", "--init", "bad id!"], ["invalid run id", "bad id!"]),
    (["train", "--init", "../weights.bin"], [".pth"]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and v[0] in ("summary", "lr-find", "train", "evaluate", "predict", "runs") else None)
def test_out_of_range_settings_are_refused_with_the_validation_message(args: list[str], fragments: list[str]) -> None:
    code, out, err = in_process(*args)
    assert code == 1
    assert out == ""
    assert_one_line_error(err, *fragments)


# -------------------------------------------------------------------------------------------- train


def test_train_json_reports_the_run(env: dict[str, str], trained: dict[str, Any]) -> None:
    for key in ("run_id", "best_val_accuracy", "test_accuracy", "seconds", "images_per_second", "status", "epochs"):
        assert key in trained, key
    assert trained["status"] == "done"
    assert trained["epochs"] == 1
    assert 0.0 <= trained["best_val_accuracy"] <= 1.0 and 0.0 <= trained["test_accuracy"] <= 1.0
    assert trained["images_per_second"] > 0
    folder = Path(env["VGG_RUNS_DIR"]) / trained["run_id"]
    assert folder.is_dir()
    for name in ("config.json", "metrics.csv", "status.json", "best.pt", "last.pt", "predictions.pt"):
        assert (folder / name).is_file(), name


def test_runs_lists_the_run(env: dict[str, str], trained: dict[str, Any]) -> None:
    result = run_json(env, "runs")
    rows = {row["run_id"]: row for row in result["runs"]}
    row = rows[trained["run_id"]]
    assert row["status"] == "done"
    assert row["config"] == "A" and row["batch_norm"] is True
    assert row["test_accuracy"] == pytest.approx(trained["test_accuracy"])
    code, out, err = in_process("runs", "--runs-dir", env["VGG_RUNS_DIR"])
    assert code == 0, err
    assert trained["run_id"] in out and "A-BN" in out


def test_evaluate_reads_the_saved_predictions(env: dict[str, str], trained: dict[str, Any]) -> None:
    result = run_json(env, "evaluate", trained["run_id"])
    assert result["test_accuracy"] == pytest.approx(trained["test_accuracy"])
    assert result["test_loss"] == pytest.approx(trained["test_loss"])
    per_class = result["per_class_accuracy"]
    assert set(per_class) == set(trained["classes"])
    images = result["per_class_images"]
    correct = sum(per_class[c] * images[c] for c in per_class if per_class[c] is not None)
    assert correct / result["test_images"] == pytest.approx(result["test_accuracy"])


def test_evaluate_recomputes_from_the_checkpoint_when_predictions_are_missing(
        env: dict[str, str], trained: dict[str, Any]) -> None:
    runs = Path(env["VGG_RUNS_DIR"])
    copy_id = trained["run_id"] + "-nopred"
    shutil.copytree(runs / trained["run_id"], runs / copy_id, ignore=shutil.ignore_patterns("predictions.pt", "last.pt"))
    try:
        result = run_json(env, "evaluate", copy_id)
        assert "evaluated on the test set now" in result["source"]
        assert result["test_accuracy"] == pytest.approx(trained["test_accuracy"], abs=1e-6)
        assert result["test_loss"] == pytest.approx(trained["test_loss"], rel=1e-3)
        assert set(result["per_class_accuracy"]) == set(trained["classes"])
    finally:
        shutil.rmtree(runs / copy_id)


def test_evaluate_an_unknown_run_is_one_line() -> None:
    code, out, err = in_process("evaluate", "no-such-run")
    assert code == 1 and out == ""
    assert_one_line_error(err, "no-such-run")


# -------------------------------------------------------------------------------------------- export
# (the exports themselves are checked in tests/test_export.py, on a run trained there)


def test_export_usage_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    code, out, err = in_process("export", "some-run", "--format", "tflite", "-o", str(tmp_path / "m"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "--format", "'tflite'", "'pt'", "'onnx'")
    code, _, err = in_process("export", "some-run", "--format", "onnx")  # -o missing
    assert code == 2
    assert_one_line_error(err, "--output")
    assert not any(tmp_path.iterdir())


def test_export_an_unknown_run_is_one_line(tmp_path: Path) -> None:
    code, out, err = in_process("export", "no-such-run", "--format", "pt", "-o", str(tmp_path / "m.pt"))
    assert code == 1 and out == ""
    assert_one_line_error(err, "no run 'no-such-run'")
    assert not any(tmp_path.iterdir())


# -------------------------------------------------------------------------------------------- lr-find


def test_lr_find_json_gives_suggestions(env: dict[str, str]) -> None:
    result = run_json(env, "lr-find", "--dataset", "synthetic", "--images-per-class", "20", "--input-size", "32",
                      "--batch-size", "8", "--num-iter", "10", "--end-lr", "1")
    assert set(result["suggestions"]) == {"steepest", "valley", "min_div10"}
    lowest = result["lrs"][min(range(len(result["losses"])), key=lambda i: result["smoothed"][i])]
    assert result["recommended_rule"] == "recommended"
    assert result["recommended"] == pytest.approx(max(lowest, 3e-4))  # too few points to skip any; the floor
    for lr in result["suggestions"].values():
        assert lr is None or (isinstance(lr, float) and 0 < lr <= 1)
    assert 2 <= len(result["lrs"]) <= 10 and len(result["losses"]) == len(result["lrs"])
    assert result["lrs"][0] == pytest.approx(1e-7)
    assert result["restored"] is True


# -------------------------------------------------------------------------------------------- predict


def check_top5(entry: dict[str, Any], classes: list[str]) -> None:
    top5 = entry["top5"]
    assert len(top5) == 5
    probabilities = [item["probability"] for item in top5]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 <= p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-5
    assert {item["class"] for item in top5} <= set(classes)


def test_predict_with_a_run_id(env: dict[str, str], trained: dict[str, Any], tmp_path: Path) -> None:
    image = write_png(tmp_path / "image.png")
    result = run_json(env, "predict", trained["run_id"], str(image))
    assert result["failed"] == 0
    (entry,) = result["predictions"]
    assert entry["file"] == str(image)
    check_top5(entry, trained["classes"])


def test_predict_with_a_checkpoint_path(env: dict[str, str], trained: dict[str, Any], tmp_path: Path) -> None:
    image = write_png(tmp_path / "image.png", (20, 160, 60))
    checkpoint = Path(env["VGG_RUNS_DIR"]) / trained["run_id"] / "best.pt"
    result = run_json(env, "predict", str(checkpoint), str(image))
    check_top5(result["predictions"][0], trained["classes"])


def test_predict_a_text_file_named_jpg_is_one_clear_line(env: dict[str, str], trained: dict[str, Any],
                                                         tmp_path: Path) -> None:
    fake = tmp_path / "x.jpg"
    fake.write_text("this is not a picture\n")
    done = run_cli(env, "predict", trained["run_id"], str(fake))
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "x.jpg")


def test_predict_keeps_going_after_a_bad_file(env: dict[str, str], trained: dict[str, Any], tmp_path: Path) -> None:
    good = write_png(tmp_path / "good.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    missing = tmp_path / "missing.png"
    done = run_cli(env, "predict", trained["run_id"], str(tmp_path / "empty.jpg"), str(good), str(missing), "--json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 2  # one line per bad file
    entries = json.loads(done.stdout)["predictions"]
    assert [e["file"] for e in entries] == [str(tmp_path / "empty.jpg"), str(good), str(missing)]
    assert "error" in entries[0] and "error" in entries[2]
    check_top5(entries[1], trained["classes"])


def test_predict_refuses_a_checkpoint_outside_the_allowed_folders(tmp_path: Path) -> None:
    outside = tmp_path / "model.pt"
    outside.write_bytes(b"not a checkpoint")
    code, out, err = in_process("predict", str(outside), str(write_png(tmp_path / "a.png")))
    assert code == 1 and out == ""
    assert_one_line_error(err, "outside the allowed folders")


def test_predict_refuses_a_hostile_checkpoint_in_the_runs_dir(isolated_dirs: dict[str, Path], tmp_path: Path) -> None:
    hostile = isolated_dirs["VGG_RUNS_DIR"] / "evil.pt"
    hostile.write_bytes(b"\x80\x04\x95" + b"garbage that is no zip and no safe pickle")
    code, out, err = in_process("predict", str(hostile), str(write_png(tmp_path / "a.png")))
    assert code == 1 and out == ""
    assert_one_line_error(err, "evil.pt")


# -------------------------------------------------------------------------------------------- Ctrl-C


@pytest.mark.slow
def test_ctrl_c_cancels_the_training_and_keeps_the_run(tmp_path: Path) -> None:
    env = make_env(tmp_path)
    runs = Path(env["VGG_RUNS_DIR"])
    process = subprocess.Popen(
        [sys.executable, "-m", "vgg", "train", "--dataset", "synthetic", "--images-per-class", "20",
         "--input-size", "32", "--epochs", "200", "--batch-size", "32"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + COMMAND_TIMEOUT_S
        # Wait until a first epoch (and so best.pt) is written, then press Ctrl-C.
        while not any("\nepoch," in p.read_text() for p in runs.glob("*/metrics.csv")):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "training did not start"
            time.sleep(0.2)  # polling interval
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted" in err
    (folder,) = [p for p in runs.iterdir() if p.is_dir()]
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "cancelled"
    assert (folder / "best.pt").is_file()


# -------------------------------------------------------------------------------------------- helpers


def test_progress_bar_writes_lines_to_a_pipe_and_nothing_when_disabled() -> None:
    from vgg.cli.progress import Progress

    stream = io.StringIO()
    bar = Progress(stream, log_interval=0.0)
    bar.update(0.5, "epoch 1")
    bar.message("epoch 1 done")
    bar.update(None, "loading")
    bar.close()
    lines = [line.strip("\r ") for line in stream.getvalue().splitlines() if line.strip("\r ")]
    assert any("50%" in line and line.endswith("epoch 1") for line in lines), lines
    assert "epoch 1 done" in lines
    assert lines[-1].endswith("loading")

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    live = Progress(screen)
    live.update(0.25, "step 1", force=True)
    live.update(0.75, "step 3", force=True)
    live.close()
    frames = screen.getvalue().split("\r")
    assert any("25%" in f for f in frames) and any("75%" in f and "step 3" in f for f in frames)
    assert "\n" not in screen.getvalue()  # redrawn in place, then cleared
    quiet = io.StringIO()
    off = Progress(quiet, enabled=False)
    off.update(0.3, "x")
    off.message("y")
    off.close()
    assert quiet.getvalue() == ""


def test_jsonable_makes_strict_json() -> None:
    import numpy as np
    import torch

    from vgg.files import jsonable

    value = jsonable({"a": float("nan"), "b": np.int64(3), "c": torch.tensor(0.5), "d": (1, Path("/x")),
                      "e": float("inf")}, finite=True)
    assert value == {"a": None, "b": 3, "c": 0.5, "d": [1, "/x"], "e": None}
    json.dumps(value, allow_nan=False)


def test_the_cli_defaults_are_the_engine_defaults() -> None:
    from vgg.cli.parser import build_parser
    from vgg.lr_finder import LRFinderConfig
    from vgg.train import TrainConfig

    train = build_parser().parse_args(["train"])
    assert (train.lr, train.epochs, train.batch_size, train.config) == (TrainConfig.lr, TrainConfig.epochs,
                                                                        TrainConfig.batch_size, TrainConfig.config)
    assert train.images_per_class == TrainConfig().data.images_per_class
    assert (train.dropout, train.label_smoothing, train.tta) == (TrainConfig.dropout, TrainConfig.label_smoothing,
                                                                 TrainConfig.tta)
    from vgg.cli.common import Dirs, train_config

    tricks = build_parser().parse_args(["train", "--dropout", "0.2", "--label-smoothing", "0.1", "--tta"])
    cfg = train_config(tricks, Dirs(Path("data"), Path("runs")), for_training=True)
    assert (cfg.dropout, cfg.label_smoothing, cfg.tta) == (0.2, 0.1, True)  # the Train page's tricks
    lr_find = build_parser().parse_args(["lr-find"])
    assert (lr_find.num_iter, lr_find.end_lr) == (LRFinderConfig.num_iter, LRFinderConfig.end_lr)
