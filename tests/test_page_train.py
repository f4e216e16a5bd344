"""The Train page in AppTest: CPU-friendly defaults, refused values, a short run to the end, Stop."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from ui.common import job_manager, run_store
from vgg.jobs import JobStatus

# Waiting for real jobs on a loaded machine can outlast the suite's default timeout.
pytestmark = pytest.mark.timeout(600)

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "train.py")
DEADLINE_S = 480.0  # a loaded 2-core machine; a quiet one needs a fraction of this


@pytest.fixture
def at() -> AppTest:
    app = AppTest.from_file(PAGE, default_timeout=180)
    yield app
    jobs = job_manager()
    for snap in jobs.active():
        jobs.cancel(snap.id)
    for snap in jobs.snapshots():
        jobs.wait(snap.id, timeout=60)


def texts(at: AppTest, kind: str) -> list[str]:
    return [str(e.value) for e in at.get(kind)]


def metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def badges(at: AppTest) -> str:
    return " ".join(m for m in texts(at, "markdown") if "-badge[" in m)


def run_until(at: AppTest, done, what: str) -> None:
    """Rerun (AppTest fires no run_every timers) until ``done(at)`` or the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while not done(at):
        assert not at.exception, at.exception
        assert time.monotonic() < deadline, f"timed out waiting for {what}; errors: {texts(at, 'error')}"
        time.sleep(0.5)
        at.run()


def small_run(at: AppTest, *, images: int, epochs: int) -> None:
    at.number_input(key="train-ipc").set_value(images)
    at.number_input(key="train-epochs").set_value(epochs)
    at.number_input(key="train-batch").set_value(16)
    at.run()
    assert not texts(at, "error")


def test_defaults_are_cpu_friendly_with_a_cost_estimate(at: AppTest) -> None:
    at.session_state["chosen_lr"] = 5e-4  # picked on the LR finder page (the default is 3e-4)
    at.run()
    assert not at.exception and not texts(at, "error")
    assert at.selectbox(key="train-config").value == "A" and at.toggle(key="train-bn").value is True
    assert at.radio(key="train-init").value == "scratch"
    keys = ("train-ipc", "train-size", "train-epochs", "train-batch", "train-lr", "train-ratio-scratch",
            "train-seed")
    values = {k: at.number_input(key=k).value for k in keys}
    assert values == {"train-ipc": None, "train-size": 32, "train-epochs": None, "train-batch": 128,
                      "train-lr": 5e-4, "train-ratio-scratch": 1.0, "train-seed": 0}  # every image, auto epochs
    assert at.number_input(key="train-dropout").value == 0.0 and not at.toggle(key="train-tta").value
    assert at.selectbox(key="train-optimizer").value == "adam"
    assert at.selectbox(key="train-schedule").value == "onecycle"
    assert at.selectbox(key="train-freeze").disabled
    cost = metrics(at)
    assert cost["Multiply-adds per epoch"].endswith(("G", "T"))
    assert cost["Memory (estimate)"].endswith(("MiB", "GiB"))
    assert cost["Seconds per epoch"][0].isdigit() and cost["10 epochs"][0].isdigit()  # auto: 10 of 4,500 images
    assert not at.button(key="train-start").disabled


def test_the_lessons_tab_runs_only_when_open_and_the_settings_wait_for_the_training_tab(at: AppTest) -> None:
    at.run()
    assert not at.get("plotly_chart")  # nothing charted yet, and the Lessons tab's chart not sent
    at.number_input(key="train-epochs").set_value(7).run()
    at.session_state["train_section"] = "Lessons"  # as a click on the tab
    at.run()
    assert not at.exception
    assert not any(w.key == "train-epochs" for w in at.number_input)  # the Training tab did not run
    [schedule] = at.get("plotly_chart")
    assert len(json.loads(schedule.proto.spec)["data"][0]["x"]) == 201  # the one-cycle curve
    at.number_input(key="lesson-images").set_value(1000)
    at.select_slider(key="lesson-batch").set_value(64)
    at.number_input(key="lesson-epochs").set_value(3).run()
    assert any("16 steps per epoch, **48 optimizer steps** in all" in t for t in texts(at, "markdown"))
    at.slider(key="lesson-ratio").set_value(0.5).run()
    assert any("convolutional layers **5.0e-04**" in t for t in texts(at, "markdown"))  # half of 1e-3
    # freezing the features (the default) leaves the three fully connected layers: 25088·4096 + 4096²
    # + 4096·10 weights and their biases
    assert metrics(at)["Parameters that learn in A · VGG11 with batch norm, 10 classes"] == "119,586,826"

    at.session_state["train_section"] = "Training"
    at.run()
    assert at.number_input(key="train-epochs").value == 7  # kept while the tab was closed
    assert not at.get("plotly_chart")
    at.session_state["train_section"] = "Lessons"
    at.run()
    assert at.number_input(key="lesson-epochs").value == 3 and at.slider(key="lesson-ratio").value == 0.5


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train-lr", 0.0, "learning rate 0.0 is out of range"),
    ("train-lr", 50.0, "learning rate 50.0 is out of range"),
    ("train-ipc", 2_000_000, "images per class 2000000 is out of range"),
    ("train-epochs", 1_000_000, "epochs 1000000 is out of range"),
    ("train-batch", 0, "batch size 0 is out of range"),
    ("train-size", 16, "input size 16 is out of range"),
])
def test_out_of_range_values_are_refused_with_a_message(at: AppTest, key: str, value: float,
                                                        message: str) -> None:
    at.run()
    at.number_input(key=key).set_value(value).run()
    assert any(message in e for e in texts(at, "error")), texts(at, "error")
    assert at.button(key="train-start").disabled
    assert not at.exception


def test_short_run_trains_live_and_ends_with_test_accuracy(at: AppTest) -> None:
    at.run()
    small_run(at, images=20, epochs=1)
    at.button(key="train-start").click().run()
    at.button(key="train-start").click().run()  # idempotent: the second click starts nothing
    assert len(job_manager().snapshots(kind="train")) == 1

    run_until(at, lambda a: "Test accuracy" in metrics(a), "the end of the run")
    assert ":green-badge[done]" in badges(at)
    result = metrics(at)
    assert result["Status"] == "done" and result["Test accuracy"].endswith("%")
    steps = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert len(steps["data"][0]["x"]) >= 2  # per-step loss
    epochs = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert [t["name"] for t in epochs["data"][:2]] == ["training", "validation"]
    assert len(at.get("image")[0].proto.imgs) == 16  # the validation predictions grid
    run_id = at.session_state["chosen_run"]
    assert run_store().get(run_id).status == "done"


def test_stop_cancels_the_run(at: AppTest) -> None:
    at.run()
    small_run(at, images=40, epochs=3)
    at.button(key="train-start").click().run()
    run_until(at, lambda a: any(b.key == "train-stop" for b in a.button), "the Stop button")
    other = AppTest.from_file(PAGE, default_timeout=180).run()  # another person opens the page
    assert "started by someone without a name" in badges(other)
    assert any(b.key == "train-stop" for b in other.button)

    at.button(key="train-stop").click().run()
    run_until(at, lambda a: ":orange-badge[cancelled]" in badges(a), "the cancelled status")
    other.run()  # the watcher keeps seeing the run after it ended
    assert ":orange-badge[cancelled]" in badges(other)
    [snap] = job_manager().snapshots(kind="train")
    assert snap.status is JobStatus.CANCELLED
    assert not at.exception


def test_ema_is_debiased_and_zero_smoothing_is_raw() -> None:
    from vgg.figures.training import ema

    assert ema([1.0, 2.0, 3.0], 0.0).tolist() == [1.0, 2.0, 3.0]
    # debiased: the first value is itself, the second (0.5·0.5·1 + 0.5·2) / (1 − 0.25)
    assert ema([1.0, 2.0], 0.5) == pytest.approx([1.0, 1.25 / 0.75])
    assert ema([2.0, float("nan"), 2.0], 0.9)[2] == pytest.approx(2.0)
    with pytest.raises(ValueError):
        ema([1.0], 1.0)


def test_step_and_epoch_figures_hold_the_data() -> None:
    from vgg.figures.training import epoch_curves_figure, step_curves_figure

    fig = step_curves_figure([1, 2, 3], [2.3, 2.1, 1.9], [0.1, 0.2, 0.3], [1e-4, 5e-4, 1e-3], smoothing=0.0,
                             epoch_starts=[3])
    assert [list(t.y) for t in fig.data if t.name == "loss (smoothed)"] == [[2.3, 2.1, 1.9]]
    assert list(fig.data[-1].y) == [1e-4, 5e-4, 1e-3]  # the learning rate panel
    fig = epoch_curves_figure([1, 2], [2.0, 1.5], [2.1, 1.8], [0.3, 0.5], [0.25, 0.4])
    assert [t.name for t in fig.data] == ["training", "validation", "training", "validation"]


def test_a_long_run_is_drawn_from_a_few_hundred_points_with_the_ema_of_all() -> None:
    from vgg.figures.training import MAX_CURVE_POINTS, ema, step_curves_figure, thin

    assert thin(5) == [0, 1, 2, 3, 4]
    kept = thin(10_000)
    assert len(kept) <= MAX_CURVE_POINTS and kept[0] == 0 and kept[-1] == 9_999 and kept == sorted(kept)
    n = 10_000
    losses = [2.3 * 0.9997 ** i + (0.3 if i % 2 else -0.3) for i in range(n)]
    fig = step_curves_figure(list(range(1, n + 1)), losses, [0.5] * n, [1e-3] * n, smoothing=0.9,
                             epoch_starts=[2_501, 5_001, 7_501])
    smooth = next(t for t in fig.data if t.name == "loss (smoothed)")
    assert len(smooth.x) == len(kept) and list(smooth.x)[-1] == n
    assert list(smooth.y)[-1] == pytest.approx(ema(losses, 0.9)[-1])  # smoothed over every step
    epochs = [t for t in fig.data if t.name == "new epoch"]
    assert len(epochs) == 3 and not fig.layout.shapes  # one trace per panel, no per-line shapes
    assert [x for x in epochs[0].x if x is not None] == [2_501, 2_501, 5_001, 5_001, 7_501, 7_501]


def test_own_pictures_fast_fine_tune_trains_a_class_set_on_cached_features(at: AppTest) -> None:
    """Data page → Make your own → Use for training, then the Train page's fast fine-tune: ImageNet-shaped
    weights at 224 px, all but the last layer frozen; a second run reads the features from the disk."""
    import io

    import torch
    import torchvision
    from PIL import Image

    from vgg import datasets
    from vgg.data import DataConfig
    from vgg.model import weights_cache_dir, weights_file_name
    from vgg.settings import data_dir

    path = weights_cache_dir() / weights_file_name("A", True)  # torchvision-shaped, saved here
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg11_bn().state_dict(), path)
    datasets.create_set("pets", ["cat", "dog", "fish"])
    for i, cls in enumerate(("cat", "dog", "fish")):
        shots = []
        for k in range(10):
            out = io.BytesIO()
            Image.new("RGB", (64, 48), (80 * i, 10 * k, 200 - 60 * i)).save(out, "JPEG")
            shots.append((f"{k}.jpg", out.getvalue()))
        datasets.add_pictures("pets", cls, shots)
    at.session_state["data_config"] = DataConfig(source="pets", input_size=224)
    at.run()
    at.button(key="train-recipe-own").click().run()
    assert not at.exception and not texts(at, "error"), texts(at, "error")
    assert at.radio(key="train-init").value == "imagenet"
    assert at.selectbox(key="train-freeze").value == "all_but_last"
    assert at.number_input(key="train-size").value == 224 and at.number_input(key="train-batch").value == 32
    assert not at.toggle(key="train-augment").value and at.number_input(key="train-dropout").value == 0.0

    features = data_dir() / ".cache" / "features"
    inodes = {}
    for attempt in (1, 2):
        at.button(key="train-start").click().run()
        run_until(at, lambda a, n=attempt: len(run_store().list_runs()) == n and "Test accuracy" in metrics(a)
                  and run_store().list_runs()[0].status == "done", f"fast fine-tune {attempt}")
        inodes[attempt] = {p.name: p.stat().st_ino for p in features.glob("*.pt")}
    assert len(inodes[1]) == 3, "train, val and test features, computed once"
    assert inodes[2] == inodes[1], "the second run read the first one's features (a rewrite is a new file)"
    first = sorted(run_store().list_runs(), key=lambda r: r.run_id)[0]
    assert first.config["freeze"] == "all_but_last" and first.config["data"]["input_size"] == 224
    assert len(first.summary["classes"]) == 3
    assert sum(p.stat().st_size for p in first.path.iterdir()) < 20_000_000, "no copy of the frozen weights"


def test_offline_the_fast_fine_tune_starts_from_the_newest_run_at_its_own_size(at: AppTest) -> None:
    """No ImageNet file here: the newest run of VGG11-BN, at the 32 px it was trained at."""
    from vgg.data import DataConfig
    from vgg.train import TrainConfig, fit

    tiny = DataConfig(source="synthetic", input_size=32, images_per_class=20)
    result = fit(TrainConfig(data=tiny, epochs=1, batch_size=64), store=run_store())
    at.run()
    at.button(key="train-recipe-own").click().run()
    assert not at.exception and not texts(at, "error"), texts(at, "error")
    assert at.radio(key="train-init").value == "run"
    assert at.selectbox(key="train-run").value == result.run_id
    assert at.number_input(key="train-size").value == 32
    assert at.selectbox(key="train-freeze").value == "all_but_last"
