"""Training from scratch and fine-tuning: ``fit -> train_epoch -> train_step``, plus ``evaluate``.

The whole data set lives in memory as uint8 tensors (see :mod:`vgg.data`), so a batch is an index
into a tensor, converted, augmented and normalised as a batch. The step uses channels_last, fused
Adam and (where it pays) bf16 autocast; the model folds its adaptive pool into the first
classifier layer when the feature map is smaller than 7×7 (exact, see :mod:`vgg.model`).
"""

from __future__ import annotations

import math
import os
import threading
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vgg.data import DataConfig, DataSplits, TensorData, augment_batch, load_data, normalize, to_float
from vgg.errors import CheckpointError, ConfigError, WeightsUnavailableError
from vgg.model import (
    CONFIG_NAMES,
    FREEZE_MODES,
    build_vgg,
    freeze,
    load_pretrained,
    load_state_dict_file,
    param_groups,
)
from vgg.jobs import describe_exception
from vgg.resources import check_config_memory
from vgg.settings import flush_denormals, resolve_device, runs_dir

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda", "mps")


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {name} {value!r}; choose one of {', '.join(map(str, choices))}")


def _check_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    bad = value <= low if low_open else value < low
    if bad or value > high or (isinstance(value, float) and math.isnan(value)):
        bracket = "(" if low_open else "["
        raise ConfigError(f"{name} {value!r} is out of range; allowed {bracket}{low:g}, {high:g}]")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run. Validated once, in ``__post_init__``."""

    config: str = "A"  # VGG configuration letter of the paper's Table 1 (A = VGG11)
    batch_norm: bool = True  # batch norm after every convolution (torchvision's *_bn)
    init: str = "scratch"  # "scratch" | "imagenet" | "run:<run id>" | path of a .pth state dict
    freeze: str = "none"  # "none" | "features" | "all_but_last"
    optimizer: str = "adam"  # "adam" as the notebook, or "sgd" with momentum
    # Peak learning rate (the classifier's; features get lr × lr_ratio). 3e-4: in 3 minutes from scratch
    # at 32 px (bench/time_to_accuracy.py) one-cycle to 3e-4 reached 51 % test accuracy, to 1e-3 38 %.
    lr: float = 3e-4
    lr_ratio: float | None = None  # discriminative ratio; None → 0.1 from pretrained, 1 from scratch
    schedule: str = "onecycle"  # "onecycle" (Smith 2018) or "constant" (as the notebook)
    epochs: int = 2  # passes over the training images
    batch_size: int = 128  # images per step
    data: DataConfig = field(default_factory=lambda: DataConfig(images_per_class=500))
    input_size: int | None = None  # model input; None → the data's size (upsampled per batch if larger)
    augment: bool = True  # rotation ±5°, horizontal flip, random crop with padding
    seed: int = 0  # seeds the model's initialisation, the batch order and the augmentation
    device: str = "auto"  # "auto" (cuda, mps, cpu), "cpu", "cuda", "mps"
    precision: str = "auto"  # "auto", "fp32", "bf16" (autocast)
    time_budget_s: float | None = None  # stop after this many seconds (the schedule fits into it)
    weight_decay: float = 0.0  # L2 penalty (0 as the notebook)
    momentum: float = 0.9  # SGD momentum

    def __post_init__(self) -> None:
        _check_choice("configuration", self.config, CONFIG_NAMES)
        _check_choice("freeze mode", self.freeze, FREEZE_MODES)
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_choice("precision", self.precision, PRECISIONS)
        _check_choice("device", self.device, DEVICES)
        if not isinstance(self.init, str) or not self.init.strip():
            raise ConfigError("init must be 'scratch', 'imagenet', 'run:<run id>' or a .pth file path")
        if self.init not in ("scratch", "imagenet") and not self.init.startswith("run:"):
            if not self.init.endswith((".pth", ".pt")):
                raise ConfigError(
                    f"unknown init {self.init!r}; choose 'scratch', 'imagenet', 'run:<run id>' "
                    "or a .pth state-dict file"
                )
        if self.init == "scratch" and self.freeze != "none":
            raise ConfigError(f"freeze mode {self.freeze!r} needs pretrained weights; use 'none' from scratch")
        _check_range("learning rate", self.lr, 0.0, 10.0, low_open=True)
        if self.lr_ratio is not None:
            _check_range("discriminative ratio", self.lr_ratio, 0.0, 1.0, low_open=True)
        _check_range("epochs", self.epochs, 1, 1000)
        _check_range("batch size", self.batch_size, 1, 4096)
        if self.input_size is not None:
            _check_range("input size", self.input_size, 32, 512)
        if self.time_budget_s is not None:
            _check_range("time budget (s)", self.time_budget_s, 0.0, 7 * 24 * 3600.0, low_open=True)
        _check_range("weight decay", self.weight_decay, 0.0, 1.0)
        _check_range("momentum", self.momentum, 0.0, 1.0)
        if not isinstance(self.data, DataConfig):
            raise ConfigError("data must be a DataConfig")

    @property
    def pretrained(self) -> bool:
        return self.init != "scratch"

    @property
    def effective_lr_ratio(self) -> float:
        if self.lr_ratio is not None:
            return self.lr_ratio
        return 0.1 if self.pretrained else 1.0

    @property
    def model_input_size(self) -> int:
        return self.input_size or self.data.input_size

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                     for k, v in d["data"].items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "TrainConfig":
        d = dict(d)
        data = dict(d.pop("data", {}))
        if data.get("data_dir") is not None:
            data["data_dir"] = Path(data["data_dir"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(data=DataConfig(**data), **{k: v for k, v in d.items() if k in known})


# --------------------------------------------------------------------------------------------
# Events: the only way progress leaves the loop.


@dataclass(frozen=True)
class StepEvent:
    step: int  # optimiser steps so far (1-based)
    epoch: int  # 1-based
    loss: float
    accuracy: float
    lr: float  # the classifier's learning rate at this step
    images_per_second: float
    images_seen: int
    seconds: float  # since the start of training
    progress: float  # 0..1 of the planned run


@dataclass(frozen=True)
class EpochEvent:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float  # this epoch's duration
    images_seen: int
    elapsed: float  # since the start of training
    is_best: bool
    samples: tuple["SamplePrediction", ...] = ()  # a few validation predictions for the page's grid


@dataclass(frozen=True)
class SamplePrediction:
    index: int  # into the validation set
    true: int
    predicted: int
    confidence: float


@dataclass(frozen=True)
class StatusEvent:
    message: str  # preparation steps: "decoding images", "loading weights", ...
    progress: float | None = None
    run_id: str | None = None  # set once the run folder exists


@dataclass(frozen=True)
class DoneEvent:
    result: "TrainResult"


Event = StepEvent | EpochEvent | StatusEvent | DoneEvent
EventCallback = Callable[[Event], None]


@dataclass(frozen=True)
class TrainResult:
    run_id: str | None
    status: str  # "done" | "cancelled" | "diverged" | "failed"
    message: str
    epochs_done: int
    steps: int
    best_val_loss: float | None
    best_val_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    seconds: float
    images_per_second: float
    classes: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# Model preparation.


@dataclass
class Prepared:
    """A model ready to train, with what was needed to build it."""

    model: nn.Module
    classes: tuple[str, ...]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    autocast_dtype: torch.dtype | None
    init_note: str


def choose_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None means fp32)."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    # auto: bf16 on GPUs that support it; on CPU only where the CPU has native bf16 units.
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if device.type == "cpu" and _cpu_has_native_bf16():
        return torch.bfloat16
    return None


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _load_run_state(init: str, store_root: Path | None) -> dict[str, Any]:
    from vgg.runs import RunStore

    run_id = init.removeprefix("run:")
    store = RunStore(store_root or runs_dir())
    return store.load_checkpoint(run_id, "best")


def prepare_model(
    cfg: TrainConfig,
    classes: tuple[str, ...],
    data_mean: tuple[float, float, float],
    data_std: tuple[float, float, float],
    *,
    runs_root: Path | None = None,
) -> Prepared:
    """Build the model for ``cfg``: fresh, ImageNet, an earlier run's best checkpoint, or a file."""
    device = resolve_device(cfg.device)
    num_classes = len(classes)
    # Refuse a run that would not fit before the kernel's OOM killer ends the whole server.
    check_config_memory(cfg, num_classes, device)
    torch.manual_seed(cfg.seed)
    mean, std = data_mean, data_std
    if cfg.init == "scratch":
        model = build_vgg(cfg.config, batch_norm=cfg.batch_norm, num_classes=num_classes)
        note = "random initialisation"
    elif cfg.init == "imagenet":
        model, info = load_pretrained(cfg.config, batch_norm=cfg.batch_norm, num_classes=num_classes)
        mean, std = tuple(info.mean), tuple(info.std)  # type: ignore[assignment]
        note = f"ImageNet weights ({info.file_name}); new {num_classes}-class head"
    elif cfg.init.startswith("run:"):
        ckpt = _load_run_state(cfg.init, runs_root)
        meta = ckpt.get("meta", {})
        if meta.get("config") != cfg.config or bool(meta.get("batch_norm")) != cfg.batch_norm:
            raise ConfigError(
                f"run {cfg.init[4:]!r} is configuration {meta.get('config')!r} "
                f"(batch norm {meta.get('batch_norm')}); choose the same configuration to start from it"
            )
        model = build_vgg(cfg.config, batch_norm=cfg.batch_norm, num_classes=int(meta["num_classes"]))
        model.load_state_dict(ckpt["model"], strict=True)
        old_classes = tuple(meta.get("classes", ()))
        if old_classes != classes:
            model.classifier[6] = nn.Linear(4096, num_classes)
            note = f"run {cfg.init[4:]} ({len(old_classes)} classes); new {num_classes}-class head"
        else:
            note = f"run {cfg.init[4:]} (same classes, head kept)"
        if meta.get("mean") and meta.get("std"):
            mean, std = tuple(meta["mean"]), tuple(meta["std"])  # type: ignore[assignment]
    else:
        model, info = load_pretrained(
            cfg.config, batch_norm=cfg.batch_norm, num_classes=num_classes, weights_path=Path(cfg.init)
        )
        mean, std = tuple(info.mean), tuple(info.std)  # type: ignore[assignment]
        note = f"weights from {Path(cfg.init).name}; new {num_classes}-class head"
    freeze(model, cfg.freeze)
    model.to(device)
    model.to(memory_format=torch.channels_last)
    return Prepared(model, classes, mean, std, device, choose_precision(cfg.precision, device), note)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (fused where available) or SGD over the discriminative parameter groups."""
    groups = param_groups(model, cfg.lr, cfg.effective_lr_ratio)
    for g in groups:
        g["peak_lr"] = g["lr"]
    if cfg.optimizer == "adam":
        try:
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def onecycle_factor(progress: float, *, pct_start: float = 0.25, div_factor: float = 25.0,
                    final_div_factor: float = 1e4) -> float:
    """Fraction of the peak LR at ``progress`` ∈ [0, 1] of a one-cycle schedule (cosine, as torch's OneCycleLR)."""
    progress = min(max(progress, 0.0), 1.0)
    start, end = 1.0 / div_factor, 1.0 / (div_factor * final_div_factor)

    def cos(a: float, b: float, t: float) -> float:
        return b + (a - b) / 2.0 * (math.cos(math.pi * t) + 1)

    if progress <= pct_start:
        return cos(start, 1.0, progress / pct_start)
    return cos(1.0, end, (progress - pct_start) / (1.0 - pct_start))


def set_lr(optimizer: torch.optim.Optimizer, factor: float) -> float:
    """Scale every group's peak LR by ``factor``; returns the classifier's (last group's) LR."""
    lr = 0.0
    for g in optimizer.param_groups:
        g["lr"] = g["peak_lr"] * factor
        lr = g["lr"]
    return lr


# --------------------------------------------------------------------------------------------
# Batches.


@dataclass(frozen=True)
class BatchPipeline:
    """Turns uint8 images into normalised float batches on the device."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    size: int  # model input size
    augment: bool

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = to_float(images.to(self.device, non_blocking=True))  # (B, 3, H, W) in [0, 1]
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        if self.augment:
            x = augment_batch(x, generator)
        x = normalize(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last)


@dataclass(frozen=True)
class FeaturePipeline:
    """Batches of precomputed (frozen) features: only moved to the device."""

    device: torch.device
    augment: bool = False

    def __call__(self, features: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return features.to(self.device, non_blocking=True).float()


class HeadOnly(nn.Module):
    """The pool and classifier of a VGG applied to cached feature maps ``(B, 512, h, w)``."""

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.vgg.head_with_hidden(x)[0]

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vgg.head_with_hidden(x)


class CompactHead(HeadOnly):
    """``HeadOnly`` for cached 1×1 feature maps (32 px inputs), training the first Linear compactly.

    On a 1×1 map the adaptive pool copies the value into all 49 cells, so ``classifier[0]`` sees
    ``W·(x ⊗ 1) = (Σ_positions W)·x``: a ``Linear(512, 4096)`` whose weight is the 25088-wide one
    summed over the 49 positions. The gradient of every one of the 49 copies of a weight is the
    same ``G``, so with a fresh Adam or SGD state and no weight decay, every copy gets the same
    update ``δ`` at every step. ``delta`` (4096 × 512) is trained instead and receives ``G`` as its
    gradient: its optimizer state is the state each copy would have had, and the full weight is
    ``W₀ + delta`` broadcast over the positions. That drops a 411 MB gradient and the optimizer's
    work on 103 M weights per step; ``sync_()`` writes ``delta`` into the model's own weight
    (before a checkpoint), so parameters and checkpoints stay torchvision's.
    """

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__(vgg)
        linear = vgg.classifier[0]
        self.positions = linear.in_features // 512  # 49
        self.register_buffer("folded", self._fold(linear.weight), persistent=False)  # (4096, 512)
        self.delta = nn.Parameter(torch.zeros_like(self.folded), requires_grad=linear.weight.requires_grad)

    @staticmethod
    @torch.no_grad()
    def _fold(weight: torch.Tensor) -> torch.Tensor:
        return weight.view(weight.shape[0], 512, -1).sum(-1)

    def head_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        linear, classifier = self.vgg.classifier[0], self.vgg.classifier
        d = self.delta
        # Value folded + 49·delta (the sum of the 49 updated copies); gradient of delta: G (one copy's).
        weight = self.folded + self.positions * d.detach() + (d - d.detach())
        h = F.linear(torch.flatten(x, 1), weight, linear.bias)
        for layer in classifier[1:6]:
            h = layer(h)
        return classifier[6](h), h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_with_hidden(x)[0]

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head_with_hidden(x)

    @torch.no_grad()
    def sync_(self) -> None:
        """Add ``delta`` to every position of the model's weight (and to ``folded``); zero it.

        The optimizer's update does not depend on the parameter's value (no weight decay), so
        training goes on exactly as before."""
        weight = self.vgg.classifier[0].weight
        weight.view(weight.shape[0], 512, -1).add_(self.delta.unsqueeze(-1))
        self.folded.add_(self.delta, alpha=self.positions)
        self.delta.zero_()

    @torch.no_grad()
    def reload_(self) -> None:
        """After the model's weights were replaced (the best checkpoint loaded): fold them again."""
        self.folded.copy_(self._fold(self.vgg.classifier[0].weight))
        self.delta.zero_()


class CompactVGG(CompactHead):
    """The whole VGG (features trained too) with ``CompactHead``'s first Linear, for inputs whose
    feature maps are 1×1 (32–63 px): the same training, without a 25088-wide gradient per step."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_with_hidden(self.vgg.features(x))[0]

    def forward_with_hidden(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head_with_hidden(self.vgg.features(x))


def uses_compact_head(cfg: TrainConfig, model: nn.Module, feature_shape: tuple[int, ...]) -> bool:
    """The conditions under which ``CompactHead`` trains exactly what ``HeadOnly`` would."""
    return (tuple(feature_shape[-2:]) == (1, 1) and getattr(model, "fold_pool", False)
            and cfg.weight_decay == 0.0)


def use_delta(optimizer: torch.optim.Optimizer, net: CompactHead) -> None:
    """Put ``net.delta`` in the place of the first Linear's weight in ``optimizer``'s groups.

    Only before the first step: the optimizer must not hold state for the weight yet."""
    weight = net.vgg.classifier[0].weight
    if weight in optimizer.state:
        raise RuntimeError("use_delta needs an optimizer that has not stepped yet")
    for group in optimizer.param_groups:
        group["params"] = [net.delta if p is weight else p for p in group["params"]]


def training_net(cfg: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer) -> nn.Module:
    """What the training steps of ``model`` run: ``CompactVGG`` (its ``delta`` put into ``optimizer``)
    where the feature maps are 1×1 and that trains exactly the same, else ``model`` itself."""
    side = cfg.model_input_size // 32  # five 2×2 max-pools
    if not uses_compact_head(cfg, model, (side, side)):
        return model
    net = CompactVGG(model)
    use_delta(optimizer, net)
    return net


@dataclass(frozen=True)
class FeatureData:
    """Cached feature maps standing in for a split's images: ``images`` (N, 512, h, w) float32."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


FEATURE_CACHE_LIMIT_BYTES = 2 * 1024**3  # above this, frozen features are recomputed every step


def uses_feature_cache(cfg: TrainConfig) -> bool:
    """Frozen features and no augmentation: their output cannot change, so compute it once."""
    return cfg.freeze != "none" and not cfg.augment


@torch.no_grad()
def compute_features(model: nn.Module, data: TensorData, pipeline: "BatchPipeline", *,
                     batch_size: int = 256, autocast_dtype: torch.dtype | None = None,
                     cancel: threading.Event | None = None) -> FeatureData:
    """The (frozen, eval-mode) feature maps of every image, ``(N, 512, h, w)`` float32 on the CPU."""
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        for _, images, _ in iterate_batches(data, batch_size, shuffle=False):
            if cancel is not None and cancel.is_set():
                break
            x = replace(pipeline, augment=False)(images, None)
            with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                chunks.append(model.features(x).float().cpu())
    finally:
        model.train(was_training)
    features = torch.cat(chunks) if chunks else torch.zeros(0)
    return FeatureData(features, data.labels[: len(features)])


def iterate_batches(data: TensorData, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(indices, images uint8, labels)`` batches over ``data``."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        yield idx, data.images[idx], data.labels[idx]


# --------------------------------------------------------------------------------------------
# The loop.


class Diverged(Exception):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"the loss became {loss} at step {step}; try a smaller learning rate")
        self.step = step


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               autocast_dtype: torch.dtype | None) -> tuple[float, int]:
    """One optimiser step; returns (loss, number of correct predictions)."""
    # Gradients freed before the forward pass: they need not live beside its activations (the peak).
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    loss.backward()
    optimizer.step()
    correct = int((logits.detach().argmax(1) == y).sum())
    return float(loss.detach()), correct


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    labels: torch.Tensor  # (N,)
    probabilities: torch.Tensor  # (N, C) float32
    hidden: torch.Tensor | None  # (N, 4096) penultimate representation, when asked for


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, pipeline: BatchPipeline, *, batch_size: int = 256,
             autocast_dtype: torch.dtype | None = None, keep_hidden: bool = False,
             cancel: threading.Event | None = None) -> EvalResult:
    """Loss and accuracy over ``data`` (eval mode, no augmentation), with per-image probabilities."""
    was_training = model.training
    model.eval()
    eval_pipe = replace(pipeline, augment=False)
    total_loss, correct, n = 0.0, 0, 0
    probs: list[torch.Tensor] = []
    hiddens: list[torch.Tensor] = []
    try:
        for _, images, labels in iterate_batches(data, batch_size, shuffle=False):
            if cancel is not None and cancel.is_set():
                break
            x = eval_pipe(images, None)
            y = labels.to(pipeline.device)
            with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                logits, h = model.forward_with_hidden(x)
            logits = logits.float()
            total_loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(1) == y).sum())
            n += len(y)
            probs.append(logits.softmax(1).cpu())
            if keep_hidden:
                hiddens.append(h.float().cpu())
    finally:
        model.train(was_training)
    if n == 0:
        return EvalResult(float("nan"), float("nan"), data.labels[:0], torch.zeros(0, 0), None)
    return EvalResult(total_loss / n, correct / n, data.labels[:n].clone(), torch.cat(probs),
                      torch.cat(hiddens) if keep_hidden else None)


class Trainer:
    """Runs one training: owns the model, optimiser, data and run writer."""

    def __init__(self, cfg: TrainConfig, splits: DataSplits, prepared: Prepared, *, writer: Any = None,
                 on_event: EventCallback | None = None, cancel: threading.Event | None = None) -> None:
        self.cfg = cfg
        self.splits = splits
        self.p = prepared
        self.model = prepared.model
        self.writer = writer
        self.on_event = on_event or (lambda e: None)
        self.cancel = cancel or threading.Event()
        self.optimizer = make_optimizer(self.model, cfg)
        self.pipeline: Any = BatchPipeline(prepared.mean, prepared.std, prepared.device,
                                           cfg.model_input_size, cfg.augment)
        self.net: nn.Module = self.model  # what the steps run: the whole model, or its head
        if uses_feature_cache(cfg) and self._feature_bytes() <= FEATURE_CACHE_LIMIT_BYTES:
            self._cache_features()
        else:
            self.net = training_net(cfg, self.model, self.optimizer)
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.steps_per_epoch = max(1, math.ceil(len(splits.train) / cfg.batch_size))
        self.total_steps = self.steps_per_epoch * cfg.epochs
        self.step = 0
        self.images_seen = 0
        self.t0 = time.perf_counter()
        self.train_seconds = 0.0  # time spent in train steps (for images/s)
        self.best_val_loss: float | None = None
        self.best_val_accuracy: float | None = None
        self._best_state: dict[str, torch.Tensor] | None = None  # kept only without a run folder
        self.epochs_done = 0
        self.stop_reason = ""

    def _feature_bytes(self) -> int:
        n = len(self.splits.train) + len(self.splits.val) + len(self.splits.test)
        side = max(1, self.cfg.model_input_size // 32)
        return n * 512 * side * side * 4

    def _cache_features(self) -> None:
        """Replace the images by their frozen feature maps; train the classifier alone on them."""
        parts = {}
        for name in ("train", "val", "test"):
            self.on_event(StatusEvent(f"computing frozen features ({name})"))
            parts[name] = compute_features(self.model, getattr(self.splits, name), self.pipeline,
                                           autocast_dtype=self.p.autocast_dtype, cancel=self.cancel)
        self.splits = replace(self.splits, **parts)
        self.pipeline = FeaturePipeline(self.p.device)
        if uses_compact_head(self.cfg, self.model, tuple(parts["train"].images.shape)):
            self.net = CompactHead(self.model)
            use_delta(self.optimizer, self.net)
        else:
            self.net = HeadOnly(self.model)

    def model_state(self) -> dict[str, torch.Tensor]:
        """The model's state dict (torchvision's names) on the CPU, with any compact update written in."""
        if isinstance(self.net, CompactHead):
            self.net.sync_()
        return {k: v.detach().cpu() for k, v in self.model.state_dict().items()}  # aliases on the CPU

    # -- schedule -------------------------------------------------------------------------
    def progress(self) -> float:
        p = self.step / self.total_steps
        if self.cfg.time_budget_s:
            p = max(p, (time.perf_counter() - self.t0) / self.cfg.time_budget_s)
        return min(p, 1.0)

    def current_factor(self) -> float:
        if self.cfg.schedule == "constant":
            return 1.0
        return onecycle_factor(self.progress())

    def should_stop(self) -> bool:
        if self.cancel.is_set():
            self.stop_reason = "cancelled"
            return True
        if self.cfg.time_budget_s and time.perf_counter() - self.t0 >= self.cfg.time_budget_s:
            self.stop_reason = "time budget reached"
            return True
        return False

    # -- loop -------------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> tuple[float, float, bool]:
        """One pass over the training images; returns (mean loss, accuracy, finished normally)."""
        self.net.train()
        if self.cfg.freeze != "none":
            self.model.features.eval()  # frozen layers keep their batch-norm statistics
        total_loss, correct, n = 0.0, 0, 0
        for _, images, labels in iterate_batches(self.splits.train, self.cfg.batch_size, shuffle=True,
                                                 generator=self.generator):
            if self.should_stop():
                return total_loss / max(n, 1), correct / max(n, 1), False
            t = time.perf_counter()
            lr = set_lr(self.optimizer, self.current_factor())
            x = self.pipeline(images, self.generator)
            y = labels.to(self.p.device)
            loss, ok = train_step(self.net, self.optimizer, x, y, self.p.autocast_dtype)
            dt = time.perf_counter() - t
            self.step += 1
            if not math.isfinite(loss):
                raise Diverged(self.step, loss)
            self.train_seconds += dt
            self.images_seen += len(y)
            total_loss += loss * len(y)
            correct += ok
            n += len(y)
            event = StepEvent(self.step, epoch, loss, ok / len(y), lr, len(y) / dt if dt > 0 else 0.0,
                              self.images_seen, time.perf_counter() - self.t0, self.progress())
            self._log_step(event)
            self.on_event(event)
        return total_loss / max(n, 1), correct / max(n, 1), True

    def _log_step(self, e: StepEvent) -> None:
        if self.writer is not None:
            self.writer.append_metrics({
                "kind": "step", "step": e.step, "epoch": e.epoch, "images_seen": e.images_seen,
                "seconds": round(e.seconds, 3), "lr": e.lr, "loss": e.loss, "accuracy": e.accuracy,
                "images_per_second": round(e.images_per_second, 1),
            })

    def checkpoint_meta(self, epoch: int, val_loss: float, val_accuracy: float) -> dict[str, Any]:
        return {
            "config": self.cfg.config, "batch_norm": self.cfg.batch_norm,
            "num_classes": len(self.p.classes), "classes": list(self.p.classes),
            "mean": list(self.p.mean), "std": list(self.p.std), "input_size": self.cfg.model_input_size,
            "epoch": epoch, "val_loss": val_loss, "val_accuracy": val_accuracy,
        }

    def fit(self) -> TrainResult:
        status, message = "done", ""
        for epoch in range(1, self.cfg.epochs + 1):
            t_epoch = time.perf_counter()
            try:
                train_loss, train_acc, complete = self.train_epoch(epoch)
            except Diverged as exc:
                status, message = "diverged", str(exc)
                break
            if not complete and self.stop_reason == "cancelled":
                status, message = "cancelled", "stopped by the user"
                break
            val = evaluate(self.net, self.splits.val, self.pipeline, autocast_dtype=self.p.autocast_dtype,
                           cancel=self.cancel)
            is_best = self.best_val_loss is None or val.loss < self.best_val_loss
            state = self.model_state()
            meta = self.checkpoint_meta(epoch, val.loss, val.accuracy)
            if self.writer is not None:
                self.writer.save_checkpoint("last", state, meta)
                if is_best:
                    self.writer.copy_checkpoint("last", "best")
            if is_best:
                self.best_val_loss, self.best_val_accuracy = val.loss, val.accuracy
                # On the CPU ``state`` shares the live weights: keep a copy unless best.pt holds it.
                self._best_state = None if self.writer is not None else {k: v.clone() for k, v in state.items()}
            self.epochs_done = epoch
            event = EpochEvent(epoch, train_loss, train_acc, val.loss, val.accuracy,
                               time.perf_counter() - t_epoch, self.images_seen, time.perf_counter() - self.t0,
                               is_best, _sample_predictions(val, self.cfg.seed + epoch))
            if self.writer is not None:
                self.writer.append_metrics({
                    "kind": "epoch", "step": self.step, "epoch": epoch, "images_seen": self.images_seen,
                    "seconds": round(event.elapsed, 3), "train_loss": train_loss, "train_accuracy": train_acc,
                    "val_loss": val.loss, "val_accuracy": val.accuracy,
                })
            self.on_event(event)
            if not complete:  # time budget reached mid-epoch: the epoch above was the last
                message = self.stop_reason
                break
            if self.should_stop():
                if self.stop_reason == "cancelled":
                    status, message = "cancelled", "stopped by the user"
                else:
                    message = self.stop_reason
                break
        return self._finish(status, message)

    def _best_weights(self) -> dict[str, torch.Tensor] | None:
        """The state dict of the epoch with the lowest validation loss (best.pt where there is a run
        folder, so that no second copy of the weights stays in memory), or None before any epoch."""
        if self.best_val_loss is None:
            return None
        if self.writer is not None:
            from vgg.runs import read_checkpoint_file

            return read_checkpoint_file(self.writer.path / "best.pt", label="best.pt")["model"]
        return self._best_state

    def _finish(self, status: str, message: str) -> TrainResult:
        test_loss = test_acc = None
        best = self._best_weights() if status in ("done", "cancelled") else None
        if best is not None:
            self.model.load_state_dict(best)
            if isinstance(self.net, CompactHead):
                self.net.reload_()
            self.on_event(StatusEvent("evaluating the best checkpoint on the test set"))
            test = evaluate(self.net, self.splits.test, self.pipeline, autocast_dtype=self.p.autocast_dtype,
                            keep_hidden=True)
            test_loss, test_acc = test.loss, test.accuracy
            if self.writer is not None and len(test.labels):
                self.writer.append_metrics({"kind": "test", "step": self.step, "epoch": self.epochs_done,
                                            "images_seen": self.images_seen, "val_loss": test.loss,
                                            "val_accuracy": test.accuracy})
                self.writer.save_predictions({
                    "labels": test.labels, "probabilities": test.probabilities.half(),
                    # the classes the accuracy counted (float16 probabilities can tie)
                    "predicted": test.probabilities.argmax(1),
                    "hidden": _sample_rows(test.hidden, 1000, self.cfg.seed),
                    "classes": list(self.p.classes), "split": "test",
                })
        ips = self.images_seen / self.train_seconds if self.train_seconds else 0.0
        return TrainResult(
            run_id=getattr(self.writer, "run_id", None), status=status, message=message,
            epochs_done=self.epochs_done, steps=self.step, best_val_loss=self.best_val_loss,
            best_val_accuracy=self.best_val_accuracy, test_loss=test_loss, test_accuracy=test_acc,
            seconds=time.perf_counter() - self.t0, images_per_second=ips, classes=self.p.classes,
        )


def _sample_rows(hidden: torch.Tensor | None, n: int, seed: int) -> torch.Tensor | None:
    """The first ``n`` rows (indices 0..n-1 of the test set) as float16, to keep files small."""
    if hidden is None:
        return None
    return hidden[:n].half()


def _sample_predictions(val: EvalResult, seed: int, n: int = 16) -> tuple[SamplePrediction, ...]:
    if len(val.labels) == 0:
        return ()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(val.labels), generator=g)[:n]
    conf, pred = val.probabilities[idx].max(1)
    return tuple(SamplePrediction(int(i), int(val.labels[i]), int(p), float(c))
                 for i, p, c in zip(idx, pred, conf))


def fit(cfg: TrainConfig, *, store: Any = None, splits: DataSplits | None = None,
        on_event: EventCallback | None = None, cancel: threading.Event | None = None,
        runs_root: Path | None = None) -> TrainResult:
    """Train ``cfg`` end to end; when ``store`` (a RunStore) is given, write a run folder.

    ``splits`` may be passed in (already loaded data); otherwise the data are loaded here with
    progress reported as StatusEvents. Errors before training starts propagate; a run that
    started always ends with a status in its folder.
    """
    flush_denormals()  # (the callers' threads set it first thing already; this covers direct calls)
    on_event = on_event or (lambda e: None)
    cancel = cancel or threading.Event()
    if splits is None:
        on_event(StatusEvent("loading the data set"))
        splits = load_data(cfg.data, lambda done, total, msg: on_event(
            StatusEvent(msg, done / total if total else None)))
    if cfg.init != "scratch":
        on_event(StatusEvent("loading the starting weights"))
    prepared = prepare_model(cfg, tuple(splits.classes), tuple(splits.mean), tuple(splits.std),
                             runs_root=runs_root or (Path(store.root) if store is not None else None))
    writer = None
    if store is not None:
        config = cfg.to_dict() | {"classes": list(splits.classes), "init_note": prepared.init_note,
                                  "mean": list(prepared.mean), "std": list(prepared.std),
                                  "train_images": len(splits.train), "val_images": len(splits.val),
                                  "test_images": len(splits.test), "device": str(prepared.device),
                                  "autocast": str(prepared.autocast_dtype) if prepared.autocast_dtype else "fp32"}
        name = f"vgg-{cfg.config}{'-bn' if cfg.batch_norm else ''}-{cfg.init.split(':')[0] if not cfg.init.endswith('.pth') else 'file'}"
        writer = store.create(config, name_hint=name)
        on_event(StatusEvent("training", 0.0, run_id=writer.run_id))
    trainer = Trainer(cfg, splits, prepared, writer=writer, on_event=on_event, cancel=cancel)
    try:
        result = trainer.fit()
    except BaseException as exc:
        if writer is not None:
            writer.set_status("failed", describe_exception(exc))
            writer.close()
        raise
    if writer is not None:
        writer.close()
        writer.set_status(result.status, result.message or result.status,
                          best_val_loss=result.best_val_loss, best_val_accuracy=result.best_val_accuracy,
                          test_loss=result.test_loss, test_accuracy=result.test_accuracy,
                          epochs_done=result.epochs_done, steps=result.steps, seconds=round(result.seconds, 2),
                          images_per_second=round(result.images_per_second, 1), classes=list(result.classes))
    on_event(DoneEvent(result))
    return result




# --------------------------------------------------------------------------------------------
# LR range test on the same model, data and step as a training run.


def find_lr_for(cfg: TrainConfig, lr_cfg: Any, *, splits: DataSplits | None = None,
                on_step: Callable[[Any], None] | None = None, on_event: EventCallback | None = None,
                cancel: threading.Event | None = None, runs_root: Path | None = None) -> Any:
    """Run the LR range test (:func:`vgg.lr_finder.find_lr`) for the model ``cfg`` would train.

    Uses the training step itself (augmentation, channels_last, autocast), so the suggested LR
    belongs to the run that will use it. Model and optimiser state are restored afterwards.
    """
    from vgg.lr_finder import find_lr

    flush_denormals()  # as fit()
    on_event = on_event or (lambda e: None)
    if splits is None:
        on_event(StatusEvent("loading the data set"))
        splits = load_data(cfg.data, lambda done, total, msg: on_event(
            StatusEvent(msg, done / total if total else None)))
    prepared = prepare_model(cfg, tuple(splits.classes), tuple(splits.mean), tuple(splits.std),
                             runs_root=runs_root)
    optimizer = make_optimizer(prepared.model, cfg)
    pipeline = BatchPipeline(prepared.mean, prepared.std, prepared.device, cfg.model_input_size, cfg.augment)
    generator = torch.Generator().manual_seed(cfg.seed)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, images, labels in iterate_batches(splits.train, cfg.batch_size, shuffle=True, generator=generator):
            yield pipeline(images, generator), labels.to(prepared.device)

    net = training_net(cfg, prepared.model, optimizer)  # the same steps as the training's

    def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return train_step(net, optimizer, x, y, prepared.autocast_dtype)[0]

    on_event(StatusEvent("running the LR range test"))
    try:
        return find_lr(prepared.model, optimizer, batches, lr_cfg, step_fn=step_fn, on_step=on_step,
                       cancel=cancel, device=prepared.device)
    finally:
        if isinstance(net, CompactHead):
            net.reload_()  # the model's own weights were restored; drop the test's updates to delta
