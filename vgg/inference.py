"""Using a trained model: load a checkpoint safely, classify images, show what it looks at.

- ``load_model`` takes a run id (its ``best.pt``) or a checkpoint file inside the data or runs
  dir; files are read with ``torch.load(..., weights_only=True)`` only and checked against the
  architecture their metadata names, so a pickle that would run code or a state dict of another
  model is refused with one line.
- Images are preprocessed as in training: squashed to the model's square input (via the data
  set's own size when the model was trained on upsampled images) and normalised with the mean
  and standard deviation stored in the checkpoint.
- ``grad_cam`` (Selvaraju et al. 2017) weighs the last convolution's feature maps by the
  gradient of the class score. It runs the layers one by one instead of registering hooks, so a
  model shared by several sessions is never modified; at 32 px the last convolution sees a 2×2
  map, so the heat map is necessarily coarse (upsampled smoothly).
- ``load_imagenet_model`` / ``imagenet_top5``: the untouched ImageNet model, only where its
  weights are already in torchvision's cache (never downloads).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor, nn

from vgg.data import DataConfig, DataSplits, TensorData, normalize, to_float
from vgg.errors import CheckpointError, ConfigError, PathError, WeightsUnavailableError
from vgg.images import image_to_tensor
from vgg.model import (
    CONFIG_NAMES,
    POOL_SIZE,
    VGG,
    build_vgg,
    imagenet_weights,
    load_state_dict_file,
    model_name,
    pool_matrix,
    pretrained_available,
    weights_cache_dir,
    weights_file_name,
)
from vgg.paths import resolve_inside, validate_run_id
from vgg.runs import PREDICTIONS_FILE, RunStore, _save_torch, read_checkpoint_file
from vgg.settings import data_dir

TOP_K = 5
UNSURE_BELOW = 0.5  # a top probability below this is worth a hint that the model is unsure
HIDDEN_ROWS = 1000  # rows of the 4096-d representation kept in predictions.pt (as training does)
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
        checkpoint = store.load_checkpoint(source, "best")
        label = f"run {source} · best.pt"
        return _from_checkpoint(checkpoint, label, device, run_id=source, run_config=store.get(source).config)
    roots = [Path(r) for r in allowed_roots] if allowed_roots else [store.root, data_dir()]
    path = _checkpoint_path(source, roots, store)
    checkpoint = read_checkpoint_file(path, label=path.name)
    return _from_checkpoint(checkpoint, path.name, device, run_id=None, run_config=None)


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
    run_id: str | None,
    run_config: Mapping[str, Any] | None,
) -> LoadedModel:
    """Check a ``{"model": state_dict, "meta": {...}}`` checkpoint and build its model."""
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
    name = model_name(config, batch_norm)
    with torch.device("meta"):  # no time spent initialising what the state dict overwrites
        model = build_vgg(config, batch_norm=batch_norm, num_classes=len(classes))
    _check_state_fits(
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


def _check_state_fits(model: nn.Module, state: Mapping[str, Tensor], prefix: str) -> None:
    """Raise ``CheckpointError`` naming missing, unexpected and wrongly shaped entries."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k} is {tuple(state[k].shape)} instead of {expected[k]}"
        for k in expected
        if k in state and tuple(state[k].shape) != expected[k]
    ]
    problems = []
    for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape:", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{what} {', '.join(items[:3])}{more}")
    if problems:
        raise CheckpointError(f"{prefix}: " + "; ".join(problems))


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
# Grad-CAM


def last_conv_index(model: VGG) -> int:
    """Index in ``model.features`` of the last ``nn.Conv2d``."""
    convs = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.Conv2d)]
    if not convs:
        raise ConfigError("the model has no convolution to explain")
    return convs[-1]


def logits_from_features(model: VGG, x: Tensor) -> Tensor:
    """The classifier on the output of ``model.features`` (B, 512, h, w), folding the adaptive pool
    into the first Linear exactly as ``VGG.forward`` does when the map is smaller than 7×7."""
    linear = model.classifier[0]
    channels, height, width = x.shape[1:]
    if getattr(model, "fold_pool", False) and height * width < POOL_SIZE * POOL_SIZE:
        pool = pool_matrix(height, width, dtype=linear.weight.dtype, device=linear.weight.device)
        weight = linear.weight.view(linear.out_features, channels, -1) @ pool  # (4096, 512, h·w)
        x = F.linear(torch.flatten(x, 1), weight.flatten(1), linear.bias)
    else:
        x = linear(torch.flatten(model.avgpool(x), 1))
    for layer in model.classifier[1:]:
        x = layer(x)
    return x


def grad_cam(loaded: LoadedModel, img: Image.Image, target: int | None = None) -> np.ndarray:
    """Grad-CAM heat map (S, S) in [0, 1] of the class ``target`` (default: the predicted class).

    The last convolution's maps ``A_k`` are weighted by the mean gradient of the class score
    ``∂y_c / ∂A_k`` and summed, then clipped at 0. The layers run one by one from a copy of the
    activation, so the in-place ReLUs never overwrite it and the shared model is not changed (no
    hooks). The map has the last convolution's resolution — 2×2 for a 32 px input — and is
    upsampled bilinearly, so small inputs give a coarse picture.
    """
    model = loaded.model
    x = preprocess([img], loaded)
    last = last_conv_index(model)
    with torch.no_grad():
        for layer in model.features[: last + 1]:
            x = layer(x)
    activation = x.detach().requires_grad_(True)  # (1, C, h, w)
    with torch.enable_grad():
        y = activation.clone()  # the next ReLU is in place: it must not touch `activation`
        for layer in model.features[last + 1 :]:
            y = layer(y)
        logits = logits_from_features(model, y)
        if target is None:
            target = int(logits.argmax(1))
        if not 0 <= target < logits.shape[1]:
            raise ConfigError(f"class index {target} is out of range; choose 0 to {logits.shape[1] - 1}")
        (gradient,) = torch.autograd.grad(logits[0, target], activation)
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
    cam = F.relu((weights * activation.detach()).sum(1, keepdim=True))  # (1, 1, h, w)
    size = loaded.input_size
    cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    top = float(cam.max())
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return cam.clamp(0, 1).cpu().numpy().astype(np.float32)


def overlay_heatmap(img: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``img`` with ``heatmap`` (H', W') in [0, 1] stretched over it in a blue→red colour scale."""
    rgb = img.convert("RGB")
    heat = Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255), mode="L").resize(
        rgb.size, Image.Resampling.BICUBIC
    )
    h = np.asarray(heat, dtype=np.float32)[..., None] / 255.0
    colour = np.concatenate(
        [
            np.clip(1.5 - np.abs(4 * h - 3), 0, 1),  # red
            np.clip(1.5 - np.abs(4 * h - 2), 0, 1),  # green
            np.clip(1.5 - np.abs(4 * h - 1), 0, 1),
        ],
        axis=-1,
    )  # blue: a "jet" scale
    base = np.asarray(rgb, dtype=np.float32) / 255.0
    blended = (1 - alpha) * base + alpha * colour
    return Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255 + 0.5), mode="RGB")


# --------------------------------------------------------------------------------------------
# The untouched ImageNet model


def load_imagenet_model(
    config: str, batch_norm: bool, *, device: torch.device | str | None = None
) -> LoadedModel:
    """torchvision's ImageNet VGG with its own 1000-class head, from the local weight cache only.

    Raises ``WeightsUnavailableError`` when the weights are not cached (or were never published).
    ``vgg.model.load_pretrained`` replaces the head for fine-tuning; this keeps it.
    """
    weights = imagenet_weights(config, batch_norm)  # raises for A-LRN and C
    name = model_name(config, batch_norm)
    if not pretrained_available(config, batch_norm):
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not cached: put "
            f"{weights_file_name(config, batch_norm)} into {weights_cache_dir()}"
        )
    file_name = weights_file_name(config, batch_norm)
    state = load_state_dict_file(weights_cache_dir() / file_name)
    categories = tuple(weights.meta.get("categories") or ())
    if len(categories) != 1000:
        categories = tuple(f"class {i}" for i in range(1000))
    with torch.device("meta"):
        model = build_vgg(config, batch_norm=batch_norm, num_classes=len(categories))
    for key in model.state_dict():  # old BN files lack the counter
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    _check_state_fits(model, state, f"{file_name} does not fit {name}")
    model.load_state_dict(state, strict=True, assign=True)
    device = torch.device(device) if device is not None else torch.device("cpu")
    model.to(device).eval().requires_grad_(False)
    transforms = weights.transforms()
    return LoadedModel(
        model=model,
        classes=categories,
        mean=tuple(transforms.mean),
        std=tuple(transforms.std),
        input_size=IMAGENET_CROP,
        config=config,
        batch_norm=batch_norm,
        source=f"ImageNet weights {file_name}",
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


# --------------------------------------------------------------------------------------------
# Evaluating a checkpoint later (a run interrupted before its test evaluation)


def evaluate_loaded(
    loaded: LoadedModel,
    data: TensorData,
    *,
    precision: str = "auto",
    cancel: threading.Event | None = None,
) -> dict[str, Any]:
    """Test-set predictions of ``loaded`` on ``data`` in the format of ``predictions.pt``.

    ``precision`` is the run's ``TrainConfig.precision``: evaluating as the training did gives the
    same test accuracy as the run recorded (near-ties flip between bf16 and fp32).

    Returns ``{"labels", "probabilities" (float16 N×C), "predicted" (N), "hidden" (float16, first ≤1000 rows),
    "classes", "split": "test", "loss", "accuracy"}``.
    """
    from vgg.train import BatchPipeline, choose_precision, evaluate

    pipeline = BatchPipeline(loaded.mean, loaded.std, loaded.device, loaded.input_size, False)
    result = evaluate(loaded.model, data, pipeline, keep_hidden=True, cancel=cancel,
                      autocast_dtype=choose_precision(precision, loaded.device))
    hidden = result.hidden[:HIDDEN_ROWS].half() if result.hidden is not None else None
    return {
        "labels": result.labels,
        "probabilities": result.probabilities.half(),
        "predicted": result.probabilities.argmax(1),  # float16 probabilities can tie
        "hidden": hidden,
        "classes": list(loaded.classes),
        "split": "test",
        "loss": result.loss,
        "accuracy": result.accuracy,
    }


def evaluate_run(
    store: RunStore,
    run_id: str,
    splits: DataSplits,
    *,
    cancel: threading.Event | None = None,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Evaluate a run's ``best.pt`` on ``splits.test`` and save ``predictions.pt`` in its folder.

    For runs that stopped before their test evaluation (interrupted, failed, cancelled early).
    ``splits`` must be the run's data set (``run_data_config``); other classes → ``CheckpointError``.
    Returns the predictions written (with ``loss`` and ``accuracy``).
    """
    loaded = load_model(run_id, store=store, device=device)
    if tuple(splits.classes) != loaded.classes:
        raise CheckpointError(
            f"run {run_id} was trained on classes {', '.join(loaded.classes[:4])}… but the "
            f"data set has {', '.join(splits.classes[:4])}…; it cannot be evaluated on it"
        )
    precision = str(store.get(run_id).config.get("precision", "auto"))
    predictions = evaluate_loaded(loaded, splits.test, precision=precision, cancel=cancel)
    if cancel is not None and cancel.is_set():
        raise CheckpointError(f"the evaluation of run {run_id} was stopped; nothing was saved")
    save_run_predictions(store, run_id, predictions)
    return predictions


def save_run_predictions(store: RunStore, run_id: str, predictions: Mapping[str, Any]) -> Path:
    """Write ``predictions.pt`` into an existing run's folder (atomically; the run is not reopened)."""
    path = store.run_path(run_id) / PREDICTIONS_FILE
    store.get(run_id)  # raises for an unknown run
    _save_torch(path, dict(predictions), run_id)
    return path
