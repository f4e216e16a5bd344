"""The one switch between the lesson path and the fast path (``TrainConfig.speedups``).

Off, a training runs the plain PyTorch a student reads in ``vgg/model.py`` and ``vgg/train.py``:
torchvision's layers and forward, the frozen features recomputed for every batch. On (the
default), the trainer asks this module for:

- ``accelerate(model)``: the small-map GEMM convolutions (``kernels``) and channels_last memory;
- ``training_net(...)``: what the training steps run: the pool folded into the first Linear
  (``fold.FastVGG``), with the compact first Linear on 1×1 maps (``fold.CompactVGG``) where that
  trains exactly the same;
- ``feature_cache_fits(...)``: whether frozen features are computed once (``features``).

``tests/test_speedups.py`` trains the same seed both ways and compares the curves: the plain path
is the reference the fast path is checked against.
"""

from __future__ import annotations

import torch
from torch import nn

from vgg.model import VGG
from vgg.speedups.features import FEATURE_CACHE_LIMIT_BYTES, feature_bytes
from vgg.speedups.fold import CompactVGG, FastVGG, use_delta
from vgg.speedups.kernels import use_small_map_convs


def accelerate(model: VGG) -> VGG:
    """Small-map GEMM convolutions and channels_last memory for ``model`` (in place); returns it."""
    use_small_map_convs(model)
    return model.to(memory_format=torch.channels_last)


def training_net(model: VGG, optimizer: torch.optim.Optimizer, *, map_side: int, weight_decay: float,
                 cached_features: bool = False) -> FastVGG:
    """What the training steps of ``model`` run on ``map_side``×``map_side`` feature maps:
    ``CompactVGG`` (its ``delta`` put into ``optimizer``) on 1×1 maps without weight decay, where it
    trains exactly what the full first Linear would; ``FastVGG`` otherwise."""
    if map_side == 1 and weight_decay == 0.0:
        net = CompactVGG(model, cached_features=cached_features)
        use_delta(optimizer, net)
        return net
    return FastVGG(model, cached_features=cached_features)


def evaluation_net(model: VGG) -> FastVGG:
    """``model`` with the pool folded (for evaluating a loaded checkpoint on many images)."""
    return FastVGG(model)


def feature_cache_fits(n_images: int, input_size: int) -> bool:
    """Whether the frozen feature maps of ``n_images`` stay under ``FEATURE_CACHE_LIMIT_BYTES``."""
    return feature_bytes(n_images, input_size) <= FEATURE_CACHE_LIMIT_BYTES


def sync_weights(net: nn.Module) -> None:
    """Write what a ``CompactVGG`` trained into the model's own weights (before reading its state)."""
    if isinstance(net, CompactVGG):
        net.sync_()


def reload_weights(net: nn.Module) -> None:
    """After the model's weights were replaced under ``net`` (the best epoch's loaded back)."""
    if isinstance(net, CompactVGG):
        net.reload_()
