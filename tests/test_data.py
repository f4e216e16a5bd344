"""Data sets: the image-folder reader on hostile folders, the cache, splits, augmentation, sources."""

from __future__ import annotations

import io
import os
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import vgg.data as data_module
from vgg.augment import augment_batch, default_pad, iterate_batches, normalize, to_float
from vgg.data import (
    DataConfig,
    DataSplits,
    TensorData,
    channel_stats,
    describe,
    load_data,
    resize_images,
    sample_grid,
    stratified_split,
    subset_classes,
    take_per_class,
)
from vgg.data.synthetic import SHAPE_CLASSES, generate_shapes
from vgg.errors import ConfigError, DataUnavailableError, PathError

RED, GREEN, BLUE, WHITE, GRAY = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (128, 128, 128)


# --- helpers ------------------------------------------------------------------------------------


def save(img: Image.Image, path: Path, **kwargs: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kwargs)
    return path


def solid(colour: tuple[int, int, int], size: tuple[int, int] = (12, 10)) -> Image.Image:
    return Image.new("RGB", size, colour)


def jpeg_bytes(size: int = 48) -> bytes:
    rng = np.random.default_rng(1)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_odd_formats(folder: Path) -> list[tuple[str, tuple[int, int, int], tuple[int, int, int]]]:
    """Odd but valid images with names in a known sorted order.

    Returns (name, colour near the top, colour near the bottom) per file.
    """
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 20), 32768, dtype=np.uint16)).save(folder / "a_16bit.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(folder / "b_cmyk.jpg", quality=95)
    palette = Image.new("P", (20, 20), 1)  # all pixels index 1, which is transparent
    palette.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    palette.save(folder / "c_palette.png", transparency=1)
    Image.new("RGBA", (20, 20), (0, 0, 255, 255)).save(folder / "d_rgba.webp", lossless=True)
    frames = [solid(RED, (20, 20)), solid(BLUE, (20, 20))]
    frames[0].save(folder / "e_anim.gif", save_all=True, append_images=frames[1:], duration=50)
    stored = solid(RED, (40, 20))
    stored.paste(BLUE, (20, 0, 40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display: the red left half ends up on top
    stored.save(folder / "f_exif.jpg", exif=exif, quality=95)
    solid(GREEN, (1, 1)).save(folder / "g_1px.png")
    return [
        ("a_16bit.png", GRAY, GRAY),
        ("b_cmyk.jpg", RED, RED),
        ("c_palette.png", WHITE, WHITE),
        ("d_rgba.webp", BLUE, BLUE),
        ("e_anim.gif", RED, RED),
        ("f_exif.jpg", RED, BLUE),
        ("g_1px.png", GREEN, GREEN),
    ]


def write_broken_files(folder: Path) -> list[str]:
    """Unreadable and non-image files; returns their names."""
    folder.mkdir(parents=True, exist_ok=True)
    good = jpeg_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "zero.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("not a picture at all\n")
    (folder / "logo.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg"/>')
    (folder / "x.jpg").mkdir()
    (folder / "notes.txt").write_text("lesson plan")
    (folder / ".DS_Store").write_bytes(b"\0junk")  # hidden clutter: silently ignored, not reported
    return ["truncated.jpg", "zero.jpg", "text.jpg", "logo.svg", "x.jpg", "notes.txt"]


def assert_close(pixel: torch.Tensor, colour: tuple[int, int, int], tol: int = 16) -> None:
    assert (pixel.int() - torch.tensor(colour)).abs().max().item() <= tol, (pixel.tolist(), colour)


class Recorder:
    """A progress callback that remembers its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, str]] = []

    def __call__(self, done: int, total: int, message: str) -> None:
        self.calls.append((done, total, message))

    @property
    def decoded(self) -> bool:
        return any("decoding" in message for _, _, message in self.calls)


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


def simple_folder(root: Path, per_class: int = 10, classes: tuple[str, ...] = ("cat", "dog", "owl")) -> Path:
    colours = {name: (40 + 90 * i, 200 - 60 * i, 30 * i) for i, name in enumerate(classes)}
    for name in classes:
        for i in range(per_class):
            save(solid(colours[name]), root / name / f"{i:03d}.png")
    return root


# --- the image-folder reader --------------------------------------------------------------------


def test_hostile_folder_is_read_robustly(data_dir: Path) -> None:
    zoo = data_dir / "zoo"
    for i in range(6):
        save(solid(RED), zoo / "train" / "cat" / f"{i}.jpg")
        save(solid(BLUE), zoo / "train" / "dog" / f"{i}.png")
    (zoo / "train" / "fish").mkdir()  # an empty class folder
    (zoo / "train" / "stray.jpg").write_bytes(jpeg_bytes())  # not inside a class folder
    expected = write_odd_formats(zoo / "test" / "cat")
    broken = write_broken_files(zoo / "test" / "cat")
    save(solid(BLUE), zoo / "test" / "dog" / "0.png")

    splits = load_data(DataConfig(source="zoo", data_dir=data_dir, input_size=32))

    assert splits.classes == ("cat", "dog")
    report = splits.report
    skipped = dict(report.skipped)
    assert set(skipped) == {f"test/cat/{name}" for name in broken} | {"train/stray.jpg"}
    for rel, reason in report.skipped:
        assert rel in reason and "\n" not in reason
    assert "SVG is not supported" in skipped["test/cat/logo.svg"]
    assert "truncated" in skipped["test/cat/truncated.jpg"]
    assert "empty" in skipped["test/cat/zero.jpg"]
    assert "folder" in skipped["test/cat/x.jpg"]
    assert report.empty_classes == ("fish",)
    assert any("fish" in warning for warning in report.warnings)

    # Every odd-format image decoded, in file-name order, with the right colours (EXIF rotation applied).
    assert len(splits.test) == len(expected) + 1
    assert splits.test.labels.tolist() == [0] * len(expected) + [1]
    assert splits.test.images.shape == (len(expected) + 1, 3, 32, 32)
    for image, (name, top, bottom) in zip(splits.test.images, expected, strict=False):
        assert_close(image[:, 4, 16], top), name
        assert_close(image[:, 27, 16], bottom), name
    assert len(splits.train) + len(splits.val) == 12
    assert report.decoded == 12 + len(expected) + 1 and not report.from_cache


def test_class_folders_without_split_folders(data_dir: Path) -> None:
    simple_folder(data_dir / "pets", per_class=10)
    splits = load_data(DataConfig(source="pets", data_dir=data_dir, val_fraction=0.25))
    assert splits.classes == ("cat", "dog", "owl")
    # 20 % of each class held out as the test set (fixed seed), then 25 % of the rest for validation.
    assert splits.test.class_counts(3) == [2, 2, 2]
    assert splits.val.class_counts(3) == [2, 2, 2]
    assert splits.train.class_counts(3) == [6, 6, 6]
    assert any("no test/ folder" in warning for warning in splits.report.warnings)
    # Labels follow the sorted class names; colours prove images went to the right class.
    cat_colour = splits.train.images[splits.train.labels == 0][:, :, 0, 0].float().mean(0)
    assert_close(cat_colour, (40, 200, 0), tol=3)


def test_val_folder_is_used_as_is(data_dir: Path) -> None:
    root = data_dir / "set"
    simple_folder(root / "train", per_class=5, classes=("a", "b"))
    simple_folder(root / "val", per_class=2, classes=("a", "b"))
    simple_folder(root / "test", per_class=3, classes=("a", "b", "zzz"))
    splits = load_data(DataConfig(source="set", data_dir=data_dir))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (10, 4, 6)
    assert any("zzz" in warning for warning in splits.report.warnings)  # not a training class


def test_fewer_than_two_classes_is_an_error(data_dir: Path) -> None:
    simple_folder(data_dir / "one", per_class=3, classes=("only",))
    (data_dir / "one" / "empty").mkdir()
    with pytest.raises(DataUnavailableError, match="at least two"):
        load_data(DataConfig(source="one", data_dir=data_dir))
    (data_dir / "flat").mkdir()
    save(solid(RED), data_dir / "flat" / "a.png")
    with pytest.raises(DataUnavailableError, match="no class folders"):
        load_data(DataConfig(source="flat", data_dir=data_dir))


def test_class_of_only_broken_files_is_dropped(data_dir: Path) -> None:
    root = simple_folder(data_dir / "mix", per_class=5, classes=("a", "b"))
    write_broken_files(root / "c")
    (root / "c" / "y.png").write_bytes(b"")  # an image name, but broken
    splits = load_data(DataConfig(source="mix", data_dir=data_dir))
    assert splits.classes == ("a", "b")
    assert "c" in splits.report.empty_classes
    assert "c/y.png" in dict(splits.report.skipped)
    (root / "b").rename(root / ".b_hidden")  # now only one readable class is left
    with pytest.raises(DataUnavailableError, match="at least two"):
        load_data(DataConfig(source="mix", data_dir=data_dir))


def test_missing_folder_and_file_instead_of_folder(data_dir: Path) -> None:
    with pytest.raises(DataUnavailableError, match="does not exist"):
        load_data(DataConfig(source="nowhere", data_dir=data_dir))
    (data_dir / "file.zip").write_bytes(b"PK")
    with pytest.raises(DataUnavailableError, match="not a folder"):
        load_data(DataConfig(source="file.zip", data_dir=data_dir))


def test_symlinks_out_of_the_data_dir_are_skipped(data_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    save(solid(RED), outside / "secret.png")
    root = simple_folder(data_dir / "linked", per_class=4, classes=("a", "b"))
    (root / "a" / "leak.png").symlink_to(outside / "secret.png")
    (root / "a" / "leakdir").symlink_to(outside)
    (root / "b" / "alias.png").symlink_to(root / "b" / "000.png")  # inside: fine
    splits = load_data(DataConfig(source="linked", data_dir=data_dir))
    skipped = dict(splits.report.skipped)
    assert "outside the data folder" in skipped["a/leak.png"]
    assert "outside the data folder" in skipped["a/leakdir"]
    assert len(splits.train) + len(splits.val) + len(splits.test) == 9


def test_progress_reports_decoding(data_dir: Path) -> None:
    simple_folder(data_dir / "pets", per_class=30)
    recorder = Recorder()
    load_data(DataConfig(source="pets", data_dir=data_dir), recorder)
    assert recorder.decoded
    assert recorder.calls[0][:2] == (0, 90) and recorder.calls[-1][:2] == (90, 90)
    done = [d for d, _, _ in recorder.calls]
    assert done == sorted(done)


def test_abort_from_progress_callback(data_dir: Path) -> None:
    simple_folder(data_dir / "pets", per_class=60)

    def stop(done: int, total: int, message: str) -> None:
        if done > 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_data(DataConfig(source="pets", data_dir=data_dir), stop)
    assert not list((data_dir / ".cache").glob("*.pt"))  # nothing half-written is cached


# --- the disk cache -----------------------------------------------------------------------------


def test_second_load_comes_from_the_cache(data_dir: Path) -> None:
    root = simple_folder(data_dir / "pets", per_class=8)
    cfg = DataConfig(source="pets", data_dir=data_dir)
    first_progress, second_progress = Recorder(), Recorder()
    first = load_data(cfg, first_progress)
    second = load_data(cfg, second_progress)
    assert first_progress.decoded and not second_progress.decoded
    assert second.report.from_cache and second.report.decoded == 0
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert first.mean == second.mean
    caches = list((data_dir / ".cache").glob("*.pt"))
    assert len(caches) == 1 and not list((data_dir / ".cache").glob("*.tmp"))

    # A changed file list (one more image) invalidates the cache.
    save(solid(RED), root / "cat" / "new.png")
    third = load_data(cfg)
    assert not third.report.from_cache and len(third.train) + len(third.val) + len(third.test) == 25


def test_cache_keyed_by_input_size_and_modification(data_dir: Path) -> None:
    root = simple_folder(data_dir / "pets", per_class=4)
    load_data(DataConfig(source="pets", data_dir=data_dir, input_size=32))
    bigger = load_data(DataConfig(source="pets", data_dir=data_dir, input_size=40))
    assert not bigger.report.from_cache and bigger.input_size == 40
    target = root / "dog" / "000.png"
    save(solid(WHITE), target)
    os.utime(target, ns=(1, 1))  # a different modification time
    assert not load_data(DataConfig(source="pets", data_dir=data_dir, input_size=32)).report.from_cache


def test_images_per_class_decodes_only_what_it_uses(data_dir: Path) -> None:
    simple_folder(data_dir / "pets", per_class=20)
    small = DataConfig(source="pets", data_dir=data_dir, images_per_class=5, seed=3)
    first = load_data(small)
    # 20 % test split first (4 per class), then 5 training images per class, test capped at 5.
    assert first.report.decoded == 3 * (5 + 4)
    assert (first.train.class_counts(3), first.val.class_counts(3)) == ([4, 4, 4], [1, 1, 1])
    assert first.test.class_counts(3) == [4, 4, 4]
    assert load_data(small).report.from_cache
    full = load_data(DataConfig(source="pets", data_dir=data_dir))
    assert full.report.decoded == 60
    # With the whole folder cached, the same small selection comes from that cache, identical.
    again = load_data(small)
    assert again.report.from_cache
    assert torch.equal(again.train.images, first.train.images)
    assert torch.equal(again.test.images, first.test.images)


def test_broken_cache_is_ignored_and_rewritten(data_dir: Path) -> None:
    simple_folder(data_dir / "pets", per_class=4)
    cfg = DataConfig(source="pets", data_dir=data_dir)
    good = load_data(cfg)
    (cache,) = (data_dir / ".cache").glob("*.pt")
    cache.write_bytes(b"garbage")
    again = load_data(cfg)
    assert not again.report.from_cache and any("cache" in w for w in again.report.warnings)
    assert torch.equal(again.train.images, good.train.images)
    assert load_data(cfg).report.from_cache


def test_unwritable_cache_is_a_warning(data_dir: Path, tmp_path: Path) -> None:
    simple_folder(data_dir / "pets", per_class=4)
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("x")
    splits = load_data(DataConfig(source="pets", data_dir=data_dir, cache_dir=blocker / "cache"))
    assert len(splits.train) > 0
    assert any("could not write" in w for w in splits.report.warnings)


# --- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"input_size": 31}, {"input_size": 513}, {"input_size": 32.0}, {"input_size": True},
        {"images_per_class": 0}, {"images_per_class": -5},
        {"val_fraction": 0.0}, {"val_fraction": 0.51}, {"val_fraction": float("nan")},
        {"seed": -1}, {"source": ""},
    ],
)
def test_config_refuses_out_of_range(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError) as info:
        DataConfig(**kwargs)  # type: ignore[arg-type]
    assert "\n" not in str(info.value)


def test_config_folder_must_be_inside_the_data_dir(data_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    for bad in ("../elsewhere", str(tmp_path / "elsewhere"), "pets/../../elsewhere"):
        with pytest.raises(PathError):
            DataConfig(source=bad, data_dir=data_dir)
    (data_dir / "escape").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(PathError):
        DataConfig(source="escape", data_dir=data_dir)
    inside = DataConfig(source=str(data_dir / "pets"), data_dir=data_dir)
    assert inside.folder() == (data_dir / "pets").resolve()
    as_text = DataConfig(source="pets", data_dir=str(data_dir))  # type: ignore[arg-type]
    assert as_text.folder() == (data_dir / "pets").resolve()


def test_data_dir_from_settings(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    monkeypatch.setenv("VGG_DATA_DIR", str(data_dir))
    simple_folder(data_dir / "pets", per_class=3, classes=("a", "b"))
    splits = load_data(DataConfig(source="pets"))
    assert splits.source_name == "folder pets"
    assert list((data_dir / ".cache").glob("*.pt"))


# --- CIFAR-10 -----------------------------------------------------------------------------------


def test_cifar10_offline_gives_a_clear_message(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(DataUnavailableError) as info:
        load_data(DataConfig(source="cifar10", data_dir=data_dir))
    message = str(info.value)
    assert "cifar-10-python.tar.gz" in message and str(data_dir.resolve()) in message
    assert "image folder" in message and "synthetic" in message and "\n" not in message
    assert list(data_dir.iterdir()) == []  # no partial download left behind


def test_cifar10_corrupt_archive(data_dir: Path) -> None:
    (data_dir / "cifar-10-python.tar.gz").write_bytes(b"not the real archive")
    with pytest.raises(DataUnavailableError, match="checksum"):
        load_data(DataConfig(source="cifar10", data_dir=data_dir))


def test_cifar10_download_reports_progress_and_checks_checksum(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    class FakeResponse(io.BytesIO):
        headers = {"Content-Length": str(3 << 20)}

        def __enter__(self) -> FakeResponse:
            return self

    monkeypatch.setattr(urllib.request, "urlopen", lambda *a, **k: FakeResponse(b"x" * (3 << 20)))
    recorder = Recorder()
    with pytest.raises(DataUnavailableError, match="checksum"):
        load_data(DataConfig(source="cifar10", data_dir=data_dir), recorder)
    assert [c[:2] for c in recorder.calls] == [(1 << 20, 3 << 20), (2 << 20, 3 << 20), (3 << 20, 3 << 20)]
    assert list(data_dir.iterdir()) == []


def test_cifar10_falls_back_to_a_jpeg_folder(data_dir: Path) -> None:
    root = data_dir / "cifar10"
    simple_folder(root / "train", per_class=5, classes=("airplane", "automobile"))
    simple_folder(root / "test", per_class=2, classes=("airplane", "automobile"))
    splits = load_data(DataConfig(source="cifar10", data_dir=data_dir))
    assert splits.source_name == "CIFAR-10 (JPEG folder)" and len(splits.test) == 4


# --- synthetic shapes ---------------------------------------------------------------------------


def test_synthetic_is_deterministic_and_sized() -> None:
    a, la = generate_shapes(3, 32, seed=5)
    b, lb = generate_shapes(3, 32, seed=5)
    c, _ = generate_shapes(3, 32, seed=6)
    assert a.shape == (30, 3, 32, 32) and a.dtype == torch.uint8 and la.dtype == torch.int64
    assert torch.equal(a, b) and torch.equal(la, lb) and not torch.equal(a, c)
    assert la.tolist() == list(range(10)) * 3
    big, _ = generate_shapes(1, 64, seed=0)
    assert big.shape == (10, 3, 64, 64)


def test_synthetic_splits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VGG_DATA_DIR", str(tmp_path / "never"))
    cfg = DataConfig(source="synthetic", images_per_class=40, seed=1)
    splits = load_data(cfg)
    assert splits.classes == SHAPE_CLASSES and splits.source_name == "synthetic shapes"
    assert splits.train.class_counts(10) == [36] * 10 and splits.val.class_counts(10) == [4] * 10
    assert splits.test.class_counts(10) == [40] * 10
    again = load_data(cfg)
    assert torch.equal(splits.val.images, again.val.images)
    assert torch.equal(splits.train.labels, again.train.labels)
    other = load_data(DataConfig(source="synthetic", images_per_class=40, seed=2))
    assert torch.equal(splits.test.images, other.test.images)  # the test set does not move with the seed
    assert not torch.equal(splits.val.images, other.val.images)
    assert not (tmp_path / "never").exists()  # the synthetic set touches no disk
    # Classes differ in what they show: class-mean images are far apart.
    means = torch.stack([splits.train.images[splits.train.labels == k].float().mean(0) for k in range(10)])
    assert torch.cdist(means.flatten(1), means.flatten(1)).fill_diagonal_(1e9).min() > 50


def test_synthetic_default_size() -> None:
    splits = load_data(DataConfig(input_size=32))
    assert (len(splits.train), len(splits.val), len(splits.test)) == (4500, 500, 1000)
    assert all(0.2 < m < 0.7 for m in splits.mean) and all(0.1 < s < 0.4 for s in splits.std)


# --- splits, statistics, subsets ----------------------------------------------------------------


def test_stratified_split_is_seeded_and_stratified() -> None:
    labels = torch.tensor([0] * 50 + [1] * 20 + [2] * 3 + [3])
    kept, held = stratified_split(labels, 0.1, seed=7)
    assert torch.equal(torch.sort(torch.cat([kept, held])).values, torch.arange(len(labels)))
    assert torch.bincount(labels[held], minlength=4).tolist() == [5, 2, 1, 0]
    again = stratified_split(labels, 0.1, seed=7)
    assert torch.equal(kept, again[0]) and torch.equal(held, again[1])
    assert not torch.equal(held, stratified_split(labels, 0.1, seed=8)[1])


def test_take_per_class() -> None:
    labels = torch.tensor([0] * 10 + [1] * 3)
    index = take_per_class(labels, 4, seed=0)
    assert torch.bincount(labels[index]).tolist() == [4, 3]
    assert torch.equal(index, torch.sort(index).values)
    assert torch.equal(index, take_per_class(labels, 4, seed=0))


def test_channel_stats_exact() -> None:
    images = torch.zeros(4, 3, 2, 2, dtype=torch.uint8)
    images[:, 0] = 255
    images[:2, 1] = 255
    mean, std = channel_stats(images)
    assert mean == pytest.approx((1.0, 0.5, 0.0))
    assert std[0] == pytest.approx(1e-3, abs=1e-3) and std[1] == pytest.approx(0.5)


def small_splits() -> DataSplits:
    return load_data(DataConfig(source="synthetic", images_per_class=20))


def test_subset_classes_relabels() -> None:
    splits = small_splits()
    sub = subset_classes(splits, ["ring", "circle"])
    assert sub.classes == ("ring", "circle")
    assert sub.train.labels.unique().tolist() == [0, 1]
    assert len(sub.train) == 2 * 18 and len(sub.test) == 2 * 20
    ring_images = splits.train.images[splits.train.labels == SHAPE_CLASSES.index("ring")]
    assert torch.equal(sub.train.images[sub.train.labels == 0], ring_images)
    assert sub.mean != splits.mean
    with pytest.raises(ConfigError, match="unknown class 'horse'"):
        subset_classes(splits, ["horse", "circle"])
    with pytest.raises(ConfigError):
        subset_classes(splits, ["ring"])


def test_describe_and_sample_grid() -> None:
    splits = small_splits()
    table = describe(splits)
    assert isinstance(table, pd.DataFrame) and list(table.columns) == ["class", "train", "val", "test"]
    assert table["train"].sum() == len(splits.train) and table.loc[0, "class"] == "circle"
    grid = sample_grid(splits.train, splits.classes, 3)
    assert len(grid) == 30 and [name for _, name in grid[:3]] == ["circle"] * 3
    assert all(splits.classes[int(splits.train.labels[i])] == name for i, name in grid)


# --- tensor operations --------------------------------------------------------------------------


def test_augment_shape_dtype_range_and_determinism() -> None:
    x = to_float(generate_shapes(4, 32, seed=0)[0])  # (40, 3, 32, 32)
    out = augment_batch(x, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.float32
    assert out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, augment_batch(x, torch.Generator().manual_seed(1)))
    assert not torch.equal(out, augment_batch(x, torch.Generator().manual_seed(2)))
    assert not torch.equal(out, x)


def test_flip_flips_and_identity_is_identity() -> None:
    x = torch.rand(5, 3, 32, 32)
    flipped = augment_batch(x, None, rotate=0.0, flip_p=1.0, pad=0)
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    same = augment_batch(x, None, rotate=0.0, flip_p=0.0, pad=0)
    assert torch.allclose(same, x, atol=1e-5)


def test_crop_padding_shifts_by_whole_pixels_with_zero_fill() -> None:
    x = torch.rand(64, 3, 32, 32) * 0.9 + 0.1  # no zeros in the input
    out = augment_batch(x, torch.Generator().manual_seed(0), rotate=0.0, flip_p=0.0, pad=2)
    shifts = set()
    for image, original in zip(out, x, strict=True):
        match = None
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                # out[y, x] = in[y + dy, x + dx] where inside, 0 where outside
                padded = torch.nn.functional.pad(original, (2, 2, 2, 2))
                candidate = padded[:, 2 + dy : 34 + dy, 2 + dx : 34 + dx]
                if torch.allclose(image, candidate, atol=1e-5):
                    match = (dx, dy)
        assert match is not None
        shifts.add(match)
    assert len(shifts) > 5  # shifts vary per image


def test_rotation_stays_small() -> None:
    x = torch.zeros(8, 3, 33, 33)
    x[:, :, 16, :] = 1.0  # a horizontal line through the centre
    out = augment_batch(x, torch.Generator().manual_seed(0), rotate=5.0, flip_p=0.0, pad=0)
    centre_rows = out[:, :, 14:19, :].sum(dim=(1, 2, 3))
    # ±5° keeps the line near the centre
    assert torch.all(centre_rows > 0.9 * x[:, :, 16, :].sum(dim=(1, 2)))
    assert not torch.allclose(out, x)


def test_default_pad() -> None:
    assert default_pad(32) == 2 and default_pad(224) == 14 and default_pad(64) == 4


def test_to_float_and_normalize() -> None:
    images = torch.tensor([[[[0, 255]], [[51, 102]], [[255, 0]]]], dtype=torch.uint8)  # (1, 3, 1, 2)
    x = to_float(images)
    assert x.dtype == torch.float32 and x[0, 1, 0, 0].item() == pytest.approx(0.2)
    y = normalize(x, (0.5, 0.2, 0.5), (0.5, 0.1, 0.25))
    assert y[0, :, 0, 0].tolist() == pytest.approx([-1.0, 0.0, 2.0])


def test_resize_images() -> None:
    images = torch.full((3, 3, 32, 32), 200, dtype=torch.uint8)
    out = resize_images(images, 64)
    assert out.shape == (3, 3, 64, 64) and out.dtype == torch.uint8 and bool((out == 200).all())
    assert resize_images(images, 32) is not None and resize_images(images, 32).shape == images.shape


def test_iterate_batches() -> None:
    data = TensorData(torch.zeros(10, 3, 4, 4, dtype=torch.uint8), torch.arange(10))
    sizes = [len(y) for _, _, y in iterate_batches(data, 4, shuffle=False)]
    assert sizes == [4, 4, 2]
    assert [len(y) for _, _, y in iterate_batches(data, 4, shuffle=True, drop_last=True)] == [4, 4]
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, _, y in iterate_batches(data, 3, shuffle=True, generator=gen)])
    assert sorted(seen.tolist()) == list(range(10)) and seen.tolist() != list(range(10))


def write_fake_cifar10(folder: Path, per_batch: int = 20) -> None:
    """torchvision's CIFAR-10 python layout with tiny random batches (checksums are patched out)."""
    import pickle

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        labels = [i % 10 for i in range(per_batch)]
        pixels = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as handle:
            pickle.dump({"data": pixels, "labels": labels}, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": list(data_module.CIFAR10_CLASSES)}, handle)


@pytest.fixture()
def no_checksums(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchvision.datasets import CIFAR10, cifar
    from torchvision.datasets import utils as tv_utils

    monkeypatch.setattr(CIFAR10, "_check_integrity", lambda self: True)
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(tv_utils, "check_integrity", lambda *args, **kwargs: True)


@pytest.mark.usefixtures("no_checksums")
def test_cifar10_through_torchvision(data_dir: Path) -> None:
    write_fake_cifar10(data_dir / "cifar-10-batches-py")
    splits = load_data(DataConfig(source="cifar10", data_dir=data_dir, input_size=48, images_per_class=6))
    assert splits.classes == data_module.CIFAR10_CLASSES and splits.source_name == "CIFAR-10"
    assert splits.train.images.shape[1:] == (3, 48, 48) and splits.train.images.dtype == torch.uint8
    assert (len(splits.train), len(splits.val), len(splits.test)) == (50, 10, 20)  # test: 2 per class exist
    full = load_data(DataConfig(source="cifar10", data_dir=data_dir))
    assert len(full.train) + len(full.val) == 100 and full.input_size == 32


@pytest.mark.usefixtures("no_checksums")
def test_cifar10_archive_is_unpacked(data_dir: Path, tmp_path: Path) -> None:
    import tarfile

    write_fake_cifar10(tmp_path / "build" / "cifar-10-batches-py")
    with tarfile.open(data_dir / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "build" / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    splits = load_data(DataConfig(source="cifar10", data_dir=data_dir))
    assert len(splits.test) == 20
    assert (data_dir / "cifar-10-batches-py" / "test_batch").is_file()
    assert not [p for p in data_dir.iterdir() if p.name.startswith(".cifar10-extract")]
