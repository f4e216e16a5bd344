"""Every accuracy chart draws chance; the race's two runs share one frame; labels do not collide."""

from __future__ import annotations

import pandas as pd

from vgg.figures.compare import overlay_figure, race_figure
from vgg.figures.evaluate import per_class_figure
from vgg.figures.training import epoch_curves_figure, step_curves_figure


def chance_lines(fig) -> list[float]:
    return [shape.y0 for shape in fig.layout.shapes if shape.line.dash == "dot" and shape.y0 == shape.y1]


def test_every_accuracy_chart_draws_chance() -> None:
    steps = step_curves_figure([1, 2, 3], [2.3, 2.1, 1.9], [0.1, 0.2, 0.3], [1e-4, 5e-4, 1e-3], chance=0.1)
    epochs = epoch_curves_figure([1, 2], [2.0, 1.5], [2.1, 1.8], [0.3, 0.5], [0.25, 0.4], chance=0.1)
    curves = pd.DataFrame({"run": ["a", "a"], "x": [1.0, 2.0], "y": [0.3, 0.4]})
    overlay = overlay_figure(curves, x_title="images seen", y_title="validation accuracy", percent=True, chance=0.25)
    lane = pd.DataFrame({"x": [10.0, 20.0], "y": [0.3, 0.5]})
    race = race_figure([("from scratch", "scratch", lane, lane)], chance=0.25)
    table = pd.DataFrame({"class": list("abcd"), "images": [10] * 4, "correct": [3, 5, 9, 1],
                          "accuracy": [0.3, 0.5, 0.9, 0.1]})
    per_class = per_class_figure(table, overall=0.45)
    assert chance_lines(steps) == [0.1] and chance_lines(epochs) == [0.1]
    assert chance_lines(overlay) == [0.25] and chance_lines(race) == [0.25, 0.25]
    assert chance_lines(per_class) == [0.25]
    assert any(a.text == "chance 10%" for a in steps.layout.annotations)


def test_the_overall_label_sits_right_of_the_bars_and_the_epoch_legend_below_the_titles() -> None:
    table = pd.DataFrame({"class": list("abcd"), "images": [10] * 4, "correct": [3, 5, 9, 1],
                          "accuracy": [0.3, 0.5, 0.9, 0.1]})
    fig = per_class_figure(table, overall=0.45)
    (overall,) = [a for a in fig.layout.annotations if a.text.startswith("overall")]
    assert overall.x == 1 and overall.xanchor == "left" and fig.layout.margin.r >= 80  # in the right margin
    assert overall.text == "overall 45.0%" and fig.data[0].texttemplate == "%{y:.1%}"
    epochs = epoch_curves_figure([1, 2], [2.0, 1.5], [2.1, 1.8], [0.3, 0.5], [0.25, 0.4])
    assert epochs.layout.legend.y < 0  # under the plots, not on the "accuracy per epoch" title


def test_the_race_shares_one_frame_that_covers_both_runs() -> None:
    short = pd.DataFrame({"x": [10.0, 400.0], "y": [0.3, 0.5]})
    longer = pd.DataFrame({"x": [10.0, 1200.0], "y": [0.4, 0.6]})
    fig = race_figure([("from scratch", "scratch", short, short), ("from run x", "pretrained", longer, longer)])
    assert fig.layout.xaxis.range[1] >= 1200 and tuple(fig.layout.xaxis.range) == tuple(fig.layout.xaxis2.range)
    planned = race_figure([("from scratch", "scratch", short, short)], x_max=3000)
    assert planned.layout.xaxis.range[1] >= 3000  # the frame the runs grow into
    runs = pd.DataFrame({"run": ["a", "a", "b", "b"], "x": [1.0, 2.0, 1.0, 5.0], "y": [1.0, 0.9, 1.2, 0.8]})
    loss = overlay_figure(runs, x_title="seconds", y_title="training loss")
    assert loss.layout.xaxis.range[1] >= 5.0
