"""Plotly figure builders: plain data (DataFrames, numbers) in, ``plotly.graph_objects.Figure`` out.

Every accuracy chart draws chance (``add_chance``): a class should see at once whether a network
learned anything at all.
"""

from __future__ import annotations

import plotly.graph_objects as go

CHANCE_COLOR = "#888"


def add_chance(fig: go.Figure, chance: float | None, *, row: int | None = None, col: int | None = None,
               position: str = "bottom right") -> None:
    """A dotted horizontal line at ``chance`` (1 / number of classes) labelled "chance 10%", on the
    whole figure or one subplot, its label at ``position`` (plotly's annotation positions; "right"
    is outside the plot, in the right margin); nothing when ``chance`` is None."""
    if chance is None:
        return
    where = {"row": row, "col": col} if row is not None else {}
    fig.add_hline(y=chance, line_dash="dot", line_color=CHANCE_COLOR, line_width=1.5,
                  annotation_text=f"chance {chance:.0%}", annotation_position=position,
                  annotation_font={"color": CHANCE_COLOR, "size": 11}, **where)
