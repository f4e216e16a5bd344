"""Comparing runs: curves aligned on images seen or time, a final-metrics table, and the race
"scratch vs pretrained" — with ImageNet weights, or offline by transfer from an earlier run.

The offline race (issue 3 §3): pretrain from scratch on some classes of the data set (CIFAR-10's six
animals, or the first classes of any other set), then fine-tune that run on the other classes
with few images per class, against the same budget from scratch. :func:`transfer_task` is one
job that trains the pretraining run and, when it is done, queues the two fine-tuning runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from vgg.data import CIFAR10_CLASSES, DataConfig
from vgg.errors import ConfigError
from vgg.events import EpochEvent, StepEvent, TrainResult
from vgg.jobs import JobContext, JobManager
from vgg.model import model_name
from vgg.runs import METRIC_COLUMNS, RunInfo, RunStore, describe_data, describe_init
from vgg.tasks import DataRegistry, train_task
from vgg.train import TrainConfig

# Curves a page can overlay: name → (metrics.csv row kind, column, axis title).
CURVES: dict[str, tuple[str, str, str]] = {
    "val_accuracy": ("epoch", "val_accuracy", "validation accuracy"),
    "val_loss": ("epoch", "val_loss", "validation loss"),
    "train_loss": ("step", "loss", "training loss"),
    "train_accuracy": ("step", "accuracy", "training accuracy (per batch)"),
}
# x axes: name → axis title.
X_AXES: dict[str, str] = {"images_seen": "images seen", "seconds": "seconds since the start"}

CIFAR10_ANIMALS: tuple[str, ...] = ("bird", "cat", "deer", "dog", "frog", "horse")
CIFAR10_VEHICLES: tuple[str, ...] = ("airplane", "automobile", "ship", "truck")
PRETRAIN_SHARE = 0.6  # share of the classes used for pretraining on sets other than CIFAR-10
# The race's budget, the same for both runs. Few images per class and few epochs: that is where
# pretrained features help most (measured on CIFAR-10 offline, bench/lesson_outcomes.py: 100 per
# class and 3 epochs give transfer a lead of more than 15 points; with 5 epochs or 300 images the
# run from scratch catches up).
RACE_IMAGES_PER_CLASS = 100
RACE_EPOCHS = 3
RACE_BATCH_SIZE = 32
# Each side of the race at the peak lr it trains best at (bench/lr_advice.py on CIFAR-10): from scratch
# 3e-4 (TrainConfig's default), from pretrained weights with the features at 1/10 1e-3 (62.5 % against
# 59.2 % at 3e-4; from scratch 1e-3 gave 42.0 % against 46.9 %).
RACE_PRETRAINED_LR = 1e-3
# With ImageNet weights, both runs see the images at 64 px (upsampled): ImageNet's filters were
# learned on objects far larger than 32 pixels, and on a 1×1 feature map (32 px) little of them
# is left to use; 64 px keeps 2×2 maps at four times the cost per image.
IMAGENET_RACE_INPUT_SIZE = 64

TABLE_COLUMNS = ("run", "name", "owner", "status", "model", "init", "data", "classes", "lr", "epochs",
                 "best_val_accuracy", "test_accuracy", "seconds", "images_per_second", "started")


# ---------------------------------------------------------------------------------------------
# Curves


def history_frame(history: Iterable[Any]) -> pd.DataFrame:
    """A live job's history (StepEvent / EpochEvent items) as rows shaped like ``metrics.csv``.

    Other items (status messages, LR-finder steps) are ignored, so a running job and a finished
    run's ``RunStore.metrics`` go through the same curve functions.
    """
    rows: list[dict[str, Any]] = []
    for e in history:
        if isinstance(e, StepEvent):
            rows.append({"kind": "step", "step": e.step, "epoch": e.epoch, "images_seen": e.images_seen,
                         "seconds": e.seconds, "lr": e.lr, "loss": e.loss, "accuracy": e.accuracy,
                         "images_per_second": e.images_per_second})
        elif isinstance(e, EpochEvent):
            rows.append({"kind": "epoch", "epoch": e.epoch, "images_seen": e.images_seen,
                         "seconds": e.elapsed, "train_loss": e.train_loss, "train_accuracy": e.train_accuracy,
                         "val_loss": e.val_loss, "val_accuracy": e.val_accuracy})
    frame = pd.DataFrame(rows, columns=list(METRIC_COLUMNS))
    numeric = [c for c in METRIC_COLUMNS if c != "kind"]
    frame[numeric] = frame[numeric].astype("float64")
    return frame


def ema(values: Sequence[float] | np.ndarray, smoothing: float) -> np.ndarray:
    """Exponential moving average with bias correction (TensorBoard's smoothing slider).

    ``smoothing`` in [0, 1): 0 returns the values unchanged, 0.9 averages over about ten points.
    Non-finite values are skipped (they keep the previous average).
    """
    if not 0.0 <= smoothing < 1.0:
        raise ConfigError(f"smoothing {smoothing!r} is out of range; choose a number in [0, 1)")
    x = np.asarray(values, dtype=np.float64)
    out = np.empty_like(x)
    avg, weight = 0.0, 0.0
    for i, v in enumerate(x):
        if math.isfinite(v):
            avg = smoothing * avg + (1.0 - smoothing) * v
            weight = smoothing * weight + (1.0 - smoothing)
        out[i] = avg / weight if weight > 0 else math.nan
    return out


def run_curve(metrics: pd.DataFrame, metric: str, x: str = "images_seen", *,
              smoothing: float = 0.0) -> pd.DataFrame:
    """One run's curve of ``metric`` (a key of CURVES) against ``x`` (a key of X_AXES): columns x, y.

    Rows without a value are dropped; ``smoothing`` applies an EMA to per-step curves only
    (per-epoch curves have too few points to smooth).
    """
    if metric not in CURVES:
        raise ConfigError(f"unknown curve {metric!r}; choose one of {', '.join(CURVES)}")
    if x not in X_AXES:
        raise ConfigError(f"unknown x axis {x!r}; choose one of {', '.join(X_AXES)}")
    kind, column, _ = CURVES[metric]
    if metrics.empty or column not in metrics or x not in metrics:
        return pd.DataFrame({"x": pd.Series(dtype="float64"), "y": pd.Series(dtype="float64")})
    rows = metrics[metrics["kind"] == kind][[x, column]].astype("float64").dropna()
    rows = rows.sort_values(x, kind="stable")
    y = rows[column].to_numpy()
    if kind == "step" and smoothing > 0:
        y = ema(y, smoothing)
    return pd.DataFrame({"x": rows[x].to_numpy(), "y": y})


def align_curves(metrics_by_run: Mapping[str, pd.DataFrame], metric: str, x: str = "images_seen", *,
                 smoothing: float = 0.0) -> pd.DataFrame:
    """The curves of several runs on one x axis, long format: columns run, x, y (runs in the given order)."""
    parts = []
    for run, metrics in metrics_by_run.items():
        curve = run_curve(metrics, metric, x, smoothing=smoothing)
        parts.append(curve.assign(run=run)[["run", "x", "y"]])
    if not parts:
        return pd.DataFrame({"run": pd.Series(dtype="object"), "x": pd.Series(dtype="float64"),
                             "y": pd.Series(dtype="float64")})
    return pd.concat(parts, ignore_index=True)


def race_curves(history: Iterable[Any], *, smoothing: float = 0.9) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A live run's curves against images seen: (training accuracy per batch, smoothed;
    validation accuracy per epoch)."""
    frame = history_frame(history)
    return run_curve(frame, "train_accuracy", smoothing=smoothing), run_curve(frame, "val_accuracy")


def value_at(curve: pd.DataFrame, x: float) -> float | None:
    """The last value of a curve (columns x, y) at or before ``x``; None when it starts later."""
    before = curve[curve["x"] <= x]
    return None if before.empty else float(before["y"].iloc[-1])


# ---------------------------------------------------------------------------------------------
# Final metrics


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number if math.isfinite(number) else math.nan


def final_metrics(runs: Sequence[RunInfo]) -> pd.DataFrame:
    """One row per run with its status, set-up and final numbers (NaN where not known yet).

    Columns: run (its id), name (``RunInfo.label``), owner, status, model, init, data, classes, lr,
    epochs, best_val_accuracy, test_accuracy, seconds, images_per_second, started.
    """
    rows = []
    for info in runs:
        cfg, summary = info.config, info.summary
        try:
            model = model_name(str(cfg.get("config", "A")), bool(cfg.get("batch_norm", False)))
        except ConfigError:
            model = str(cfg.get("config", "?"))
        classes = summary.get("classes") or cfg.get("classes") or []
        epochs_done, planned = summary.get("epochs_done"), cfg.get("epochs_planned") or cfg.get("epochs")
        rows.append({
            "run": info.run_id,
            "name": info.label,
            "owner": str(cfg.get("owner") or ""),
            "status": info.status,
            "model": model,
            "init": describe_init(str(cfg.get("init", "scratch"))),
            "data": describe_data(cfg.get("data") or {}),
            "classes": len(classes),
            "lr": _number(cfg.get("lr")),
            "epochs": f"{epochs_done if epochs_done is not None else '–'}/{planned if planned else '?'}",
            "best_val_accuracy": _number(summary.get("best_val_accuracy")),
            "test_accuracy": _number(summary.get("test_accuracy")),
            "seconds": _number(summary.get("seconds")),
            "images_per_second": _number(summary.get("images_per_second")),
            "started": pd.Timestamp(info.created_at, unit="s", tz="UTC").tz_convert(None) if info.created_at else pd.NaT,
        })
    return pd.DataFrame(rows, columns=list(TABLE_COLUMNS))


# ---------------------------------------------------------------------------------------------
# The race: scratch vs pretrained with the same seed, data and budget


class RacePair(NamedTuple):
    """Two runs that differ only in where their weights start."""

    scratch: TrainConfig
    pretrained: TrainConfig


def race_config(data: DataConfig, *, images_per_class: int = RACE_IMAGES_PER_CLASS, epochs: int = RACE_EPOCHS,
                batch_size: int = RACE_BATCH_SIZE, seed: int = 0) -> TrainConfig:
    """The race's base training on ``data``: VGG11-BN, few images per class (the test set whole,
    so that a few hundred images do not make the score a lottery), few epochs."""
    return TrainConfig(config="A", batch_norm=True, epochs=epochs, batch_size=batch_size, seed=seed,
                       data=replace(data, images_per_class=images_per_class, cap_test=False))


def race_pair(base: TrainConfig, init: str = "imagenet") -> RacePair:
    """From ``base`` (data, seed, epochs, batch size, model, lr), the run from scratch and the run
    from ``init`` ("imagenet", "run:<id>" or a .pth file). Nothing else differs, except what
    starting from weights implies: the discriminative ratio left at its default (features learn
    at 0.1 × lr when pretrained, as the notebook), no freezing from scratch, and each side's peak
    lr where it trains best (at least ``RACE_PRETRAINED_LR`` from weights). From ImageNet both see
    the images at ``IMAGENET_RACE_INPUT_SIZE``.
    """
    if init == "scratch":
        raise ConfigError("the pretrained side of the race needs weights: choose 'imagenet', 'run:<id>' "
                          "or a .pth file")
    if init == "imagenet" and base.model_input_size < IMAGENET_RACE_INPUT_SIZE:
        base = replace(base, input_size=IMAGENET_RACE_INPUT_SIZE)
    scratch = replace(base, init="scratch", freeze="none", lr_ratio=None)
    pretrained = replace(base, init=init, lr_ratio=None, lr=max(base.lr, RACE_PRETRAINED_LR))
    return RacePair(scratch, pretrained)


def transfer_classes(classes: Sequence[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split a data set's classes into (pretraining classes, fine-tuning classes), disjoint.

    CIFAR-10: the six animals, then the four vehicles. Any other set: the first 60 % of the
    classes (at least two), then the rest (at least two). Fewer than four classes → ConfigError.
    """
    names = tuple(classes)
    if set(names) == set(CIFAR10_CLASSES):
        return CIFAR10_ANIMALS, CIFAR10_VEHICLES
    if len(names) < 4:
        raise ConfigError(f"the transfer lesson needs at least 4 classes (2 to pretrain, 2 to fine-tune); "
                          f"this data set has {len(names)}")
    k = min(max(2, round(len(names) * PRETRAIN_SHARE)), len(names) - 2)
    return names[:k], names[k:]


def with_images_per_class(cfg: TrainConfig, images_per_class: int | None) -> TrainConfig:
    return replace(cfg, data=replace(cfg.data, images_per_class=images_per_class))


def restrict_classes(cfg: TrainConfig, classes: Sequence[str],
                     registry: DataRegistry) -> tuple[TrainConfig, DataRegistry]:
    """``cfg`` restricted to ``classes`` (DataConfig.classes), and the registry that serves it."""
    return replace(cfg, data=replace(cfg.data, classes=tuple(classes))), registry


@dataclass(frozen=True)
class TransferPlan:
    """The offline race: pretrain on some classes, then race fine-tuning against scratch on the others."""

    base: TrainConfig  # budget of the race: model, seed, epochs, batch size, lr, data (few images per class)
    pretrain_images_per_class: int | None = None  # images per class of the pretraining run (None = all)
    pretrain_epochs: int | None = None  # None: auto (TrainConfig.epochs_for), the default training's budget

    def pretrain_config(self) -> TrainConfig:
        cfg = with_images_per_class(self.base, self.pretrain_images_per_class)
        return replace(cfg, init="scratch", freeze="none", lr_ratio=None, epochs=self.pretrain_epochs,
                       batch_size=TrainConfig.batch_size)

    def finetune_pair(self, pretrain_run_id: str) -> RacePair:
        return race_pair(self.base, f"run:{pretrain_run_id}")


RACE_TITLES = {"scratch": "Race · from scratch", "pretrained": "Race · from {source}"}


def submit_race(manager: JobManager, pair: RacePair, registry: DataRegistry, store: RunStore, *,
                owner: str | None = None, source: str = "ImageNet") -> list[str]:
    """Queue both runs of ``pair`` (scratch first) as "train" jobs; return their job ids.

    Keys make it idempotent: a second click while they are queued or running returns the same jobs.
    """
    ids = []
    for role, cfg in (("scratch", pair.scratch), ("pretrained", pair.pretrained)):
        title = RACE_TITLES[role].format(source=source)
        ids.append(manager.submit("train", title, train_task(cfg, registry, store),
                                  key=f"race:{role}:{source}:{cfg!r}", owner=owner))
    return ids


def transfer_task(plan: TransferPlan, registry: DataRegistry, store: RunStore, manager: JobManager, *,
                  owner: str | None = None) -> Callable[[JobContext], TrainResult]:
    """One job: pretrain on the first classes, then (if it finished) queue the two fine-tuning runs.

    Publishes ``extra``: ``source_classes`` and ``target_classes`` once the data are loaded,
    ``pretrain_run_id`` when the pretraining ends and ``followups`` (the two job ids: scratch,
    from the run) when they are queued. Its history is the pretraining run's events.
    """

    def run(ctx: JobContext) -> TrainResult:
        pre_cfg = plan.pretrain_config()
        ctx.publish(message="loading the data set", progress=0.0)
        full = registry.get(pre_cfg.data, lambda done, total, msg: ctx.publish(
            message=msg, progress=done / total if total else None))
        source, target = transfer_classes(full.classes)
        ctx.publish(extra={"source_classes": source, "target_classes": target})
        cfg, pre_registry = restrict_classes(pre_cfg, source, registry)
        result = train_task(cfg, pre_registry, store)(ctx)
        ctx.publish(extra={"pretrain_run_id": result.run_id})
        if result.status != "done" or result.run_id is None or ctx.cancelled:
            return result
        pair = plan.finetune_pair(result.run_id)
        scratch, _ = restrict_classes(pair.scratch, target, registry)
        pretrained, fine_registry = restrict_classes(pair.pretrained, target, registry)
        ids = submit_race(manager, RacePair(scratch, pretrained), fine_registry, store, owner=owner,
                          source=f"run {result.run_id}")
        ctx.publish(extra={"followups": tuple(ids)}, message=f"pretrained run {result.run_id}; race queued")
        return result

    return run
