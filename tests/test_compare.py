"""vgg.compare: curves aligned on images seen / time, the final-metrics table, the race's configs and
the offline transfer chain (pretrain on some classes, then race fine-tuning against scratch)."""

from __future__ import annotations

import math
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from vgg import compare
from vgg.data import CIFAR10_CLASSES, DataConfig, DataSplits, ReadReport, TensorData
from vgg.data.synthetic import SHAPE_CLASSES
from vgg.errors import ConfigError
from vgg.jobs import JobContext, JobManager, JobStatus
from vgg.runs import METRIC_COLUMNS, RunInfo, RunStore
from vgg.tasks import DataRegistry
from vgg.train import EpochEvent, StatusEvent, StepEvent, TrainConfig

TINY = DataConfig(source="synthetic", input_size=32, images_per_class=20)


def step(n: int, images: int, seconds: float, loss: float) -> StepEvent:
    return StepEvent(step=n, epoch=1, loss=loss, accuracy=0.5, lr=1e-3, images_per_second=100.0,
                     images_seen=images, seconds=seconds, progress=n / 10)


def epoch(n: int, images: int, elapsed: float, val_accuracy: float) -> EpochEvent:
    return EpochEvent(epoch=n, train_loss=1.0, train_accuracy=0.4, val_loss=0.9, val_accuracy=val_accuracy,
                      seconds=elapsed / n, images_seen=images, elapsed=elapsed, is_best=True)


def metrics_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows).reindex(columns=list(METRIC_COLUMNS))


# -- curves ------------------------------------------------------------------------------------


def test_history_frame_matches_the_metrics_csv_layout() -> None:
    history = [StatusEvent("loading"), step(1, 32, 0.5, 2.3), step(2, 64, 1.0, 2.1), epoch(1, 64, 1.2, 0.3)]
    frame = compare.history_frame(history)
    assert frame["kind"].tolist() == ["step", "step", "epoch"]
    assert frame["images_seen"].tolist() == [32, 64, 64]
    assert frame["seconds"].tolist() == [0.5, 1.0, 1.2]  # an epoch's x is its elapsed time
    assert frame["loss"].iloc[1] == 2.1 and math.isnan(frame["loss"].iloc[2])
    assert frame["val_accuracy"].iloc[2] == 0.3
    assert compare.history_frame([]).empty


def test_ema_is_debiased_and_skips_non_finite_values() -> None:
    assert compare.ema([1.0, 2.0, 3.0], 0.0).tolist() == [1.0, 2.0, 3.0]
    smoothed = compare.ema([4.0, 4.0, 4.0, 4.0], 0.9)
    assert smoothed == pytest.approx([4.0] * 4)  # no pull towards 0 at the start
    out = compare.ema([1.0, math.nan, 3.0], 0.5)
    assert out[0] == 1.0 and out[1] == 1.0 and out[2] == pytest.approx((0.25 * 1 + 0.5 * 3) / 0.75)
    assert math.isnan(compare.ema([math.nan, 1.0], 0.5)[0])
    with pytest.raises(ConfigError, match="smoothing 1.0"):
        compare.ema([1.0], 1.0)


def test_run_curve_picks_rows_of_the_metric_and_sorts_by_x() -> None:
    frame = compare.history_frame([step(2, 64, 1.0, 2.0), step(1, 32, 0.5, 3.0), epoch(1, 64, 1.5, 0.25),
                                   step(3, 96, 2.0, 1.0), epoch(2, 96, 2.5, 0.5)])
    curve = compare.run_curve(frame, "train_loss", "images_seen")
    assert curve["x"].tolist() == [32, 64, 96] and curve["y"].tolist() == [3.0, 2.0, 1.0]
    by_time = compare.run_curve(frame, "val_accuracy", "seconds")
    assert by_time["x"].tolist() == [1.5, 2.5] and by_time["y"].tolist() == [0.25, 0.5]
    smoothed = compare.run_curve(frame, "train_loss", smoothing=0.5)
    assert smoothed["y"].iloc[0] == 3.0 and smoothed["y"].iloc[-1] > 1.0  # per-step curves are smoothed
    assert compare.run_curve(frame, "val_accuracy", smoothing=0.9)["y"].tolist() == [0.25, 0.5]  # epochs not
    assert compare.run_curve(metrics_frame([]), "val_accuracy").empty
    with pytest.raises(ConfigError, match="unknown curve 'accuracy'"):
        compare.run_curve(frame, "accuracy")
    with pytest.raises(ConfigError, match="unknown x axis 'steps'"):
        compare.run_curve(frame, "val_accuracy", "steps")


def test_align_curves_puts_runs_on_one_axis_in_order() -> None:
    fast = compare.history_frame([epoch(1, 100, 1.0, 0.3), epoch(2, 200, 2.0, 0.6)])
    slow = compare.history_frame([epoch(1, 100, 4.0, 0.5)])
    aligned = compare.align_curves({"b-fast": fast, "a-slow": slow}, "val_accuracy", "seconds")
    assert aligned["run"].tolist() == ["b-fast", "b-fast", "a-slow"]
    assert aligned["x"].tolist() == [1.0, 2.0, 4.0]
    by_images = compare.align_curves({"b-fast": fast, "a-slow": slow}, "val_accuracy")
    assert by_images["x"].tolist() == [100, 200, 100]
    assert list(compare.align_curves({}, "val_accuracy").columns) == ["run", "x", "y"]
    curve = compare.run_curve(fast, "val_accuracy")
    assert compare.value_at(curve, 150) == 0.3 and compare.value_at(curve, 99) is None


# -- final metrics -----------------------------------------------------------------------------


def run_info(run_id: str, status: str, init: str, summary: dict) -> RunInfo:
    config = {"config": "A", "batch_norm": True, "init": init, "epochs": 2, "classes": ["a", "b", "c"],
              "data": {"source": "synthetic", "input_size": 32, "images_per_class": 20}}
    return RunInfo(run_id=run_id, path=Path("/nowhere") / run_id, config=config, status=status, message="",
                   summary=summary, created_at=0.0, updated_at=0.0)


def test_final_metrics_one_row_per_run_with_blanks_while_running() -> None:
    done = run_info("r1", "done", "run:r0", {
        "best_val_accuracy": 0.75, "test_accuracy": 0.7, "epochs_done": 2, "seconds": 12.5,
        "images_per_second": 180.0, "classes": ["a", "b"]})
    running = run_info("r2", "running", "scratch", {})
    table = compare.final_metrics([done, running])
    assert list(table.columns) == list(compare.TABLE_COLUMNS)
    assert table["run"].tolist() == ["r1", "r2"]
    first = table.iloc[0]
    assert first[["model", "init", "epochs", "classes"]].tolist() == ["vgg11_bn", "run r0", "2/2", 2]
    assert first["data"] == "synthetic · 32 px · 20/class"
    assert first["best_val_accuracy"] == 0.75 and first["images_per_second"] == 180.0
    second = table.iloc[1]
    assert second["init"] == "from scratch" and second["epochs"] == "–/2" and second["classes"] == 3
    assert math.isnan(second["test_accuracy"])
    assert compare.final_metrics([]).empty


# -- the race ----------------------------------------------------------------------------------


def test_race_pair_differs_only_in_the_starting_weights() -> None:
    base = TrainConfig(data=TINY, epochs=3, batch_size=32, seed=7, lr=5e-4, lr_ratio=0.5)
    scratch, pretrained = compare.race_pair(base)
    assert (scratch.init, pretrained.init) == ("scratch", "imagenet")
    for cfg in (scratch, pretrained):
        assert (cfg.data, cfg.epochs, cfg.batch_size, cfg.seed) == (TINY, 3, 32, 7)
    # Each side at the peak it trains best at: from weights at least RACE_PRETRAINED_LR.
    assert (scratch.lr, pretrained.lr) == (5e-4, compare.RACE_PRETRAINED_LR)
    assert compare.race_pair(replace(base, lr=3e-3)).pretrained.lr == 3e-3
    assert scratch.effective_lr_ratio == 1.0 and pretrained.effective_lr_ratio == 0.1
    assert compare.race_pair(base, "run:abc").pretrained.init == "run:abc"
    with pytest.raises(ConfigError, match="needs weights"):
        compare.race_pair(base, "scratch")


def test_transfer_classes_animals_then_vehicles_or_first_sixty_percent() -> None:
    source, target = compare.transfer_classes(list(reversed(CIFAR10_CLASSES)))
    assert source == ("bird", "cat", "deer", "dog", "frog", "horse")
    assert target == ("airplane", "automobile", "ship", "truck")
    source, target = compare.transfer_classes(SHAPE_CLASSES)
    assert (source, target) == (SHAPE_CLASSES[:6], SHAPE_CLASSES[6:])
    assert compare.transfer_classes("abcde") == (("a", "b", "c"), ("d", "e"))
    assert compare.transfer_classes("abcd") == (("a", "b"), ("c", "d"))
    with pytest.raises(ConfigError, match="at least 4 classes"):
        compare.transfer_classes("abc")


def test_transfer_plan_budgets() -> None:
    base = TrainConfig(data=TINY, epochs=2, batch_size=16, init="imagenet", freeze="features")
    plan = compare.TransferPlan(base, pretrain_images_per_class=50, pretrain_epochs=4)
    pre = plan.pretrain_config()
    # The pretraining is a default training (its batch size too); the race keeps the race's budget.
    assert (pre.init, pre.freeze, pre.epochs, pre.batch_size) == ("scratch", "none", 4, TrainConfig.batch_size)
    assert pre.data.images_per_class == 50
    scratch, from_run = plan.finetune_pair("run-1")
    assert (scratch.init, from_run.init) == ("scratch", "run:run-1")
    assert scratch.data == from_run.data == TINY and scratch.epochs == from_run.epochs == 2


def small_splits() -> DataSplits:
    images = torch.arange(6, dtype=torch.uint8).view(6, 1, 1, 1).expand(6, 3, 32, 32).contiguous()
    data = TensorData(images, torch.tensor([0, 1, 2, 0, 1, 2]))
    return DataSplits(data, data, data, ("x", "y", "z"), (0.5,) * 3, (0.25,) * 3, ReadReport(), "tiny")


def FakeRegistry(splits: DataSplits) -> DataRegistry:  # noqa: N802 - reads like a class at call sites
    registry = DataRegistry(loader=lambda cfg, progress: splits)
    registry.get(TINY)
    return registry


def test_registry_serves_a_class_subset_relabelled() -> None:
    registry = FakeRegistry(small_splits())
    cfg, same = compare.restrict_classes(TrainConfig(data=TINY), ["z", "x"], registry)
    assert same is registry and cfg.data.classes == ("z", "x")
    for splits in (registry.get(cfg.data), registry.peek(cfg.data)):
        assert splits is not None
        assert splits.classes == ("z", "x")
        assert splits.train.labels.tolist() == [1, 0, 1, 0]  # x → 1, z → 0, y dropped
        assert splits.train.images[:, 0, 0, 0].tolist() == [0, 2, 3, 5]


def test_submit_race_is_idempotent_while_queued(tmp_path: Path) -> None:
    manager = JobManager(max_running=1)
    release = threading.Event()
    blocker = manager.submit("train", "someone else's run", lambda ctx: release.wait(30))
    try:
        pair = compare.race_pair(TrainConfig(data=TINY, epochs=1), "run:abc")
        store, registry = RunStore(tmp_path), DataRegistry()
        first = compare.submit_race(manager, pair, registry, store, owner="me", source="run abc")
        again = compare.submit_race(manager, pair, registry, store, owner="me", source="run abc")
        assert first == again and len(set(first)) == 2
        snaps = [manager.snapshot(i) for i in first]
        assert [s.title for s in snaps] == ["Race · from scratch", "Race · from run abc"]
        assert [s.queue_position for s in snaps] == [1, 2] and all(s.owner == "me" for s in snaps)
    finally:
        for job in manager.active():
            if job.id != blocker:
                manager.cancel(job.id)
        release.set()
        manager.shutdown()


@pytest.mark.slow
def test_transfer_task_pretrains_then_queues_the_race_on_the_other_classes(tmp_path: Path) -> None:
    store, registry, manager = RunStore(tmp_path), DataRegistry(), JobManager(max_running=1)
    base = TrainConfig(data=TINY, epochs=1, batch_size=32, seed=3)
    plan = compare.TransferPlan(base, pretrain_images_per_class=20)
    try:
        task = compare.transfer_task(plan, registry, store, manager, owner="me")
        chain_id = manager.submit("train", "pretraining", task)
        chain = manager.wait(chain_id, timeout=240)
        assert chain.status is JobStatus.DONE, chain.error
        assert chain.extra["source_classes"] == SHAPE_CLASSES[:6]
        assert chain.extra["target_classes"] == SHAPE_CLASSES[6:]
        pre_id = chain.extra["pretrain_run_id"]
        assert store.get(pre_id).config["classes"] == list(SHAPE_CLASSES[:6])
        assert any(isinstance(item, StepEvent) for item in chain.history)  # the page can draw step 1

        scratch_job, transfer_job = (manager.wait(i, timeout=240) for i in chain.extra["followups"])
        for snap in (scratch_job, transfer_job):
            assert snap.status is JobStatus.DONE, snap.error
            assert snap.owner == "me"
            run = store.get(snap.result.run_id)
            assert run.config["classes"] == list(SHAPE_CLASSES[6:])
            assert run.config["data"]["images_per_class"] == 20 and run.config["seed"] == 3
        assert store.get(scratch_job.result.run_id).config["init"] == "scratch"
        assert store.get(transfer_job.result.run_id).config["init"] == f"run:{pre_id}"
        assert "new 4-class head" in store.get(transfer_job.result.run_id).config["init_note"]
    finally:
        manager.shutdown()


def test_transfer_task_stops_after_a_cancelled_pretraining(tmp_path: Path) -> None:
    manager = JobManager(max_running=1)
    plan = compare.TransferPlan(TrainConfig(data=TINY, epochs=1), pretrain_images_per_class=20)

    def cancelled_first(ctx: JobContext) -> object:
        ctx.cancel_event.set()  # as if Stop was pressed before the first batch
        return compare.transfer_task(plan, DataRegistry(), RunStore(tmp_path), manager)(ctx)

    try:
        snap = manager.wait(manager.submit("train", "pretraining", cancelled_first), timeout=120)
        assert snap.status is JobStatus.CANCELLED
        assert "followups" not in snap.extra
        assert [s.id for s in manager.snapshots()] == [snap.id]
    finally:
        manager.shutdown()


def test_history_frame_is_numeric_even_when_empty() -> None:
    frame = compare.history_frame([StatusEvent("x")])
    assert frame.empty
    assert all(np.issubdtype(frame[c].dtype, np.floating) for c in frame.columns if c != "kind")
