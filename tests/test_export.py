"""Taking a model home: the torchvision state dict and the ONNX file of a run, and ``python -m vgg export``.

One tiny run (VGG11-BN, synthetic shapes at 32 px, 20 images per class, 1 epoch) is trained once
for the module; each format is exported once and shared. ONNX Runtime must agree with PyTorch on
the top-1 class of ≥ 99.9 % of the run's test split and of 2,000 freshly drawn shapes.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision

from vgg import cli, export
from vgg.augment import normalize, to_float
from vgg.data import DataConfig, load_data
from vgg.data.synthetic import SHAPE_CLASSES, generate_shapes
from vgg.errors import ConfigError, PathError
from vgg.inference import LoadedModel, load_model, run_data_config
from vgg.model import build_vgg
from vgg.runs import RunNotFoundError, RunStore
from vgg.train import TrainConfig, fit

AGREEMENT = 0.999  # share of images on which ONNX Runtime and PyTorch must pick the same class
FRESH_PER_CLASS = 200  # 2,000 generated shapes: at most 2 disagreements
BATCH = 250


@pytest.fixture(scope="module")
def run(module_tmp: Path) -> tuple[RunStore, str]:
    store = RunStore(module_tmp / "runs")
    data = DataConfig(source="synthetic", input_size=32, images_per_class=20, data_dir=module_tmp / "data")
    cfg = TrainConfig(config="A", batch_norm=True, epochs=1, batch_size=64, data=data, device="cpu")
    result = fit(cfg, store=store)
    assert result.status == "done" and result.run_id, result.message
    return store, result.run_id


@pytest.fixture(scope="module")
def loaded(run: tuple[RunStore, str]) -> LoadedModel:
    store, run_id = run
    return load_model(run_id, store=store)


@pytest.fixture(scope="module")
def pt_export(run: tuple[RunStore, str]) -> export.Export:
    store, run_id = run
    return export.export_run(store, run_id, "pt")


@pytest.fixture(scope="module")
def onnx_export(run: tuple[RunStore, str]) -> export.Export:
    store, run_id = run
    return export.export_run(store, run_id, "onnx")


@pytest.fixture(scope="module")
def onnx_model(onnx_export: export.Export) -> onnx.ModelProto:
    return onnx.load_model_from_string(onnx_export.data)


@pytest.fixture(scope="module")
def session(onnx_export: export.Export) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(onnx_export.data, options, providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def test_images(run: tuple[RunStore, str]) -> torch.Tensor:
    """uint8 (200, 3, 32, 32): the run's own test split."""
    store, run_id = run
    splits = load_data(run_data_config(store.get(run_id).config))
    assert len(splits.test) == 200
    return splits.test.images


def metadata(model: onnx.ModelProto) -> dict[str, Any]:
    return {p.key: json.loads(p.value) for p in model.metadata_props}


def normalised(images: torch.Tensor, meta: dict[str, Any]) -> np.ndarray:
    """What a user of the ONNX file does with its metadata: uint8 → float32, (x/255 − mean) / std."""
    return normalize(to_float(images), meta["mean"], meta["std"]).numpy().astype(np.float32)


def logits_both(session: ort.InferenceSession, loaded: LoadedModel,
                x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ONNX Runtime, PyTorch) logits of the batches of ``x`` (N, 3, S, S)."""
    onnx_out, torch_out = [], []
    for start in range(0, len(x), BATCH):
        chunk = x[start:start + BATCH]
        onnx_out.append(session.run(["logits"], {"image": chunk})[0])
        with torch.no_grad():
            torch_out.append(loaded.model(torch.from_numpy(chunk)).numpy())
    return np.concatenate(onnx_out), np.concatenate(torch_out)


def assert_agree(onnx_logits: np.ndarray, torch_logits: np.ndarray) -> None:
    n = len(torch_logits)
    disagree = int((onnx_logits.argmax(1) != torch_logits.argmax(1)).sum())
    assert disagree <= int((1 - AGREEMENT) * n + 1e-9), f"{disagree} of {n} top-1 classes differ"
    scale = float(np.abs(torch_logits).max())
    np.testing.assert_allclose(onnx_logits, torch_logits, rtol=1e-3, atol=1e-4 * max(scale, 1.0))


def in_process(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


def identity(path: Path) -> tuple[int, int, int]:
    """Which file is there: an atomic replace makes a new inode (cheaper than hashing 500 MB)."""
    stat = path.stat()
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


# -------------------------------------------------------------------------------------------- state dict


def test_the_state_dict_loads_into_torchvision_strictly_and_gives_the_same_logits(
        pt_export: export.Export, loaded: LoadedModel, test_images: torch.Tensor) -> None:
    state = torch.load(io.BytesIO(pt_export.data), weights_only=True)
    model = torchvision.models.vgg11_bn(num_classes=10)
    model.load_state_dict(state, strict=True)
    model.eval()
    x = normalize(to_float(test_images), loaded.mean, loaded.std)
    with torch.no_grad():
        torch.testing.assert_close(model(x), loaded.model(x), rtol=0, atol=1e-4)
    assert pt_export.info.torchvision_name == "vgg11_bn"
    assert pt_export.info.classes == SHAPE_CLASSES


def test_the_state_dict_holds_only_its_own_tensors(pt_export: export.Export) -> None:
    # A view of a larger storage would drag that storage into the file.
    state = torch.load(io.BytesIO(pt_export.data), weights_only=True)
    payload = sum(t.numel() * t.element_size() for t in state.values())
    assert len(pt_export.data) < payload * 1.01


# -------------------------------------------------------------------------------------------- ONNX file


def test_the_onnx_file_passes_the_checker_with_opset_17_or_later(onnx_model: onnx.ModelProto) -> None:
    onnx.checker.check_model(onnx_model)
    opset = {o.domain: o.version for o in onnx_model.opset_import}
    assert opset.get("", opset.get("ai.onnx", 0)) >= 17


def test_the_onnx_graph_has_a_dynamic_batch_of_normalised_images(onnx_model: onnx.ModelProto) -> None:
    (image,) = onnx_model.graph.input
    (logits,) = onnx_model.graph.output
    assert image.name == "image" and logits.name == "logits"
    assert image.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = image.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # the batch axis is symbolic
    assert [d.dim_value for d in dims[1:]] == [3, 32, 32]
    out_dims = logits.type.tensor_type.shape.dim
    assert out_dims[0].dim_param == dims[0].dim_param and out_dims[1].dim_value == 10


def test_the_onnx_metadata_says_classes_size_mean_and_std_as_json(
        onnx_model: onnx.ModelProto, loaded: LoadedModel) -> None:
    raw = {p.key: p.value for p in onnx_model.metadata_props}
    meta = {key: json.loads(value) for key, value in raw.items()}  # every value is JSON
    assert meta["classes"] == list(SHAPE_CLASSES) == list(loaded.classes)
    assert meta["input_size"] == 32 == loaded.input_size
    assert meta["mean"] == list(loaded.mean) and meta["std"] == list(loaded.std)
    assert meta["model"] == "vgg11_bn"
    assert len(meta["mean"]) == len(meta["std"]) == 3 and all(0 < s < 1 for s in meta["std"])


def test_onnx_runtime_agrees_with_pytorch_on_the_test_split(
        session: ort.InferenceSession, loaded: LoadedModel, onnx_model: onnx.ModelProto,
        test_images: torch.Tensor) -> None:
    onnx_logits, torch_logits = logits_both(session, loaded, normalised(test_images, metadata(onnx_model)))
    assert onnx_logits.shape == (200, 10)
    assert_agree(onnx_logits, torch_logits)


@pytest.mark.slow
def test_onnx_runtime_agrees_with_pytorch_on_2000_fresh_shapes(
        session: ort.InferenceSession, loaded: LoadedModel, onnx_model: onnx.ModelProto) -> None:
    images, _ = generate_shapes(FRESH_PER_CLASS, size=32, seed=2024)
    onnx_logits, torch_logits = logits_both(session, loaded, normalised(images, metadata(onnx_model)))
    assert onnx_logits.shape == (2000, 10)
    assert_agree(onnx_logits, torch_logits)


def test_the_onnx_batch_axis_takes_any_size(session: ort.InferenceSession, loaded: LoadedModel) -> None:
    x = torch.randn(7, 3, 32, 32)
    with torch.no_grad():
        expected = loaded.model(x).numpy()
    for rows in (slice(0, 1), slice(0, 7)):
        (got,) = session.run(None, {"image": x[rows].numpy()})
        np.testing.assert_allclose(got, expected[rows], rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_a_config_without_a_torchvision_model_exports_too(tmp_path: Path) -> None:
    """A-LRN (LRN after the first convolution): the state dict loads into ``build_vgg``, the ONNX
    file runs the LRN as PyTorch does."""
    store = RunStore(tmp_path / "runs")
    model = build_vgg("A-LRN", num_classes=3).eval()
    meta = {"config": "A-LRN", "batch_norm": False, "classes": ["a", "b", "c"], "num_classes": 3,
            "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3], "input_size": 32, "epoch": 1}
    with store.create({"config": "A-LRN", "batch_norm": False}, name="lrn") as writer:
        writer.save_checkpoint("last", model.state_dict(), meta)
        writer.copy_checkpoint("last", "best")
        writer.set_status("done")
    run_id = writer.run_id

    state = torch.load(io.BytesIO(export.export_bytes(store, run_id, "pt")), weights_only=True)
    with torch.device("meta"):  # what load_state_dict overwrites need not be initialised
        rebuilt = build_vgg("A-LRN", num_classes=3)
    rebuilt.load_state_dict(state, strict=True, assign=True)
    rebuilt.eval()

    exported = export.export_run(store, run_id, "onnx")
    assert exported.info.torchvision_name is None and exported.info.model == "vgg11_lrn"
    assert metadata(onnx.load_model_from_string(exported.data))["classes"] == ["a", "b", "c"]
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = model(x).numpy()
        torch.testing.assert_close(rebuilt(x), model(x))
    (got,) = ort.InferenceSession(exported.data, providers=["CPUExecutionProvider"]).run(
        None, {"image": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)


# ------------------------------------------------------------------------------------- files and errors


def test_export_file_writes_what_export_bytes_returns(
        run: tuple[RunStore, str], pt_export: export.Export, tmp_path: Path) -> None:
    store, run_id = run
    target = tmp_path / "model.pt"
    target.write_bytes(b"an old file")  # replaced, not appended to
    assert export.export_file(store, run_id, "pt", target) == target.resolve()
    assert target.read_bytes() == pt_export.data
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temporary file left


def test_an_unknown_format_names_the_choices(run: tuple[RunStore, str]) -> None:
    store, run_id = run
    with pytest.raises(ConfigError, match=r"unknown export format 'tflite'; choose one of pt, onnx"):
        export.export_bytes(store, run_id, "tflite")


def test_an_unknown_run_is_refused(run: tuple[RunStore, str], tmp_path: Path) -> None:
    store, _ = run
    with pytest.raises(RunNotFoundError, match="no run 'nope'"):
        export.export_file(store, "nope", "pt", tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


@pytest.mark.parametrize("name", ["best.pt", "config.json", "model.onnx"])
def test_nothing_is_written_into_a_run_folder(run: tuple[RunStore, str], name: str) -> None:
    store, run_id = run
    folder = store.root / run_id
    before = {p.name: identity(p) for p in folder.iterdir() if p.is_file()}
    with pytest.raises(PathError, match="inside the run folder"):
        export.export_file(store, run_id, "pt", folder / name)
    assert {p.name: identity(p) for p in folder.iterdir() if p.is_file()} == before


def test_a_link_into_a_run_folder_is_refused(run: tuple[RunStore, str], tmp_path: Path) -> None:
    store, run_id = run
    link = tmp_path / "innocent.pt"
    link.symlink_to(store.root / run_id / "best.pt")
    with pytest.raises(PathError, match="inside the run folder"):
        export.check_destination(store, link)


def test_a_folder_or_a_missing_parent_is_refused(run: tuple[RunStore, str], tmp_path: Path) -> None:
    store, _ = run
    with pytest.raises(PathError, match="is a folder"):
        export.check_destination(store, tmp_path)
    with pytest.raises(PathError, match="does not exist"):
        export.check_destination(store, tmp_path / "missing" / "model.onnx")


# -------------------------------------------------------------------------------------------- command line


def test_the_cli_writes_both_formats(run: tuple[RunStore, str], pt_export: export.Export,
                                     onnx_export: export.Export, tmp_path: Path) -> None:
    store, run_id = run
    code, out, err = in_process("export", run_id, "--format", "pt", "-o", str(tmp_path / "m.pt"),
                                "--runs-dir", str(store.root))
    assert code == 0, err
    assert "torchvision.models.vgg11_bn(num_classes=10)" in out and "circle" in out
    assert (tmp_path / "m.pt").read_bytes() == pt_export.data

    code, out, err = in_process("export", run_id, "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                                "--runs-dir", str(store.root), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["format"] == "onnx" and report["path"] == str((tmp_path / "m.onnx").resolve())
    assert report["classes"] == list(SHAPE_CLASSES) and report["input_size"] == 32
    assert report["bytes"] == (tmp_path / "m.onnx").stat().st_size
    assert (tmp_path / "m.onnx").read_bytes() == onnx_export.data  # the exporter is deterministic


def test_the_cli_refuses_an_unknown_format_with_exit_2(run: tuple[RunStore, str], tmp_path: Path) -> None:
    store, run_id = run
    code, out, err = in_process("export", run_id, "--format", "tflite", "-o", str(tmp_path / "m"),
                                "--runs-dir", str(store.root))
    assert code == 2 and out == ""
    assert "invalid choice: 'tflite'" in one_error_line(err)
    assert not (tmp_path / "m").exists()


def test_the_cli_refuses_an_unknown_run_with_one_line(run: tuple[RunStore, str], tmp_path: Path) -> None:
    store, _ = run
    code, out, err = in_process("export", "no-such-run", "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                                "--runs-dir", str(store.root))
    assert code == 1 and out == ""
    assert "no run 'no-such-run'" in one_error_line(err)


def test_the_cli_refuses_to_overwrite_a_checkpoint(run: tuple[RunStore, str]) -> None:
    store, run_id = run
    best = store.root / run_id / "best.pt"
    before = identity(best)
    code, _, err = in_process("export", run_id, "--format", "onnx", "-o", str(best),
                              "--runs-dir", str(store.root))
    assert code == 1
    assert "never overwritten" in one_error_line(err)
    assert identity(best) == before
