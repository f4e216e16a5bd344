"""Figures of the LR finder and Train pages: plain numbers in, plotly figures out.

The live pages rebuild these only when a job's snapshot changed, so each builder is a pure
function of lists of floats (no torch, no streamlit).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from PIL import Image
from plotly.subplots import make_subplots

from vgg.compare import ema
from vgg.events import EpochEvent, StepEvent
from vgg.figures import add_chance

RAW_COLOR = "rgba(76, 120, 168, 0.35)"
SMOOTH_COLOR = "#4c78a8"
TRAIN_COLOR = "#4c78a8"
VAL_COLOR = "#f58518"
LR_COLOR = "#54a24b"
MARK_COLORS: dict[str, str] = {"recommended": "#1a7f37", "steepest": "#e45756", "valley": "#54a24b",
                               "min_div10": "#b279a2"}
MARK_SYMBOLS: dict[str, str] = {"recommended": "circle", "steepest": "diamond", "valley": "star",
                                "min_div10": "triangle-down"}
MARK_TEXT: dict[str, str] = {"recommended": "top center", "steepest": "top right", "valley": "top left",
                             "min_div10": "bottom right"}
MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
LEGEND = {"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"}


def _finite(values: Sequence[float]) -> list[float]:
    return [v for v in values if math.isfinite(v)]


def lr_finder_figure(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    *,
    marks: Sequence[tuple[str, float, float]] = (),
    lr_range: tuple[float, float] | None = None,
    skip_start: int = 0,
    skip_end: int = 0,
    title: str = "Loss against learning rate",
) -> go.Figure:
    """The range test's curve: raw batch losses (faint) and the smoothed loss, log-scale lr.

    ``marks`` are ``(rule, lr, loss)`` suggestions drawn as labelled markers; ``lr_range`` fixes the
    x axis (start_lr, end_lr) so a growing curve fills it left to right; the points the suggestions
    skipped (``skip_start`` first, ``skip_end`` last; pass 0 when nothing was trimmed) are shaded.
    """
    fig = go.Figure()
    fig.add_scatter(x=list(lrs), y=list(losses), mode="lines+markers", name="batch loss",
                    line={"color": RAW_COLOR, "width": 1}, marker={"size": 4, "color": RAW_COLOR},
                    hovertemplate="lr %{x:.2e}<br>loss %{y:.3f}<extra>batch</extra>")
    fig.add_scatter(x=list(lrs), y=list(smoothed), mode="lines", name="smoothed",
                    line={"color": SMOOTH_COLOR, "width": 3},
                    hovertemplate="lr %{x:.2e}<br>smoothed %{y:.3f}<extra></extra>")
    for rule, lr, loss in marks:
        fig.add_scatter(x=[lr], y=[loss], mode="markers+text", name=rule, text=[f"{rule} {lr:.1e}"],
                        textposition=MARK_TEXT.get(rule, "top center"),
                        marker={"size": 14, "color": MARK_COLORS.get(rule, "#333"),
                                "symbol": MARK_SYMBOLS.get(rule, "circle"),
                                "line": {"width": 1, "color": "#fff"}},
                        hovertemplate=f"{rule}<br>lr %{{x:.2e}}<br>loss %{{y:.3f}}<extra></extra>")
    n = len(lrs)
    if n:
        if 0 < skip_start < n:
            fig.add_vrect(x0=lrs[0], x1=lrs[skip_start], fillcolor="#999", opacity=0.12, line_width=0,
                          annotation_text="skipped", annotation_position="top left")
        if 0 < skip_end < n:
            fig.add_vrect(x0=lrs[n - skip_end - 1], x1=lrs[-1], fillcolor="#999", opacity=0.12, line_width=0)
    xaxis: dict[str, object] = {"type": "log", "title": "learning rate (log scale)",
                                "exponentformat": "power"}
    if lr_range is not None:  # wide enough for every mark (min ÷ 10 can fall left of start_lr)
        low_lr = min([lr_range[0], *(lr / 1.5 for _, lr, _ in marks if lr > 0)])
        xaxis["range"] = [math.log10(low_lr), math.log10(lr_range[1])]
    yaxis: dict[str, object] = {"title": "loss"}
    low, high = _finite(losses), _finite(smoothed)
    if low and high:  # a diverging tail would squash the interesting part: it leaves the chart at the top
        bottom = min(min(low), min(high))
        top = min(max(max(high), max(low)), 1.5 * max(high[0], min(high)))  # half again the starting loss
        pad = 0.08 * (top - bottom or 1.0)
        yaxis["range"] = [bottom - pad, top + pad]
    fig.update_layout(title=title, height=420, margin=MARGIN, legend=LEGEND, xaxis=xaxis, yaxis=yaxis,
                      uirevision="lr-finder")
    return fig


MAX_CURVE_POINTS = 400  # a live curve shows at most this many points per trace (thinned evenly)


def thin(n: int, limit: int = MAX_CURVE_POINTS) -> list[int]:
    """Indices of at most ``limit`` evenly spread points of ``n``, always the first and the last.

    A browser draws 400 points as well as 40,000, and the page sends a hundredth of the data."""
    if n <= limit:
        return list(range(n))
    stride = (n - 1) / (limit - 1)
    return sorted({round(i * stride) for i in range(limit)})


def _vlines(xs: Sequence[float], low: float, high: float) -> tuple[list[float | None], list[float | None]]:
    """Vertical segments at ``xs`` from ``low`` to ``high`` as one trace's x and y (None breaks)."""
    x: list[float | None] = []
    y: list[float | None] = []
    for value in xs:
        x += [value, value, None]
        y += [low, high, None]
    return x, y


def step_curves_figure(
    steps: Sequence[int],
    losses: Sequence[float],
    accuracies: Sequence[float],
    lrs: Sequence[float],
    *,
    smoothing: float = 0.6,
    epoch_starts: Sequence[int] = (),
    chance: float | None = None,
) -> go.Figure:
    """Per-step training loss and accuracy (raw faint, EMA bold) and the learning rate, side by side.

    ``epoch_starts`` are the steps where a new epoch began (dotted lines). The EMA is computed on
    every step; a long run is drawn from ``MAX_CURVE_POINTS`` of them per trace. Built for a page
    that redraws it live: one trace per panel for the epoch lines (plotly's ``add_vline`` costs
    tens of milliseconds each).
    """
    fig = make_subplots(rows=1, cols=3, subplot_titles=("training loss", "training accuracy (batch)",
                                                        "learning rate"), horizontal_spacing=0.07)
    keep = np.asarray(thin(len(steps)), dtype=np.int64)

    def kept(values: Sequence[float]) -> list[float]:
        # Plain lists: plotly would send numpy arrays base64-encoded, which the page's chart keeps
        # undecoded in its data (and the browser tests read the points from there).
        return np.asarray(values, dtype=float)[keep].tolist() if len(keep) else []

    x = kept(steps)
    panels = ((1, losses, "loss"), (2, accuracies, "accuracy"), (3, lrs, "lr"))
    for col, values, name in panels[:2]:
        fig.add_scatter(x=x, y=kept(values), mode="lines", name=f"{name} per step",
                        showlegend=False, line={"color": RAW_COLOR, "width": 1}, row=1, col=col)
        fig.add_scatter(x=x, y=kept(ema(values, smoothing)), mode="lines", name=f"{name} (smoothed)",
                        showlegend=False, line={"color": SMOOTH_COLOR, "width": 2.5}, row=1, col=col)
    if epoch_starts:
        for col, values, _ in panels:
            finite = _finite(values)
            low, high = (0.0, 1.0) if col == 2 or not finite else (min(finite), max(finite))
            lx, ly = _vlines(epoch_starts, low, high)
            fig.add_scatter(x=lx, y=ly, mode="lines", name="new epoch", showlegend=False, hoverinfo="skip",
                            line={"dash": "dot", "color": "#aaa", "width": 1}, row=1, col=col)
    fig.add_scatter(x=x, y=kept(lrs), mode="lines", name="lr", showlegend=False,
                    line={"color": LR_COLOR, "width": 2}, row=1, col=3)
    fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=2)
    add_chance(fig, chance, row=1, col=2)
    fig.update_yaxes(exponentformat="e", row=1, col=3)
    fig.update_xaxes(title_text="step", dtick=1 if len(x) <= 10 else None)  # no "step 1.5"
    fig.update_layout(height=300, margin=MARGIN, uirevision="steps")
    return fig


def epoch_curves_figure(
    epochs: Sequence[int],
    train_loss: Sequence[float],
    val_loss: Sequence[float],
    train_accuracy: Sequence[float],
    val_accuracy: Sequence[float],
    *,
    chance: float | None = None,
) -> go.Figure:
    """Per-epoch training against validation: loss (left) and accuracy (right), the legend below."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss per epoch", "accuracy per epoch"),
                        horizontal_spacing=0.08)
    x = list(epochs)
    for col, train, val in ((1, train_loss, val_loss), (2, train_accuracy, val_accuracy)):
        fig.add_scatter(x=x, y=list(train), mode="lines+markers", name="training", legendgroup="train",
                        showlegend=col == 1, line={"color": TRAIN_COLOR}, row=1, col=col)
        fig.add_scatter(x=x, y=list(val), mode="lines+markers", name="validation", legendgroup="val",
                        showlegend=col == 1, line={"color": VAL_COLOR}, row=1, col=col)
    fig.update_xaxes(title_text="epoch", dtick=1)
    fig.update_yaxes(tickformat=".0%", range=[0, 1], row=1, col=2)
    add_chance(fig, chance, row=1, col=2)
    fig.update_layout(height=320, margin={**MARGIN, "b": 40}, uirevision="epochs",
                      legend={"orientation": "h", "y": -0.3, "x": 0.5, "xanchor": "center"})
    return fig


def lr_schedule_figure(
    progress: Sequence[float],
    onecycle: Sequence[float],
    *,
    constant: float | None = None,
    marker: float | None = None,
    title: str = "Learning rate over the run",
) -> go.Figure:
    """One-cycle learning rate against the fraction of the run, with a constant lr for comparison."""
    fig = go.Figure()
    x = [100.0 * p for p in progress]
    fig.add_scatter(x=x, y=list(onecycle), mode="lines", name="one-cycle",
                    line={"color": LR_COLOR, "width": 3},
                    hovertemplate="%{x:.0f} % of the run<br>lr %{y:.2e}<extra>one-cycle</extra>")
    if constant is not None:
        fig.add_scatter(x=[x[0], x[-1]], y=[constant, constant], mode="lines", name="constant",
                        line={"color": "#888", "dash": "dash", "width": 2})
    if marker is not None and progress:
        i = min(range(len(progress)), key=lambda j: abs(progress[j] - marker))
        fig.add_scatter(x=[x[i]], y=[onecycle[i]], mode="markers+text", name="now",
                        text=[f"{onecycle[i]:.1e}"], textposition="top right",
                        marker={"size": 12, "color": "#e45756"})
    fig.update_layout(title=title, height=320, margin=MARGIN, legend=LEGEND,
                      xaxis={"title": "% of the run", "range": [0, 100]},
                      yaxis={"title": "learning rate", "exponentformat": "e", "rangemode": "tozero"})
    return fig


def range_test_schedule_figure(lrs: Sequence[float]) -> go.Figure:
    """The learning rate of each iteration of a range test (geometric, so a line on a log axis)."""
    fig = go.Figure()
    fig.add_scatter(x=list(range(len(lrs))), y=list(lrs), mode="lines+markers", marker={"size": 4},
                    line={"color": LR_COLOR}, hovertemplate="iteration %{x}<br>lr %{y:.2e}<extra></extra>")
    fig.update_layout(title="Learning rate of each batch in the range test", height=280, margin=MARGIN,
                      xaxis={"title": "iteration"},
                      yaxis={"title": "learning rate (log scale)", "type": "log", "exponentformat": "power"})
    return fig


def prediction_grid(images: np.ndarray, samples: Sequence[Any], classes: Sequence[str], *,
                    size: int = 64) -> tuple[list[bytes], list[str]]:
    """Validation pictures framed green (right) or red (wrong), as PNGs, with captions.

    ``images`` are the samples' uint8 pictures (N, 3, H, W); ``samples`` their ``SamplePrediction``s
    (true class, predicted class, confidence), in the same order.
    """
    pictures: list[bytes] = []
    captions: list[str] = []
    for image, s in zip(images, samples, strict=True):
        img = image.transpose(1, 2, 0)  # (H, W, 3)
        img = img.repeat(max(1, size // img.shape[0]), 0).repeat(max(1, size // img.shape[1]), 1)
        ok = s.true == s.predicted
        framed = np.empty((img.shape[0] + 8, img.shape[1] + 8, 3), dtype=np.uint8)
        framed[:] = (40, 160, 60) if ok else (210, 40, 40)
        framed[4:-4, 4:-4] = img
        buffer = io.BytesIO()
        Image.fromarray(framed).save(buffer, format="PNG")
        pictures.append(buffer.getvalue())
        true, pred = classes[s.true], classes[s.predicted]
        captions.append(f"✓ {pred} {s.confidence:.0%}" if ok else f"✗ {pred} {s.confidence:.0%} (is {true})")
    return pictures, captions


def training_figures(history: Sequence[Any], smoothing: float, *,
                     chance: float | None = None) -> tuple[go.Figure, go.Figure]:
    """The Train page's two figures from a training job's history (its StepEvents and EpochEvents):
    the per-step curves with the epochs' starts, and training against validation per epoch."""
    steps = [e for e in history if isinstance(e, StepEvent)]
    epochs = [e for e in history if isinstance(e, EpochEvent)]
    starts = [s.step for prev, s in zip(steps, steps[1:], strict=False) if s.epoch != prev.epoch]
    step_fig = step_curves_figure([s.step for s in steps], [s.loss for s in steps], [s.accuracy for s in steps],
                                  [s.lr for s in steps], smoothing=smoothing, epoch_starts=starts, chance=chance)
    epoch_fig = epoch_curves_figure([e.epoch for e in epochs], [e.train_loss for e in epochs],
                                    [e.val_loss for e in epochs], [e.train_accuracy for e in epochs],
                                    [e.val_accuracy for e in epochs], chance=chance)
    return step_fig, epoch_fig
