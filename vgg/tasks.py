"""Job functions shared by the app and the CLI: load data, run an LR range test, train, evaluate.

Each ``*_task`` returns a callable for :meth:`vgg.jobs.JobManager.submit`; it publishes what a
page needs to draw through the job's snapshots (history items are the engine's frozen events).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from vgg import cluster
from vgg.data import DataConfig, DataSplits, load_data, subset_classes
from vgg.errors import VGGError
from vgg.evaluate import evaluate_run
from vgg.events import DoneEvent, EpochEvent, StatusEvent, StepEvent, TrainResult
from vgg.jobs import JobContext
from vgg.lr_finder import LRFinderConfig, LRFinderResult, LRFinderStep, find_lr_for
from vgg.runs import RunStore
from vgg.settings import flush_denormals
from vgg.train import TrainConfig, fit

ProgressCallback = Callable[[int, int, str], None]


class DataRegistry:
    """Loaded data sets, shared by every job and page of one process (a few at most)."""

    def __init__(self, max_entries: int = 3,
                 loader: Callable[[DataConfig, ProgressCallback | None], DataSplits] = load_data) -> None:
        self._load = loader
        self._lock = threading.Lock()
        self._loading: dict[DataConfig, threading.Lock] = {}
        self._cache: dict[DataConfig, DataSplits] = {}
        self._max = max_entries

    def peek(self, cfg: DataConfig) -> DataSplits | None:
        """The loaded data for ``cfg``, or None without loading."""
        if cfg.classes is not None:
            whole = self.peek(replace(cfg, classes=None))
            return None if whole is None else subset_classes(whole, cfg.classes)
        with self._lock:
            return self._cache.get(cfg)

    def get(self, cfg: DataConfig, progress: ProgressCallback | None = None) -> DataSplits:
        """Load ``cfg`` once (concurrent callers wait for the first) and keep it.

        A class subset (``cfg.classes``) is cut from the whole data set, which is loaded once.
        """
        if cfg.classes is not None:
            return subset_classes(self.get(replace(cfg, classes=None), progress), cfg.classes)
        with self._lock:
            if cfg in self._cache:
                return self._cache[cfg]
            lock = self._loading.setdefault(cfg, threading.Lock())
        with lock:
            with self._lock:
                if cfg in self._cache:
                    return self._cache[cfg]
            splits = self._load(cfg, progress)
            with self._lock:
                self._cache[cfg] = splits
                while len(self._cache) > self._max:
                    self._cache.pop(next(iter(self._cache)))
                self._loading.pop(cfg, None)
            return splits


def _progress_publisher(ctx: JobContext) -> ProgressCallback:
    def progress(done: int, total: int, message: str) -> None:
        ctx.publish(message=message, progress=done / total if total else None)

    return progress


def data_task(cfg: DataConfig, registry: DataRegistry) -> Callable[[JobContext], DataSplits]:
    """Decode (or read from the cache) a data set, with progress."""

    def run(ctx: JobContext) -> DataSplits:
        splits = registry.get(cfg, _progress_publisher(ctx))
        ctx.publish(progress=1.0, message=f"{len(splits.classes)} classes, {len(splits.train)} training images")
        return splits

    return run


@dataclass(frozen=True)
class LRFinderJobResult:
    result: LRFinderResult
    config: TrainConfig


def lr_find_task(cfg: TrainConfig, lr_cfg: LRFinderConfig, registry: DataRegistry,
                 store: RunStore) -> Callable[[JobContext], LRFinderJobResult]:
    """The LR range test; each iteration is one history item (:class:`LRFinderStep`)."""

    def run(ctx: JobContext) -> LRFinderJobResult:
        flush_denormals()  # this job's thread, before its first torch op
        ctx.publish(message="loading the data set", progress=0.0)
        splits = registry.get(cfg.data, _progress_publisher(ctx))

        def on_step(step: LRFinderStep) -> None:
            ctx.publish(append=step, progress=(step.iteration + 1) / lr_cfg.num_iter,
                        message=f"lr {step.lr:.2e} · loss {step.loss:.3f}")

        def on_event(e: Any) -> None:
            if isinstance(e, StatusEvent):
                ctx.publish(message=e.message)

        if cluster.ray_address():  # a Ray task on the cluster (vgg.cluster)
            result = cluster.find_lr_on_cluster(cfg, lr_cfg, store=store, splits=splits, on_step=on_step,
                                                on_event=on_event, cancel=ctx.cancel_event)
        else:
            result = find_lr_for(cfg, lr_cfg, splits=splits, on_step=on_step, on_event=on_event,
                                 cancel=ctx.cancel_event, runs_root=store.root)
        out = LRFinderJobResult(result, cfg)
        ctx.publish(result=out, progress=1.0, message="done; weights restored" if result.restored else "done")
        return out

    return run


def train_task(cfg: TrainConfig, registry: DataRegistry, store: RunStore) -> Callable[[JobContext], TrainResult]:
    """A training run written to ``store``; step and epoch events are history items."""

    def run(ctx: JobContext) -> TrainResult:
        flush_denormals()  # this job's thread, before its first torch op
        ctx.publish(message="loading the data set", progress=0.0)
        splits = registry.get(cfg.data, _progress_publisher(ctx))
        ctx.publish(extra={"classes": tuple(splits.classes),
                           "planned_images": len(splits.train) * cfg.epochs_for(len(splits.train))})

        def on_event(e: Any) -> None:
            if isinstance(e, StepEvent):
                ctx.publish(append=e, progress=e.progress,
                            message=f"epoch {e.epoch} · step {e.step} · loss {e.loss:.3f}")
            elif isinstance(e, EpochEvent):
                ctx.publish(append=e, message=f"epoch {e.epoch}: validation accuracy {e.val_accuracy:.1%}")
            elif isinstance(e, StatusEvent):
                ctx.publish(message=e.message, extra={"run_id": e.run_id} if e.run_id else None)
            elif isinstance(e, DoneEvent):
                ctx.publish(result=e.result, progress=1.0)

        train = cluster.fit_on_cluster if cluster.ray_address() else fit  # a Ray task, or in this process
        result = train(cfg, store=store, splits=splits, on_event=on_event, cancel=ctx.cancel_event, owner=ctx.owner)
        ctx.publish(message=f"{result.status}: {result.message}" if result.message else result.status)
        if result.status == "diverged":
            # The run's folder says "diverged"; the job reports it as a failure with the step.
            raise VGGError(f"training diverged: {result.message}")
        return result

    return run


def evaluate_task(run_id: str, data_cfg: DataConfig, registry: DataRegistry,
                  store: RunStore) -> Callable[[JobContext], float]:
    """Evaluate a run's best checkpoint on its test set and save its predictions (for runs that
    stopped before their test evaluation); the result is the test accuracy."""

    def run(ctx: JobContext) -> float:
        ctx.publish(message="loading the data set", progress=0.0)
        splits = registry.get(data_cfg, lambda done, total, msg: ctx.publish(message=msg))
        ctx.publish(message=f"evaluating best.pt on {len(splits.test)} test images", progress=0.5)
        evaluate = cluster.evaluate_on_cluster if cluster.ray_address() else evaluate_run  # a Ray task, or here
        predictions = evaluate(store, run_id, splits, cancel=ctx.cancel_event)
        ctx.publish(message=f"test accuracy {predictions.accuracy:.1%}", progress=1.0)
        return predictions.accuracy

    return run
