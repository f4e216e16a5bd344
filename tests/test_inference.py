"""Inference: loading checkpoints safely, classifying awkward images, Grad-CAM, evaluating later.

One tiny run (VGG11-BN, synthetic shapes at 32 px, 20 images per class, 1 epoch) is trained
once for the whole module with ``vgg.train.fit`` into a temporary run store.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vgg import gradcam, inference
from vgg.data import DataConfig, load_data
from vgg.errors import CheckpointError, ConfigError, PathError, WeightsUnavailableError
from vgg.evaluate import evaluate_run, load_run_predictions
from vgg.images import open_image
from vgg.model import build_vgg, weights_cache_dir, weights_file_name
from vgg.runs import RunStore
from vgg.train import TrainConfig, fit


@pytest.fixture(scope="module")
def run(module_tmp: Path) -> tuple[RunStore, str]:
    base = module_tmp
    store = RunStore(base / "runs")
    data = DataConfig(source="synthetic", input_size=32, images_per_class=20, data_dir=base / "data")
    cfg = TrainConfig(config="A", batch_norm=True, epochs=1, batch_size=256, data=data, device="cpu")
    result = fit(cfg, store=store)
    assert result.status == "done" and result.run_id
    return store, result.run_id


@pytest.fixture(scope="module")
def loaded(run: tuple[RunStore, str]) -> inference.LoadedModel:
    store, run_id = run
    return inference.load_model(run_id, store=store)


def picture(size: tuple[int, int] = (40, 30), seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def encoded(img: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def params_digest(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------- loading


def test_a_run_id_loads_its_best_checkpoint_ready_for_inference(
    run: tuple[RunStore, str], loaded: inference.LoadedModel
) -> None:
    _, run_id = run
    assert loaded.run_id == run_id and run_id in loaded.source and "best.pt" in loaded.source
    assert loaded.classes[:3] == ("circle", "square", "triangle") and loaded.num_classes == 10
    assert (loaded.config, loaded.batch_norm, loaded.input_size, loaded.name) == ("A", True, 32, "vgg11_bn")
    assert not loaded.model.training
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert len(loaded.mean) == len(loaded.std) == 3 and min(loaded.std) > 0


def test_a_checkpoint_path_inside_the_runs_dir_gives_the_same_model(
    run: tuple[RunStore, str], loaded: inference.LoadedModel
) -> None:
    store, run_id = run
    by_path = inference.load_model(str(store.root / run_id / "best.pt"), store=store)
    assert by_path.run_id is None and by_path.source.startswith("best.pt")
    relative = inference.load_model(f"{run_id}/best.pt", store=store, allowed_roots=[store.root])
    images = [picture(seed=1), picture(seed=2)]
    expected = inference.predict(loaded, images)
    for other in (by_path, relative):
        for got, want in zip(inference.predict(other, images), expected, strict=True):
            np.testing.assert_allclose(got.probabilities, want.probabilities, atol=1e-5)


def test_checkpoint_paths_outside_the_data_and_runs_dirs_are_refused(
    run: tuple[RunStore, str], tmp_path: Path
) -> None:
    store, run_id = run
    outside = tmp_path / "elsewhere.pt"
    torch.save({"model": {}, "meta": {}}, outside)
    with pytest.raises(PathError, match="outside the allowed folders"):
        inference.load_model(str(outside), store=store)
    with pytest.raises(PathError, match="outside the allowed folders"):
        inference.load_model(f"../{outside.parent.name}/elsewhere.pt", store=store)
    link = store.root / "link-out.pt"
    link.symlink_to(outside)
    try:
        with pytest.raises(PathError, match="outside the allowed folders"):
            inference.load_model(str(link), store=store)
    finally:
        link.unlink()
    with pytest.raises(CheckpointError, match="neither a run"):
        inference.load_model("no-such-run", store=store)
    with pytest.raises(CheckpointError, match="is a folder"):
        inference.load_model(str(store.root / run_id), store=store, allowed_roots=[store.root.parent])


class _Marker:
    """Unpickling this object would create a file: the kind of code a hostile checkpoint runs."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


def test_a_pickle_that_would_run_code_is_refused_and_runs_nothing(run: tuple[RunStore, str]) -> None:
    store, _ = run
    marker = store.root.parent / "pwned.txt"
    hostile = store.root / "hostile.pt"
    torch.save({"model": {"features.0.weight": _Marker(marker)}, "meta": {}}, hostile)
    try:
        with pytest.raises(CheckpointError, match="refusing to load hostile.pt"):
            inference.load_model(str(hostile), store=store)
        assert not marker.exists()
        torch.load(hostile, weights_only=False)  # the file really is hostile: a plain load runs it
        assert marker.exists()
    finally:
        hostile.unlink()
        marker.unlink(missing_ok=True)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"features.0.weight": torch.zeros(64, 3, 3, 3)}, "not a checkpoint of this app"),
        ({"model": {"classifier.6.weight": torch.zeros(5, 4096)}}, "no 'meta' dict"),
        ({"model": {}, "meta": {"config": "Z", "batch_norm": True}}, "meta 'config' is 'Z'"),
        (
            {
                "model": {},
                "meta": {
                    "config": "A",
                    "batch_norm": True,
                    "classes": ["a", "b"],
                    "mean": [0, 0, 0],
                    "std": [1, 1, 1],
                    "input_size": 8,
                },
            },
            "meta 'input_size' is 8",
        ),
        (
            {
                "model": {"classifier.6.weight": torch.zeros(5, 4096), "classifier.6.bias": torch.zeros(5)},
                "meta": {
                    "config": "A",
                    "batch_norm": True,
                    "classes": [f"c{i}" for i in range(10)],
                    "mean": [0.5] * 3,
                    "std": [0.25] * 3,
                    "input_size": 32,
                },
            },
            r"does not fit vgg11_bn with 10 classes .*missing features\.0\.weight.*"
            r"classifier\.6\.weight is \(5, 4096\) "
            r"instead of \(10, 4096\)",
        ),
    ],
)
def test_files_that_are_not_a_fitting_checkpoint_name_what_does_not_match(
    run: tuple[RunStore, str], payload: object, message: str
) -> None:
    store, _ = run
    path = store.root / "other.pt"
    torch.save(payload, path)
    try:
        with pytest.raises(CheckpointError, match=message):
            inference.load_model(str(path), store=store)
    finally:
        path.unlink()


# ---------------------------------------------------------------------------------- predicting


def odd_images() -> dict[str, bytes]:
    """Awkward but valid files: each must decode to RGB and be classified."""
    base = picture((48, 36))
    gradient = (np.linspace(0, 65535, 24 * 16).reshape(16, 24)).astype(np.uint16)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.info["transparency"] = 0
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    frames = [picture((20, 20), seed=s).convert("P") for s in (3, 4)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise on display
    return {
        "16-bit.png": encoded(Image.fromarray(gradient), "PNG"),
        "cmyk.jpg": encoded(base.convert("CMYK"), "JPEG"),
        "palette-transparent.png": encoded(palette, "PNG", transparency=0),
        "rgba.webp": encoded(rgba, "WEBP"),
        "animated.gif": gif.getvalue(),
        "exif-rotated.jpg": encoded(base, "JPEG", exif=exif.tobytes()),
        "one-pixel.png": encoded(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"),
        "grayscale.bmp": encoded(base.convert("L"), "BMP"),
    }


def test_awkward_images_are_all_classified(loaded: inference.LoadedModel) -> None:
    files = odd_images()
    images = [open_image(data, name=name) for name, data in files.items()]
    assert images[list(files).index("exif-rotated.jpg")].size == (36, 48), "EXIF orientation applied"
    predictions = inference.predict(loaded, images, k=5)
    assert len(predictions) == len(files)
    for name, prediction in zip(files, predictions, strict=True):
        assert len(prediction.top) == 5, name
        probs = [p for _, p in prediction.top]
        assert probs == sorted(probs, reverse=True), name
        assert all(label in loaded.classes for label, _ in prediction.top), name
        assert prediction.probabilities.shape == (10,) and prediction.probabilities.sum() == pytest.approx(
            1, abs=1e-4
        )
        assert prediction.top[0] == (prediction.label, prediction.confidence)


def test_a_batch_gives_the_same_answers_as_one_image_at_a_time(loaded: inference.LoadedModel) -> None:
    images = [picture(seed=s) for s in range(3)]
    together = inference.predict(loaded, images)
    for img, batch_result in zip(images, together, strict=True):
        alone = inference.predict(loaded, [img])[0]
        np.testing.assert_allclose(alone.probabilities, batch_result.probabilities, atol=1e-5)
    assert inference.predict(loaded, []) == []
    assert len(inference.predict(loaded, images[:1], k=50)[0].top) == 10, (
        "k is capped at the number of classes"
    )
    with pytest.raises(ConfigError, match="k must be"):
        inference.predict(loaded, images[:1], k=0)


def test_preprocessing_steps_match_training_normalisation(loaded: inference.LoadedModel) -> None:
    steps = inference.preprocess_steps(picture((64, 40)), loaded)
    assert steps["original"].size == (64, 40)
    resized = steps["resized"]
    assert resized.shape == (32, 32, 3) and resized.dtype == np.uint8
    expected = (
        torch.from_numpy(resized).permute(2, 0, 1).float() / 255 - torch.tensor(loaded.mean)[:, None, None]
    ) / torch.tensor(loaded.std)[:, None, None]
    torch.testing.assert_close(steps["normalised"], expected, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------- Grad-CAM


def test_grad_cam_is_a_map_in_0_1_and_leaves_the_model_as_it_was(loaded: inference.LoadedModel) -> None:
    model = loaded.model
    relus = [(name, m.inplace) for name, m in model.named_modules() if isinstance(m, nn.ReLU)]
    assert any(inplace for _, inplace in relus), "the model has in-place ReLUs (the case that needs care)"
    before = params_digest(model)
    img = picture((50, 50), seed=5)
    heat = gradcam.grad_cam(loaded, img)
    assert heat.shape == (2, 2) and heat.dtype == np.float32  # the last convolution's map at 32 px
    assert np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    assert heat.max() == pytest.approx(1.0) or heat.max() == 0
    for target in (0, 9):
        other = gradcam.grad_cam(loaded, img, target=target)
        assert other.shape == (2, 2) and 0 <= other.min() and other.max() <= 1
    with pytest.raises(ConfigError, match="out of range"):
        gradcam.grad_cam(loaded, img, target=10)
    assert [(name, m.inplace) for name, m in model.named_modules() if isinstance(m, nn.ReLU)] == relus
    assert params_digest(model) == before
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert all(not m._forward_hooks and not m._backward_hooks for m in model.modules())
    overlay = gradcam.overlay_heatmap(img, heat)
    assert overlay.size == img.size and overlay.mode == "RGB"
    # a 2×2 map is drawn as four blocks, not as a smooth gradient suggesting finer detail
    quarter = np.asarray(gradcam.overlay_heatmap(Image.new("RGB", (40, 40), (128, 128, 128)), heat))[:20, :20]
    assert (quarter == quarter[0, 0]).all()


def test_the_classifier_on_feature_maps_matches_the_models_forward(loaded: inference.LoadedModel) -> None:
    x = inference.preprocess([picture(seed=7)], loaded)
    with torch.no_grad():
        expected = loaded.model(x)
        torch.testing.assert_close(
            loaded.model.head_with_hidden(loaded.model.features(x))[0],  # what Grad-CAM runs
            expected,
            atol=1e-4,
            rtol=1e-4,
        )


# ---------------------------------------------------------------------------------- ImageNet


def test_imagenet_top5_is_none_without_cached_weights() -> None:
    assert inference.imagenet_top5(picture(), "A", True) is None
    assert inference.imagenet_top5(picture(), "C", True) is None  # never published
    with pytest.raises(WeightsUnavailableError, match="not cached"):
        inference.load_imagenet_model("A", True)


@pytest.mark.slow
def test_imagenet_model_keeps_its_1000_class_head(isolated_dirs: dict[str, Path]) -> None:
    torch.manual_seed(0)
    model = build_vgg("A", batch_norm=True, num_classes=1000)
    folder = weights_cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    assert str(folder).startswith(str(isolated_dirs["TORCH_HOME"]))
    torch.save(model.state_dict(), folder / weights_file_name("A", True))
    del model
    imagenet = inference.load_imagenet_model("A", True)
    assert imagenet.num_classes == 1000 and imagenet.classes[0] == "tench" and imagenet.input_size == 224
    top = inference.imagenet_top5(picture((300, 200)), "A", True, model=imagenet)
    assert top is not None and len(top) == 5 and all(name in imagenet.classes for name, _ in top)
    steps = inference.preprocess_steps(picture((300, 200)), imagenet)
    assert steps["resized"].shape == (224, 224, 3)  # short side to 256, centre crop 224


# ---------------------------------------------------------------------------------- evaluating later


def test_a_run_without_predictions_can_be_evaluated_later(run: tuple[RunStore, str]) -> None:
    store, run_id = run
    info = store.get(run_id)
    data_cfg = inference.run_data_config(info.config)
    assert (data_cfg.source, data_cfg.input_size, data_cfg.images_per_class) == ("synthetic", 32, 20)
    saved = load_run_predictions(store, run_id)
    predictions_file = info.path / "predictions.pt"
    os.replace(predictions_file, info.path / "predictions.bak")
    try:
        assert not store.get(run_id).has_predictions
        result = evaluate_run(store, run_id, load_data(data_cfg))
        assert store.get(run_id).has_predictions
        again = load_run_predictions(store, run_id)
    finally:
        os.replace(info.path / "predictions.bak", predictions_file)
    assert torch.equal(again.labels, saved.labels)
    torch.testing.assert_close(again.probabilities.float(), saved.probabilities.float(), atol=2e-3, rtol=0)
    assert again.hidden.shape == saved.hidden.shape and again.classes == saved.classes
    assert result.accuracy == pytest.approx(info.summary["test_accuracy"])
    assert result.loss == pytest.approx(info.summary["test_loss"], rel=1e-3)


def test_run_data_config_needs_data_settings() -> None:
    with pytest.raises(ConfigError, match="no 'data' settings"):
        inference.run_data_config({})
    cfg = inference.run_data_config(
        {"data": {"source": "synthetic", "input_size": 64, "data_dir": "/no/such/dir", "unknown": 1}}
    )
    assert cfg.input_size == 64 and cfg.data_dir is None
