"""Frozen features computed once: with the convolutional part frozen and no augmentation, its
output for an image never changes, so it is computed once per image instead of once per epoch.

The lesson path runs ``model.features`` on every batch (in eval mode, so its batch norm keeps the
pretrained statistics); this path replaces each split's images by their feature maps
``(N, 512, h, w)`` before the first epoch and trains ``FastVGG(..., cached_features=True)`` on them,
which is the same training of the classifier. Above ``FEATURE_CACHE_LIMIT_BYTES`` of features it
is not used.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, replace

import torch
from torch import nn

from vgg.augment import BatchPipeline, iterate_batches
from vgg.data import TensorData

FEATURE_CACHE_LIMIT_BYTES = 2 * 1024**3  # above this, frozen features are recomputed every step


@dataclass(frozen=True)
class FeatureData:
    """Cached feature maps standing in for a split's images: ``images`` (N, 512, h, w) float32."""

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


@torch.no_grad()
def compute_features(model: nn.Module, data: TensorData, pipeline: BatchPipeline, *,
                     batch_size: int = 256, autocast_dtype: torch.dtype | None = None,
                     cancel: threading.Event | None = None) -> FeatureData:
    """The (frozen, eval-mode) feature maps of every image, ``(N, 512, h, w)`` float32 on the CPU."""
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
                chunks.append(model.features(x).float().cpu())
    finally:
        model.train(was_training)
    features = torch.cat(chunks) if chunks else torch.zeros(0)
    return FeatureData(features, data.labels[: len(features)])
