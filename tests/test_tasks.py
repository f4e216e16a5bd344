"""The job functions shared by the app and the CLI, run through a real JobManager."""

from __future__ import annotations

from vgg.data import DataConfig
from vgg.jobs import JobManager, JobStatus
from vgg.lr_finder import LRFinderConfig, LRFinderStep
from vgg.runs import RunStore
from vgg.tasks import DataRegistry, LRFinderJobResult, data_task, lr_find_task, train_task
from vgg.train import EpochEvent, StepEvent, TrainConfig, TrainResult

TINY = DataConfig(source="synthetic", input_size=32, images_per_class=20)


def test_data_lr_find_and_train_jobs_publish_their_progress(tmp_path):
    manager, registry, store = JobManager(max_running=1), DataRegistry(), RunStore(tmp_path)
    try:
        data_id = manager.submit("data", "data", data_task(TINY, registry))
        assert manager.wait(data_id, 120).status is JobStatus.DONE
        assert registry.peek(TINY) is not None

        cfg = TrainConfig(data=TINY, epochs=1, batch_size=64)
        lr_id = manager.submit("lr_find", "lr", lr_find_task(cfg, LRFinderConfig(num_iter=4, skip_start=0,
                                                                                  skip_end=0), registry, store))
        snap = manager.wait(lr_id, 300)
        assert snap.status is JobStatus.DONE, snap.error
        assert isinstance(snap.result, LRFinderJobResult) and snap.result.result.restored
        assert all(isinstance(item, LRFinderStep) for item in snap.history) and len(snap.history) >= 2

        train_id = manager.submit("train", "train", train_task(cfg, registry, store))
        snap = manager.wait(train_id, 300)
        assert snap.status is JobStatus.DONE, snap.error
        assert isinstance(snap.result, TrainResult) and snap.result.status == "done"
        assert any(isinstance(item, StepEvent) for item in snap.history)
        assert any(isinstance(item, EpochEvent) for item in snap.history)
        assert snap.extra["run_id"] == snap.result.run_id
        assert store.get(snap.result.run_id).status == "done"
    finally:
        manager.shutdown(cancel=True, timeout=30)
