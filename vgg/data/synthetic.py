"""A procedurally generated, learnable data set: ten classes of coloured shapes on noisy backgrounds.

Needs no file and no download; the same seed gives the same pixels. Each class is a shape
(circle, square, ...) with a random position, size and brightness on a noisy, shaded background.
Most images of a class also share a hue (a colour hint a network picks up in the first epoch);
the rest have a random hue, so reaching high accuracy needs the shape too.
"""

from __future__ import annotations

import math

import numpy as np
import torch

SHAPE_CLASSES: tuple[str, ...] = (
    "circle", "square", "triangle", "diamond", "plus", "cross", "ring", "frame", "stripes", "crescent",
)
COLOUR_HINT_P = 0.8  # share of images whose hue is their class's; the rest get a random hue
_CHUNK = 512  # images generated at once (bounds memory at large sizes)


def _shape_mask(cls: int, x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask (B, S, S) of shape number ``cls``.

    x (B, 1, S) and y (B, S, 1) are offsets from the shape's centre in image units (they
    broadcast to (B, S, S)); r (B, 1, 1) is its radius.
    """
    ax, ay = np.abs(x), np.abs(y)
    dist = np.sqrt(x * x + y * y)
    name = SHAPE_CLASSES[cls]
    if name == "circle":
        return dist < r
    if name == "square":
        return np.maximum(ax, ay) < r * 0.85
    if name == "triangle":  # pointing up: y grows downwards
        return (y < r * 0.7) & (ax < (y + r) * 0.6) & (y > -r)
    if name == "diamond":
        return ax + ay < r
    if name == "plus":
        bar = r * 0.33
        return ((ax < bar) & (ay < r)) | ((ay < bar) & (ax < r))
    if name == "cross":
        bar = r * 0.33 * math.sqrt(2)
        return ((np.abs(x - y) < bar) | (np.abs(x + y) < bar)) & (dist < r)
    if name == "ring":
        return (dist < r) & (dist > r * 0.55)
    if name == "frame":
        edge = np.maximum(ax, ay)
        return (edge < r * 0.85) & (edge > r * 0.5)
    if name == "stripes":  # three horizontal bars
        inside = (ax < r * 0.9) & (ay < r * 0.9)
        band = np.floor((y + r * 0.9) / (r * 1.8 / 5)) % 2 == 0
        return inside & band
    # crescent: a disk minus a shifted disk
    shifted = np.sqrt((x - r * 0.45) ** 2 + (y + r * 0.1) ** 2)
    return (dist < r) & (shifted > r * 0.8)


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(B,) hue, saturation, value in [0, 1] → (B, 3) RGB in [0, 1]."""
    k = np.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], axis=1)  # (B, 3)
    weight = np.clip(np.minimum(k, 4 - k), 0, 1)
    return v[:, None] - v[:, None] * s[:, None] * weight


def _render(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one chunk: labels (B,) → uint8 images (B, 3, size, size)."""
    n = len(labels)

    def rand(*shape: int) -> np.ndarray:
        return rng.random(shape, dtype=np.float32)

    # Per-image parameters, all drawn whatever the class so the stream stays aligned.
    centre = 0.3 + 0.4 * rand(n, 2)  # in [0.3, 0.7] of the image
    radius = 0.2 + 0.13 * rand(n)  # fraction of the image side
    hinted = rand(n) < COLOUR_HINT_P
    hue = np.where(hinted, labels / len(SHAPE_CLASSES) + 0.04 * (rand(n) - 0.5), rand(n)) % 1.0
    colour = _hsv_to_rgb(hue, 0.65 + 0.35 * rand(n), 0.7 + 0.3 * rand(n))  # (B, 3)
    bg_level = 0.15 + 0.5 * rand(n, 3)  # a dull background colour per image
    bg_slope = 0.3 * (rand(n, 2) - 0.5)  # a gentle shading across the image
    noise = 0.04 + 0.05 * rand(n)
    pixel_noise = rng.standard_normal((n, 3, size, size), dtype=np.float32)

    # Supersample twice for smooth edges, then average 2×2 blocks.
    hi = size * 2
    coords = (np.arange(hi, dtype=np.float32) + 0.5) / hi
    x = coords[None, None, :] - centre[:, 0, None, None]  # (B, 1, hi)
    y = coords[None, :, None] - centre[:, 1, None, None]  # (B, hi, 1)
    r = radius[:, None, None]
    mask = np.zeros((n, hi, hi), dtype=bool)
    for cls in np.unique(labels).tolist():
        rows = labels == cls
        mask[rows] = _shape_mask(cls, x[rows], y[rows], r[rows])
    coverage = mask.reshape(n, size, 2, size, 2).mean(axis=(2, 4), dtype=np.float32)[:, None]  # (B, 1, S, S)

    lo = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    shade = bg_slope[:, 0, None, None] * lo[None, None, :] + bg_slope[:, 1, None, None] * lo[None, :, None]
    background = bg_level[:, :, None, None] + shade[:, None]  # (B, 3, S, S)
    image = background * (1 - coverage) + colour[:, :, None, None] * coverage
    image += noise[:, None, None, None] * pixel_noise
    return np.rint(np.clip(image, 0, 1) * 255).astype(np.uint8)


def generate_shapes(n_per_class: int, size: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n_per_class`` images of each of the ten shapes → (uint8 (N, 3, size, size), int64 labels (N,)).

    Deterministic in (n_per_class, size, seed); classes are interleaved 0, 1, ..., 9, 0, 1, ...
    Drawn with NumPy: single-threaded element-wise work, unhurt by a busy machine.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be at least 1, got {n_per_class}")
    rng = np.random.default_rng(seed)
    k = len(SHAPE_CLASSES)
    labels = np.tile(np.arange(k, dtype=np.int64), n_per_class)  # (N,)
    images = np.empty((len(labels), 3, size, size), dtype=np.uint8)
    chunk = max(1, min(_CHUNK, (_CHUNK * 32 * 32) // (size * size)))
    for start in range(0, len(labels), chunk):
        stop = min(start + chunk, len(labels))
        images[start:stop] = _render(labels[start:stop], size, rng)
    return torch.from_numpy(images), torch.from_numpy(labels)
