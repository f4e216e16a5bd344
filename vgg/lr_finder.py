"""LR range test (Smith 2015; fastai's ``lr_find``, torch-lr-finder's ``range_test``).

Train for up to ``num_iter`` batches while the learning rate grows exponentially from
``start_lr`` to ``end_lr``, record the loss, smooth it, stop when it diverges, then put model and
optimizer back exactly as they were. The suggestions are pure functions of the recorded curve.

Conventions taken from torch-lr-finder (``torch_lr_finder/lr_finder.py``):

- schedule: ``lr_i = start_lr * (end_lr / start_lr) ** (i / (num_iter - 1))`` for
  ``i = 0 .. num_iter-1`` (its ``ExponentialLR`` with ``r = last_epoch / (num_iter - 1)``), so the
  first batch runs at ``start_lr`` and the last at ``end_lr``; the recorded lr is the one the batch
  was trained with;
- smoothing: ``s_0 = loss_0``, ``s_i = smooth_f * loss_i + (1 - smooth_f) * s_{i-1}``
  (``smooth_f = 0`` disables it);
- divergence: stop once ``s_i > diverge_th * min(s_0 .. s_i)``; the diverged point is recorded.

Suggestions return ``None`` when fewer than ``MIN_POINTS`` finite points are left; callers show
"not enough points".
"""

from __future__ import annotations

import copy
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from vgg.augment import iterate_batches
from vgg.data import load_data
from vgg.errors import ConfigError, DataUnavailableError
from vgg.events import StatusEvent
from vgg.finetune import prepare_model
from vgg.settings import flush_denormals
from vgg.speedups import switch as speedups
from vgg.train import start_training, train_step

if TYPE_CHECKING:
    from vgg.data import DataSplits
    from vgg.train import TrainConfig

MIN_POINTS = 3  # fewer usable points than this and a suggestion is None
MAX_END_LR = 100.0  # a range test may go past the lr of 10 accepted elsewhere
RULES = ("steepest", "valley", "min_div10")


@dataclass(frozen=True)
class LRFinderConfig:
    """Settings of the LR range test (defaults: the notebook's, i.e. torch-lr-finder's)."""

    start_lr: float = 1e-7  # lr of the first batch
    end_lr: float = 10.0  # lr of the last batch (at most 100)
    num_iter: int = 100  # batches, 2 .. 10000
    smooth_f: float = 0.05  # weight of the newest loss in the moving average, 0 <= f < 1
    diverge_th: float = 5.0  # stop once smoothed loss > diverge_th × best smoothed loss
    skip_start: int = 10  # points left out at the start when suggesting (as the notebook's plot)
    skip_end: int = 5  # points left out at the end when suggesting

    def __post_init__(self) -> None:
        if not _is_number(self.start_lr) or not 0 < self.start_lr < MAX_END_LR:
            raise ConfigError(f"start_lr must be a number > 0 and < {MAX_END_LR:g}, got {self.start_lr!r}")
        if not _is_number(self.end_lr) or not self.start_lr < self.end_lr <= MAX_END_LR:
            raise ConfigError(
                f"end_lr must be > start_lr ({self.start_lr:g}) and <= {MAX_END_LR:g}, got {self.end_lr!r}"
            )
        if not _is_int(self.num_iter) or not 2 <= self.num_iter <= 10_000:
            raise ConfigError(f"num_iter must be an integer from 2 to 10000, got {self.num_iter!r}")
        _check_smooth_f(self.smooth_f)
        if not _is_number(self.diverge_th) or not self.diverge_th > 1:
            raise ConfigError(f"diverge_th must be a number > 1, got {self.diverge_th!r}")
        _check_skips(self.skip_start, self.skip_end)


@dataclass(frozen=True)
class Suggestion:
    """A suggested lr; ``index`` is the nearest recorded point of the untrimmed curve."""

    lr: float
    index: int
    rule: str  # one of RULES
    explanation: str  # one sentence for the page


@dataclass(frozen=True)
class LRFinderStep:
    """One iteration of the range test, passed to ``on_step``."""

    iteration: int  # 0-based
    lr: float  # lr of the largest parameter group
    loss: float
    smoothed: float


@dataclass(frozen=True)
class LRFinderResult:
    """Recorded curve and suggestions; ``lrs[i]`` is the lr batch ``i`` was trained with."""

    lrs: tuple[float, ...]
    losses: tuple[float, ...]  # raw batch losses
    smoothed: tuple[float, ...]
    suggestions: dict[str, Suggestion | None] = field(default_factory=dict)  # rule -> suggestion
    recommended: Suggestion | None = None  # the one LR the app recommends (``recommend``)
    restored: bool = False  # model and optimizer state were put back
    stopped_early: bool = False  # diverged (or a non-finite loss) before num_iter
    cancelled: bool = False
    seconds: float = 0.0


# --- pure functions --------------------------------------------------------------------------


def lr_schedule(cfg: LRFinderConfig) -> list[float]:
    """The ``cfg.num_iter`` learning rates, geometric from ``start_lr`` to ``end_lr`` inclusive."""
    ratio = cfg.end_lr / cfg.start_lr
    n = cfg.num_iter - 1
    return [cfg.start_lr * ratio ** (i / n) for i in range(cfg.num_iter)]


def smooth(losses: Sequence[float], smooth_f: float) -> list[float]:
    """Exponential moving average as torch-lr-finder's (first point unsmoothed).

    A non-finite loss is passed through as is and does not enter the average, so one NaN does
    not poison the rest of the curve. ``smooth_f = 0`` returns the losses unchanged.
    """
    _check_smooth_f(smooth_f)
    out: list[float] = []
    prev: float | None = None
    for loss in map(float, losses):
        if not math.isfinite(loss):
            out.append(loss)
            continue
        prev = loss if prev is None or smooth_f == 0 else smooth_f * loss + (1 - smooth_f) * prev
        out.append(prev)
    return out


def suggest_steepest(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int = 10, skip_end: int = 5
) -> Suggestion | None:
    """torch-lr-finder's rule: the point where the (smoothed) loss falls fastest.

    ``argmin(np.gradient(losses))`` on the trimmed curve, with log(lr) as the coordinate: for
    a geometric schedule that is torch-lr-finder's index exactly (constant spacing), and it stays
    right where non-finite points were dropped.
    """
    pts = _usable(lrs, losses, skip_start, skip_end)
    if pts is None:
        return None
    idx, x, y, note = pts
    log_x = np.log(x)
    grad = np.gradient(y, log_x) if np.all(np.diff(log_x) > 0) else np.gradient(y)
    i = int(np.argmin(grad))
    lr = float(x[i])
    return Suggestion(
        lr, int(idx[i]), "steepest",
        f"The loss falls fastest at lr {lr:.2e} (steepest slope, torch-lr-finder's rule){note}.",
    )


def suggest_valley(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int = 10, skip_end: int = 5
) -> Suggestion | None:
    """fastai's default (``valley``): a point in the middle of the longest valley.

    As fastai: ``lds[i]`` is the length of the longest strictly decreasing run of losses (not
    necessarily contiguous) ending at ``i``; ``max_end`` is the first index with the largest
    ``lds``, ``max_start = max_end - lds[max_end]``, ``sections = (max_end - max_start) / 3`` and the
    pick is ``max_start + int(sections) + int(sections / 2)``. Only change: fastai's pick can be
    -1 on tiny curves (it then wraps to the last point); here it is clamped to the curve.
    """
    pts = _usable(lrs, losses, skip_start, skip_end)
    if pts is None:
        return None
    idx, x, y, note = pts
    n = len(y)
    lds = np.ones(n, dtype=np.int64)
    for i in range(1, n):  # fastai's O(n²) double loop, inner loop vectorised
        higher = y[:i] > y[i]
        if higher.any():
            lds[i] = lds[:i][higher].max() + 1
    max_end = int(np.argmax(lds))  # first index of the maximum, as fastai's strict "<" update
    max_start = max_end - int(lds[max_end]) if max_end > 0 else 0
    sections = (max_end - max_start) / 3
    i = min(max(max_start + int(sections) + int(sections / 2), 0), n - 1)
    lr = float(x[i])
    return Suggestion(
        lr, int(idx[i]), "valley",
        f"lr {lr:.2e} lies in the middle of the longest downhill stretch (fastai's 'valley'){note}.",
    )


def suggest_min_div10(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int = 10, skip_end: int = 5
) -> Suggestion | None:
    """fastai's ``minimum``: the lr of the lowest loss, divided by 10.

    ``index`` is the recorded point whose lr is nearest (on a log scale) to that lr, over the
    whole untrimmed curve, so a page can mark it on the curve.
    """
    pts = _usable(lrs, losses, skip_start, skip_end)
    if pts is None:
        return None
    _, x, y, note = pts
    lr_min = float(x[int(np.argmin(y))])
    lr = lr_min / 10
    dist = np.abs(np.log(np.clip(np.asarray(lrs, dtype=np.float64), 1e-300, None)) - math.log(lr))
    index = int(np.argmin(np.where(np.isfinite(dist), dist, np.inf)))
    return Suggestion(
        lr, index, "min_div10",
        f"The loss is lowest at lr {lr_min:.2e}; a tenth of it, {lr:.2e}, is a safe choice "
        f"(fastai's 'minimum'){note}.",
    )


# The recommendation never goes below the peak the default training was tested at (TrainConfig.lr).
RECOMMEND_FLOOR = 3e-4


def recommend(lrs: Sequence[float], losses: Sequence[float], skip_start: int = 10,
              skip_end: int = 5, floor: float | None = RECOMMEND_FLOOR) -> Suggestion | None:
    """The one learning rate the app recommends as the peak of a one-cycle training: the lr where
    the smoothed loss is lowest, but not below ``floor`` (the default training's peak).

    Checked against real trainings (``bench/lr_advice.py``: seven setups of the app, each with a
    sweep of learning rates on the default training's schedule). Where the lowest point lies
    above the floor (SGD, transfer from an earlier run) it trained as well as the sweep's best.
    From scratch with Adam the range test's dip ends early, at about 7e-5, while trainings did
    best at 3e-4: 100 batches are too few to show how high a one-cycle training can go. The
    classic rules (``suggest_all``) often point far lower, or from scratch into the blow-up.
    """
    pts = _usable(lrs, losses, skip_start, skip_end)
    if pts is None:
        return None
    idx, x, y, note = pts
    i = int(np.argmin(y))
    lowest = float(x[i])
    if floor is None or lowest >= floor:
        return Suggestion(
            lowest, int(idx[i]), "recommended",
            f"The smoothed loss is lowest at lr {lowest:.2e}: the recommended peak learning rate for the "
            f"one-cycle schedule{note}.",
        )
    dist = np.abs(np.log(np.clip(np.asarray(lrs, dtype=np.float64), 1e-300, None)) - math.log(floor))
    index = int(np.argmin(np.where(np.isfinite(dist), dist, np.inf)))  # the curve's point nearest to it
    return Suggestion(
        floor, index, "recommended",
        f"The smoothed loss is lowest at lr {lowest:.2e}, below {floor:.0e}, the peak the default training "
        f"was tested at: a short range test ends its dip early, and trainings from scratch did best at "
        f"{floor:.0e}. Recommended: {floor:.2e}{note}.",
    )


def suggest_all(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int = 10, skip_end: int = 5
) -> dict[str, Suggestion | None]:
    """All three rules, keyed ``"steepest"``, ``"valley"``, ``"min_div10"``."""
    rules = (suggest_steepest, suggest_valley, suggest_min_div10)
    return {name: rule(lrs, losses, skip_start, skip_end) for name, rule in zip(RULES, rules, strict=True)}


# --- the range test --------------------------------------------------------------------------

Batch = tuple[torch.Tensor, torch.Tensor]  # (x, y)
Batches = Iterable[Batch] | Callable[[], Iterator[Batch]]


def find_lr(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Batches,
    cfg: LRFinderConfig,
    *,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    device: torch.device | str | None = None,
    on_step: Callable[[LRFinderStep], None] | None = None,
    cancel: threading.Event | None = None,
    step_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], float] | None = None,
) -> LRFinderResult:
    """Run the LR range test and restore model and optimizer exactly afterwards.

    Args:
        batches: (x, y) pairs: an iterable (re-iterated when it runs out before ``num_iter``), a
            one-shot iterator (replayed from memory) or a callable returning a fresh iterator.
        loss_fn: ``loss_fn(logits, y)`` for the default step (zero_grad, forward, backward, step).
        device: where batches go; default the device of the model's first parameter (the model
            itself is not moved).
        on_step: called after every iteration with an ``LRFinderStep``.
        cancel: checked before every batch; when set the test stops with ``cancelled=True``.
        step_fn: ``step_fn(model, x, y) -> loss`` doing a whole training step with ``optimizer``
            (e.g. the trainer's autocast / channels_last step); replaces ``loss_fn``.

    Parameter groups keep their lr ratios: each group runs at ``lr × its lr / largest group lr``
    (e.g. features at 0.1 × the classifier's); the recorded lr is the largest group's. Model
    weights and buffers, gradients, train/eval modes and the optimizer state (incl. its lrs) are
    restored in a ``finally``, also when cancelled or when a step raises (the error is re-raised).
    """
    if step_fn is None and loss_fn is None:
        raise ConfigError("find_lr needs loss_fn or step_fn, got neither")
    params = list(model.parameters())
    if device is None:
        device = params[0].device if params else torch.device("cpu")
    device = torch.device(device)
    group_lrs = [float(g["lr"]) for g in optimizer.param_groups]
    top = max(group_lrs, default=0.0)
    ratios = [lr / top if top > 0 else 1.0 for lr in group_lrs]

    # Deep copies: state_dict() tensors share storage with the live parameters and Adam state.
    saved_model = copy.deepcopy(model.state_dict())
    saved_optim = copy.deepcopy(optimizer.state_dict())
    saved_grads = [None if p.grad is None else p.grad.detach().clone() for p in params]
    saved_modes = [m.training for m in model.modules()]

    lrs: list[float] = []
    losses: list[float] = []
    smoothed: list[float] = []
    stopped_early = cancelled = False
    started = time.perf_counter()
    try:
        model.train()
        data = _batch_stream(batches)
        best = math.inf
        for i, lr in enumerate(lr_schedule(cfg)):
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
            x, y = next(data)[:2]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            for group, ratio in zip(optimizer.param_groups, ratios, strict=True):
                group["lr"] = lr * ratio
            if step_fn is not None:
                loss = float(step_fn(model, x, y))
            else:
                loss = _train_step(model, optimizer, loss_fn, x, y)
            if not math.isfinite(loss) or not smoothed or cfg.smooth_f == 0:
                s = loss
            else:
                s = cfg.smooth_f * loss + (1 - cfg.smooth_f) * smoothed[-1]
            lrs.append(lr)
            losses.append(loss)
            smoothed.append(s)
            best = min(best, s)
            if on_step is not None:
                on_step(LRFinderStep(i, lr, loss, s))
            if not math.isfinite(s) or s > cfg.diverge_th * best:
                stopped_early = True
                break
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optim)
        for p, g in zip(params, saved_grads, strict=True):
            p.grad = g
        for m, mode in zip(model.modules(), saved_modes, strict=True):
            m.training = mode
    return LRFinderResult(
        lrs=tuple(lrs),
        losses=tuple(losses),
        smoothed=tuple(smoothed),
        suggestions=suggest_all(lrs, smoothed, cfg.skip_start, cfg.skip_end),
        recommended=recommend(lrs, smoothed, cfg.skip_start, cfg.skip_end),
        restored=True,
        stopped_early=stopped_early,
        cancelled=cancelled,
        seconds=time.perf_counter() - started,
    )


# --- helpers ---------------------------------------------------------------------------------


def _train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None,
    x: torch.Tensor,
    y: torch.Tensor,
) -> float:
    assert loss_fn is not None
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.item()


def _batch_stream(batches: Batches) -> Iterator[Sequence[torch.Tensor]]:
    """Endless stream of batches: re-iterate iterables, call callables, replay one-shot iterators."""
    if callable(batches) and not hasattr(batches, "__iter__"):
        fresh: Callable[[], Iterator] = batches
    elif iter(batches) is batches:  # one-shot iterator: itertools.cycle keeps and replays it
        cycled = itertools.cycle(batches)
        fresh = lambda: cycled  # noqa: E731
    else:
        fresh = lambda: iter(batches)  # noqa: E731
    while True:
        empty = True
        for batch in fresh():
            empty = False
            yield batch
        if empty:
            raise DataUnavailableError("the LR range test got no batches; the training set is empty")


def _usable(
    lrs: Sequence[float], losses: Sequence[float], skip_start: int, skip_end: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, str] | None:
    """(original indices, lrs, losses, note) of the finite points of the trimmed curve.

    When trimming leaves fewer than ``MIN_POINTS`` finite points (a test that diverged early),
    the whole curve is used and ``note`` says so; None when even that is too short.
    """
    _check_skips(skip_start, skip_end)
    x = np.asarray(lrs, dtype=np.float64).reshape(-1)
    y = np.asarray(losses, dtype=np.float64).reshape(-1)
    if len(x) != len(y):
        raise ConfigError(f"lrs and losses must have the same length, got {len(x)} and {len(y)}")
    ok = np.isfinite(x) & (x > 0) & np.isfinite(y)
    keep = np.zeros(len(x), dtype=bool)
    keep[skip_start : len(x) - skip_end] = True
    note = ""
    if np.count_nonzero(ok & keep) < MIN_POINTS:
        keep[:], note = True, "; the curve was too short to trim, so all points were used"
    idx = np.flatnonzero(ok & keep)
    if len(idx) < MIN_POINTS:
        return None
    return idx, x[idx], y[idx], note


def _check_smooth_f(smooth_f: float) -> None:
    if not _is_number(smooth_f) or not 0 <= smooth_f < 1:
        raise ConfigError(f"smooth_f must be a number with 0 <= smooth_f < 1, got {smooth_f!r}")


def _check_skips(skip_start: int, skip_end: int) -> None:
    for name, value in (("skip_start", skip_start), ("skip_end", skip_end)):
        if not _is_int(value) or value < 0:
            raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- the range test of a training ----------------------------------------------------------------


def find_lr_for(cfg: TrainConfig, lr_cfg: LRFinderConfig, *, splits: DataSplits | None = None,
                on_step: Callable[[LRFinderStep], None] | None = None,
                on_event: Callable[[StatusEvent], None] | None = None,
                cancel: threading.Event | None = None, runs_root: Path | None = None) -> LRFinderResult:
    """The LR range test of the run ``cfg`` would train: the same model, start weights, freezing,
    optimizer and parameter groups, batches (augmentation included), precision and training step
    (``vgg.train.train_step``, with the speed-ups where ``cfg.speedups``), so that the suggested
    LR belongs to that run. Model and optimiser state are restored afterwards.
    """
    if cfg.speedups:
        flush_denormals()  # as fit()
    on_event = on_event or (lambda e: None)
    if splits is None:
        on_event(StatusEvent("loading the data set"))
        splits = load_data(cfg.data, lambda done, total, msg: on_event(
            StatusEvent(msg, done / total if total else None)))
    prepared = prepare_model(cfg, tuple(splits.classes), tuple(splits.mean), tuple(splits.std),
                             runs_root=runs_root)
    t = start_training(cfg, splits, prepared, cancel=cancel)

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for _, images, labels in iterate_batches(t.splits.train, cfg.batch_size, shuffle=True,
                                                 generator=t.generator):
            yield t.pipeline(images, t.generator), labels.to(prepared.device)

    def step_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        return train_step(t.net, t.optimizer, x, y, prepared.autocast_dtype, cfg.label_smoothing)[0]

    on_event(StatusEvent("running the LR range test"))
    try:
        return find_lr(prepared.model, t.optimizer, batches, lr_cfg, step_fn=step_fn, on_step=on_step,
                       cancel=cancel, device=prepared.device)
    finally:
        speedups.reload_weights(t.net)  # the model's own weights were restored; drop a compact update
