"""AppTest of the Classify page: top 5 per picture, preprocessing and Grad-CAM, clear messages for bad files.

A tiny run (VGG11-BN, synthetic shapes at 32 px, 20 images per class, 1 epoch) is trained once
for the module with ``vgg.train.fit`` into a temporary runs dir that the page reads.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from streamlit.testing.v1 import AppTest

from vgg.data import DataConfig
from vgg.data.synthetic import SHAPE_CLASSES
from vgg.model import weights_cache_dir, weights_file_name
from vgg.runs import RunStore
from vgg.train import TrainConfig, fit

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "classify.py")


@pytest.fixture(scope="module")
def trained(module_tmp: Path) -> tuple[Path, str]:
    base = module_tmp
    data = DataConfig(source="synthetic", input_size=32, images_per_class=20, data_dir=base / "data")
    result = fit(
        TrainConfig(config="A", batch_norm=True, epochs=1, batch_size=256, data=data, device="cpu"),
        store=RunStore(base / "runs"),
    )
    assert result.status == "done" and result.run_id
    return base / "runs", result.run_id


@pytest.fixture
def page(trained: tuple[Path, str], monkeypatch: pytest.MonkeyPatch) -> AppTest:
    runs, run_id = trained
    monkeypatch.setenv("VGG_RUNS_DIR", str(runs))
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state["chosen_run"] = run_id
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def png(size: tuple[int, int] = (80, 60), seed: int = 0, **kwargs: object) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", **kwargs)
    return buffer.getvalue()


def jpeg(size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buffer, format="JPEG")
    return buffer.getvalue()


def specs(at: AppTest) -> list[dict]:
    return [json.loads(chart.proto.spec) for chart in at.get("plotly_chart")]


def top5_specs(at: AppTest) -> list[dict]:
    return [s for s in specs(at) if s["data"][0].get("orientation") == "h"]


def test_without_runs_or_weights_the_page_says_what_is_missing(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    monkeypatch.setenv("VGG_RUNS_DIR", str(tmp_path / "empty"))
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert not at.exception
    assert at.radio(key="classify_model").value == "imagenet", "before any run: ImageNet's model first"
    warning = " ".join(w.value for w in at.warning)
    assert "vgg11_bn-" in warning and str(weights_cache_dir()) in warning, warning
    assert not at.get("file_uploader")
    at.radio(key="classify_model").set_value("run").run()
    assert any("train a model first on the **Train** page" in info.value for info in at.info)
    assert not at.get("file_uploader")


def test_before_any_training_imagenet_sorts_pictures_into_its_1000_classes(monkeypatch: pytest.MonkeyPatch,
                                                                          tmp_path: Path) -> None:
    monkeypatch.setenv("VGG_RUNS_DIR", str(tmp_path / "empty"))
    path = weights_cache_dir() / weights_file_name("A", True)  # a torchvision-shaped file, saved here
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.vgg11_bn().state_dict(), path)
    at = AppTest.from_file(PAGE, default_timeout=120).run()
    assert not at.exception, [e.value for e in at.exception]
    assert at.radio(key="classify_model").value == "imagenet"
    assert any("1000" in c.value or "tench" in c.value for c in at.caption)
    at.file_uploader(key="classify_upload").set_value(("photo.png", png(), "image/png"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    charts = top5_specs(at)
    assert len(charts) == 1
    categories = set(torchvision.models.VGG11_BN_Weights.IMAGENET1K_V1.meta["categories"])
    assert len(charts[0]["data"][0]["y"]) == 5 and set(charts[0]["data"][0]["y"]) <= categories
    assert not at.get("download_button"), "ImageNet's own model is not a run to take home"


def test_a_run_offers_its_model_as_pt_and_onnx_downloads(page: AppTest) -> None:
    ids = [d.proto.id for d in page.get("download_button")]
    assert any("classify-export-pt" in i for i in ids) and any("classify-export-onnx" in i for i in ids), ids


def test_uploads_get_a_top5_chart_and_bad_files_a_clear_message(
    page: AppTest, trained: tuple[Path, str]
) -> None:
    _, run_id = trained
    assert page.selectbox(key="classify_run").value == run_id
    assert page.file_uploader(key="classify_upload").allowed_type == [
        ".jpg",
        ".jpeg",
        ".png",
        ".webp",
        ".bmp",
        ".gif",
    ]
    page.file_uploader(key="classify_upload").set_value(
        [
            ("picture.png", png(), "image/png"),
            ("notes.jpg", b"Dear class, bring your own pictures tomorrow.\n", "image/jpeg"),
            ("truncated.jpg", jpeg()[:200], "image/jpeg"),
            ("huge.png", b"\x89PNG\r\n\x1a\n" + bytes(20_000_001), "image/png"),
            ("photo.jpg", jpeg(), "image/jpeg"),
        ]
    )
    page.run()
    assert not page.exception, [e.value for e in page.exception]
    errors = [e.value for e in page.error]
    assert len(errors) == 3
    assert "notes.jpg is a text file, not an image" in errors[0]
    assert "truncated.jpg" in errors[1] and "truncated or corrupt" in errors[1]
    assert "huge.png" in errors[2] and "more than the limit" in errors[2]
    charts = top5_specs(page)
    assert len(charts) == 2, "the good pictures before and after the bad ones are classified"
    for chart in charts:
        bars = chart["data"][0]
        assert len(bars["y"]) == 5 and set(bars["y"]) <= set(SHAPE_CLASSES)
        assert list(bars["x"]) == sorted(bars["x"]), "most likely on top (plotly draws bottom-up)"
    assert [s["data"][0]["type"] for s in specs(page)].count("heatmap") == 2, (
        "normalised channels per picture"
    )
    captions = [img.caption for block in page.get("image") for img in block.proto.imgs]
    assert any(c.startswith("Grad-CAM") for c in captions) and "2 · squashed to 32×32" in captions
    assert any("ImageNet model is not shown" in c.value for c in page.caption), "offline: says why not"


def test_a_low_top_probability_gets_an_unsure_hint(page: AppTest, monkeypatch: pytest.MonkeyPatch) -> None:
    from vgg import inference

    monkeypatch.setattr(inference, "UNSURE_BELOW", 1.01)  # every answer counts as unsure
    page.file_uploader(key="classify_upload").set_value(("odd.png", png(seed=3), "image/png"))
    page.run()
    assert not page.exception
    assert any("The model is unsure" in info.value for info in page.info)


def test_the_camera_sits_behind_a_toggle_and_explains_where_it_works(page: AppTest) -> None:
    assert not page.camera_input
    page.toggle(key="classify_camera_on").set_value(True).run()
    assert not page.exception
    assert len(page.camera_input) == 1
    assert any("localhost" in c.value and "HTTPS" in c.value for c in page.caption)
    page.camera_input[0].set_value(("shot.jpg", jpeg((120, 90)), "image/jpeg"))
    page.run()
    assert not page.exception
    assert len(top5_specs(page)) == 1
