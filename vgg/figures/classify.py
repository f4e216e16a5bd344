"""Figures of the Classify page: top-5 bars and the normalised input channel by channel."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
CHANNELS = ("red", "green", "blue")


def top_k_figure(
    top: Sequence[tuple[str, float]],
    *,
    title: str = "Top 5",
    color: str = "#4e79a7",
    unsure_below: float | None = None,
) -> go.Figure:
    """Horizontal bars of the top classes, most likely on top; a dashed line marks "unsure"."""
    names = [str(name) for name, _ in top][::-1]
    probs = [float(p) for _, p in top][::-1]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=names,
            orientation="h",
            marker_color=color,
            texttemplate="%{x:.1%}",
            textposition="outside",
            cliponaxis=False,
            hovertemplate="%{y}: %{x:.2%}<extra></extra>",
        )
    )
    if unsure_below is not None:
        fig.add_vline(x=unsure_below, line_dash="dot", line_color="#999")
    fig.update_layout(
        title=title,
        height=90 + 34 * len(names),
        margin={**MARGIN, "r": 40},
        showlegend=False,
        xaxis={"range": [0, 1.15], "tickformat": ".0%", "title": "probability"},
        yaxis={"automargin": True},
    )
    return fig


def normalised_channels_figure(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> go.Figure:
    """The normalised input (3, S, S) as one heatmap per channel on a shared diverging scale.

    0 (white) is the training images' average of that channel; blue is brighter, red darker, in
    units of the channel's standard deviation.
    """
    x = np.asarray(x, dtype=np.float32)
    limit = float(max(1.0, np.abs(x).max())) if x.size else 1.0
    titles = [f"{name}: (x − {m:.2f}) / {s:.2f}" for name, m, s in zip(CHANNELS, mean, std, strict=True)]
    fig = make_subplots(rows=1, cols=3, subplot_titles=titles, horizontal_spacing=0.04)
    for c in range(3):
        fig.add_trace(
            go.Heatmap(
                z=x[c],
                zmin=-limit,
                zmax=limit,
                zmid=0,
                colorscale="RdBu",
                showscale=c == 2,
                colorbar={"title": "std units"},
                hovertemplate=f"{CHANNELS[c]} (%{{x}}, %{{y}}): %{{z:.2f}}<extra></extra>",
            ),
            row=1,
            col=c + 1,
        )
        fig.update_xaxes(showticklabels=False, row=1, col=c + 1)
        fig.update_yaxes(
            showticklabels=False, autorange="reversed", scaleanchor=f"x{c + 1 if c else ''}", row=1, col=c + 1
        )
    fig.update_layout(height=300, margin=MARGIN)
    fig.update_annotations(font_size=12)
    return fig


def rescaled_image(x: np.ndarray) -> np.ndarray:
    """The normalised input (3, S, S) stretched back to [0, 255] as an (S, S, 3) image for viewing."""
    x = np.asarray(x, dtype=np.float32)
    low, high = float(x.min()), float(x.max())
    scaled = (x - low) / (high - low) if high > low else np.zeros_like(x)
    return np.uint8(np.clip(scaled, 0, 1).transpose(1, 2, 0) * 255 + 0.5)
