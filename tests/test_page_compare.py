"""AppTest of the Compare page: two real runs overlaid with their final metrics; the race's live view
(with stand-in jobs, so no training runs here); the offline lesson when ImageNet weights are absent."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from vgg import compare
from vgg.data import DataConfig
from vgg.jobs import JobContext, JobManager
from vgg.runs import RunStore
from vgg.train import EpochEvent, StepEvent, TrainConfig, fit

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "compare.py")
TINY = DataConfig(source="synthetic", input_size=32, images_per_class=20)


def run_until(at: AppTest, done: Any, timeout_s: float = 60.0) -> AppTest:
    """Rerun (AppTest fires no run_every timers) until ``done(at)`` or the deadline."""
    deadline = time.monotonic() + timeout_s
    at.run()
    while not done(at):
        assert not at.exception, [e.value for e in at.exception]
        assert time.monotonic() < deadline, ("the page did not get there in time", [
            e.value for kind in ("caption", "info", "error", "warning") for e in at.get(kind)])
        time.sleep(0.1)  # polling interval between reruns, not a wait for an assumed duration
        at.run()
    return at


@pytest.fixture(scope="module")
def two_runs(module_tmp: Path) -> tuple[Path, list[str]]:
    """Two tiny real runs (synthetic, 20 images per class, 1 epoch), made once for this module."""
    root = module_tmp
    store = RunStore(root)
    ids = []
    for seed, schedule in ((0, "onecycle"), (1, "constant")):
        cfg = TrainConfig(data=TINY, epochs=1, batch_size=64, seed=seed, schedule=schedule)
        result = fit(cfg, store=store)
        assert result.status == "done"
        ids.append(result.run_id)
    return root, ids


def chart_specs(at: AppTest) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def values(data: Any) -> list[float]:
    """A trace's x or y: plotly 6 ships numpy arrays as base64 typed arrays."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=np.dtype(data["dtype"])).tolist()
    return list(data)


@pytest.mark.slow  # two real trainings (seconds on an idle machine, a minute on a busy one)
def test_two_runs_overlaid_with_a_metrics_table(two_runs: tuple[Path, list[str]],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    root, ids = two_runs
    monkeypatch.setenv("VGG_RUNS_DIR", str(root))
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    at.multiselect(key="compare_runs").set_value(ids).run()
    assert not at.exception
    accuracy, loss = chart_specs(at)[:2]
    assert len(accuracy["data"]) == 2 and len(loss["data"]) == 2
    labels = {RunStore(root).get(run_id).label for run_id in ids}  # readable names, each ending in its id's tag
    assert {trace["name"] for trace in accuracy["data"]} == labels
    assert accuracy["layout"]["xaxis"]["title"]["text"] == "images seen"
    assert values(accuracy["data"][0]["x"]) == [180]  # one epoch of 180 training images
    table = at.dataframe[0].value
    assert len(table) == 2 and set(table["run"]) == set(ids)
    assert table["status"].tolist() == ["done", "done"] and (table["test_accuracy"] >= 0).all()

    at.segmented_control(key="compare_x").set_value("seconds").run()
    accuracy = chart_specs(at)[0]
    assert accuracy["layout"]["xaxis"]["title"]["text"] == "seconds since the start"
    assert values(accuracy["data"][0]["x"])[0] > 0


def test_without_runs_or_weights_the_offline_race_is_offered() -> None:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not at.exception
    assert any("No runs yet" in i.value for i in at.info)
    text = "\n".join(m.value for m in at.markdown)
    assert "No ImageNet weights on this machine" in text and "vgg11_bn-" in text
    assert "circle, square, triangle, diamond, plus, cross" in text  # synthetic: the first six classes
    assert "offline" in at.button(key="race_start").label


def stand_in_job(images: int, *, started: threading.Event | None = None, hold: threading.Event | None = None,
                 run_id: str = "run", store: RunStore | None = None) -> Any:
    """A job that publishes training events like train_task (and may wait for ``hold``); with a
    ``store`` it also writes a small run folder, as a real run would."""

    def run(ctx: JobContext) -> Any:
        if started is not None:
            started.set()
        events: list[Any] = [StepEvent(i, 1, 2.0 / i, 0.2 * i, 1e-3, 100.0, images * i, 0.1 * i, i / 4)
                             for i in range(1, 4)]
        events.append(EpochEvent(1, 1.0, 0.5, 0.9, 0.55, 1.0, images * 3, 1.0, True))
        for e in events:
            ctx.publish(append=e, progress=min(1.0, getattr(e, "progress", 1.0)))
        if hold is not None:
            hold.wait(30)
        name = run_id
        if store is not None:
            with store.create({"config": "A", "batch_norm": True, "init": "scratch", "epochs": 1}) as writer:
                for _, row in compare.history_frame(events).iterrows():
                    writer.append_metrics({k: v for k, v in row.items() if k == "kind" or not pd.isna(v)})
                writer.set_status("done", "done", best_val_accuracy=0.55, test_accuracy=0.5)
            name = writer.run_id
        return SimpleNamespace(run_id=name, test_accuracy=0.5, seconds=1.0)

    return run


def test_offline_race_shows_pretraining_then_both_runs_racing(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_transfer_task(plan: compare.TransferPlan, registry: Any, store: Any, manager: JobManager,
                           owner: str | None = None) -> Any:
        assert plan.base.data.images_per_class == 100 and plan.base.epochs == 3
        pretrain = stand_in_job(32, run_id="pre")

        def run(ctx: JobContext) -> Any:
            ctx.publish(extra={"source_classes": ("a", "b"), "target_classes": ("c", "d")})
            result = pretrain(ctx)
            ids = [manager.submit("train", title, stand_in_job(32, run_id=title), owner=owner)
                   for title in ("Race · from scratch", "Race · from run pre")]
            ctx.publish(extra={"followups": tuple(ids), "pretrain_run_id": "pre"})
            return result

        return run

    monkeypatch.setattr(compare, "transfer_task", fake_transfer_task)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    at.button(key="race_start").click()

    def raced(a: AppTest) -> bool:
        charts = [s for s in chart_specs(a) if len(s["data"]) == 4]
        return bool(charts) and all(len(values(trace["x"])) >= 1 for trace in charts[0]["data"]) and \
            sum("test accuracy" in m.value for m in a.markdown) == 3  # step 1 and both racers
    run_until(at, raced)
    race = [s for s in chart_specs(at) if len(s["data"]) == 4][0]
    assert [t["name"] for t in race["data"]] == ["from scratch"] * 2 + ["from run pre"] * 2
    assert any("**Step 1 · pretraining** on a, b" in m.value for m in at.markdown)
    assert any("**Step 2 · the race** on c, d" in m.value for m in at.markdown)


def test_imagenet_race_queues_two_runs_with_the_same_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    submitted: list[TrainConfig] = []
    started, hold = threading.Event(), threading.Event()

    def fake_submit_race(manager: JobManager, pair: compare.RacePair, registry: Any, store: Any, *,
                         owner: str | None = None, source: str = "ImageNet") -> list[str]:
        submitted.extend(pair)
        first = stand_in_job(64, started=started, hold=hold, store=store)
        return [manager.submit("train", "Race · from scratch", first, owner=owner),
                manager.submit("train", f"Race · from {source}", stand_in_job(64, store=store), owner=owner)]

    monkeypatch.setattr("vgg.model.pretrained_available", lambda config, batch_norm: True)
    monkeypatch.setattr(compare, "submit_race", fake_submit_race)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.run()
    assert not any("No ImageNet weights" in m.value for m in at.markdown)
    at.number_input(key="race_seed").set_value(5)
    at.button(key="race_start").click().run()
    assert [c.init for c in submitted] == ["scratch", "imagenet"]
    assert {(c.seed, c.epochs, c.batch_size, c.data.images_per_class) for c in submitted} == {(5, 3, 32, 100)}
    try:
        assert started.wait(30)
        run_until(at, lambda a: any("number 1 in the queue" in i.value for i in a.info))  # one runs at a time
    finally:
        hold.set()
    run_until(at, lambda a: sum("test accuracy" in m.value for m in a.markdown) == 2)
    assert not at.exception
    at.button(key="race_compare").click().run()
    assert len(at.multiselect(key="compare_runs").value) == 2  # both race runs, overlaid above
    accuracy = chart_specs(at)[0]
    assert len(accuracy["data"]) == 2
