"""What the Train page tells a class around a run: what to expect before it, what to do after it.

Before: how long (``vgg.cost``) and roughly what it will reach, from the runs of the same kind that
this server has already finished (same data set, input size, model, start and images seen), with
chance as the floor. After: whether more time would help, read from the epochs' curves:

- training accuracy close to validation accuracy means the network is not memorising yet: more
  epochs should raise both;
- training accuracy far above validation accuracy, or validation falling, means it memorises the
  training images: more epochs will not help, more images (or augmentation) would.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from vgg.events import EpochEvent
from vgg.runs import RunInfo

CLOSE = 0.05  # training and validation accuracy this close: not memorising yet
FAR = 0.15  # this far apart: memorising
STILL_RISING = 0.01  # validation accuracy gained at least this in the last epoch


@dataclass(frozen=True)
class Expectation:
    """Roughly what a run will reach, from earlier runs like it."""

    test_accuracy: float  # the median of theirs
    runs: int  # how many
    chance: float


def same_kind(config: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Whether two runs' config.json describe the same training up to the learning rate and seed."""
    keys = ("config", "batch_norm", "freeze", "optimizer", "epochs")
    data_keys = ("source", "input_size", "images_per_class", "classes")
    a, b = config.get("data") or {}, other.get("data") or {}
    start = str(config.get("init", "")).split(":")[0], str(other.get("init", "")).split(":")[0]
    return (all(config.get(k) == other.get(k) for k in keys) and start[0] == start[1]
            and all(a.get(k) == b.get(k) for k in data_keys))


def expected_outcome(config: Mapping[str, Any], runs: Sequence[RunInfo], num_classes: int) -> Expectation | None:
    """The median test accuracy of the finished runs of the same kind as ``config`` (a
    ``TrainConfig.to_dict()``), or None when there is none yet."""
    accuracies = [info.summary["test_accuracy"] for info in runs
                  if info.status == "done" and isinstance(info.summary.get("test_accuracy"), (int, float))
                  and same_kind(config, info.config)]
    if not accuracies:
        return None
    return Expectation(statistics.median(accuracies), len(accuracies), 1 / max(num_classes, 1))


@dataclass(frozen=True)
class Verdict:
    """Whether more time would help a finished run, in a sentence for the class."""

    more_time_helps: bool
    text: str


def more_time(epochs: Sequence[EpochEvent]) -> Verdict | None:
    """Read the last epochs: would more epochs raise the validation accuracy? None without epochs."""
    if not epochs:
        return None
    last = epochs[-1]
    gap = last.train_accuracy - last.val_accuracy
    rising = len(epochs) == 1 or last.val_accuracy - epochs[-2].val_accuracy >= STILL_RISING
    falling = len(epochs) > 1 and last.val_accuracy < max(e.val_accuracy for e in epochs[:-1]) - STILL_RISING
    if gap > FAR:
        return Verdict(False, f"More epochs would not help: training accuracy ({last.train_accuracy:.1%}) is "
                              f"well above validation accuracy ({last.val_accuracy:.1%}), so the network has "
                              "started to memorise its training images. More images (or augmentation) would help.")
    if falling:
        best = max(epochs[:-1], key=lambda e: e.val_accuracy)
        return Verdict(False, f"More epochs would not help: validation accuracy fell from {best.val_accuracy:.1%} "
                              f"(epoch {best.epoch}) to {last.val_accuracy:.1%}. The run keeps its best epoch's "
                              "weights; more images would help more than more epochs.")
    if gap < CLOSE and rising:
        return Verdict(True, f"More time would help: training ({last.train_accuracy:.1%}) and validation "
                             f"({last.val_accuracy:.1%}) accuracy are close and validation still rose, so the "
                             "network is not memorising yet. More epochs (or more images) should raise both.")
    return Verdict(True, "More time would help a little: validation accuracy is flattening out "
                         f"({last.val_accuracy:.1%}); a few more epochs may add a few points.")
