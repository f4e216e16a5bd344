"""Figures of the Compare page: runs' curves overlaid, and the live race of two runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from vgg.figures import add_chance

# One colour per run, in the order the runs are given (plotly's default palette, darker first).
RUN_COLORS: tuple[str, ...] = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)
RACE_COLORS: dict[str, str] = {"scratch": "#7f7f7f", "pretrained": "#ff7f0e"}
MARKERS_BELOW = 30  # curves with fewer points show their markers (per-epoch curves)


def run_color(i: int) -> str:
    return RUN_COLORS[i % len(RUN_COLORS)]


def _mode(n: int) -> str:
    return "lines+markers" if n < MARKERS_BELOW else "lines"


def overlay_figure(curves: pd.DataFrame, *, x_title: str, y_title: str, title: str = "",
                   percent: bool = False, labels: Mapping[str, str] | None = None,
                   chance: float | None = None) -> go.Figure:
    """One line per run of a long table (columns run, x, y), in the order the runs first appear.

    ``percent`` formats the y axis as a percentage (values in 0..1); ``labels`` maps a run id to
    the legend text (default: the run id); ``chance`` draws the accuracy of guessing.
    """
    fig = go.Figure()
    y_format = ".1%" if percent else ".3f"
    for i, (run, group) in enumerate(curves.groupby("run", sort=False)):
        name = (labels or {}).get(str(run), str(run))
        fig.add_scatter(
            x=group["x"], y=group["y"], name=name, mode=_mode(len(group)),
            line={"color": run_color(i), "width": 2},
            hovertemplate=f"{name}<br>{x_title} %{{x:,.0f}}<br>{y_title} %{{y:{y_format}}}<extra></extra>",
        )
    fig.update_layout(
        title=title, height=360, margin={"l": 10, "r": 10, "t": 40 if title else 20, "b": 10},
        xaxis={"title": x_title, "rangemode": "tozero"},
        yaxis={"title": y_title, "tickformat": ".0%" if percent else None, "rangemode": "tozero"},
        legend={"orientation": "h", "y": -0.25, "x": 0},
    )
    add_chance(fig, chance)
    if len(curves):  # every run's line inside the frame, whatever the figure showed before
        fig.update_xaxes(range=[0, float(curves["x"].max()) * 1.02], autorange=False)
    if not len(curves):
        fig.add_annotation(text="no points yet", showarrow=False, x=0.5, y=0.5, xref="paper", yref="paper")
    return fig


def race_figure(lanes: Sequence[tuple[str, str, pd.DataFrame, pd.DataFrame]], *,
                x_title: str = "images seen", chance: float | None = None,
                x_max: float | None = None) -> go.Figure:
    """The race, side by side: training accuracy per batch (smoothed) and validation accuracy per epoch.

    ``lanes``: (name, role, training curve, validation curve), role "scratch" or "pretrained"
    (sets the colour), each curve with columns x, y and accuracies in 0..1. Both panels share one x
    axis from 0 to ``x_max`` (the images each run will see), so the runs grow into the same frame.
    """
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.08, subplot_titles=(
        "training accuracy (smoothed, per batch)", "validation accuracy (per epoch)"))
    for i, (name, role, train, val) in enumerate(lanes):
        line = {"color": RACE_COLORS.get(role, run_color(i)), "width": 2,
                "dash": "dot" if role == "scratch" else "solid"}
        for col, curve in ((1, train), (2, val)):
            fig.add_scatter(
                x=curve["x"], y=curve["y"], name=name, legendgroup=name, showlegend=col == 1, row=1, col=col,
                mode=_mode(len(curve)), line=line,
                hovertemplate=f"{name}<br>{x_title} %{{x:,.0f}}<br>accuracy %{{y:.1%}}<extra></extra>",
            )
    fig.update_yaxes(range=[0, 1.02], tickformat=".0%")
    for col in (1, 2):
        add_chance(fig, chance, row=1, col=col)
    longest = max([float(c["x"].max()) for _, _, t, v in lanes for c in (t, v) if len(c)] + [x_max or 0.0])
    fig.update_xaxes(title=x_title, range=[0, longest * 1.02] if longest else None, matches="x")
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10},
                      legend={"orientation": "h", "y": -0.3, "x": 0})
    return fig
