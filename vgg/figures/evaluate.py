"""Figures of the Evaluate page: per-class accuracy, the confusion matrix, 2-D maps of representations,
and small image helpers (enlarged images, filter grids) for ``st.image``."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from vgg.figures import add_chance

# Ten well-separated colours (Tableau 10), then plotly's defaults for more classes.
CLASS_COLORS: tuple[str, ...] = (
    "#4e79a7",
    "#f28e2b",
    "#e15759",
    "#76b7b2",
    "#59a14f",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
    "#636efa",
    "#ef553b",
    "#00cc96",
    "#ab63fa",
    "#ffa15a",
    "#19d3f3",
    "#ff6692",
    "#b6e880",
    "#ff97ff",
    "#fecb52",
)
MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}


def class_color(index: int) -> str:
    return CLASS_COLORS[index % len(CLASS_COLORS)]


def per_class_figure(table: pd.DataFrame, *, overall: float | None = None) -> go.Figure:
    """Accuracy per class (columns ``class``, ``images``, ``correct``, ``accuracy``), the overall
    accuracy and chance; their labels sit in the right margin, clear of the bars' labels."""
    fig = go.Figure(
        go.Bar(
            x=table["class"],
            y=table["accuracy"],
            marker_color=[class_color(i) for i in range(len(table))],
            customdata=table[["correct", "images"]].to_numpy(),
            texttemplate="%{y:.1%}",
            textposition="outside",
            hovertemplate="%{x}: %{y:.1%} (%{customdata[0]} of %{customdata[1]})<extra></extra>",
        )
    )
    if overall is not None and math.isfinite(overall):
        fig.add_hline(
            y=overall,
            line_dash="dash",
            line_color="#555",
            annotation_text=f"overall {overall:.1%}",
            annotation_position="right",
        )
    add_chance(fig, 1 / len(table) if len(table) else None, position="right")
    fig.update_layout(
        title="Test accuracy per class",
        height=360,
        margin={**MARGIN, "r": 100},
        showlegend=False,
        yaxis={"title": "accuracy", "range": [0, 1.12], "tickformat": ".0%"},
        xaxis={"title": None, "tickangle": -30 if len(table) > 8 else 0},
    )
    return fig


def confusion_figure(
    matrix: np.ndarray,
    classes: Sequence[str],
    *,
    normalise: bool = False,
    selected: tuple[int, int] | None = None,
) -> go.Figure:
    """The confusion matrix as a heatmap: row = true class, column = predicted class.

    ``normalise`` shows each row as shares of that class's images. An invisible marker sits on
    every cell so a click selects it (Streamlit's point selection reads scatter points);
    ``selected`` (true, predicted) is outlined.
    """
    counts = np.asarray(matrix, dtype=np.int64)
    n = len(classes)
    names = list(classes)
    totals = counts.sum(1, keepdims=True)
    shares = np.divide(counts, np.maximum(totals, 1), dtype=np.float64)
    z = shares if normalise else counts
    text = [
        [
            (f"{shares[i, j]:.0%}" if normalise else f"{counts[i, j]}") if counts[i, j] else ""
            for j in range(n)
        ]
        for i in range(n)
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            colorscale="Blues",
            text=text,
            texttemplate="%{text}" if n <= 20 else None,
            customdata=np.dstack([counts, shares]),
            xgap=1,
            ygap=1,
            colorbar={
                "title": "share" if normalise else "images",
                "tickformat": ".0%" if normalise else None,
            },
            hovertemplate="true %{y} → predicted %{x}<br>"
            "%{customdata[0]} images (%{customdata[1]:.0%} of %{y})"
            "<extra></extra>",
        )
    )
    true_index, pred_index = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    fig.add_scatter(
        x=[names[j] for j in pred_index.ravel()],
        y=[names[i] for i in true_index.ravel()],
        mode="markers",
        marker={"size": max(8, min(40, 420 // max(n, 1))), "symbol": "square", "opacity": 0.0},
        customdata=np.stack([true_index.ravel(), pred_index.ravel(), counts.ravel()], axis=1),
        hovertemplate="true %{y} → predicted %{x}: %{customdata[2]} images<br>"
        "click to see them<extra></extra>",
        showlegend=False,
        name="cells",
    )
    if selected is not None:
        i, j = selected
        fig.add_shape(
            type="rect", x0=j - 0.5, x1=j + 0.5, y0=i - 0.5, y1=i + 0.5, line={"color": "#e15759", "width": 3}
        )
    side = max(360, min(640, 60 + 42 * n))
    fig.update_layout(
        title="Confusion matrix",
        height=side,
        margin=MARGIN,
        clickmode="event+select",
        xaxis={"title": "predicted class", "side": "bottom", "tickangle": -30 if n > 8 else 0},
        yaxis={"title": "true class", "autorange": "reversed"},
    )
    return fig


def embedding_figure(
    points: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    title: str,
    axis_titles: tuple[str, str] = ("", ""),
    hover: Sequence[str] | None = None,
) -> go.Figure:
    """A 2-D scatter of representations, one trace (and colour) per true class."""
    fig = go.Figure()
    labels = np.asarray(labels)
    for index, name in enumerate(classes):
        mask = labels == index
        if not mask.any():
            continue
        fig.add_scattergl(
            x=points[mask, 0],
            y=points[mask, 1],
            mode="markers",
            name=name,
            marker={"size": 6, "color": class_color(index), "opacity": 0.8},
            text=[hover[i] for i in np.flatnonzero(mask)] if hover is not None else None,
            hovertemplate=("%{text}" if hover is not None else name) + "<extra></extra>",
        )
    fig.update_layout(
        title=title,
        height=460,
        margin=MARGIN,
        legend={"title": "true class", "itemsizing": "constant"},
        xaxis={"title": axis_titles[0], "zeroline": False},
        yaxis={"title": axis_titles[1], "zeroline": False},
    )
    return fig


def enlarge(image: np.ndarray, min_size: int = 96) -> np.ndarray:
    """An HWC (or HW) image enlarged by a whole factor (nearest neighbour: pixels stay sharp)."""
    scale = max(1, math.ceil(min_size / max(1, image.shape[0])))
    return image.repeat(scale, axis=0).repeat(scale, axis=1) if scale > 1 else image


def to_hwc(images_chw: np.ndarray) -> list[np.ndarray]:
    """uint8 (N, 3, H, W) → a list of (H, W, 3)."""
    return [np.ascontiguousarray(np.asarray(img).transpose(1, 2, 0)) for img in images_chw]


def filter_images(filters: np.ndarray, size: int = 48) -> list[np.ndarray]:
    """Filters (n, 3, k, k) in [0, 1] as RGB images of ``size`` px (each k×k weight a block)."""
    out = []
    for f in np.asarray(filters):
        rgb = np.uint8(np.clip(f.transpose(1, 2, 0), 0, 1) * 255 + 0.5)
        out.append(enlarge(rgb, size))
    return out


def gray_images(maps: np.ndarray, size: int = 64) -> list[np.ndarray]:
    """Maps (n, H, W) in [0, 1] as grayscale uint8 images of at least ``size`` px."""
    return [enlarge(np.uint8(np.clip(m, 0, 1) * 255 + 0.5), size) for m in np.asarray(maps)]
