"""Figures of the Architecture page, built from the layer table and plain numbers."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pandas as pd
import plotly.graph_objects as go

STAGE_COLORS: dict[str, str] = {
    "block 1": "#4c78a8", "block 2": "#f58518", "block 3": "#54a24b", "block 4": "#b279a2",
    "block 5": "#e45756", "avgpool": "#9d9d9d", "classifier": "#72b7b2",
}
KIND_COLORS: dict[str, str] = {
    "conv": "#f2c14e", "lrn": "#8bc34a", "pool": "#e4572e", "avgpool": "#9e9e9e", "fc": "#7b5ea7",
}
AXIS_TITLES: dict[str, str] = {"params": "parameters", "macs": "multiply-adds"}
KIND_LABELS: dict[str, str] = {
    "conv": "convolution + ReLU", "lrn": "local response norm", "pool": "max-pool 2×2",
    "avgpool": "adaptive avg-pool 7×7", "fc": "fully connected",
}


def layer_bars(table: pd.DataFrame, column: str, *, log_y: bool = False, title: str = "") -> go.Figure:
    """Bars of ``column`` (``"params"`` or ``"macs"``) per layer, coloured by stage; zero rows left out."""
    rows = table[table[column] > 0]
    fig = go.Figure()
    for stage, group in rows.groupby("stage", sort=False):
        fig.add_bar(
            x=group["name"], y=group[column], name=stage, marker_color=STAGE_COLORS.get(stage),
            customdata=group[["type", "output_shape"]].to_numpy(),
            hovertemplate="%{x} · %{customdata[0]}<br>output %{customdata[1]}<br>%{y:,}<extra></extra>",
        )
    fig.update_layout(
        title=title, height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10}, bargap=0.15,
        xaxis={"categoryorder": "array", "categoryarray": list(rows["name"]), "tickangle": -60},
        yaxis={"type": "log" if log_y else "linear", "title": AXIS_TITLES.get(column, column)},
        legend={"orientation": "h", "y": 1.02, "x": 1, "xanchor": "right", "yanchor": "bottom"},
    )
    return fig


def stage_share_figure(table: pd.DataFrame) -> go.Figure:
    """Per stage, its share (%) of all parameters next to its share of all multiply-adds."""
    sums = table.groupby("stage", sort=False)[["params", "macs"]].sum()
    sums = sums[(sums["params"] > 0) | (sums["macs"] > 0)]
    shares = 100 * sums / sums.sum()
    fig = go.Figure()
    for column, label, color in (("params", "parameters", "#7b5ea7"), ("macs", "multiply-adds", "#f2c14e")):
        fig.add_bar(x=list(shares.index), y=shares[column], name=label, marker_color=color,
                    texttemplate="%{y:.1f} %", textposition="outside",
                    hovertemplate="%{x}: %{y:.2f} % of " + label + "<extra></extra>")
    fig.update_layout(barmode="group", height=320, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      yaxis={"title": "share of the whole network (%)", "range": [0, 105]},
                      legend={"orientation": "h", "y": 1.08, "x": 0})
    return fig


def conv_stack_figure(channels: int) -> go.Figure:
    """Weights of two and three stacked 3×3 convolutions vs one 5×5 / 7×7 with the same view."""
    labels = ["5×5 view", "7×7 view"]
    stacks = [d * 9 * channels ** 2 for d in (2, 3)]
    singles = [(2 * d + 1) ** 2 * channels ** 2 for d in (2, 3)]
    fig = go.Figure()
    fig.add_bar(x=labels, y=stacks, name="stack of 3×3", marker_color="#54a24b",
                hovertemplate="%{x}: %{y:,} weights<extra>stack of 3×3</extra>")
    fig.add_bar(x=labels, y=singles, name="one big kernel", marker_color="#e45756",
                hovertemplate="%{x}: %{y:,} weights<extra>one big kernel</extra>")
    fig.update_layout(barmode="group", height=280, margin={"l": 10, "r": 10, "t": 30, "b": 10},
                      yaxis={"title": "weights"}, legend={"orientation": "h", "y": 1.12, "x": 0})
    return fig


def pool_windows_figure(windows: list[tuple[int, int]], in_size: int) -> go.Figure:
    """Each output cell of an adaptive pool as a bar over the input cells it averages."""
    outputs = [f"out {i}" for i in range(len(windows))]
    fig = go.Figure(go.Bar(
        y=outputs, x=[end - start for start, end in windows], base=[start for start, _ in windows],
        orientation="h", marker_color="#4c78a8", opacity=0.8,
        text=[f"{start}…{end - 1}" for start, end in windows], textposition="inside",
        hovertemplate="%{y}: mean of input cells %{text}<extra></extra>",
    ))
    fig.update_layout(
        height=min(60 + 28 * len(windows), 640), margin={"l": 10, "r": 10, "t": 10, "b": 10},
        xaxis={"range": [0, in_size], "dtick": 1 if in_size <= 40 else None, "title": "input cell",
               "showgrid": True},
        yaxis={"autorange": "reversed"}, bargap=0.25,
    )
    return fig


@dataclass(frozen=True)
class _Box:
    kind: str  # key of KIND_COLORS
    channels: int
    size: int  # spatial height (= width) of the output; 1 for fully connected layers
    hover: str
    new_block: bool  # leave a wider gap before this box


def _boxes(table: pd.DataFrame) -> list[_Box]:
    """Collapse the layer table into the boxes of the diagram (BN and ReLU join their convolution)."""
    boxes: list[_Box] = []
    kinds = {"Conv2d": "conv", "LocalResponseNorm": "lrn", "MaxPool2d": "pool",
             "AdaptiveAvgPool2d": "avgpool", "Linear": "fc"}
    after_pool = False
    for row in table.itertuples(index=False):
        dims = [int(d) for d in row.output_shape.split("×")]
        if row.type in ("BatchNorm2d", "ReLU") and boxes and boxes[-1].kind == "conv":
            boxes[-1] = replace(boxes[-1], hover=boxes[-1].hover + f" + {row.type}")
            continue
        kind = kinds.get(row.type)
        if kind is None:
            continue
        size = dims[1] if len(dims) == 3 else 1
        label = f"{row.name} · {row.type}"
        if kind == "conv":
            label += f" {row.kernel}×{row.kernel}"
        hover = f"{label}<br>output {row.output_shape}<br>{row.params:,} parameters"
        boxes.append(_Box(kind, dims[0], size, hover, new_block=after_pool))
        after_pool = kind in ("pool", "avgpool")
    return boxes


def _shade(color: str, factor: float) -> str:
    """Lighten (factor > 1, towards white) or darken (factor < 1) a ``#rrggbb`` colour."""
    channels = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    if factor > 1:
        channels = [c + (255 - c) * (factor - 1) for c in channels]
    else:
        channels = [c * factor for c in channels]
    return "#" + "".join(f"{max(0, min(255, round(c))):02x}" for c in channels)


def block_diagram(table: pd.DataFrame, *, title: str = "") -> go.Figure:
    """The network as boxes, like the classic VGG16 figure: a box's height grows with its spatial
    size (√ scale), its thickness with its channels (log scale), its depth shows the width."""
    boxes = _boxes(table)
    max_size = max(box.size for box in boxes)
    fig = go.Figure()
    x = 0.0
    hover_x, hover_y, hover_text = [], [], []
    for box in boxes:
        x += 0.9 if box.new_block else 0.12
        if box.kind == "fc":
            height, thickness, depth = 3.6 * math.sqrt(box.channels / 4096), 0.3, 0.1
        else:
            height = max(0.25, 4.0 * math.sqrt(box.size / max_size))
            thickness = 0.22 * math.log2(max(box.channels, 32) / 16)
            if box.kind != "conv":
                thickness = 0.18
            depth = 0.35 * height
        y0, y1, x1 = -height / 2, height / 2, x + thickness
        color = KIND_COLORS[box.kind]
        top, side = y1 + depth, x1 + depth
        faces = (  # front (channels × height), top (channels × width), side (width × height)
            (f"M {x} {y0} L {x1} {y0} L {x1} {y1} L {x} {y1} Z", color),
            (f"M {x} {y1} L {x + depth} {top} L {side} {top} L {x1} {y1} Z", _shade(color, 1.35)),
            (f"M {x1} {y0} L {side} {y0 + depth} L {side} {top} L {x1} {y1} Z", _shade(color, 0.75)),
        )
        for path, fill in faces:
            fig.add_shape(type="path", path=path, fillcolor=fill, line={"color": "#333", "width": 0.6})
        hover_x.append(x + thickness / 2)
        hover_y.append(0.0)
        hover_text.append(box.hover)
        if box.kind in ("conv", "fc") and (box.new_block or box is boxes[0] or box.kind == "fc"):
            label = f"{box.size}×{box.size}×{box.channels}" if box.kind == "conv" else f"{box.channels}"
            fig.add_annotation(x=x + thickness / 2, y=-2.6, text=label, showarrow=False, textangle=-50,
                               font={"size": 10}, yanchor="top")
        x = x1
    fig.add_scatter(x=hover_x, y=hover_y, mode="markers", marker={"size": 14, "opacity": 0},
                    hovertext=hover_text, hoverinfo="text", showlegend=False)
    for kind in dict.fromkeys(box.kind for box in boxes):
        fig.add_scatter(x=[None], y=[None], mode="markers", name=KIND_LABELS[kind],
                        marker={"symbol": "square", "size": 12, "color": KIND_COLORS[kind]})
    fig.update_layout(
        title=title, height=380, margin={"l": 10, "r": 10, "t": 40, "b": 10}, plot_bgcolor="rgba(0,0,0,0)",
        xaxis={"visible": False, "range": [-0.5, x + 2.0]},
        yaxis={"visible": False, "range": [-4.2, 4.2], "scaleanchor": "x", "scaleratio": 1},
        legend={"orientation": "h", "y": -0.02, "x": 0, "yanchor": "top"},
    )
    return fig
