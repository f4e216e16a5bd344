"""Data sets as uint8 tensors: CIFAR-10, image folders and synthetic shapes; their splits.

Everything is decoded once into a uint8 tensor (N, 3, H, W) at the chosen input size — CIFAR-10 at
32 px is 150 MB — and image folders are cached on disk in the data dir, so a second start is
immediate. Training then works on batches of tensors (``vgg.augment``).

Read in this order: ``config`` (what a data set is), ``sources`` (``load_data``: synthetic,
CIFAR-10, folders), ``folders`` (reading a teacher's folder safely), ``cache`` (decoding and the
disk cache), ``splits`` (validation split, per-class caps, statistics, class subsets).

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

from vgg.data.config import (
    BUILTIN_SOURCES,
    CIFAR10_CLASSES,
    INPUT_SIZE_RANGE,
    MAX_IMAGES_PER_CLASS,
    TEST_SEED,
    DataConfig,
    DataSplits,
    ProgressFn,
    ReadReport,
    TensorData,
)
from vgg.data.sources import load_data
from vgg.data.splits import (
    channel_stats,
    describe,
    resize_images,
    sample_grid,
    stratified_split,
    subset_classes,
    take_per_class,
)

__all__ = [
    "BUILTIN_SOURCES", "CIFAR10_CLASSES", "INPUT_SIZE_RANGE", "MAX_IMAGES_PER_CLASS", "TEST_SEED",
    "DataConfig", "DataSplits", "ProgressFn", "ReadReport", "TensorData", "load_data",
    "channel_stats", "describe", "resize_images", "sample_grid", "stratified_split", "subset_classes",
    "take_per_class",
]
