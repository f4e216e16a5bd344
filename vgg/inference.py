"""Classifying pictures with a trained model: load a checkpoint safely, preprocess, predict.

- ``load_model`` takes a run id (its ``best.pt``) or a checkpoint file inside the data or runs
  dir; files are read with ``torch.load(..., weights_only=True)`` only and checked against the
  architecture their metadata names, so a pickle that would run code or a state dict of another
  model is refused with one line. A compact checkpoint (a folded first Linear, a reference to the
  weights a frozen run did not change) is expanded to the full model first (``vgg.checkpoints``).
- Images are preprocessed as in training: squashed to the model's square input (via the data
  set's own size when the model was trained on upsampled images) and normalised with the mean
  and standard deviation stored in the checkpoint.
- ``load_imagenet_model`` / ``imagenet_top5``: the untouched ImageNet model, only where its
  weights are already in torchvision's cache (never downloads).

What the model looks at is ``vgg.gradcam``'s part; evaluating a checkpoint on a test set is
``vgg.evaluate``'s.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from vgg import checkpoints
from vgg.augment import normalize, to_float
from vgg.data import DataConfig
from vgg.errors import CheckpointError, ConfigError, PathError, WeightsUnavailableError
from vgg.images import image_to_tensor
from vgg.model import (
    CONFIG_NAMES,
    VGG,
    build_vgg,
    check_state_fits,
    imagenet_weights,
    load_pretrained,
    model_name,
    pretrained_available,
    weights_cache_dir,
    weights_file_name,
)
from vgg.paths import resolve_inside, validate_run_id
from vgg.runs import RunStore, read_checkpoint_file
from vgg.settings import data_dir

TOP_K = 5
UNSURE_BELOW = 0.5  # a top probability below this is worth a hint that the model is unsure
IMAGENET_RESIZE = 256  # torchvision's VGG transforms: resize the short side to 256, centre crop 224
IMAGENET_CROP = 224
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 32, 512


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to classify (eval mode, gradients off) and what it needs to read an image."""

    model: VGG  # in eval mode; never trained further
    classes: tuple[str, ...]  # class names in output order
    mean: tuple[float, float, float]  # normalisation the model was trained with
    std: tuple[float, float, float]
    input_size: int  # side of the square input the model sees
    config: str  # row of the paper's Table 1 ("A" = VGG11)
    batch_norm: bool
    source: str  # a human description: "run <id> · best.pt (epoch 3)"
    run_id: str | None = None  # the run it came from, when loaded from the store
    data_size: int | None = None  # training images were this size, upsampled to input_size per batch
    crop_from: int | None = None  # ImageNet style: resize the short side to this, then centre crop
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    meta: Mapping[str, Any] = field(default_factory=dict)  # the checkpoint's metadata

    @property
    def name(self) -> str:
        """The model's lowercase name, e.g. ``vgg11_bn``."""
        return model_name(self.config, self.batch_norm)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


@dataclass(frozen=True)
class Prediction:
    """The classes of one image: the top ``k`` (name, probability) and all probabilities."""

    top: tuple[tuple[str, float], ...]  # most likely first
    probabilities: np.ndarray  # float32 (num_classes,), sums to 1

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def confidence(self) -> float:
        return self.top[0][1]

    @property
    def unsure(self) -> bool:
        """True when even the most likely class has a probability below ``UNSURE_BELOW``."""
        return self.confidence < UNSURE_BELOW


# --------------------------------------------------------------------------------------------
# Loading


def load_model(
    source: str,
    *,
    store: RunStore,
    allowed_roots: Sequence[Path | str] | None = None,
    device: torch.device | str | None = None,
) -> LoadedModel:
    """Load a run's ``best.pt`` (``source`` is a run id) or a checkpoint file (``source`` is a path).

    ``allowed_roots`` are the folders a checkpoint file may lie in (default: the runs dir of
    ``store`` and the data dir); a relative path is taken from the working directory when it
    exists there, else from the first root. Raises ``CheckpointError`` (unsafe, corrupt, not our
    format, does not fit its architecture), ``PathError`` (outside the allowed folders) or
    ``RunNotFoundError``.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if not isinstance(source, str) or not source.strip():
        raise CheckpointError("no model given: name a run id or a checkpoint file (.pt)")
    source = source.strip()
    if _is_run(source, store):
        checkpoint = store.read_checkpoint(source, "best")
        label = f"run {source} · best.pt"
        return _from_checkpoint(checkpoint, label, device, store=store, run_id=source,
                                run_config=store.get(source).config)
    roots = [Path(r) for r in allowed_roots] if allowed_roots else [store.root, data_dir()]
    path = _checkpoint_path(source, roots, store)
    checkpoint = read_checkpoint_file(path, label=path.name)
    return _from_checkpoint(checkpoint, path.name, device, store=store, run_id=None, run_config=None)


def _is_run(source: str, store: RunStore) -> bool:
    try:
        validate_run_id(source)
    except PathError:
        return False
    return (store.root / source / "status.json").is_file()


def _checkpoint_path(source: str, roots: list[Path], store: RunStore) -> Path:
    candidate = Path(source).expanduser()
    if not candidate.is_absolute() and candidate.exists():
        candidate = candidate.absolute()  # as typed on a command line: from the working directory
    path = resolve_inside(candidate, *roots)
    if path.is_dir():
        raise CheckpointError(f"{source!r} is a folder; name a run id or a checkpoint file such as best.pt")
    if not path.is_file():
        raise CheckpointError(f"{source!r} is neither a run in {store.root} nor an existing checkpoint file")
    return path


def _from_checkpoint(
    checkpoint: Any,
    label: str,
    device: torch.device,
    *,
    store: RunStore | None,
    run_id: str | None,
    run_config: Mapping[str, Any] | None,
) -> LoadedModel:
    """Check a ``{"model": state_dict, "meta": {...}}`` checkpoint and build its model; a compact one
    is expanded first, its reference to another run resolved through ``store``."""
    if not isinstance(checkpoint, Mapping) or not isinstance(checkpoint.get("model"), Mapping):
        raise CheckpointError(
            f"{label} is not a checkpoint of this app: expected a dict with 'model' "
            "(a state dict) and 'meta' (config, classes, mean, std, input_size), "
            f"found {_describe(checkpoint)}"
        )
    meta = checkpoint.get("meta")
    if not isinstance(meta, Mapping):
        raise CheckpointError(f"{label} has no 'meta' dict, so its architecture and classes are unknown")
    config, batch_norm, classes, mean, std, input_size = _read_meta(meta, label)
    state = dict(checkpoint["model"])
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{label}: state-dict entry {str(bad[0])[:60]!r} is not a name with a tensor")
    expanded = checkpoints.expand({"model": state, "meta": meta}, label, store=store)
    state, meta = expanded["model"], expanded["meta"]
    name = model_name(config, batch_norm)
    with torch.device("meta"):  # no time spent initialising what the state dict overwrites
        model = build_vgg(config, batch_norm=batch_norm, num_classes=len(classes))
    check_state_fits(
        model, state, f"{label} does not fit {name} with {len(classes)} classes (from its meta)"
    )
    model.load_state_dict(state, strict=True, assign=True)
    model.to(device).eval().requires_grad_(False)
    data_size = _data_size(run_config)
    epoch = meta.get("epoch")
    source = f"{label} (epoch {epoch})" if isinstance(epoch, int) else label
    return LoadedModel(
        model=model,
        classes=classes,
        mean=mean,
        std=std,
        input_size=input_size,
        config=config,
        batch_norm=batch_norm,
        source=source,
        run_id=run_id,
        data_size=data_size if data_size is not None and data_size < input_size else None,
        device=device,
        meta=dict(meta),
    )


def _describe(value: Any) -> str:
    if isinstance(value, Mapping):
        keys = ", ".join(repr(str(k))[:40] for k in list(value)[:4])
        return f"a dict with keys {keys}" + (" …" if len(value) > 4 else "")
    return f"a {type(value).__name__}"


def _read_meta(
    meta: Mapping[str, Any], label: str
) -> tuple[str, bool, tuple[str, ...], tuple[float, float, float], tuple[float, float, float], int]:
    """Validate the checkpoint's metadata; every problem names the key and the bad value."""
    config = meta.get("config")
    if config not in CONFIG_NAMES:
        raise CheckpointError(
            f"{label}: meta 'config' is {config!r}; expected one of {', '.join(CONFIG_NAMES)}"
        )
    batch_norm = meta.get("batch_norm")
    if not isinstance(batch_norm, bool):
        raise CheckpointError(f"{label}: meta 'batch_norm' is {batch_norm!r}; expected true or false")
    classes = meta.get("classes")
    if (
        not isinstance(classes, (list, tuple))
        or len(classes) < 2
        or not all(isinstance(c, str) for c in classes)
    ):
        raise CheckpointError(f"{label}: meta 'classes' must be a list of at least 2 class names")
    num_classes = meta.get("num_classes", len(classes))
    if num_classes != len(classes):
        raise CheckpointError(
            f"{label}: meta 'num_classes' is {num_classes!r} but it lists {len(classes)} classes"
        )
    stats = []
    for key in ("mean", "std"):
        value = meta.get(key)
        if (
            not isinstance(value, (list, tuple))
            or len(value) != 3
            or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in value)
            or (key == "std" and min(value) <= 0)
        ):
            raise CheckpointError(
                f"{label}: meta {key!r} is {str(value)[:60]}; expected three numbers (R, G, B)"
            )
        stats.append(tuple(float(v) for v in value))
    size = meta.get("input_size")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE:
        raise CheckpointError(
            f"{label}: meta 'input_size' is {size!r}; expected a whole number from "
            f"{MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}"
        )
    return config, batch_norm, tuple(classes), stats[0], stats[1], size  # type: ignore[return-value]


def _data_size(run_config: Mapping[str, Any] | None) -> int | None:
    data = (run_config or {}).get("data")
    size = data.get("input_size") if isinstance(data, Mapping) else None
    return size if isinstance(size, int) and not isinstance(size, bool) and size >= 1 else None


def run_data_config(run_config: Mapping[str, Any]) -> DataConfig:
    """The ``DataConfig`` a run was trained on (from its config.json), to reload the same test split.

    A recorded data dir that no longer exists falls back to the current one. Raises ``ConfigError``.
    """
    data = run_config.get("data")
    if not isinstance(data, Mapping):
        raise ConfigError("the run's config.json has no 'data' settings; its data set is unknown")
    known = set(DataConfig.__dataclass_fields__)
    values = {k: v for k, v in data.items() if k in known}
    for key in ("data_dir", "cache_dir"):
        if values.get(key) is not None and not Path(values[key]).is_dir():
            values[key] = None
    try:
        return DataConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"the run's data settings are unreadable: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Preprocessing and prediction


def _resized(img: Image.Image, loaded: LoadedModel) -> Tensor:
    """uint8 (3, S, S): what training fed the network, before normalisation."""
    if loaded.crop_from is not None:  # ImageNet: short side to 256, centre crop 224
        width, height = img.size
        scale = loaded.crop_from / min(width, height)
        size = (max(loaded.input_size, round(width * scale)), max(loaded.input_size, round(height * scale)))
        img = img.convert("RGB").resize(size, Image.Resampling.BILINEAR, reducing_gap=3.0)
        left = (size[0] - loaded.input_size) // 2
        top = (size[1] - loaded.input_size) // 2
        img = img.crop((left, top, left + loaded.input_size, top + loaded.input_size))
        return image_to_tensor(img, loaded.input_size)
    if loaded.data_size is None:
        return image_to_tensor(img, loaded.input_size)
    # Trained on data_size images upsampled per batch: do the same, or the input is sharper than
    # anything the model has seen.
    small = to_float(image_to_tensor(img, loaded.data_size).unsqueeze(0))
    big = F.interpolate(
        small,
        size=(loaded.input_size, loaded.input_size),
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )
    return (big[0].clamp(0, 1) * 255).round().to(torch.uint8)


def _normalised(resized: Tensor, loaded: LoadedModel) -> Tensor:
    """float (3, S, S): (x / 255 − mean) / std."""
    return normalize(to_float(resized.unsqueeze(0)), loaded.mean, loaded.std)[0]


def preprocess_steps(img: Image.Image, loaded: LoadedModel) -> dict[str, Any]:
    """The preprocessing of one image step by step, for showing it.

    Returns ``{"original": PIL image, "resized": uint8 array (S, S, 3), "normalised": float tensor
    (3, S, S), "mean": (r, g, b), "std": (r, g, b)}``.
    """
    resized = _resized(img, loaded)
    return {
        "original": img,
        "resized": resized.permute(1, 2, 0).contiguous().numpy(),
        "normalised": _normalised(resized, loaded),
        "mean": loaded.mean,
        "std": loaded.std,
    }


def preprocess(images: Sequence[Image.Image], loaded: LoadedModel) -> Tensor:
    """A normalised batch (B, 3, S, S) on the model's device."""
    return torch.stack([_normalised(_resized(img, loaded), loaded) for img in images]).to(loaded.device)


def normalise_batch(loaded: LoadedModel, images: Tensor) -> Tensor:
    """uint8 images (N, 3, H, W) of a data set → the normalised float batch the model sees (on the CPU)."""
    x = to_float(images)
    if x.shape[-1] != loaded.input_size or x.shape[-2] != loaded.input_size:
        x = F.interpolate(
            x,
            size=(loaded.input_size, loaded.input_size),
            mode="bilinear",
            antialias=True,
            align_corners=False,
        )
    return normalize(x, loaded.mean, loaded.std)


@torch.no_grad()
def predict(loaded: LoadedModel, images: Sequence[Image.Image], k: int = TOP_K) -> list[Prediction]:
    """The top ``k`` classes (at most the number of classes) of each image, in order."""
    if not images:
        return []
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ConfigError(f"k must be a whole number of at least 1, got {k!r}")
    probabilities = loaded.model(preprocess(images, loaded)).float().softmax(1).cpu()
    k = min(k, loaded.num_classes)
    out = []
    for row in probabilities:
        values, index = row.topk(k)
        top = tuple((loaded.classes[int(i)], float(v)) for v, i in zip(values, index, strict=True))
        out.append(Prediction(top=top, probabilities=row.numpy().astype(np.float32)))
    return out


# --------------------------------------------------------------------------------------------
# The untouched ImageNet model


def load_imagenet_model(
    config: str, batch_norm: bool, *, device: torch.device | str | None = None
) -> LoadedModel:
    """torchvision's ImageNet VGG with its own 1000-class head, from the local weight cache only.

    Raises ``WeightsUnavailableError`` when the weights are not cached (or were never published).
    ``vgg.model.load_pretrained`` replaces the head for fine-tuning; this keeps it.
    """
    name = model_name(config, batch_norm)
    if not pretrained_available(config, batch_norm):  # also False for A-LRN and C (raised below)
        imagenet_weights(config, batch_norm)
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not cached: put "
            f"{weights_file_name(config, batch_norm)} into {weights_cache_dir()}"
        )
    model, info = load_pretrained(config, batch_norm=batch_norm, num_classes=None, allow_download=False)
    categories = info.categories or tuple(f"class {i}" for i in range(model.num_classes))
    device = torch.device(device) if device is not None else torch.device("cpu")
    model.to(device).eval().requires_grad_(False)
    return LoadedModel(
        model=model,
        classes=categories,
        mean=info.mean,
        std=info.std,
        input_size=IMAGENET_CROP,
        config=config,
        batch_norm=batch_norm,
        source=f"ImageNet weights {info.file_name}",
        crop_from=IMAGENET_RESIZE,
        device=device,
    )


def imagenet_top5(
    img: Image.Image, config: str, batch_norm: bool, *, model: LoadedModel | None = None, k: int = TOP_K
) -> list[tuple[str, float]] | None:
    """What the untouched ImageNet model sees: its top ``k`` (category, probability), or None
    when its weights are not cached here. Pass ``model`` (from ``load_imagenet_model``) to reuse one."""
    if model is None:
        if not pretrained_available(config, batch_norm):  # also False for A-LRN and C
            return None
        model = load_imagenet_model(config, batch_norm)
    return list(predict(model, [img], k=k)[0].top)
