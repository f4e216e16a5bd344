"""Splits, statistics and subsets of decoded data sets (NumPy index bookkeeping, torch pixels)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from vgg.data.config import DataConfig, DataSplits, ReadReport, TensorData, _classes_present, _take
from vgg.errors import ConfigError, DataUnavailableError

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


def _relabel(data: TensorData, new_label: torch.Tensor) -> TensorData:
    mapped = new_label[data.labels]
    index = torch.nonzero(mapped >= 0).flatten()
    return TensorData(_take(data.images, index), mapped.index_select(0, index))



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


def finish_splits(
    cfg: DataConfig,
    train_all: TensorData,
    val: TensorData | None,
    test: TensorData,
    classes: tuple[str, ...],
    report: ReadReport,
    source_name: str,
) -> DataSplits:
    """Split validation off the training images (unless given) and compute mean/std: the last step
    of reading any source."""
    if val is None or len(val) == 0:
        keep, held = stratified_split(train_all.labels, cfg.val_fraction, cfg.seed)
        train, val = train_all.subset(keep), train_all.subset(held)
    else:
        train = train_all
    if len(train) == 0:
        raise DataUnavailableError(f"{source_name} has no training images left after the split")
    mean, std = channel_stats(train.images)
    return DataSplits(train, val, test, classes, mean, std, report, source_name)
