"""Frozen features computed once: with the convolutional part frozen and no augmentation, its
output for an image never changes, so it is computed once per image instead of once per epoch.

The lesson path runs ``model.features`` on every batch (in eval mode, so its batch norm keeps the
pretrained statistics); this path replaces each split's images by their feature maps
``(N, 512, h, w)`` before the first epoch and trains ``FastVGG(..., cached_features=True)`` on them,
which is the same training of the classifier. Above ``FEATURE_CACHE_LIMIT_BYTES`` of features it
is not used.

With everything but the last layer frozen and no dropout (``hidden=True``), the whole frozen
part's output is the 4096-d input of the last Linear: that is cached instead, and only the last
Linear runs in training (``LastLayer``).

``cached_features`` also keeps them on disk (``<data dir>/.cache/features``), shared by every
session and process: the key is a hash of the frozen layers' weights (its caller's digest), the
split's decoded images (so a set's version and its split), the input size, normalisation, precision
and depth. The thirtieth pupil to fine-tune on the class's pictures trains at once on the first
one's features.
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from vgg.augment import BatchPipeline, iterate_batches
from vgg.data import TensorData
from vgg.errors import VGGError
from vgg.files import atomic_write
from vgg.safeload import load_weights_only

FEATURE_CACHE_LIMIT_BYTES = 2 * 1024**3  # above this, frozen features are recomputed every step
DISK_CACHE_VERSION = 1
DISK_CACHE_FILE_LIMIT = 512 * 1024**2  # larger feature sets are computed again rather than stored
DISK_CACHE_KEEP = 32  # feature files kept (least recently used deleted first)


@dataclass(frozen=True)
class FeatureData:
    """Cached features standing in for a split's images: ``images`` (N, 512, h, w) feature maps, or
    (N, 4096) inputs of the last Linear, float32."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


@dataclass(frozen=True)
class FeaturePipeline:
    """Batches of cached features: only moved to the device (the images' pipeline ran already)."""

    device: torch.device
    augment: bool = False

    def __call__(self, features: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        return features.to(self.device, non_blocking=True).float()


def feature_bytes(n_images: int, input_size: int) -> int:
    """Bytes of the float32 feature maps of ``n_images`` at ``input_size`` (five 2×2 pools)."""
    side = max(1, input_size // 32)
    return n_images * 512 * side * side * 4


class LastLayer(nn.Module):
    """What a run that freezes all but the last layer, without dropout, trains: the last Linear on the
    cached inputs ``h`` (B, 4096) of it. ``forward_with_hidden`` gives ``h`` back for the Evaluate page."""

    def __init__(self, vgg: nn.Module) -> None:
        super().__init__()
        self.vgg = vgg

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.vgg.classifier[6](h)

    def forward_with_hidden(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vgg.classifier[6](h), h


@torch.no_grad()
def compute_features(model: nn.Module, data: TensorData, pipeline: BatchPipeline, *,
                     batch_size: int = 256, autocast_dtype: torch.dtype | None = None,
                     cancel: threading.Event | None = None, hidden: bool = False) -> FeatureData:
    """The (frozen, eval-mode) feature maps of every image, ``(N, 512, h, w)`` float32 on the CPU;
    with ``hidden`` the input of the last Linear, ``(N, 4096)`` (eval mode: no dropout)."""
    was_training = model.training
    model.eval()
    chunks: list[torch.Tensor] = []
    try:
        for _, images, _ in iterate_batches(data, batch_size, shuffle=False):
            if cancel is not None and cancel.is_set():
                break
            x = replace(pipeline, augment=False)(images, None)
            with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                out = model.features(x)
                if hidden:
                    out = model.classifier[:6](torch.flatten(model.avgpool(out), 1))
                chunks.append(out.float().cpu())
    finally:
        model.train(was_training)
    features = torch.cat(chunks) if chunks else torch.zeros(0)
    return FeatureData(features, data.labels[: len(features)])


def features_key(weights: str, data: TensorData, pipeline: BatchPipeline, autocast_dtype: torch.dtype | None,
                 hidden: bool) -> str:
    """What the features depend on, hashed: ``weights`` (a digest of the frozen layers, e.g.
    ``vgg.checkpoints.state_digest``), the decoded images, input size, normalisation, precision, depth."""
    digest = hashlib.sha256(f"v{DISK_CACHE_VERSION}\0{weights}\0{hidden}\0{pipeline.size}\0{tuple(pipeline.mean)}\0"
                            f"{tuple(pipeline.std)}\0{autocast_dtype}\0{tuple(data.images.shape)}\0".encode())
    digest.update(data.images.contiguous().numpy())
    return digest.hexdigest()[:32]


def cached_features(model: nn.Module, data: TensorData, pipeline: BatchPipeline, cache_dir: Path | None,
                    weights: str, *, autocast_dtype: torch.dtype | None = None,
                    cancel: threading.Event | None = None, hidden: bool = False) -> tuple[FeatureData, bool]:
    """``compute_features``, read from ``cache_dir`` when an earlier run computed them for the same
    frozen ``weights`` (a digest); returns (features, read from the disk). A missing or unreadable file
    is computed again and rewritten atomically; ``cache_dir`` None computes without the disk."""
    compute = dict(autocast_dtype=autocast_dtype, cancel=cancel, hidden=hidden)
    if cache_dir is None or len(data) == 0:
        return compute_features(model, data, pipeline, **compute), False
    path = cache_dir / f"{features_key(weights, data, pipeline, autocast_dtype, hidden)}.pt"
    try:
        images = load_weights_only(path)
        if isinstance(images, torch.Tensor) and images.dim() == (2 if hidden else 4) and images.shape[0] == len(data):
            os.utime(path)  # recently used: pruned last
            return FeatureData(images.float(), data.labels), True
    except (VGGError, OSError):  # absent, half-copied or foreign: computed again below
        pass
    features = compute_features(model, data, pipeline, **compute)
    complete = len(features) == len(data)
    if complete and features.images.numel() * 4 <= DISK_CACHE_FILE_LIMIT:
        try:
            cache_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(path, lambda f: torch.save(features.images, f))
            _prune(cache_dir)
        except OSError:  # a full or read-only disk costs the next run the computation, nothing more
            pass
    return features, False


def _prune(cache_dir: Path) -> None:
    files = sorted(cache_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in files[DISK_CACHE_KEEP:]:
        old.unlink(missing_ok=True)
