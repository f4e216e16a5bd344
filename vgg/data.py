"""Data sets as uint8 tensors: CIFAR-10, image folders and synthetic shapes; splits and augmentation.

Everything is decoded once into a uint8 tensor (N, 3, H, W) at the chosen input size — CIFAR-10 at
32 px is 150 MB — and image folders are cached on disk in the data dir, so a second start is
immediate. Training then works on batches of tensors: augmentation (rotation ±5°, horizontal
flip, random crop with padding, as the notebook's torchvision transforms) is one batched
``grid_sample`` per batch instead of PIL work per image.

Choices worth knowing:

- ``images_per_class`` takes that many images per class (stratified, seeded by ``seed``) from the
  training images *before* the train/validation split, and caps the test set (and a ``val/``
  folder) at the same number per class, taken with a fixed seed so runs with different seeds are
  tested on the same images.
- An image folder without ``test/`` gets a stratified test split of 20 % with a fixed seed.
- The source words ``"cifar10"`` and ``"synthetic"`` win over folders of that name; write
  ``"./synthetic"`` for a folder. ``"cifar10"`` falls back to a JPEG folder ``<data dir>/cifar10``
  (with ``train/`` and ``test/``) when torchvision's files are absent.
- The synthetic set never touches the disk; its pixels depend only on the input size.
"""

from __future__ import annotations

import hashlib
import math
import os
import stat
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vgg import settings
from vgg.errors import ConfigError, DataUnavailableError, ImageError, PathError
from vgg.images import SUPPORTED_EXTENSIONS, UNSUPPORTED_FORMATS, image_to_array, open_image
from vgg.paths import resolve_inside
from vgg.synthetic import SHAPE_CLASSES, generate_shapes

if TYPE_CHECKING:
    from torchvision.datasets import CIFAR10

ProgressFn = Callable[[int, int, str], None]

BUILTIN_SOURCES = ("cifar10", "synthetic")
INPUT_SIZE_RANGE = (32, 512)
MAX_IMAGES_PER_CLASS = 1_000_000
SYNTHETIC_TRAIN_PER_CLASS = 500  # default size of the synthetic set: 5,000 training images
SYNTHETIC_TEST_PER_CLASS = 100
SYNTHETIC_SEED = 0  # the synthetic set is one fixed data set; DataConfig.seed only moves the splits
FOLDER_TEST_FRACTION = 0.2  # test split of an image folder that has no test/ folder
TEST_SEED = 0  # test splits and test caps never depend on DataConfig.seed
CACHE_VERSION = 1
CACHE_KEEP = 16  # decoded-image caches kept per cache folder (oldest deleted first)
DECODE_CHUNK = 64  # files per decoding task
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)

_SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
_JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini", "__pycache__"}


# ---------------------------------------------------------------------------------------------
# Types


@dataclass(frozen=True, eq=False)
class TensorData:
    """Images and labels of one split."""

    images: torch.Tensor  # uint8 (N, 3, H, W)
    labels: torch.Tensor  # int64 (N,)

    def __post_init__(self) -> None:
        assert self.images.dtype == torch.uint8 and self.images.dim() == 4, self.images.shape
        assert self.labels.dtype == torch.int64 and self.labels.shape == (self.images.shape[0],)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> TensorData:
        """The images at ``index`` (int64 indices), in that order (a view when ``index`` is a range)."""
        return TensorData(_take(self.images, index), self.labels.index_select(0, index))

    def class_counts(self, num_classes: int) -> list[int]:
        """Number of images of each class 0..num_classes-1."""
        return torch.bincount(self.labels, minlength=num_classes).tolist()


def _take(images: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``images[index]`` along dim 0, as a view (no copy of the pixels) when ``index`` is a run."""
    n = int(index.numel())
    if n > 0:
        first = int(index[0])
        if int(index[-1]) == first + n - 1 and (n == 1 or bool((index.diff() == 1).all())):
            return images[first : first + n]
    return images.index_select(0, index)


def _classes_present(labels: torch.Tensor) -> list[int]:
    """Sorted label values that occur (bincount: much cheaper than torch.unique)."""
    if labels.numel() == 0:
        return []
    return np.flatnonzero(np.bincount(labels.numpy())).tolist()


@dataclass(frozen=True)
class ReadReport:
    """What happened while reading a data set: files skipped and why, classes ignored, warnings."""

    skipped: tuple[tuple[str, str], ...] = ()  # (path relative to the folder, one-line reason)
    empty_classes: tuple[str, ...] = ()  # class folders ignored because they hold no readable image
    warnings: tuple[str, ...] = ()  # one line each
    decoded: int = 0  # images decoded successfully now (0 when everything came from the cache)
    from_cache: bool = False  # True when the decoded tensor was loaded from the disk cache
    seconds: float = 0.0  # wall time of reading (decoding or cache loading)


@dataclass(frozen=True, eq=False)
class DataSplits:
    """Train, validation and test tensors with class names, normalisation statistics and a report."""

    train: TensorData
    val: TensorData
    test: TensorData
    classes: tuple[str, ...]
    mean: tuple[float, float, float]  # per channel, of the training images, in [0, 1]
    std: tuple[float, float, float]
    report: ReadReport
    source_name: str

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_size(self) -> int:
        return int(self.train.images.shape[-1])


@dataclass(frozen=True)
class DataConfig:
    """Which data set to read and how to split it; validated on creation."""

    source: str = "synthetic"  # "cifar10", "synthetic", or an image folder inside the data dir
    input_size: int = 32  # side of the square images the network sees, 32..512
    images_per_class: int | None = None  # cap per class for short classroom runs; None = all
    val_fraction: float = 0.1  # share of the training images held out for validation, (0, 0.5]
    seed: int = 0  # seeds the validation split and the images-per-class pick
    data_dir: Path | None = None  # None → settings.data_dir() ($VGG_DATA_DIR, default ./data)
    cache_dir: Path | None = None  # where decoded folders are cached; None → <data dir>/.cache
    classes: tuple[str, ...] | None = None  # keep only these classes (relabelled 0..k-1); None = all

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            raise ConfigError(
                f"data source {self.source!r} is empty; choose cifar10, synthetic or an image folder"
            )
        _check_int("input size", self.input_size, *INPUT_SIZE_RANGE)
        if self.images_per_class is not None:
            _check_int("images per class", self.images_per_class, 1, MAX_IMAGES_PER_CLASS)
        if (
            isinstance(self.val_fraction, bool)
            or not isinstance(self.val_fraction, (int, float))
            or not 0.0 < float(self.val_fraction) <= 0.5
        ):
            raise ConfigError(
                f"validation fraction {self.val_fraction!r} is out of range; choose a number in (0, 0.5]"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError(f"seed {self.seed!r} is invalid; choose a whole number ≥ 0")
        for name in ("data_dir", "cache_dir"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, Path(value).expanduser())
        if self.classes is not None:
            object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
            if len(self.classes) < 2:
                raise ConfigError(f"a classifier needs at least two classes, got {len(self.classes)}")
        if self.source not in BUILTIN_SOURCES:
            self.folder()  # refuses paths outside the data dir now, not at load time

    def resolved_data_dir(self) -> Path:
        """The data dir as an absolute path (created on demand when taken from the settings)."""
        return self.data_dir.resolve() if self.data_dir is not None else settings.data_dir()

    def resolved_cache_dir(self) -> Path:
        return self.cache_dir.resolve() if self.cache_dir is not None else self.resolved_data_dir() / ".cache"

    def folder(self) -> Path:
        """The image folder of a path source, resolved; relative paths are relative to the data dir."""
        if self.source in BUILTIN_SOURCES:
            raise ConfigError(f"data source {self.source!r} is built in, not a folder")
        return resolve_inside(self.source, self.resolved_data_dir())


def _check_int(what: str, value: object, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{what} {value!r} is out of range; choose a whole number from {low} to {high:,}")


# ---------------------------------------------------------------------------------------------
# Loading


def load_data(cfg: DataConfig, progress: ProgressFn | None = None) -> DataSplits:
    """Read the data set ``cfg`` names, split it and compute its statistics.

    ``progress(done, total, message)`` is called while decoding or downloading (it may raise to
    abort). Raises ``DataUnavailableError`` (missing or unusable data), ``PathError`` (a folder
    outside the data dir) or ``ConfigError``.
    """
    if cfg.source == "synthetic":
        splits = _load_synthetic(cfg)
    elif cfg.source == "cifar10":
        splits = _load_cifar10(cfg, progress)
    else:
        splits = _load_folder(cfg, cfg.folder(), progress)
    return splits if cfg.classes is None else subset_classes(splits, cfg.classes)


def _finish(
    cfg: DataConfig,
    train_all: TensorData,
    val: TensorData | None,
    test: TensorData,
    classes: tuple[str, ...],
    report: ReadReport,
    source_name: str,
) -> DataSplits:
    """Split validation off the training images (unless given) and compute mean/std."""
    if val is None or len(val) == 0:
        keep, held = stratified_split(train_all.labels, cfg.val_fraction, cfg.seed)
        train, val = train_all.subset(keep), train_all.subset(held)
    else:
        train = train_all
    if len(train) == 0:
        raise DataUnavailableError(f"{source_name} has no training images left after the split")
    mean, std = channel_stats(train.images)
    return DataSplits(train, val, test, classes, mean, std, report, source_name)


def _load_synthetic(cfg: DataConfig) -> DataSplits:
    start = time.perf_counter()
    n_train = cfg.images_per_class or SYNTHETIC_TRAIN_PER_CLASS
    n_test = min(SYNTHETIC_TEST_PER_CLASS, cfg.images_per_class or SYNTHETIC_TEST_PER_CLASS)
    train_images, train_labels = generate_shapes(n_train, cfg.input_size, seed=SYNTHETIC_SEED)
    test_images, test_labels = generate_shapes(n_test, cfg.input_size, seed=SYNTHETIC_SEED + 1)
    report = ReadReport(decoded=len(train_labels) + len(test_labels), seconds=time.perf_counter() - start)
    return _finish(
        cfg, TensorData(train_images, train_labels), None, TensorData(test_images, test_labels),
        SHAPE_CLASSES, report, "synthetic shapes",
    )


# --- CIFAR-10 through torchvision ----------------------------------------------------------------


class _CifarMissing(Exception):
    """torchvision's CIFAR-10 files are not in the data dir."""


def _load_cifar10(cfg: DataConfig, progress: ProgressFn | None) -> DataSplits:
    data_dir = cfg.resolved_data_dir()
    start = time.perf_counter()
    try:
        train_ds, test_ds = _open_torchvision_cifar10(data_dir)
    except _CifarMissing:
        jpeg_folder = data_dir / "cifar10"
        if (jpeg_folder / "train").is_dir():
            return _load_folder(cfg, jpeg_folder.resolve(), progress, source_name="CIFAR-10 (JPEG folder)")
        _download_cifar10(data_dir, progress)
        train_ds, test_ds = _open_torchvision_cifar10(data_dir)

    classes = tuple(train_ds.classes)
    # (N, 32, 32, 3) uint8 arrays → (N, 3, 32, 32) views; copies happen only for the chosen images.
    train_images = torch.from_numpy(train_ds.data).permute(0, 3, 1, 2)
    train_labels = torch.as_tensor(train_ds.targets, dtype=torch.int64)
    test_images = torch.from_numpy(test_ds.data).permute(0, 3, 1, 2)
    test_labels = torch.as_tensor(test_ds.targets, dtype=torch.int64)
    if cfg.images_per_class is not None:
        keep = take_per_class(train_labels, cfg.images_per_class, cfg.seed)
        train_images, train_labels = train_images[keep], train_labels[keep]
        keep = take_per_class(test_labels, cfg.images_per_class, TEST_SEED)
        test_images, test_labels = test_images[keep], test_labels[keep]
    _check_memory(len(train_labels) + len(test_labels), cfg.input_size)
    train = TensorData(resize_images(train_images, cfg.input_size), train_labels)
    test = TensorData(resize_images(test_images, cfg.input_size), test_labels)
    report = ReadReport(decoded=len(train) + len(test), seconds=time.perf_counter() - start)
    return _finish(cfg, train, None, test, classes, report, "CIFAR-10")


def _open_torchvision_cifar10(data_dir: Path) -> tuple[CIFAR10, CIFAR10]:
    """torchvision's CIFAR-10 (train, test) from the data dir, unpacking the archive if needed."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    batches = data_dir / CIFAR10.base_folder
    archive = data_dir / CIFAR10.filename
    if not batches.is_dir():
        if not archive.is_file():
            raise _CifarMissing
        if not check_integrity(str(archive), CIFAR10.tgz_md5):
            raise DataUnavailableError(
                f"{archive} is incomplete or corrupt (checksum mismatch); delete it and put a fresh "
                f"{CIFAR10_ARCHIVE} into {data_dir}"
            )
        _extract_cifar10(archive, data_dir)
    try:
        root = str(data_dir)
        return CIFAR10(root, train=True, download=False), CIFAR10(root, train=False, download=False)
    except RuntimeError:  # torchvision: "Dataset not found or corrupted"
        raise DataUnavailableError(
            f"the CIFAR-10 files in {batches} are incomplete or corrupt; delete that folder and put "
            f"{CIFAR10_ARCHIVE} into {data_dir}"
        ) from None


def _extract_cifar10(archive: Path, data_dir: Path) -> None:
    """Unpack into a temporary folder, then move the batches folder in place (no half-extracted state)."""
    from torchvision.datasets import CIFAR10

    with tempfile.TemporaryDirectory(dir=data_dir, prefix=".cifar10-extract-") as tmp:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(tmp, filter="data")
            os.replace(Path(tmp) / CIFAR10.base_folder, data_dir / CIFAR10.base_folder)
        except (OSError, tarfile.TarError) as exc:
            raise DataUnavailableError(f"cannot unpack {archive} into {data_dir}: {_reason(exc)}") from None


def _download_cifar10(data_dir: Path, progress: ProgressFn | None) -> None:
    """Download the official archive into the data dir (with progress) and check its checksum."""
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import check_integrity

    archive = data_dir / CIFAR10.filename
    partial = data_dir / (CIFAR10.filename + ".part")
    try:
        _fetch(CIFAR10.url, partial, progress)
    except (OSError, urllib.error.URLError, ValueError) as exc:
        partial.unlink(missing_ok=True)
        raise DataUnavailableError(
            f"CIFAR-10 is not in {data_dir} and could not be downloaded ({_reason(exc)}): put "
            f"{CIFAR10_ARCHIVE} (from {CIFAR10.url}) into {data_dir}, or choose an image folder "
            "or the synthetic set"
        ) from None
    if not check_integrity(str(partial), CIFAR10.tgz_md5):
        partial.unlink(missing_ok=True)
        raise DataUnavailableError(
            f"the CIFAR-10 download was incomplete (checksum mismatch); try again or put "
            f"{CIFAR10_ARCHIVE} into {data_dir}"
        )
    os.replace(partial, archive)


def _fetch(url: str, dest: Path, progress: ProgressFn | None) -> None:
    """Download ``url`` to ``dest`` in 1 MB pieces, reporting bytes done and total."""
    with urllib.request.urlopen(url, timeout=30) as response, open(dest, "wb") as out:
        total = int(response.headers.get("Content-Length") or 0)
        done = 0
        while piece := response.read(1 << 20):
            out.write(piece)
            done += len(piece)
            if progress is not None:
                message = f"downloading CIFAR-10 ({done / 1e6:.0f} of {total / 1e6:.0f} MB)"
                progress(done, max(total, done), message)


def _reason(exc: BaseException) -> str:
    """A short one-line reason from an I/O or network exception."""
    inner = getattr(exc, "reason", None)
    text = str(inner if inner is not None else (getattr(exc, "strerror", None) or exc))
    text = " ".join(text.split()) or exc.__class__.__name__
    return text[:120]


# --- Image folders -------------------------------------------------------------------------------


@dataclass
class _Scan:
    """The files of an image folder, by split, before decoding (internal, mutable while scanning)."""

    root: Path
    classes: list[str] = field(default_factory=list)
    # split → rows (relative path, label, size in bytes, modification time in ns)
    files: dict[str, list[tuple[str, int, int, int]]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _visible_entries(path: Path) -> list[os.DirEntry[str]]:
    """Entries of a folder sorted by name, without hidden files and OS clutter (.DS_Store, __MACOSX)."""
    with os.scandir(path) as it:
        entries = [e for e in it if not e.name.startswith(".") and e.name not in _JUNK_NAMES]
    return sorted(entries, key=lambda e: e.name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _scan_class(
    scan: _Scan, folder: str, rel_folder: str, allowed: Path, out: list[tuple[str, int, int]]
) -> None:
    """Collect candidate image files below ``folder`` (recursively) as (relative path, size, mtime)."""
    try:
        entries = _visible_entries(Path(folder))
    except OSError as exc:
        scan.skipped.append((rel_folder, f"{rel_folder}: cannot list this folder ({_reason(exc)})"))
        return
    for entry in entries:
        rel = f"{rel_folder}/{entry.name}"
        stem, dot, suffix = entry.name.rpartition(".")
        ext = f".{suffix.lower()}" if dot and stem else ""
        try:
            if entry.is_symlink():
                try:
                    target = resolve_inside(entry.path, allowed)
                except PathError:
                    scan.skipped.append((rel, f"{rel} is a link pointing outside the data folder"))
                    continue
                if target.is_dir():
                    scan.skipped.append((rel, f"{rel} is a link to a folder (not followed)"))
                    continue
            if _is_dir(entry):
                if ext in SUPPORTED_EXTENSIONS:
                    scan.skipped.append((rel, f"{rel} is a folder, not an image file"))
                else:
                    _scan_class(scan, entry.path, rel, allowed, out)
            elif ext in SUPPORTED_EXTENSIONS:
                info = entry.stat()  # follows a (checked) file link
                if not stat.S_ISREG(info.st_mode):
                    scan.skipped.append((rel, f"{rel} is not a regular file"))
                else:
                    out.append((rel, info.st_size, info.st_mtime_ns))
            elif ext in UNSUPPORTED_FORMATS:
                scan.skipped.append((rel, f"{rel}: {UNSUPPORTED_FORMATS[ext]}"))
            else:
                scan.skipped.append((rel, f"{rel} is not an image file ({ext or 'no extension'})"))
        except OSError as exc:
            scan.skipped.append((rel, f"{rel} cannot be read ({_reason(exc)})"))


def _scan_folder(root: Path, allowed: Path) -> _Scan:
    """Find splits, classes and candidate files of an image folder; nothing is decoded yet."""
    if not root.exists():
        raise DataUnavailableError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataUnavailableError(f"{root} is not a folder; choose a folder of class folders")
    scan = _Scan(root)
    try:
        top = _visible_entries(root)
    except OSError as exc:
        raise DataUnavailableError(f"cannot list {root} ({_reason(exc)})") from None
    split_dirs = {
        _SPLIT_FOLDERS[e.name.lower()]: e for e in top if _is_dir(e) and e.name.lower() in _SPLIT_FOLDERS
    }
    if split_dirs and "train" not in split_dirs:
        raise DataUnavailableError(f"{root} has {', '.join(sorted(split_dirs))}/ but no train/ folder")
    if split_dirs:
        for e in top:
            if e.name.lower() not in _SPLIT_FOLDERS:
                scan.warnings.append(
                    f"ignored {e.name!r} in {root.name}: expected only train/, test/ and val/"
                )
        layout = {split: Path(entry.path) for split, entry in split_dirs.items()}
    else:
        layout = {"train": root}

    # Classes come from the training folder, sorted by name (torchvision ImageFolder's order).
    class_files: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
    for split, split_root in layout.items():
        class_files[split] = {}
        prefix = "" if split_root == root else split_root.name + "/"
        for entry in _visible_entries(split_root):
            rel = prefix + entry.name
            if entry.is_symlink() and not _inside(entry.path, allowed):
                scan.skipped.append((rel, f"{rel} is a link pointing outside the data folder"))
            elif _is_dir(entry) or (entry.is_symlink() and Path(entry.path).is_dir()):
                found: list[tuple[str, int, int]] = []
                _scan_class(scan, entry.path, rel, allowed, found)
                class_files[split][entry.name] = found
            else:
                scan.skipped.append((rel, f"{rel} is not inside a class folder"))

    train_classes = class_files["train"]
    if not train_classes:
        raise DataUnavailableError(
            f"no class folders in {layout['train']}: put the images of each class in a folder "
            "named after the class"
        )
    for name, found in train_classes.items():
        if found:
            scan.classes.append(name)
        else:
            scan.empty_classes.append(name)
            scan.warnings.append(f"class folder {name!r} has no images; ignored")
    label_of = {name: i for i, name in enumerate(scan.classes)}
    for split, by_class in class_files.items():
        rows: list[tuple[str, int, int, int]] = []
        for name, found in by_class.items():
            if name not in label_of:
                if split != "train" and found:
                    scan.warnings.append(
                        f"{split}/{name} is not a training class; its {len(found)} images are ignored"
                    )
                continue
            rows.extend((rel, label_of[name], size, mtime) for rel, size, mtime in found)
        scan.files[split] = rows
    return scan


def _inside(path: str, allowed: Path) -> bool:
    try:
        resolve_inside(path, allowed)
    except PathError:
        return False
    return True


def _load_folder(
    cfg: DataConfig, root: Path, progress: ProgressFn | None, source_name: str | None = None
) -> DataSplits:
    start = time.perf_counter()
    name = source_name or f"folder {root.name}"
    allowed = cfg.resolved_data_dir()
    scan = _scan_folder(root, allowed)
    if len(scan.classes) < 2:
        raise DataUnavailableError(
            f"{root} has {len(scan.classes)} class folder(s) with images; a classifier needs at least two"
        )

    # Choose the files of each split before decoding, so short runs decode only what they use.
    train_rows = scan.files["train"]
    test_rows = scan.files.get("test") or []
    val_rows = scan.files.get("val") or []
    if "test" not in scan.files:
        keep, held = stratified_split(_labels_of(train_rows), FOLDER_TEST_FRACTION, TEST_SEED)
        train_rows, test_rows = _pick(train_rows, keep), _pick(train_rows, held)
        scan.warnings.append(
            f"no test/ folder: {len(test_rows)} training images ({FOLDER_TEST_FRACTION:.0%}) "
            "held out as the test set"
        )
    all_rows = scan.files["train"] + (scan.files.get("test") or []) + val_rows
    if cfg.images_per_class is not None:
        train_rows = _pick(train_rows, take_per_class(_labels_of(train_rows), cfg.images_per_class, cfg.seed))
        test_rows = _pick(test_rows, take_per_class(_labels_of(test_rows), cfg.images_per_class, TEST_SEED))
        val_rows = _pick(val_rows, take_per_class(_labels_of(val_rows), cfg.images_per_class, TEST_SEED))

    decoded, skipped, from_cache, n_decoded, cache_warning = _decoded_images(
        cfg, root, all_rows, train_rows + val_rows + test_rows, progress
    )
    if cache_warning:
        scan.warnings.append(cache_warning)
    row_of = {rel: i for i, rel in enumerate(decoded.files)}

    def build(rows: list[tuple[str, int, int, int]]) -> TensorData:
        present = [(row_of[rel], label) for rel, label, _, _ in rows if rel in row_of]
        index = torch.tensor([i for i, _ in present], dtype=torch.int64)
        labels = torch.tensor([label for _, label in present], dtype=torch.int64)
        return TensorData(_take(decoded.images, index), labels)

    train_all, test, val = build(train_rows), build(test_rows), build(val_rows)
    classes = tuple(scan.classes)
    train_all, val, test, classes, dropped = _drop_empty_classes(train_all, val, test, classes)
    for cls in dropped:
        scan.empty_classes.append(cls)
        scan.warnings.append(f"class folder {cls!r} has no readable training images; ignored")
    if len(classes) < 2:
        raise DataUnavailableError(
            f"{root} has {len(classes)} class(es) with readable images; a classifier needs at least two"
        )
    chosen = {rel for rel, *_ in train_rows + val_rows + test_rows}
    report = ReadReport(
        skipped=tuple(sorted(set(scan.skipped) | {s for s in skipped if s[0] in chosen})),
        empty_classes=tuple(scan.empty_classes),
        warnings=tuple(scan.warnings),
        decoded=n_decoded,
        from_cache=from_cache,
        seconds=time.perf_counter() - start,
    )
    return _finish(cfg, train_all, val if len(val) else None, test, classes, report, name)


def _labels_of(rows: Sequence[tuple[str, int, int, int]]) -> torch.Tensor:
    return torch.tensor([row[1] for row in rows], dtype=torch.int64)


def _pick(rows: list[tuple[str, int, int, int]], index: torch.Tensor) -> list[tuple[str, int, int, int]]:
    return [rows[i] for i in index.tolist()]


def _drop_empty_classes(
    train: TensorData, val: TensorData, test: TensorData, classes: tuple[str, ...]
) -> tuple[TensorData, TensorData, TensorData, tuple[str, ...], list[str]]:
    """Remove classes left without training images (all files unreadable) and relabel 0..k-1."""
    counts = train.class_counts(len(classes))
    keep = [i for i, n in enumerate(counts) if n > 0]
    if len(keep) == len(classes):
        return train, val, test, classes, []
    dropped = [classes[i] for i, n in enumerate(counts) if n == 0]
    new_label = torch.full((len(classes),), -1, dtype=torch.int64)
    new_label[keep] = torch.arange(len(keep))
    return (
        _relabel(train, new_label), _relabel(val, new_label), _relabel(test, new_label),
        tuple(classes[i] for i in keep), dropped,
    )


def _relabel(data: TensorData, new_label: torch.Tensor) -> TensorData:
    mapped = new_label[data.labels]
    index = torch.nonzero(mapped >= 0).flatten()
    return TensorData(_take(data.images, index), mapped.index_select(0, index))


# --- Decoding and the disk cache ----------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _Decoded:
    files: list[str]  # relative paths of the decoded images, one per row of ``images``
    images: torch.Tensor  # uint8 (M, 3, S, S)


def _cache_key(root: Path, size: int, rows: Sequence[tuple[str, int, int, int]]) -> str:
    """A hash of the folder, the input size and every file's name, size and modification time."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}\0{root}\0{size}\0".encode())
    for rel, _, nbytes, mtime in sorted(rows):
        digest.update(f"{rel}\0{nbytes}\0{mtime}\n".encode())
    return digest.hexdigest()[:32]


def _decoded_images(
    cfg: DataConfig,
    root: Path,
    all_rows: list[tuple[str, int, int, int]],
    chosen_rows: list[tuple[str, int, int, int]],
    progress: ProgressFn | None,
) -> tuple[_Decoded, list[tuple[str, str]], bool, int, str | None]:
    """The decoded images: from the cache of the whole folder, else of the chosen files, else decoded.

    Returns (decoded, skipped, from_cache, number decoded now, a cache warning or None).
    """
    cache_dir = cfg.resolved_cache_dir()
    size = cfg.input_size
    full_key = _cache_key(root, size, all_rows)
    keys = [full_key]
    if len(chosen_rows) != len(all_rows):
        keys.append(_cache_key(root, size, chosen_rows))
    warning = None
    for key in keys:
        cached, problem = _load_cache(cache_dir / f"{key}.pt", size)
        warning = warning or problem
        if cached is not None:
            decoded, skipped = cached
            if progress is not None:
                n = len(decoded.files)
                progress(n, n, f"loaded {n:,} images from the cache")
            return decoded, skipped, True, 0, warning

    # Decode everything when everything is used (that cache then serves any later subset), else
    # only the chosen files (cached under their own key).
    rows = all_rows if len(keys) == 1 else sorted(chosen_rows)
    _check_memory(len(rows), size)
    decoded, skipped = _decode_files(root, [row[0] for row in rows], size, progress)
    problem = _save_cache(cache_dir, cache_dir / f"{keys[-1]}.pt", decoded, skipped, size)
    return decoded, skipped, False, len(decoded.files), warning or problem


def _check_memory(n: int, size: int) -> None:
    """Refuse a decode that would need more than half of this machine's memory."""
    need = n * 3 * size * size
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > total // 2:
        raise DataUnavailableError(
            f"{n:,} images at {size}×{size} px need {need / 1e9:.1f} GB of memory, more than half of this "
            f"machine's {total / 1e9:.1f} GB; choose a smaller input size or fewer images per class"
        )


def _decode_files(
    root: Path, rels: list[str], size: int, progress: ProgressFn | None
) -> tuple[_Decoded, list[tuple[str, str]]]:
    """Decode and resize files in a few threads (Pillow releases the GIL while decoding)."""
    n = len(rels)
    buffer = np.empty((n, size, size, 3), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    root_text = str(root)

    def work(first: int, stop: int) -> list[tuple[str, str]]:
        failures = []
        for i in range(first, stop):
            try:
                img = open_image(os.path.join(root_text, rels[i]), name=rels[i], draft_size=size)
                buffer[i] = image_to_array(img, size)
                ok[i] = True
            except ImageError as exc:
                failures.append((rels[i], str(exc)))
            except Exception as exc:  # never let one odd file stop the whole folder
                reason = f"{rels[i]} cannot be decoded ({exc.__class__.__name__}: {exc})"
                failures.append((rels[i], " ".join(reason.split())[:200]))
        return failures

    skipped: list[tuple[str, str]] = []
    workers = max(1, min(4, os.cpu_count() or 1))
    starts = deque(range(0, n, DECODE_CHUNK))
    pending: deque[tuple[int, Future[list[tuple[str, str]]]]] = deque()
    done = 0
    if progress is not None:
        progress(0, n, f"decoding {n:,} images")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vgg-decode") as pool:
        try:
            while starts or pending:
                while starts and len(pending) < 2 * workers:
                    first = starts.popleft()
                    stop = min(first + DECODE_CHUNK, n)
                    pending.append((stop - first, pool.submit(work, first, stop)))
                count, future = pending.popleft()
                skipped.extend(future.result())
                done += count
                if progress is not None:
                    progress(done, n, f"decoding images ({done:,} of {n:,})")
        finally:
            for _, future in pending:  # on abort, queued chunks are dropped, running ones finish
                future.cancel()
    keep = np.flatnonzero(ok)
    kept = buffer if len(keep) == n else buffer[keep]
    images = torch.from_numpy(kept).permute(0, 3, 1, 2).contiguous()  # (M, 3, S, S)
    return _Decoded([rels[i] for i in keep.tolist()], images), skipped


def _load_cache(path: Path, size: int) -> tuple[tuple[_Decoded, list[tuple[str, str]]] | None, str | None]:
    """Read a cache file; a missing one is (None, None), a broken one (None, warning)."""
    if not path.is_file():
        return None, None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        images = payload["images"]
        files = payload["files"].split("\0") if payload["files"] else []
        flat = payload["skipped"].split("\0") if payload["skipped"] else []
        skipped = list(zip(flat[0::2], flat[1::2], strict=True))
        valid = (
            payload.get("version") == CACHE_VERSION
            and isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and images.shape[1:] == (3, size, size)
            and images.shape[0] == len(files)
        )
    except Exception as exc:  # a truncated or foreign file: decode again
        return None, f"ignored a broken cache file {path.name} ({exc.__class__.__name__})"
    if not valid:
        return None, f"ignored a cache file {path.name} of another version"
    return (_Decoded(files, images), skipped), None


def _save_cache(
    cache_dir: Path, path: Path, decoded: _Decoded, skipped: list[tuple[str, str]], size: int
) -> str | None:
    """Write the cache atomically (temp file + os.replace); a failure is a warning, not an error."""
    # Names as one NUL-joined string: file names cannot contain NUL, and the weights-only
    # unpickler is slow per object (60,000 strings take seconds, one string microseconds).
    payload = {
        "version": CACHE_VERSION,
        "size": size,
        "files": "\0".join(decoded.files),
        "skipped": "\0".join(f"{rel}\0{reason}" for rel, reason in skipped),
        "images": decoded.images,
    }
    tmp = None
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=path.stem + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        return (
            f"could not write the decoded-image cache in {cache_dir} ({_reason(exc)}); "
            "the next start decodes again"
        )
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
    _prune_cache(cache_dir)
    return None


def _prune_cache(cache_dir: Path) -> None:
    """Keep the newest CACHE_KEEP cache files."""
    try:
        files = sorted(cache_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[CACHE_KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Splits, statistics, subsets


# Index bookkeeping uses NumPy: tiny torch ops pay for intra-op threading, which on a busy
# two-core machine costs more than the work itself.


def take_per_class(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of at most ``n`` images of each class, chosen at random with ``seed``; sorted."""
    lab = labels.numpy()
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(lab == cls))[:n] for cls in _classes_present(labels)]
    return torch.from_numpy(np.sort(np.concatenate(chosen))) if chosen else torch.zeros(0, dtype=torch.int64)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split indices into (kept, held out) with ``fraction`` of each class held out, seeded; both sorted.

    Every class with at least two images keeps one and holds out at least one.
    """
    lab = labels.numpy()
    rng = np.random.default_rng(seed)
    kept, held = [np.zeros(0, dtype=np.int64)], [np.zeros(0, dtype=np.int64)]
    for cls in _classes_present(labels):
        members = rng.permutation(np.flatnonzero(lab == cls))
        n_held = 0 if len(members) < 2 else min(max(round(len(members) * fraction), 1), len(members) - 1)
        held.append(members[:n_held])
        kept.append(members[n_held:])
    return torch.from_numpy(np.sort(np.concatenate(kept))), torch.from_numpy(np.sort(np.concatenate(held)))


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and standard deviation of uint8 images (N, 3, H, W), in [0, 1] units.

    Exact and fast: a 256-bin histogram per channel (no float copy of the data set).
    """
    if images.shape[0] == 0:
        return (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    chunk = max(1, (1 << 24) // (images.shape[2] * images.shape[3]))
    counts = torch.zeros(3, 256, dtype=torch.float64)
    for part in images.split(chunk):
        for c in range(3):
            counts[c] += torch.bincount(part[:, c].reshape(-1), minlength=256).double()
    values = torch.arange(256, dtype=torch.float64) / 255.0
    total = counts.sum(dim=1)
    mean = (counts * values).sum(dim=1) / total
    var = (counts * values**2).sum(dim=1) / total - mean**2
    std = torch.sqrt(torch.clamp(var, min=1e-6))
    return tuple(mean.tolist()), tuple(std.tolist())  # type: ignore[return-value]


def subset_classes(splits: DataSplits, class_names: Sequence[str]) -> DataSplits:
    """Keep only ``class_names`` (in that order, relabelled 0..k-1) in every split; mean/std recomputed."""
    names = list(class_names)
    unknown = [n for n in names if n not in splits.classes]
    if unknown:
        raise ConfigError(f"unknown class {unknown[0]!r}; choose from {', '.join(splits.classes)}")
    if len(set(names)) != len(names):
        raise ConfigError(f"classes {', '.join(names)} contain a duplicate")
    if len(names) < 2:
        raise ConfigError(f"a classifier needs at least two classes, got {len(names)}")
    new_label = torch.full((splits.num_classes,), -1, dtype=torch.int64)
    for new, name in enumerate(names):
        new_label[splits.classes.index(name)] = new
    train = _relabel(splits.train, new_label)
    mean, std = channel_stats(train.images)
    return replace(
        splits,
        train=train,
        val=_relabel(splits.val, new_label),
        test=_relabel(splits.test, new_label),
        classes=tuple(names),
        mean=mean,
        std=std,
        source_name=f"{splits.source_name} ({', '.join(names)})",
    )


def describe(splits: DataSplits) -> pd.DataFrame:
    """Images per class in each split: columns class, train, val, test."""
    k = splits.num_classes
    return pd.DataFrame(
        {
            "class": list(splits.classes),
            "train": splits.train.class_counts(k),
            "val": splits.val.class_counts(k),
            "test": splits.test.class_counts(k),
        }
    )


def sample_grid(
    data: TensorData, classes: Sequence[str], n_per_class: int, seed: int = 0
) -> list[tuple[int, str]]:
    """Up to ``n_per_class`` random image indices of each class, as (index, class name), class by class."""
    index = take_per_class(data.labels, n_per_class, seed)
    pairs = [(int(i), classes[int(data.labels[i])]) for i in index.tolist()]
    order = {name: position for position, name in enumerate(classes)}
    return sorted(pairs, key=lambda pair: (order[pair[1]], pair[0]))


# ---------------------------------------------------------------------------------------------
# Tensor operations for training


def resize_images(images: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """Resize uint8 images (N, 3, H, W) to (N, 3, size, size): bilinear with antialiasing, in chunks."""
    if images.shape[-2:] == (size, size):
        return images.contiguous()
    out = torch.empty(images.shape[0], 3, size, size, dtype=torch.uint8)
    for start in range(0, images.shape[0], chunk):
        part = images[start : start + chunk].float()
        resized = F.interpolate(part, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[start : start + chunk] = resized.round_().clamp_(0, 255).to(torch.uint8)
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images → float32 in [0, 1] (as torchvision's ToTensor)."""
    return images.float().div_(255.0)


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(x - mean) / std per channel of a batch (B, 3, H, W)."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def default_pad(size: int) -> int:
    """Random-crop padding for an input size: 2 px at 32 px (CIFAR practice), size/16 in general."""
    return max(1, round(size / 16))


def augment_batch(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    *,
    rotate: float = 5.0,
    flip_p: float = 0.5,
    pad: int | None = None,
) -> torch.Tensor:
    """The notebook's augmentation on a whole batch: RandomRotation(rotate), RandomHorizontalFlip(flip_p),
    RandomCrop(size, padding=pad) — in one ``grid_sample``.

    x: float (B, C, H, W) in [0, 1]. Each image gets its own angle in [-rotate, rotate] degrees,
    flip and integer shift in [-pad, pad] pixels each way; uncovered pixels are 0, as with
    torchvision's zero fill and padding. ``pad`` defaults to ``default_pad(H)``. Random numbers
    come from ``generator`` (a CPU generator) for reproducible batches.
    """
    b, _, h, w = x.shape
    pad = default_pad(h) if pad is None else pad
    if b == 0 or (rotate == 0 and flip_p <= 0 and pad == 0):
        return x
    angle = (torch.rand(b, generator=generator) * 2 - 1) * math.radians(rotate)
    flip = torch.where(torch.rand(b, generator=generator) < flip_p, -1.0, 1.0)
    shift = torch.randint(-pad, pad + 1, (b, 2), generator=generator).float()  # (dx, dy) pixels

    # Output → input map in normalised coordinates u ∈ [-1, 1]²: input = A·F·(u + t), with
    # F the flip, t the crop shift and A the inverse rotation expressed in pixel units
    # (S⁻¹ R(-θ) S with S = diag(W/2, H/2), so non-square images rotate without shear).
    cos, sin = torch.cos(angle), torch.sin(angle)
    a = torch.stack(
        [torch.stack([cos, sin * h / w], dim=1), torch.stack([-sin * w / h, cos], dim=1)], dim=1
    )  # (B, 2, 2): rotation by -θ in pixel units
    af = a * torch.stack([flip, torch.ones(b)], dim=1).unsqueeze(1)  # A·F: scale column 0 by the flip
    t = shift * torch.tensor([2.0 / w, 2.0 / h])  # pixels → normalised units
    theta = torch.cat([af, torch.bmm(af, t.unsqueeze(2))], dim=2)  # (B, 2, 3)
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def iter_batches(
    data: TensorData,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (uint8 images, labels) batches of ``data``, shuffled with ``generator`` when asked."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        index = order[start : start + batch_size]
        yield data.images.index_select(0, index), data.labels.index_select(0, index)
