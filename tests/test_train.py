"""The training engine: configuration, schedule, run folders, cancel, divergence, transfer."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch

from vgg import train as train_mod
from vgg.data import DataConfig, load_data, subset_classes
from vgg.errors import ConfigError
from vgg.evaluate import load_run_predictions
from vgg.events import EpochEvent, StepEvent
from vgg.finetune import prepare_model
from vgg.lr_finder import LRFinderConfig, find_lr_for
from vgg.model import build_vgg
from vgg.runs import RunStore
from vgg.train import TrainConfig, fit, onecycle_factor, run_epochs, start_training

TINY = DataConfig(source="synthetic", input_size=32, images_per_class=20)


@pytest.fixture(scope="module")
def tiny_splits():
    return load_data(TINY)


@pytest.fixture(scope="module")
def tiny_run(module_tmp, tiny_splits):
    """One tiny run (synthetic, 20 images per class, 1 epoch) shared by the tests below."""
    store = RunStore(module_tmp)
    events: list = []
    cfg = TrainConfig(data=TINY, epochs=1, batch_size=64)
    result = fit(cfg, store=store, splits=tiny_splits, on_event=events.append)
    return store, result, events


@pytest.mark.parametrize(
    ("changes", "fragment"),
    [
        ({"lr": 0.0}, "learning rate 0.0"),
        ({"lr": -1e-3}, "learning rate"),
        ({"lr": 11.0}, "learning rate 11.0"),
        ({"batch_size": 0}, "batch size 0"),
        ({"epochs": 1_000_000}, "epochs 1000000"),
        ({"input_size": 16}, "input size 16"),
        ({"config": "Z"}, "unknown configuration 'Z'"),
        ({"optimizer": "rmsprop"}, "unknown optimizer 'rmsprop'"),
        ({"init": "scratch", "freeze": "features"}, "needs pretrained weights"),
        ({"init": "weights.bin"}, "unknown init"),
    ],
)
def test_out_of_range_settings_are_refused_with_a_message(changes, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(")) as info:
        TrainConfig(data=TINY, **changes)
    assert "\n" not in str(info.value)


def test_zero_images_per_class_is_refused():
    with pytest.raises(ConfigError, match="images"):
        DataConfig(source="synthetic", images_per_class=0)


def test_discriminative_ratio_defaults_follow_the_start():
    assert TrainConfig(data=TINY).effective_lr_ratio == 1.0
    assert TrainConfig(data=TINY, init="imagenet").effective_lr_ratio == 0.1
    assert TrainConfig(data=TINY, init="imagenet", lr_ratio=0.5).effective_lr_ratio == 0.5


def test_config_round_trips_through_a_dict():
    cfg = TrainConfig(data=TINY, lr=3e-4, epochs=3, time_budget_s=60.0)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_onecycle_schedule_values():
    assert onecycle_factor(0.0) == pytest.approx(1 / 25)
    assert onecycle_factor(0.25) == pytest.approx(1.0)
    assert onecycle_factor(1.0) == pytest.approx(1 / (25 * 1e4))
    # cosine warm-up: halfway up at half the warm-up
    assert onecycle_factor(0.125) == pytest.approx((1 + 1 / 25) / 2)
    values = [onecycle_factor(i / 100) for i in range(101)]
    peak = values.index(max(values))
    assert all(a <= b for a, b in zip(values[:peak], values[1:peak + 1]))
    assert all(a >= b for a, b in zip(values[peak:], values[peak + 1:]))


def test_fit_writes_a_complete_run_folder(tiny_run, tiny_splits):
    store, result, events = tiny_run
    assert result.status == "done"
    info = store.get(result.run_id)
    assert info.status == "done"
    assert info.config["classes"] == list(tiny_splits.classes)
    steps = [e for e in events if isinstance(e, StepEvent)]
    epochs = [e for e in events if isinstance(e, EpochEvent)]
    assert len(steps) == result.steps == math.ceil(len(tiny_splits.train) / 64)
    assert len(epochs) == 1 and epochs[0].is_best
    metrics = store.metrics(result.run_id)
    assert (metrics["kind"] == "step").sum() == result.steps
    assert (metrics["kind"] == "epoch").sum() == 1
    assert result.test_accuracy is not None and 0.0 <= result.test_accuracy <= 1.0
    # the best checkpoint loads into a fresh torchvision-layout model, strictly
    ckpt = store.load_checkpoint(result.run_id, "best")
    model = build_vgg("A", batch_norm=True, num_classes=len(tiny_splits.classes))
    model.load_state_dict(ckpt["model"], strict=True)
    assert ckpt["meta"]["classes"] == list(tiny_splits.classes)
    preds = load_run_predictions(store, result.run_id)
    assert preds.probabilities.shape == (len(tiny_splits.test), len(tiny_splits.classes))


def test_cancel_takes_effect_within_two_seconds(tiny_splits):
    cfg = TrainConfig(data=TINY, epochs=50, batch_size=32)
    cancel = threading.Event()
    first_step = threading.Event()
    steps_after_cancel: list[float] = []

    def on_event(e):
        if isinstance(e, StepEvent):
            if cancel.is_set():
                steps_after_cancel.append(time.perf_counter())
            first_step.set()

    out: dict = {}
    worker = threading.Thread(target=lambda: out.setdefault("r", fit(cfg, splits=tiny_splits, on_event=on_event,
                                                                      cancel=cancel)))
    worker.start()
    assert first_step.wait(120)
    t_cancel = time.perf_counter()
    cancel.set()
    worker.join(60)
    assert not worker.is_alive()
    assert out["r"].status == "cancelled"
    # at most the step in flight finishes after the cancel
    assert len(steps_after_cancel) <= 1
    stopped = steps_after_cancel[-1] if steps_after_cancel else t_cancel
    assert stopped - t_cancel < 2.0


def test_a_nan_loss_stops_the_run_as_diverged(tmp_path, tiny_splits, monkeypatch):
    real_step = train_mod.train_step
    calls = {"n": 0}

    def flaky_step(*args, **kwargs):
        calls["n"] += 1
        loss, correct = real_step(*args, **kwargs)
        return (float("nan") if calls["n"] == 2 else loss), correct

    monkeypatch.setattr(train_mod, "train_step", flaky_step)
    store = RunStore(tmp_path)
    result = fit(TrainConfig(data=TINY, epochs=2, batch_size=32), store=store, splits=tiny_splits)
    assert result.status == "diverged"
    assert "step 2" in result.message
    assert store.get(result.run_id).status == "diverged"


def test_time_budget_stops_training(tiny_splits):
    cfg = TrainConfig(data=TINY, epochs=100, batch_size=32, time_budget_s=1.0)
    t = time.perf_counter()
    result = fit(cfg, splits=tiny_splits)
    assert result.status == "done" and result.message == "time budget reached"
    assert result.epochs_done < 100
    assert time.perf_counter() - t < 60


def test_transfer_from_an_earlier_run_gets_a_new_head(tiny_run, tiny_splits):
    store, first, _ = tiny_run
    other = subset_classes(tiny_splits, tiny_splits.classes[:4])
    cfg = TrainConfig(data=TINY, init=f"run:{first.run_id}", freeze="features")
    prepared = prepare_model(cfg, tuple(other.classes), other.mean, other.std, runs_root=store.root)
    assert prepared.model.classifier[6].out_features == 4
    # everything but the head comes from the earlier run
    ckpt = store.load_checkpoint(first.run_id, "best")["model"]
    state = prepared.model.state_dict()
    assert torch.equal(state["features.0.weight"], ckpt["features.0.weight"])
    assert torch.equal(state["classifier.3.weight"], ckpt["classifier.3.weight"])
    # normalisation comes from the earlier run, as its features expect
    assert prepared.mean == tuple(store.get(first.run_id).config["mean"])


def test_the_best_epoch_is_kept_apart_from_the_live_weights(tiny_splits):
    cfg = TrainConfig(data=TINY, epochs=1, batch_size=64, precision="fp32")
    prepared = prepare_model(cfg, tuple(tiny_splits.classes), tiny_splits.mean, tiny_splits.std)
    t = start_training(cfg, tiny_splits, prepared)
    run_epochs(t)
    best = t.best_state
    live = prepared.model.state_dict()
    assert best is not None and best.keys() == live.keys()
    assert all(best[k].data_ptr() != live[k].data_ptr() for k in live if live[k].numel())


def test_lr_range_test_uses_the_training_step_and_restores_weights(tiny_splits):
    cfg = TrainConfig(data=TINY, batch_size=32)
    seen = []
    result = find_lr_for(cfg, LRFinderConfig(num_iter=6, skip_start=0, skip_end=0), splits=tiny_splits,
                         on_step=seen.append)
    assert result.restored
    assert len(seen) == len(result.lrs) >= 2
    assert result.lrs[0] == pytest.approx(1e-7)


def test_training_on_the_synthetic_set_learns_far_above_chance(tmp_path):
    """Ten classes (chance: 10 %), from scratch, 32 px, the default Adam and one-cycle: about a minute."""
    data = DataConfig(source="synthetic", input_size=32, images_per_class=200)
    cfg = TrainConfig(data=data, epochs=6, batch_size=64)
    result = fit(cfg, store=RunStore(tmp_path))
    assert result.status == "done"
    assert result.best_val_accuracy >= 0.8, result.best_val_accuracy
    assert result.test_accuracy >= 0.7, result.test_accuracy


def test_a_training_thread_flushes_subnormal_floats_to_zero() -> None:
    """Adam's moments of dead units decay into subnormal floats, which the CPU multiplies slowly
    (vgg.settings.flush_denormals): the task that trains sets flush-to-zero in its own thread."""
    import threading

    from vgg.settings import flush_denormals

    tiny = torch.finfo(torch.float32).tiny  # the smallest normal float32
    seen: dict[str, float] = {}
    able: list[bool] = []

    def probe(name: str, setup) -> None:
        able.append(bool(setup()))
        x = torch.full((64,), tiny, dtype=torch.float32)
        seen[name] = float((x * 0.5).abs().max())  # a subnormal result, or 0 when flushed

    def plain() -> None:
        torch.set_flush_denormal(False)  # a thread inherits its creator's setting: start from off

    for name, setup in (("plain", plain), ("flushed", flush_denormals)):
        thread = threading.Thread(target=probe, args=(name, setup))
        thread.start()
        thread.join()
    if not able[-1]:
        pytest.skip("this CPU cannot flush subnormal floats")
    assert seen["plain"] == pytest.approx(tiny / 2)
    assert seen["flushed"] == 0.0


def test_the_training_task_runs_with_subnormals_flushed(tmp_path, monkeypatch) -> None:
    from vgg import tasks
    from vgg.jobs import JobManager
    from vgg.runs import RunStore

    tiny = torch.finfo(torch.float32).tiny
    flushed: list[float] = []
    real_fit = tasks.fit

    def fit(*args, **kwargs):  # called in the job's thread, after the task's first lines
        flushed.append(float((torch.full((8,), tiny) * 0.5).abs().max()))
        return real_fit(*args, **kwargs)

    monkeypatch.setattr(tasks, "fit", fit)
    manager = JobManager()
    task = tasks.train_task(TrainConfig(data=TINY, epochs=1, batch_size=64), tasks.DataRegistry(),
                            RunStore(tmp_path))
    job: list[str] = []

    def submit() -> None:  # from a thread with flushing off: the job's thread inherits that
        torch.set_flush_denormal(False)
        job.append(manager.submit("train", "t", task))

    thread = threading.Thread(target=submit)
    thread.start()
    thread.join()
    snap = manager.wait(job[0], timeout=300)
    assert snap.status.value == "done", snap.error
    assert flushed == [0.0]


def test_auto_epochs_see_about_45000_images_and_an_explicit_number_wins():
    from vgg.train import AUTO_IMAGES, AUTO_MAX_EPOCHS

    auto = TrainConfig()
    assert auto.epochs is None and auto.data.images_per_class is None  # every image, auto epochs
    assert auto.epochs_for(45_000) == 1 and auto.epochs_for(4_500) == 10  # CIFAR-10, the synthetic set
    assert auto.epochs_for(81) == AUTO_MAX_EPOCHS and auto.epochs_for(200_000) == 1
    assert AUTO_IMAGES == 45_000 and TrainConfig(epochs=3).epochs_for(45_000) == 3
    assert auto.epochs_label == "auto epochs" and TrainConfig(epochs=1).epochs_label == "1 epoch"
    assert auto.title() == "Training · A-BN · scratch · auto epochs"


def test_the_notebooks_recipe_is_a_valid_choice_beside_the_defaults():
    from vgg.train import notebook_recipe

    nb = notebook_recipe(TINY)
    assert (nb.init, nb.input_size, nb.lr, nb.effective_lr_ratio, nb.schedule, nb.epochs) == (
        "imagenet", 224, 5e-4, 0.1, "constant", 5)
    assert nb.dropout == 0.5 and TrainConfig().dropout == 0.0 and nb.data == TINY


def test_dropout_and_label_smoothing_reach_the_model_and_the_loss(tiny_splits):
    cfg = TrainConfig(data=TINY, dropout=0.3, label_smoothing=0.2, epochs=1)
    prepared = prepare_model(cfg, tuple(tiny_splits.classes), tiny_splits.mean, tiny_splits.std)
    assert [m.p for m in prepared.model.classifier if isinstance(m, torch.nn.Dropout)] == [0.3, 0.3]
    model = torch.nn.Linear(3, 4)
    x, y = torch.randn(8, 3), torch.randint(0, 4, (8,))
    with torch.no_grad():
        plain = torch.nn.functional.cross_entropy(model(x), y).item()
        smooth = torch.nn.functional.cross_entropy(model(x), y, label_smoothing=0.2).item()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    assert train_mod.train_step(model, opt, x, y, None)[0] == pytest.approx(plain)
    assert train_mod.train_step(model, opt, x, y, None, label_smoothing=0.2)[0] == pytest.approx(smooth)
    with pytest.raises(ConfigError, match="label smoothing 0.9"):
        TrainConfig(data=TINY, label_smoothing=0.9)
    with pytest.raises(ConfigError, match="dropout 1.0"):
        TrainConfig(data=TINY, dropout=1.0)
