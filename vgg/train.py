"""Training from scratch and fine-tuning: ``fit → train_epoch → train_step``.

The notebook's loop, in small named steps:

- ``train_step``: one batch: forward, cross-entropy loss, backward, optimizer step;
- ``train_epoch``: one pass over the shuffled training images, the learning rate following the
  schedule (one-cycle by default, or constant as in the notebook);
- ``fit``: epochs, each ending with the validation set, a checkpoint and the best epoch kept; at
  the end the best epoch's weights are evaluated on the test set.

Where the weights start, what is frozen and the discriminative learning rates are
``vgg.finetune``'s; batches come from ``vgg.augment``; progress leaves the loop only as events
(``vgg.events``), and the run folder is written by whoever listens (``vgg.runs.RunRecorder``).
The speed-ups (``vgg.speedups``) are switched on from outside by ``TrainConfig.speedups``: with it
off, this file and ``vgg/model.py`` are all that runs.
"""

from __future__ import annotations

import math
import platform
import threading
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vgg import checkpoints
from vgg.augment import BatchPipeline, iterate_batches
from vgg.data import DataConfig, DataSplits, load_data
from vgg.errors import ConfigError
from vgg.evaluate import EvalResult, Predictions, evaluate
from vgg.events import (
    CheckpointEvent,
    DoneEvent,
    EpochEvent,
    EventCallback,
    FailedEvent,
    SamplePrediction,
    StartEvent,
    StatusEvent,
    StepEvent,
    TestEvent,
    TrainResult,
)
from vgg.finetune import Prepared, make_optimizer, prepare_model
from vgg.jobs import describe_exception
from vgg.model import CONFIG_NAMES, FREEZE_MODES
from vgg.settings import DEVICE_CHOICES, flush_denormals
from vgg.speedups import switch as speedups
from vgg.speedups.features import FeaturePipeline, LastLayer, cached_features

OPTIMIZERS = ("adam", "sgd")
AUTO_IMAGES = 45_000  # epochs=None: about this many training images (1 epoch of CIFAR-10, 10 of the synthetic set)
AUTO_MAX_EPOCHS = 30  # and never more epochs than this (a class's 90 own pictures)
SCHEDULES = ("onecycle", "constant")
PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = DEVICE_CHOICES


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
    # Peak learning rate (the classifier's; features get lr × lr_ratio). 3e-4: on CIFAR-10 from scratch
    # (bench/lr_advice.py, 15,000 images seen) one-cycle to 3e-4 reached 46.9 % test accuracy, to 1e-4
    # 45.1 %, to 1e-3 42.0 %, to 3e-3 17.3 %. (vgg.lr_finder.RECOMMEND_FLOOR is this value.)
    lr: float = 3e-4
    lr_ratio: float | None = None  # discriminative ratio; None → 0.1 from pretrained, 1 from scratch
    schedule: str = "onecycle"  # "onecycle" (Smith 2018) or "constant" (as the notebook)
    epochs: int | None = None  # passes over the training images; None: auto (about AUTO_IMAGES images)
    batch_size: int = 128  # images per step
    data: DataConfig = field(default_factory=DataConfig)  # every image of the data set
    input_size: int | None = None  # model input; None → the data's size (upsampled per batch if larger)
    augment: bool = True  # rotation ±5°, horizontal flip, random crop with padding
    seed: int = 0  # seeds the model's initialisation, the batch order and the augmentation
    device: str = "auto"  # "auto" (cuda, mps, cpu), "cpu", "cuda", "mps"
    precision: str = "auto"  # "auto", "fp32", "bf16" (autocast)
    time_budget_s: float | None = None  # stop after this many seconds (the schedule fits into it)
    weight_decay: float = 0.0  # L2 penalty (0 as the notebook)
    momentum: float = 0.9  # SGD momentum
    label_smoothing: float = 0.0  # share of each target spread over the other classes (0 as the notebook)
    dropout: float = 0.0  # of the classifier's two Dropout layers: 0.5 in torchvision (and the notebook)
    tta: bool = False  # test-time augmentation: validation and test answers averaged with the mirror image's
    speedups: bool = True  # the fast path of vgg.speedups; False runs the plain lesson path

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
        if self.epochs is not None:
            _check_range("epochs", self.epochs, 1, 1000)
        _check_range("batch size", self.batch_size, 1, 4096)
        if self.input_size is not None:
            _check_range("input size", self.input_size, 32, 512)
        if self.time_budget_s is not None:
            _check_range("time budget (s)", self.time_budget_s, 0.0, 7 * 24 * 3600.0, low_open=True)
        _check_range("weight decay", self.weight_decay, 0.0, 1.0)
        _check_range("momentum", self.momentum, 0.0, 1.0)
        _check_range("label smoothing", self.label_smoothing, 0.0, 0.5)
        if not 0.0 <= self.dropout < 1.0 or math.isnan(self.dropout):
            raise ConfigError(f"dropout {self.dropout!r} is out of range; allowed [0, 1)")
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

    def epochs_for(self, n_train: int) -> int:
        """The epochs this run trains on ``n_train`` images: ``epochs``, or when it is None (auto)
        about ``AUTO_IMAGES`` images seen: more of the data set seen fewer times trains a network
        faster than a small part seen often, so a large set gets one epoch and a small one several."""
        if self.epochs is not None:
            return self.epochs
        return min(AUTO_MAX_EPOCHS, max(1, round(AUTO_IMAGES / max(n_train, 1))))

    @property
    def epochs_label(self) -> str:
        """"3 epochs", "1 epoch" or "auto epochs"."""
        if self.epochs is None:
            return "auto epochs"
        return f"{self.epochs} epoch{'s' if self.epochs > 1 else ''}"

    @property
    def start(self) -> str:
        """Where the weights start, in one word: "scratch", "imagenet", "run" or "file"."""
        return self.init.split(":")[0] if self.init in ("scratch", "imagenet") or self.init.startswith("run:") \
            else "file"

    def title(self, kind: str = "train") -> str:
        """The job's title on every page: "Training · A-BN · scratch · 2 epochs" (``kind`` "train") or
        "LR range test · A-BN · scratch" (``kind`` "lr_find")."""
        model = f"{self.config}{'-BN' if self.batch_norm else ''} · {self.start}"
        if kind == "lr_find":
            return f"LR range test · {model}"
        return f"Training · {model} · {self.epochs_label}"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"] = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                     for k, v in d["data"].items()}
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrainConfig:
        d = dict(d)
        data = dict(d.pop("data", {}))
        if data.get("data_dir") is not None:
            data["data_dir"] = Path(data["data_dir"])
        known = {f for f in cls.__dataclass_fields__}
        return cls(data=DataConfig(**data), **{k: v for k, v in d.items() if k in known})


OWN_PICTURES_LR = 1e-3  # Adam's usual rate, for the last layer alone
OWN_PICTURES_EPOCHS = 10


def notebook_recipe(data: DataConfig | None = None) -> TrainConfig:
    """The classic notebook's recipe, as a choice beside the defaults: VGG11-BN from ImageNet weights,
    224 px inputs, Adam at 5e-4 with the features at a tenth of it, a constant learning rate, five
    epochs, dropout 0.5 and no label smoothing. Meant for a GPU: on a CPU an epoch of CIFAR-10 at
    224 px takes hours."""
    return TrainConfig(config="A", batch_norm=True, init="imagenet", freeze="none", optimizer="adam", lr=5e-4,
                       lr_ratio=0.1, schedule="constant", epochs=5, batch_size=128, input_size=224,
                       augment=True, dropout=0.5, label_smoothing=0.0, tta=False,
                       data=data if data is not None else DataConfig())


def own_pictures_recipe(data: DataConfig | None = None, init: str = "imagenet", input_size: int = 224) -> TrainConfig:
    """A fine-tune in seconds for a class's own pictures (a few dozen per class): the notebook's model
    at full size (VGG11-BN from ImageNet weights, 224 px, their normalisation), everything but the last
    layer frozen and no augmentation. The frozen part's output then never changes, so it is computed
    once and kept on disk for every later run on the same pictures (``vgg.speedups.features``), and
    only the last layer learns: a few thousand weights per class, which a few dozen pictures can set
    without overfitting, and a checkpoint of a few MB. Without dropout the frozen part's output is the
    last layer's input itself, so that is what is cached (``vgg.speedups.features.LastLayer``).
    Offline, ``init`` may be an earlier run, at the input size it was trained at (``input_size``):
    a network trained at 32 px sees 224 px pictures badly (this recipe from a 32 px CIFAR-10 run on 3
    CIFAR-10 classes × 30 pictures, 3 class subsets × 2 seeds: 55.6 % test accuracy at 224 px, 80.6 %
    at 32 px)."""
    return TrainConfig(config="A", batch_norm=True, init=init, freeze="all_but_last", optimizer="adam",
                       lr=OWN_PICTURES_LR, lr_ratio=None, schedule="onecycle", epochs=OWN_PICTURES_EPOCHS,
                       batch_size=32, input_size=input_size, augment=False, dropout=0.0, label_smoothing=0.0,
                       tta=False,
                       data=data if data is not None else DataConfig())


# --------------------------------------------------------------------------------------------
# The schedule


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
# The loop


class Diverged(Exception):
    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"the loss became {loss} at step {step}; try a smaller learning rate")
        self.step = step


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               autocast_dtype: torch.dtype | None, label_smoothing: float = 0.0) -> tuple[float, int]:
    """One optimiser step; returns (loss, number of correct predictions)."""
    # Gradients freed before the forward pass: they need not live beside its activations (the peak).
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=label_smoothing)
    loss.backward()
    optimizer.step()
    correct = int((logits.detach().argmax(1) == y).sum())
    return float(loss.detach()), correct


@dataclass
class Training:
    """One training in progress: what it trains and how far it got (owned by one thread)."""

    cfg: TrainConfig
    splits: DataSplits  # the images, or their cached features (vgg.speedups.features)
    prepared: Prepared
    net: nn.Module  # what the steps run: the model, or a speed-up's wrapper of it
    optimizer: torch.optim.Optimizer
    pipeline: Any  # BatchPipeline, or FeaturePipeline for cached features
    emit: EventCallback
    cancel: threading.Event
    generator: torch.Generator
    total_steps: int
    epochs: int = 1  # planned (TrainConfig.epochs_for the training images)
    t0: float = field(default_factory=time.perf_counter)
    step: int = 0
    images_seen: int = 0
    train_seconds: float = 0.0  # time spent in train steps (for images/s)
    epochs_done: int = 0
    best_val_loss: float | None = None
    best_val_accuracy: float | None = None
    best_state: dict[str, torch.Tensor] | None = None  # a copy of the best epoch's weights
    stop_reason: str = ""

    @property
    def model(self) -> nn.Module:
        return self.prepared.model

    @property
    def flip_tta(self) -> bool:
        """Test-time flips need images: not on cached features (they are not computed with augmentation
        either)."""
        return self.cfg.tta and not isinstance(self.pipeline, FeaturePipeline)

    def progress(self) -> float:
        p = self.step / self.total_steps
        if self.cfg.time_budget_s:
            p = max(p, (time.perf_counter() - self.t0) / self.cfg.time_budget_s)
        return min(p, 1.0)

    def lr_factor(self) -> float:
        return 1.0 if self.cfg.schedule == "constant" else onecycle_factor(self.progress())

    def should_stop(self) -> bool:
        if self.cancel.is_set():
            self.stop_reason = "cancelled"
            return True
        if self.cfg.time_budget_s and time.perf_counter() - self.t0 >= self.cfg.time_budget_s:
            self.stop_reason = "time budget reached"
            return True
        return False


def start_training(cfg: TrainConfig, splits: DataSplits, prepared: Prepared, *,
                   emit: EventCallback | None = None, cancel: threading.Event | None = None) -> Training:
    """The optimizer, the batches and the net the steps run; the speed-ups where ``cfg.speedups``."""
    emit = emit or (lambda e: None)
    model = prepared.model
    if cfg.speedups:
        speedups.accelerate(model)
    optimizer = make_optimizer(model, cfg)
    pipeline: Any = BatchPipeline(prepared.mean, prepared.std, prepared.device, cfg.model_input_size, cfg.augment,
                                  channels_last=cfg.speedups)
    net: nn.Module = model
    if cfg.speedups:
        n_images = len(splits.train) + len(splits.val) + len(splits.test)
        cached = (cfg.freeze != "none" and not cfg.augment
                  and speedups.feature_cache_fits(n_images, cfg.model_input_size))
        # All but the last layer frozen and no dropout: the last Linear's input never changes either.
        hidden = cached and cfg.freeze == "all_but_last" and cfg.dropout == 0.0
        if cached:  # the frozen part's output cannot change: compute it once
            parts, cache_dir = {}, cfg.data.resolved_cache_dir() / "features"
            state = model.state_dict()
            weights = (prepared.base or {}).get("sha256") or checkpoints.state_digest(
                state, checkpoints.frozen_keys(state, cfg.freeze))
            for name in ("train", "val", "test"):
                emit(StatusEvent(f"frozen features ({name}): computing, or reading them from the disk cache"))
                parts[name], from_disk = cached_features(model, getattr(splits, name), pipeline, cache_dir, weights,
                                                         autocast_dtype=prepared.autocast_dtype, cancel=cancel,
                                                         hidden=hidden)
                emit(StatusEvent(f"frozen features ({name}): {'read from the disk cache' if from_disk else 'computed'}"))
            splits = replace(splits, **parts)
            pipeline = FeaturePipeline(prepared.device)
        net = LastLayer(model) if hidden else speedups.training_net(
            model, optimizer, map_side=max(1, cfg.model_input_size // 32), weight_decay=cfg.weight_decay,
            cached_features=cached)
    steps_per_epoch = max(1, math.ceil(len(splits.train) / cfg.batch_size))
    epochs = cfg.epochs_for(len(splits.train))
    return Training(cfg, splits, prepared, net, optimizer, pipeline, emit, cancel or threading.Event(),
                    torch.Generator().manual_seed(cfg.seed), steps_per_epoch * epochs, epochs=epochs)


def train_epoch(t: Training, epoch: int) -> tuple[float, float, bool]:
    """One pass over the training images; returns (mean loss, accuracy, finished normally)."""
    t.net.train()
    if t.cfg.freeze != "none":
        t.model.features.eval()  # frozen layers keep their batch-norm statistics
    total_loss, correct, n = 0.0, 0, 0
    for _, images, labels in iterate_batches(t.splits.train, t.cfg.batch_size, shuffle=True,
                                             generator=t.generator):
        if t.should_stop():
            return total_loss / max(n, 1), correct / max(n, 1), False
        start = time.perf_counter()
        lr = set_lr(t.optimizer, t.lr_factor())
        x = t.pipeline(images, t.generator)
        y = labels.to(t.prepared.device)
        loss, ok = train_step(t.net, t.optimizer, x, y, t.prepared.autocast_dtype, t.cfg.label_smoothing)
        dt = time.perf_counter() - start
        t.step += 1
        if not math.isfinite(loss):
            raise Diverged(t.step, loss)
        t.train_seconds += dt
        t.images_seen += len(y)
        total_loss += loss * len(y)
        correct += ok
        n += len(y)
        t.emit(StepEvent(t.step, epoch, loss, ok / len(y), lr, len(y) / dt if dt > 0 else 0.0,
                         t.images_seen, time.perf_counter() - t.t0, t.progress()))
    return total_loss / max(n, 1), correct / max(n, 1), True


def model_state(t: Training) -> dict[str, torch.Tensor]:
    """The model's state dict (torchvision's names) on the CPU, with a speed-up's updates written in;
    on the CPU the tensors are the live weights."""
    speedups.sync_weights(t.net)
    return {k: v.detach().cpu() for k, v in t.model.state_dict().items()}


def end_epoch(t: Training, epoch: int, train_loss: float, train_accuracy: float, started: float) -> None:
    """Validation, the checkpoint, and the best epoch so far (lowest validation loss) kept aside.

    The checkpoint stores what the run can use exactly (``vgg.checkpoints.pack``): the first Linear
    folded on 1×1 maps, and no copy of what a frozen run refers to; loading expands it again."""
    val = evaluate(t.net, t.splits.val, t.pipeline, autocast_dtype=t.prepared.autocast_dtype, cancel=t.cancel,
                   flip=t.flip_tta)
    is_best = t.best_val_loss is None or val.loss < t.best_val_loss
    state = model_state(t)
    meta = {"config": t.cfg.config, "batch_norm": t.cfg.batch_norm, "num_classes": len(t.prepared.classes),
            "classes": list(t.prepared.classes), "mean": list(t.prepared.mean), "std": list(t.prepared.std),
            "input_size": t.cfg.model_input_size, "epoch": epoch, "val_loss": val.loss,
            "val_accuracy": val.accuracy}
    stored, stored_meta = checkpoints.pack(state, meta, base=t.prepared.base)
    t.emit(CheckpointEvent(epoch, stored, stored_meta, is_best))
    if is_best:
        t.best_val_loss, t.best_val_accuracy = val.loss, val.accuracy
        # A copy (``state`` shares the live weights) of what best.pt stands for: the test set is evaluated
        # on exactly the weights every later reader loads.
        t.best_state = checkpoints.as_stored(state, meta, unchanged=checkpoints.frozen_keys(state, t.cfg.freeze))
    t.epochs_done = epoch
    t.emit(EpochEvent(epoch, train_loss, train_accuracy, val.loss, val.accuracy, time.perf_counter() - started,
                      t.images_seen, time.perf_counter() - t.t0, is_best,
                      sample_predictions(val, t.cfg.seed + epoch), t.step))


def sample_predictions(val: EvalResult, seed: int, n: int = 16) -> tuple[SamplePrediction, ...]:
    """``n`` random validation images with their prediction (the Train page's grid)."""
    if len(val.labels) == 0:
        return ()
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(val.labels), generator=g)[:n]
    conf, pred = val.probabilities[idx].max(1)
    return tuple(SamplePrediction(int(i), int(val.labels[i]), int(p), float(c))
                 for i, p, c in zip(idx, pred, conf))


def test_best(t: Training) -> Predictions | None:
    """The best epoch's weights back in the model, evaluated on the test set (None before any epoch)."""
    if t.best_state is None:
        return None
    t.model.load_state_dict(t.best_state)
    speedups.reload_weights(t.net)
    t.emit(StatusEvent("evaluating the best checkpoint on the test set"))
    test = evaluate(t.net, t.splits.test, t.pipeline, autocast_dtype=t.prepared.autocast_dtype, keep_hidden=True,
                    flip=t.flip_tta)
    predictions = Predictions.from_eval(test, t.prepared.classes)
    if len(predictions):
        t.emit(TestEvent(predictions, t.step, t.epochs_done, t.images_seen))
    return predictions


def run_epochs(t: Training) -> tuple[str, str]:
    """Epoch after epoch until done, stopped, out of time or diverged: (status, message)."""
    for epoch in range(1, t.epochs + 1):
        started = time.perf_counter()
        try:
            train_loss, train_accuracy, complete = train_epoch(t, epoch)
        except Diverged as exc:
            return "diverged", str(exc)
        if not complete and t.stop_reason == "cancelled":
            return "cancelled", "stopped by the user"
        end_epoch(t, epoch, train_loss, train_accuracy, started)
        if not complete:  # time budget reached mid-epoch: the epoch above was the last
            return "done", t.stop_reason
        if t.should_stop():
            return ("cancelled", "stopped by the user") if t.stop_reason == "cancelled" else ("done", t.stop_reason)
    return "done", ""


def fit(cfg: TrainConfig, *, store: Any = None, splits: DataSplits | None = None,
        on_event: EventCallback | None = None, cancel: threading.Event | None = None,
        runs_root: Path | None = None, owner: str | None = None) -> TrainResult:
    """Train ``cfg`` end to end and return its result.

    ``on_event`` gets every event (``vgg.events``); with ``store`` (a ``RunStore``) a
    ``RunRecorder`` listens too and writes a run folder. ``splits`` may be passed in (already
    loaded data); otherwise the data are loaded here. ``owner`` (who started it, in a class) is
    kept in the run's config.json. Errors before training starts propagate; a run that started
    always ends with a status in its folder.
    """
    from vgg.runs import RunRecorder

    if cfg.speedups:
        flush_denormals()  # (the callers' threads set it first thing already; this covers direct calls)
    if store is not None:
        store.check_quota()  # before minutes of loading data (StartEvent's folder checks it again)
    recorder = RunRecorder(store) if store is not None else None
    listeners = [listener for listener in (recorder, on_event) if listener is not None]

    def emit(event: Any) -> None:
        for listener in listeners:
            listener(event)

    if splits is None:
        emit(StatusEvent("loading the data set"))
        splits = load_data(cfg.data, lambda done, total, msg: emit(StatusEvent(msg, done / total if total else None)))
    if cfg.init != "scratch":
        emit(StatusEvent("loading the starting weights"))
    prepared = prepare_model(cfg, tuple(splits.classes), tuple(splits.mean), tuple(splits.std),
                             runs_root=runs_root or (Path(store.root) if store is not None else None))
    emit(StartEvent(run_config(cfg, splits, prepared) | ({"owner": owner} if owner else {}), run_name(cfg)))
    run_id = recorder.run_id if recorder is not None else None
    if run_id is not None:
        emit(StatusEvent("training", 0.0, run_id=run_id))
    try:
        t = start_training(cfg, splits, prepared, emit=emit, cancel=cancel)
        status, message = run_epochs(t)
        best = test_best(t) if status in ("done", "cancelled") else None
    except BaseException as exc:
        emit(FailedEvent(describe_exception(exc)))
        raise
    result = TrainResult(
        run_id=run_id, status=status, message=message, epochs_done=t.epochs_done, steps=t.step,
        best_val_loss=t.best_val_loss, best_val_accuracy=t.best_val_accuracy,
        test_loss=best.loss if best is not None and len(best) else None,
        test_accuracy=best.accuracy if best is not None and len(best) else None,
        seconds=time.perf_counter() - t.t0,
        images_per_second=t.images_seen / t.train_seconds if t.train_seconds else 0.0,
        classes=prepared.classes, epochs_planned=t.epochs, node=platform.node())
    emit(DoneEvent(result))
    return result


def run_config(cfg: TrainConfig, splits: DataSplits, prepared: Prepared) -> dict[str, Any]:
    """What a run's config.json holds: the TrainConfig and the facts of its data and model."""
    return cfg.to_dict() | {
        "epochs_planned": cfg.epochs_for(len(splits.train)),
        "classes": list(splits.classes), "init_note": prepared.init_note, "mean": list(prepared.mean),
        "std": list(prepared.std), "train_images": len(splits.train), "val_images": len(splits.val),
        "test_images": len(splits.test), "device": str(prepared.device),
        "autocast": str(prepared.autocast_dtype) if prepared.autocast_dtype else "fp32"}


def run_name(cfg: TrainConfig) -> str:
    """The name part of a run's id: "vgg-A-bn-scratch"."""
    return f"vgg-{cfg.config}{'-bn' if cfg.batch_norm else ''}-{cfg.start}"
