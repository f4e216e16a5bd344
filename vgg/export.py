"""Taking a model home: a run's best model as a file that runs without this app.

Two formats (``FORMATS``):

- ``"pt"``: torchvision's state dict (``torch.save`` of an ordered dict of tensors). It loads with
  ``strict=True`` into ``torchvision.models.vgg11_bn(num_classes=k)`` (the run's own model name),
  or, for the paper's A-LRN and C that torchvision lacks, into ``vgg.model.build_vgg(config,
  batch_norm=..., num_classes=k)``. Class names, input size, mean and std are not in the file:
  ``ExportInfo`` (and the CLI's output) says them.
- ``"onnx"``: the plain model (``vgg.model.VGG``, torchvision's forward, eval mode, CPU, no
  speed-up wrappers) through PyTorch's ``torch.export``-based exporter, opset ``ONNX_OPSET``.
  Input ``image``: float32 ``(N, 3, S, S)``, RGB scaled to [0, 1] and normalised with the run's
  mean and std; output ``logits``: ``(N, classes)``; the batch axis is dynamic. The file's
  ``metadata_props`` hold ``classes``, ``input_size``, ``mean``, ``std`` and ``model``, each as JSON.

``export_bytes`` returns the file's bytes (for a download button), ``export_file`` writes it
atomically to a path the user names, anywhere except inside a run folder (a run's own files are
never overwritten). ``export_run`` + ``write_export`` are the same in two steps, with what was
exported and how long it took.
"""

from __future__ import annotations

import io
import json
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vgg.errors import ConfigError, PathError, VGGError, one_line
from vgg.files import atomic_write
from vgg.inference import load_model
from vgg.model import VGG, build_vgg, torchvision_name
from vgg.runs import RunStore

FORMATS: tuple[str, ...] = ("pt", "onnx")
FORMAT_NAMES: dict[str, str] = {"pt": "PyTorch state dict", "onnx": "ONNX"}
ONNX_OPSET = 18  # onnxruntime ≥ 1.14 runs it; torch's exporter writes 18 and later
ONNX_INPUT, ONNX_OUTPUT = "image", "logits"
METADATA_KEYS: tuple[str, ...] = ("classes", "input_size", "mean", "std", "model")


class ExportError(VGGError):
    """A model could not be exported (a missing package, an exporter failure)."""


@dataclass(frozen=True)
class ExportInfo:
    """What a user of an exported model must know: which model, its classes and its input."""

    run_id: str
    model: str  # lowercase model name, e.g. "vgg11_bn"
    config: str  # row of the paper's Table 1
    batch_norm: bool
    classes: tuple[str, ...]  # class names in output order
    input_size: int  # side S of the square input (N, 3, S, S)
    mean: tuple[float, float, float]  # input = (rgb / 255 − mean) / std
    std: tuple[float, float, float]

    @property
    def torchvision_name(self) -> str | None:
        """torchvision's constructor name (``"vgg11_bn"``); None for A-LRN and C, which it lacks."""
        return torchvision_name(self.config, self.batch_norm)

    def metadata(self) -> dict[str, str]:
        """The ONNX ``metadata_props``: each value is ``json.dumps`` of a plain value."""
        values: dict[str, Any] = {"classes": list(self.classes), "input_size": self.input_size,
                                  "mean": list(self.mean), "std": list(self.std), "model": self.model}
        return {key: json.dumps(values[key]) for key in METADATA_KEYS}


@dataclass(frozen=True, eq=False)
class Export:
    """One exported model: the file's bytes, what it is, and how long the export took."""

    fmt: str  # one of FORMATS
    data: bytes
    info: ExportInfo
    seconds: float

    @property
    def file_name(self) -> str:
        """A file name to offer for download, e.g. ``<run id>.onnx``."""
        return f"{self.info.run_id}.{self.fmt}"


def check_format(fmt: str) -> str:
    """Return ``fmt`` if it is one of ``FORMATS``, else raise ``ConfigError`` naming the choices."""
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return fmt


# --------------------------------------------------------------------------------------------
# Reading the run


def _read_run(store: RunStore, run_id: str) -> tuple[dict[str, Tensor], ExportInfo]:
    """The run's best weights as torchvision's state dict, and what the model expects.

    The one place that reads a run's weights for export. Until ``vgg.runs.torchvision_state(store,
    run_id, which="best")`` exists (it expands compact checkpoints), the state dict comes from
    ``vgg.inference.load_model``, which checks the checkpoint against its architecture; switch to
    it here.
    """
    loaded = load_model(run_id, store=store, device="cpu")
    info = ExportInfo(run_id=run_id, model=loaded.name, config=loaded.config, batch_norm=loaded.batch_norm,
                      classes=tuple(loaded.classes), input_size=loaded.input_size,
                      mean=loaded.mean, std=loaded.std)
    return loaded.model.state_dict(), info


def _plain_state(state: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
    """CPU tensors that own their storage: ``torch.save`` writes a view's whole storage."""
    plain: OrderedDict[str, Tensor] = OrderedDict()
    for key, tensor in state.items():
        tensor = tensor.detach().cpu()
        if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
            tensor = tensor.clone()
        plain[key] = tensor.contiguous()
    return plain


def _plain_model(state: dict[str, Tensor], info: ExportInfo) -> VGG:
    """The lesson's ``VGG`` (torchvision's forward) with ``state``: eval mode, CPU, no wrappers."""
    with torch.device("meta"):  # no time spent initialising what the state dict overwrites
        model = build_vgg(info.config, batch_norm=info.batch_norm, num_classes=len(info.classes))
    model.load_state_dict(state, strict=True, assign=True)
    return model.cpu().eval().requires_grad_(False)


# --------------------------------------------------------------------------------------------
# The two formats


def _state_dict_bytes(state: dict[str, Tensor]) -> bytes:
    buffer = io.BytesIO()
    torch.save(_plain_state(state), buffer)
    return buffer.getvalue()


def _onnx_bytes(state: dict[str, Tensor], info: ExportInfo) -> bytes:
    """The plain model as ONNX with a dynamic batch axis and the metadata a user needs."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs onnx and onnxscript)
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ExportError(f"ONNX export needs the packages onnx and onnxscript ({exc.name} is missing): "
                          "pip install -r requirements.txt") from exc
    model = _plain_model(state, info)
    # (2, 3, S, S): torch.export would fix a batch of 1 as a constant instead of a dynamic axis
    example = torch.zeros(2, 3, info.input_size, info.input_size)
    try:
        program = torch.onnx.export(
            model, (example,), None, dynamo=True, opset_version=ONNX_OPSET,
            input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT],
            dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)
    except Exception as exc:  # the exporter raises many types; the user gets one line
        reason = f"{type(exc).__name__}: {one_line(exc, 200)}"
        raise ExportError(f"ONNX export of {info.model} failed: {reason}") from exc
    if program is None:  # only the legacy exporter returns None
        raise ExportError("torch.onnx.export returned no program; PyTorch ≥ 2.6 is needed for ONNX export")
    proto = program.model_proto
    for key, value in info.metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    mean = ", ".join(f"{v:.4f}" for v in info.mean)
    std = ", ".join(f"{v:.4f}" for v in info.std)
    proto.doc_string = (
        f"{info.model} trained in the VGG classroom (run {info.run_id}). Input '{ONNX_INPUT}': float32 "
        f"(N, 3, {info.input_size}, {info.input_size}), RGB / 255, minus mean ({mean}), divided by std "
        f"({std}). Output '{ONNX_OUTPUT}': (N, {len(info.classes)}), classes in metadata 'classes'.")
    return proto.SerializeToString()


# --------------------------------------------------------------------------------------------
# Public API


def export_run(store: RunStore, run_id: str, fmt: str) -> Export:
    """Export the best model of run ``run_id`` as ``fmt`` (one of ``FORMATS``), in memory.

    Raises ``ConfigError`` (unknown format), ``RunNotFoundError`` / ``PathError`` (no such run),
    ``CheckpointError`` (no best.pt yet, or unreadable) and ``ExportError`` (the exporter failed).
    """
    check_format(fmt)
    store.get(run_id)  # "no run 'x' in <runs dir>" before anything is read
    start = time.perf_counter()
    state, info = _read_run(store, run_id)
    data = _state_dict_bytes(state) if fmt == "pt" else _onnx_bytes(state, info)
    return Export(fmt=fmt, data=data, info=info, seconds=time.perf_counter() - start)


def export_bytes(store: RunStore, run_id: str, fmt: str) -> bytes:
    """The bytes of the file ``export_file`` would write (for a download button)."""
    return export_run(store, run_id, fmt).data


def check_destination(store: RunStore, path: Path | str) -> Path:
    """The resolved file to write an export to; ``PathError`` for a folder, a missing parent
    folder or a file inside a run folder of ``store`` (a run's own files are never overwritten)."""
    dest = Path(path).expanduser().resolve()  # a link is followed: what would be overwritten counts
    if dest.is_relative_to(store.root) and len(parts := dest.relative_to(store.root).parts) >= 2:
        raise PathError(f"{dest} is inside the run folder {parts[0]} of {store.root}; write the export "
                        "elsewhere (a run's own files are never overwritten)")
    if dest.is_dir():
        raise PathError(f"{dest} is a folder; name the file to write, e.g. {dest / 'model.onnx'}")
    if not dest.parent.is_dir():
        raise PathError(f"folder {dest.parent} does not exist; create it first or choose another path")
    return dest


def write_export(export: Export, path: Path | str, *, store: RunStore) -> Path:
    """Write ``export`` atomically to ``path`` (checked by ``check_destination``); returns the path."""
    dest = check_destination(store, path)
    atomic_write(dest, lambda f: f.write(export.data))
    return dest


def export_file(store: RunStore, run_id: str, fmt: str, path: Path | str) -> Path:
    """Export run ``run_id``'s best model as ``fmt`` to the file ``path`` (atomically); returns it.

    The destination is checked before the export starts. Raises as ``export_run`` and
    ``check_destination``.
    """
    check_format(fmt)
    store.get(run_id)
    check_destination(store, path)
    return write_export(export_run(store, run_id, fmt), path, store=store)
