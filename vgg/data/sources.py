"""Where the images come from: the synthetic shapes, CIFAR-10 through torchvision (download and
checksum included), or an image folder (``vgg.data.folders``). ``load_data`` is the entry point."""

from __future__ import annotations

import os
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vgg.data.cache import _check_memory
from vgg.data.config import (
    TEST_SEED,
    DataConfig,
    DataSplits,
    ProgressFn,
    ReadReport,
    TensorData,
)
from vgg.data.folders import load_folder
from vgg.data.splits import finish_splits, resize_images, subset_classes, take_per_class
from vgg.data.synthetic import SHAPE_CLASSES, generate_shapes
from vgg.errors import DataUnavailableError, os_reason

if TYPE_CHECKING:
    from torchvision.datasets import CIFAR10

SYNTHETIC_TRAIN_PER_CLASS = 500  # default size of the synthetic set: 5,000 training images
SYNTHETIC_TEST_PER_CLASS = 100
SYNTHETIC_SEED = 0  # the synthetic set is one fixed data set; DataConfig.seed only moves the splits
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"


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
        splits = load_folder(cfg, cfg.folder(), progress)
    return splits if cfg.classes is None else subset_classes(splits, cfg.classes)


def _load_synthetic(cfg: DataConfig) -> DataSplits:
    start = time.perf_counter()
    n_train = cfg.images_per_class or SYNTHETIC_TRAIN_PER_CLASS
    n_test = min(SYNTHETIC_TEST_PER_CLASS, (cfg.cap_test and cfg.images_per_class) or SYNTHETIC_TEST_PER_CLASS)
    train_images, train_labels = generate_shapes(n_train, cfg.input_size, seed=SYNTHETIC_SEED)
    test_images, test_labels = generate_shapes(n_test, cfg.input_size, seed=SYNTHETIC_SEED + 1)
    report = ReadReport(decoded=len(train_labels) + len(test_labels), seconds=time.perf_counter() - start)
    return finish_splits(
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
            return load_folder(cfg, jpeg_folder.resolve(), progress, source_name="CIFAR-10 (JPEG folder)")
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
        if cfg.cap_test:
            keep = take_per_class(test_labels, cfg.images_per_class, TEST_SEED)
            test_images, test_labels = test_images[keep], test_labels[keep]
    _check_memory(len(train_labels) + len(test_labels), cfg.input_size)
    train = TensorData(resize_images(train_images, cfg.input_size), train_labels)
    test = TensorData(resize_images(test_images, cfg.input_size), test_labels)
    report = ReadReport(decoded=len(train) + len(test), seconds=time.perf_counter() - start)
    return finish_splits(cfg, train, None, test, classes, report, "CIFAR-10")


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
            raise DataUnavailableError(f"cannot unpack {archive} into {data_dir}: {os_reason(exc)}") from None


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
            f"CIFAR-10 is not in {data_dir} and could not be downloaded ({os_reason(exc)}): put "
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


