"""From uint8 images to the batches the network sees: the notebook's augmentation, batched.

The notebook builds each training image with torchvision transforms, one PIL image at a time:
``RandomRotation(5)``, ``RandomHorizontalFlip(0.5)``, ``RandomCrop(size, padding)``, ``ToTensor``,
``Normalize(mean, std)``. Here the whole data set already lives in memory as uint8 tensors
(``vgg.data``), so a batch is an index into a tensor, converted to floats, augmented in one
``grid_sample`` and normalised, all at once (``BatchPipeline``). ``iterate_batches`` is the one
way training, evaluation and the LR range test walk through a split.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vgg.data import TensorData


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


def iterate_batches(data: TensorData, batch_size: int, *, shuffle: bool,
                    generator: torch.Generator | None = None,
                    drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Yield ``(indices, uint8 images, labels)`` batches over ``data``, shuffled with ``generator``
    when asked; ``drop_last`` leaves out a last, smaller batch."""
    n = len(data)
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        yield idx, data.images[idx], data.labels[idx]


@dataclass(frozen=True)
class BatchPipeline:
    """Turns uint8 images ``(B, 3, H, W)`` into the normalised float batch the model sees.

    Resized to the model's input size when the data set is smaller (bilinear, antialiased),
    augmented when ``augment`` is on, normalised with ``mean``/``std``; channels_last when asked
    (a speed-up of the CPU and GPU convolutions, ``vgg.speedups``).
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    device: torch.device
    size: int  # model input size
    augment: bool
    channels_last: bool = False

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        x = to_float(images.to(self.device, non_blocking=True))  # (B, 3, H, W) in [0, 1]
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True,
                              align_corners=False)
        if self.augment:
            x = augment_batch(x, generator)
        x = normalize(x, self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
