"""What a data set is in this app: its settings (``DataConfig``) and the tensors it becomes
(``TensorData`` per split, ``DataSplits`` for all three, ``ReadReport`` of what reading met)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vgg import settings
from vgg.errors import ConfigError
from vgg.paths import resolve_inside

ProgressFn = Callable[[int, int, str], None]  # progress(done, total, message)

BUILTIN_SOURCES = ("cifar10", "synthetic")
INPUT_SIZE_RANGE = (32, 512)
MAX_IMAGES_PER_CLASS = 1_000_000
TEST_SEED = 0  # test splits and test caps never depend on DataConfig.seed
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)


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
    cap_test: bool = True  # images_per_class also caps the test set; False keeps every test image
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

