"""The adaptive pool folded into the first Linear, and the compact first Linear of 1×1 maps.

torchvision's VGG pools every feature map to 7×7 and flattens it into 25,088 numbers. A 32 px
image leaves a 1×1 map, which the pool copies into all 49 cells; a 64 px image a 2×2 map, each
value copied into about 12 cells. The pool is a fixed linear map ``P`` (``pool_matrix``), so
``W·(P x) == (W P)·x``: the first Linear can take the small map directly with the folded weight
``W P`` (4096 × 512·h·w instead of 4096 × 25,088). Exact up to rounding, and far cheaper, since
the 25,088-wide product and its gradient disappear. ``folded_weight`` is the one place this is
written; ``FastVGG`` uses it for every forward on maps smaller than 7×7.

``CompactVGG`` goes one step further for 1×1 maps in training: every one of the 49 copies of a
weight gets the same gradient ``G``, so with a fresh Adam or SGD state and no weight decay every
copy gets the same update ``δ`` at every step. A 4096 × 512 ``delta`` is trained instead, with ``G``
as its gradient: its optimizer state is the state each copy would have had, and the full weight is
``W₀ + delta`` broadcast over the positions. That drops a 411 MB gradient and the optimizer's work
on 103 M weights per step. ``sync_()`` writes ``delta`` into the model's own weight (before a
checkpoint), so parameters stay torchvision's.

``fold_first_linear`` and ``unfold_first_linear`` are the same fold for a run's checkpoint: a run on
1×1 maps can only ever use the 4096 × 512 sum, so that is what its checkpoint stores
(``vgg.checkpoints``), and loading expands it back to torchvision's 4096 × 25,088 shape.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vgg.model import POOL_SIZE, VGG


def pool_matrix(height: int, width: int, out_size: int = POOL_SIZE, *,
                dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """The linear map of ``AdaptiveAvgPool2d(out_size)`` on an ``height × width`` map.

    Returns ``P`` of shape ``(out_size², height·width)`` with ``pool(x).flatten() == P @ x.flatten()``;
    computed by pooling the identity, so the windows are exactly PyTorch's.
    """
    n = height * width
    eye = torch.eye(n, dtype=dtype, device=device).view(n, 1, height, width)
    return F.adaptive_avg_pool2d(eye, out_size).view(n, out_size * out_size).T


def folds(height: int, width: int) -> bool:
    """Whether the pool is folded for an ``height × width`` map: only below 7×7 does it pay."""
    return height * width < POOL_SIZE * POOL_SIZE


def folded_weight(linear: nn.Linear, height: int, width: int) -> Tensor:
    """``linear``'s weight with the adaptive pool of an ``height × width`` map folded in:
    ``(out_features, 512·height·width)``; gradients reach ``linear.weight`` through autograd."""
    channels = linear.in_features // (POOL_SIZE * POOL_SIZE)
    grouped = linear.weight.view(linear.out_features, channels, -1)  # (4096, 512, 49)
    # Outside autocast: a bf16 copy of the whole 25088-wide weight costs more than folding it.
    with torch.autocast(linear.weight.device.type, enabled=False):
        if height * width == 1:
            # 1×1 maps: P is all ones, so W P is a sum, whose backward broadcasts the gradient.
            weight = grouped.sum(-1, keepdim=True)  # (4096, 512, 1)
        else:
            pool = pool_matrix(height, width, dtype=linear.weight.dtype, device=linear.weight.device)
            weight = grouped @ pool  # (4096, 512, 49) @ (49, h·w) -> (4096, 512, h·w)
    return weight.flatten(1)


FIRST_LINEAR = "classifier.0.weight"  # the weight the pool is folded into
POSITIONS = POOL_SIZE * POOL_SIZE  # 49 pooled cells per channel


def fold_first_linear(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``state`` with ``classifier.0.weight`` summed over its 49 pooled positions, ``(4096, 25088)``
    → ``(4096, 512)``: exactly what a run on 1×1 feature maps (inputs of 32–63 px) can use, since the
    pool copies the single value into all 49 cells and ``W·(x ⊗ 1) = (Σ_p W[:, :, p])·x``. The other
    entries are the same tensors, in the same order."""
    weight = state[FIRST_LINEAR]
    folded = weight.reshape(weight.shape[0], -1, POSITIONS).sum(-1)  # (4096, 512, 49) -> (4096, 512)
    return {k: folded if k == FIRST_LINEAR else v for k, v in state.items()}


def unfold_first_linear(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The inverse of ``fold_first_linear`` for what it is exact for: a torchvision-shaped
    ``(4096, 25088)`` weight whose 49 copies of each column are ``W_folded / 49``. It computes the same
    function as the stored run on 1×1 maps (up to rounding); on larger maps all positions start equal.
    ``ValueError`` when ``classifier.0.weight`` is not a folded ``(out, 512)`` matrix."""
    folded = state[FIRST_LINEAR]
    if folded.dim() != 2 or folded.shape[1] != 512:
        raise ValueError(f"{FIRST_LINEAR} is {tuple(folded.shape)}, not a folded (out, 512) weight")
    weight = (folded / POSITIONS).unsqueeze(-1).expand(-1, -1, POSITIONS).reshape(folded.shape[0], -1)
    return {k: weight if k == FIRST_LINEAR else v for k, v in state.items()}


class FastVGG(nn.Module):
    """A VGG whose forward folds the pool into the first Linear on maps smaller than 7×7.

    Same parameters (it holds the model itself as ``vgg``), same function. With
    ``cached_features`` the input is already the output of ``vgg.features`` (a feature cache) and
    only the pool and classifier run.
    """

    def __init__(self, vgg: VGG, *, cached_features: bool = False) -> None:
        super().__init__()
        self.vgg = vgg
        self.cached_features = cached_features

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_with_hidden(x)[0]

    def forward_with_hidden(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head_with_hidden(x if self.cached_features else self.vgg.features(x))

    def first_linear(self, x: Tensor) -> Tensor:
        """``classifier[0](flatten(avgpool(x)))`` for a feature map ``(B, 512, h, w)``."""
        linear = self.vgg.classifier[0]
        if not folds(*x.shape[-2:]):
            return linear(torch.flatten(self.vgg.avgpool(x), 1))
        return F.linear(torch.flatten(x, 1), folded_weight(linear, *x.shape[-2:]), linear.bias)

    def head_with_hidden(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.first_linear(x)
        for layer in self.vgg.classifier[1:6]:
            h = layer(h)
        return self.vgg.classifier[6](h), h


class CompactVGG(FastVGG):
    """``FastVGG`` for 1×1 maps in training, with the first Linear trained through ``delta``
    (see the module's text). Only exact with a fresh optimizer and no weight decay."""

    def __init__(self, vgg: VGG, *, cached_features: bool = False) -> None:
        super().__init__(vgg, cached_features=cached_features)
        linear = vgg.classifier[0]
        self.positions = linear.in_features // 512  # 49
        self.register_buffer("folded", self._fold(linear.weight), persistent=False)  # (4096, 512)
        self.delta = nn.Parameter(torch.zeros_like(self.folded), requires_grad=linear.weight.requires_grad)

    @staticmethod
    @torch.no_grad()
    def _fold(weight: Tensor) -> Tensor:
        return weight.view(weight.shape[0], 512, -1).sum(-1)

    def first_linear(self, x: Tensor) -> Tensor:
        d = self.delta
        # Value folded + 49·delta (the sum of the 49 updated copies); gradient of delta: G (one copy's).
        weight = self.folded + self.positions * d.detach() + (d - d.detach())
        return F.linear(torch.flatten(x, 1), weight, self.vgg.classifier[0].bias)

    @torch.no_grad()
    def sync_(self) -> None:
        """Add ``delta`` to every position of the model's weight (and to ``folded``); zero it.

        The optimizer's update does not depend on the parameter's value (no weight decay), so
        training goes on exactly as before."""
        weight = self.vgg.classifier[0].weight
        weight.view(weight.shape[0], 512, -1).add_(self.delta.unsqueeze(-1))
        self.folded.add_(self.delta, alpha=self.positions)
        self.delta.zero_()

    @torch.no_grad()
    def reload_(self) -> None:
        """After the model's weights were replaced (the best checkpoint loaded): fold them again."""
        self.folded.copy_(self._fold(self.vgg.classifier[0].weight))
        self.delta.zero_()


def use_delta(optimizer: torch.optim.Optimizer, net: CompactVGG) -> None:
    """Put ``net.delta`` in the place of the first Linear's weight in ``optimizer``'s groups.

    Only before the first step: the optimizer must not hold state for the weight yet."""
    weight = net.vgg.classifier[0].weight
    if weight in optimizer.state:
        raise RuntimeError("use_delta needs an optimizer that has not stepped yet")
    for group in optimizer.param_groups:
        group["params"] = [net.delta if p is weight else p for p in group["params"]]
