"""A procedurally generated, learnable data set: ten classes of coloured shapes on noisy backgrounds.

Needs no file and no download; the same seed gives the same pixels. Each class is a shape
(circle, square, ...) with a random position, size and brightness on a noisy, shaded background.
Most images of a class also share a hue (a colour hint a network picks up in the first epoch);
the rest have a random hue, so reaching high accuracy needs the shape too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "plus", "cross", "ring", "frame", "stripes", "crescent",
)
COLOUR_HINT_P = 0.75  # share of images whose hue is their class's; the rest get a random hue
_CHUNK = 512  # images generated at once (bounds memory at large sizes)


def _shape_mask(cls: int, x: torch.Tensor, y: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Boolean mask (B, S, S) of shape number ``cls``; x, y are offsets from the centre, r the radius."""
    ax, ay = x.abs(), y.abs()
    dist = torch.sqrt(x * x + y * y)
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return dist < r
    if name == "square":
        return torch.maximum(ax, ay) < r * 0.85
    if name == "triangle":  # pointing up: y grows downwards
        return (y < r * 0.7) & (ax < (y + r) * 0.6) & (y > -r)
    if name == "diamond":
        return ax + ay < r
    if name == "plus":
        bar = r * 0.33
        return ((ax < bar) & (ay < r)) | ((ay < bar) & (ax < r))
    if name == "cross":
        bar = r * 0.33 * math.sqrt(2)
        return (((x - y).abs() < bar) | ((x + y).abs() < bar)) & (dist < r)
    if name == "ring":
        return (dist < r) & (dist > r * 0.55)
    if name == "frame":
        edge = torch.maximum(ax, ay)
        return (edge < r * 0.85) & (edge > r * 0.5)
    if name == "stripes":  # three horizontal bars
        inside = (ax < r * 0.9) & (ay < r * 0.9)
        band = torch.floor((y + r * 0.9) / (r * 1.8 / 5)).remainder(2) == 0
        return inside & band
    # crescent: a disk minus a shifted disk
    shifted = torch.sqrt((x - r * 0.45) ** 2 + (y + r * 0.1) ** 2)
    return (dist < r) & (shifted > r * 0.8)


def _hsv_to_rgb(h: torch.Tensor, s: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """(B,) hue, saturation, value in [0, 1] → (B, 3) RGB in [0, 1]."""
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], dim=1)  # (B, 3)
    weight = torch.clamp(torch.minimum(k, 4 - k), 0, 1)
    return v[:, None] - v[:, None] * s[:, None] * weight


def _render(labels: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    """Draw one chunk: labels (B,) → uint8 images (B, 3, size, size)."""
    n = labels.numel()
    rand = lambda *shape: torch.rand(*shape, generator=gen)  # noqa: E731 - a local shorthand
    # Per-image parameters, all drawn whatever the class so the stream stays aligned.
    centre = 0.25 + 0.5 * rand(n, 2)  # in [0.25, 0.75] of the image
    radius = 0.18 + 0.14 * rand(n)  # fraction of the image side
    hinted = rand(n) < COLOUR_HINT_P
    hue = torch.where(hinted, labels.float() / len(SHAPE_CLASSES) + 0.04 * (rand(n) - 0.5), rand(n)) % 1.0
    colour = _hsv_to_rgb(hue, 0.65 + 0.35 * rand(n), 0.7 + 0.3 * rand(n))  # (B, 3)
    bg_level = 0.15 + 0.5 * rand(n, 3)  # a dull background colour per image
    bg_slope = 0.3 * (rand(n, 2) - 0.5)  # a gentle shading across the image
    noise = 0.06 + 0.06 * rand(n)
    pixel_noise = torch.randn(n, 3, size, size, generator=gen)

    # Supersample twice for smooth edges, then average down.
    hi = size * 2
    coords = (torch.arange(hi, dtype=torch.float32) + 0.5) / hi  # (hi,)
    gy = coords.view(1, hi, 1).expand(n, hi, hi)
    gx = coords.view(1, 1, hi).expand(n, hi, hi)
    x = gx - centre[:, 0, None, None]
    y = gy - centre[:, 1, None, None]
    r = radius[:, None, None]
    mask = torch.zeros(n, hi, hi, dtype=torch.bool)
    for cls in labels.unique().tolist():
        rows = labels == cls
        mask[rows] = _shape_mask(cls, x[rows], y[rows], r[rows])
    coverage = F.avg_pool2d(mask.float().unsqueeze(1), 2)  # (B, 1, size, size)

    lo = (torch.arange(size, dtype=torch.float32) + 0.5) / size - 0.5
    shade = bg_slope[:, 0, None, None] * lo.view(1, 1, size) + bg_slope[:, 1, None, None] * lo.view(1, size, 1)
    background = bg_level[:, :, None, None] + shade[:, None]  # (B, 3, size, size)
    image = background * (1 - coverage) + colour[:, :, None, None] * coverage
    image = image + noise[:, None, None, None] * pixel_noise
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def generate_shapes(n_per_class: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_per_class`` images of each of the ten shapes → (uint8 (N, 3, size, size), int64 labels (N,)).

    Deterministic in (n_per_class, size, seed); classes are interleaved 0, 1, ..., 9, 0, 1, ...
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    gen = torch.Generator().manual_seed(seed)
    k = len(SHAPE_CLASSES)
    labels = torch.arange(k, dtype=torch.int64).repeat(n_per_class)  # (N,)
    images = torch.empty(labels.numel(), 3, size, size, dtype=torch.uint8)
    chunk = max(1, min(_CHUNK, (_CHUNK * 32 * 32) // (size * size)))
    for start in range(0, labels.numel(), chunk):
        stop = min(start + chunk, labels.numel())
        images[start:stop] = _render(labels[start:stop], size, gen)
    return images, labels
