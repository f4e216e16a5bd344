"""AppTest of the Data page: the synthetic set loads and is shown; CIFAR-10 offline gives a clear message."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from vgg.data import DataConfig

PAGE = str(Path(__file__).resolve().parent.parent / "pages" / "data.py")
SMALL = DataConfig(source="synthetic", input_size=32, images_per_class=20)


def run_until(at: AppTest, done: Any, timeout_s: float = 60.0) -> AppTest:
    """Rerun (AppTest fires no run_every timers) until ``done(at)`` or the deadline."""
    deadline = time.monotonic() + timeout_s
    at.run()
    while not done(at):
        assert not at.exception, [e.value for e in at.exception]
        assert time.monotonic() < deadline, "the page did not get there in time"
        time.sleep(0.1)  # polling interval between reruns, not a wait for an assumed duration
        at.run()
    return at


def small_data_page() -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["data_config"] = SMALL  # as if chosen earlier: 20 images per class load quickly
    return run_until(at, lambda a: len(a.get("plotly_chart")) >= 2)


def test_synthetic_set_shows_counts_grid_augmentation_and_normalisation() -> None:
    at = small_data_page()
    assert not at.exception
    counts = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert [trace["name"] for trace in counts["data"]] == ["train", "val", "test"]
    assert len(counts["data"][0]["x"]) == 10  # ten shape classes
    assert [m.label for m in at.metric][0] == "Classes" and at.metric[0].value == "10"
    # train + val = 20 per class, val 10 %
    assert (at.metric[1].value, at.metric[2].value) == ("180", "20")

    images = at.get("image")
    grid = [block for block in images if len(block.proto.imgs) == 8]
    assert len(grid) == 10, "eight samples for each of the ten classes"
    assert [m.value for m in at.markdown if m.value.startswith("**")][:2] == ["**circle**", "**square**"]
    preview = [block for block in images if len(block.proto.imgs) == 9]
    assert len(preview) == 1 and preview[0].proto.imgs[0].caption.startswith("original")

    stats = at.dataframe[0].value
    assert list(stats.columns)[:2] == ["ImageNet mean", "ImageNet std"]
    assert stats.loc["R", "ImageNet mean"] == pytest.approx(0.485)
    histogram = json.loads(at.get("plotly_chart")[1].proto.spec)
    assert len(histogram["data"]) == 6  # R, G, B before and after


def test_augmentation_views_follow_the_toggles() -> None:
    at = small_data_page()

    def views() -> list[str]:
        preview = [block for block in at.get("image") if len(block.proto.imgs) == 9][0]
        return [img.url for img in preview.proto.imgs]  # media URLs are content hashes

    first = views()
    assert len(set(first)) == 9, "eight different random views of the original"
    at.button(key="aug_new").click().run()
    assert views()[0] == first[0] and views()[1:] != first[1:], "new random views of the same image"
    for key in ("aug_rotate_on", "aug_flip_on", "aug_crop_on"):
        at.toggle(key=key).set_value(False)
    at.run()
    assert not at.exception
    assert len(set(views())) == 1, "with every transform off each view is the original"
    at.toggle(key="aug_flip_on").set_value(True).run()
    at.slider(key="aug_flip").set_value(1.0).run()
    assert len(set(views()[1:])) == 1 and views()[1] != views()[0], "always flipped: eight mirror images"


def test_use_this_data_set_sets_the_choice_for_every_page() -> None:
    at = small_data_page()
    assert at.button(key="data_use").disabled  # already in use
    at.number_input(key="data_per_class").set_value(30)
    run_until(at, lambda a: not a.button(key="data_use").disabled)  # usable once loaded
    assert at.metric[1].value == "270"
    at.button(key="data_use").click()
    at.run()
    assert not at.exception
    assert at.session_state["data_config"] == DataConfig(source="synthetic", images_per_class=30)
    assert "30/class" in at.session_state["dataset_label"]


def test_cifar10_offline_shows_where_to_put_the_archive(monkeypatch: pytest.MonkeyPatch,
                                                       isolated_dirs: dict[str, Path]) -> None:
    def offline(*args: Any, **kwargs: Any) -> Any:
        raise urllib.error.URLError("network is unreachable (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # a CI machine may be online
    assert not any(isolated_dirs["VGG_DATA_DIR"].iterdir())
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["data_config"] = SMALL
    at.run()
    at.radio(key="data_source").set_value("cifar10")
    run_until(at, lambda a: len(a.error) > 0)
    message = at.error[0].value
    assert "cifar-10-python.tar.gz" in message and str(isolated_dirs["VGG_DATA_DIR"]) in message
    assert at.radio(key="data_source").value == "cifar10"  # the page keeps working
    assert at.button(key="data_use").disabled  # a set that did not load cannot be chosen
    at.radio(key="data_source").set_value("synthetic")
    run_until(at, lambda a: len(a.get("plotly_chart")) >= 2)
    assert not at.error


def test_image_folder_lists_skipped_files(isolated_dirs: dict[str, Path]) -> None:
    folder = isolated_dirs["VGG_DATA_DIR"] / "pets"
    for i, name in enumerate(("cat", "dog")):
        (folder / name).mkdir(parents=True)
        for j in range(6):
            Image.new("RGB", (40, 30), (60 * i + 20 * j, 100, 200 - 30 * j)).save(folder / name / f"{j}.png")
    (folder / "dog" / "notes.jpg").write_text("not an image")
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["data_config"] = SMALL
    at.run()
    at.radio(key="data_source").set_value("folder")
    run_until(at, lambda a: len(a.get("plotly_chart")) >= 2)
    assert at.selectbox(key="data_folder").value == "pets"
    assert at.metric[0].value == "2"
    assert any("1 file(s) skipped" in e.label for e in at.expander)
    assert at.dataframe[0].value["file"].tolist() == ["dog/notes.jpg"]


def test_image_folder_source_explains_how_to_add_one(isolated_dirs: dict[str, Path]) -> None:
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state["data_config"] = SMALL
    at.run()
    at.radio(key="data_source").set_value("folder").run()
    assert not at.exception
    assert any("sub-folder per class" in m.value for m in at.markdown)
    assert [b.key for b in at.get("selectbox")] == ["ds-set"], "only the builder's: no folder to choose"
    assert any(str(isolated_dirs["VGG_DATA_DIR"]) in m.value for m in at.markdown)
