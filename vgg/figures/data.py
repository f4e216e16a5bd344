"""Figures of the Data page: images per class, pixel histograms, and images ready to display."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from vgg.augment import augment_batch, normalize, to_float
from vgg.data import resize_images

SPLIT_COLORS: dict[str, str] = {"train": "#4c78a8", "val": "#f58518", "test": "#54a24b"}
CHANNEL_COLORS: dict[str, str] = {"R": "#d62728", "G": "#2ca02c", "B": "#1f77b4"}


def class_counts_figure(counts: pd.DataFrame) -> go.Figure:
    """Stacked bars of images per class and split.

    ``counts``: columns class, train, val, test (as ``vgg.data.describe`` returns them).
    """
    fig = go.Figure()
    for split in ("train", "val", "test"):
        if split in counts:
            fig.add_bar(x=counts["class"], y=counts[split], name=split, marker_color=SPLIT_COLORS[split],
                        hovertemplate="%{x} · " + split + ": %{y:,} images<extra></extra>")
    fig.update_layout(
        barmode="stack", height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10},
        yaxis={"title": "images"}, xaxis={"title": None, "tickangle": -30 if len(counts) > 8 else 0},
        legend={"orientation": "h", "y": 1.1, "x": 0},
    )
    return fig


def _histogram(values: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    counts, _ = np.histogram(values, bins=edges)
    share = counts / max(1, values.size)
    return (edges[:-1] + edges[1:]) / 2, share


def pixel_histogram_figure(before: np.ndarray, after: np.ndarray, *, after_title: str,
                           bins: int = 48) -> go.Figure:
    """Pixel values per channel before (in [0, 1]) and after normalisation, side by side.

    ``before`` and ``after``: float arrays (3, M), one row per channel (R, G, B). Histograms are
    computed here (plotly would otherwise ship every pixel to the browser).
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08,
                        subplot_titles=("before: pixel / 255, in [0, 1]", after_title))
    low = float(np.floor(min(-3.0, np.nanmin(after)))) if after.size else -3.0
    high = float(np.ceil(max(3.0, np.nanmax(after)))) if after.size else 3.0
    panels = ((1, before, np.linspace(0, 1, bins + 1)), (2, after, np.linspace(low, high, bins + 1)))
    for col, data, edges in panels:
        for channel, name in enumerate(CHANNEL_COLORS):
            x, y = _histogram(data[channel], edges)
            fig.add_scatter(x=x, y=y, name=name, legendgroup=name, showlegend=col == 1, row=1, col=col,
                            mode="lines", line={"color": CHANNEL_COLORS[name], "shape": "hvh", "width": 1.5},
                            hovertemplate=name + " %{x:.2f}: %{y:.1%} of pixels<extra></extra>")
    fig.add_vline(x=0, line={"color": "#999", "dash": "dot"}, row=1, col=2)
    fig.update_yaxes(tickformat=".0%", rangemode="tozero")
    fig.update_layout(height=280, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.2, "x": 0})
    return fig


def display_images(images: torch.Tensor, min_size: int = 96, max_size: int = 160) -> list[np.ndarray]:
    """uint8 images (N, 3, H, W) as HWC arrays for ``st.image``: small ones enlarged by a whole factor
    (nearest neighbour, so they stay sharp instead of blurred) to at least ``min_size`` px, large
    ones shrunk to ``max_size`` px (a grid of 512 px images would otherwise ship megabytes)."""
    if images.shape[-1] > max_size:
        images = resize_images(images, max_size)
    scale = max(1, math.ceil(min_size / max(1, images.shape[-1])))
    if scale > 1:
        images = images.repeat_interleave(scale, dim=-1).repeat_interleave(scale, dim=-2)
    return list(images.permute(0, 2, 3, 1).contiguous().numpy())


def augmented_views(image: torch.Tensor, n: int = 8, *, seed: int = 0, rotate: float = 5.0,
                    flip_p: float = 0.5, pad: int = 2) -> torch.Tensor:
    """``n`` augmented copies of one uint8 image (3, H, W) as uint8 (n, 3, H, W), reproducible with ``seed``.

    The same batched transform training uses (``vgg.data.augment_batch``); a transform is off when
    its parameter is 0.
    """
    x = to_float(image.unsqueeze(0)).expand(n, -1, -1, -1).contiguous()
    views = augment_batch(x, torch.Generator().manual_seed(seed), rotate=rotate, flip_p=flip_p, pad=pad)
    return views.mul(255).round_().clamp_(0, 255).to(torch.uint8)


def pixel_samples(images: torch.Tensor, mean: Sequence[float], std: Sequence[float], *, n: int = 256,
                  max_pixels: int = 1 << 18, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pixel values of up to ``n`` random images (fewer when large: at most about ``max_pixels`` per
    channel), per channel (3, M): in [0, 1], and normalised with ``mean`` / ``std``."""
    n = max(1, min(n, max_pixels // (images.shape[-1] * images.shape[-2])))
    pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n]
    x = to_float(images.index_select(0, pick))
    after = normalize(x, mean, std)
    return (x.transpose(0, 1).reshape(3, -1).numpy(), after.transpose(0, 1).reshape(3, -1).numpy())


def stats_table(channels: Sequence[str], columns: dict[str, Sequence[float]]) -> pd.DataFrame:
    """A small table of per-channel statistics (rows: channels; columns: the given series)."""
    return pd.DataFrame({name: [round(float(v), 4) for v in values] for name, values in columns.items()},
                        index=list(channels))
