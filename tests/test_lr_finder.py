"""LR range test: schedule, smoothing and suggestions on hand-made curves; exact restoration."""

from __future__ import annotations

import copy
import math
import threading

import numpy as np
import pytest
import torch
from torch import nn

from vgg.errors import ConfigError, DataUnavailableError
from vgg.lr_finder import (
    LRFinderConfig,
    LRFinderStep,
    find_lr,
    lr_schedule,
    smooth,
    suggest_all,
    suggest_min_div10,
    suggest_steepest,
    suggest_valley,
)

LRS = np.logspace(-7, 1, 100).tolist()


# --- config, schedule, smoothing -------------------------------------------------------------


def test_config_defaults_are_the_notebooks() -> None:
    cfg = LRFinderConfig()
    assert (cfg.start_lr, cfg.end_lr, cfg.num_iter) == (1e-7, 10.0, 100)
    assert (cfg.smooth_f, cfg.diverge_th) == (0.05, 5.0)
    assert (cfg.skip_start, cfg.skip_end) == (10, 5)


@pytest.mark.parametrize(
    ("kwargs", "value"),
    [
        ({"start_lr": 0.0}, "0.0"),
        ({"start_lr": float("nan")}, "nan"),
        ({"end_lr": 1e-8}, "1e-08"),
        ({"end_lr": 200.0}, "200.0"),
        ({"num_iter": 1}, "1"),
        ({"num_iter": 10_001}, "10001"),
        ({"num_iter": 2.5}, "2.5"),
        ({"smooth_f": 1.0}, "1.0"),
        ({"smooth_f": -0.1}, "-0.1"),
        ({"diverge_th": 1.0}, "1.0"),
        ({"skip_start": -1}, "-1"),
        ({"skip_end": True}, "True"),
    ],
)
def test_config_rejects_out_of_range_values_naming_them(kwargs: dict, value: str) -> None:
    with pytest.raises(ConfigError, match=value) as err:
        LRFinderConfig(**kwargs)
    assert "\n" not in str(err.value)


def test_end_lr_up_to_100_is_allowed() -> None:
    assert LRFinderConfig(end_lr=100.0).end_lr == 100.0


def test_schedule_is_geometric_from_start_to_end() -> None:
    assert lr_schedule(LRFinderConfig(start_lr=1e-4, end_lr=1.0, num_iter=5)) == pytest.approx(
        [1e-4, 1e-3, 1e-2, 1e-1, 1.0], rel=1e-12
    )
    lrs = lr_schedule(LRFinderConfig())
    assert len(lrs) == 100
    assert lrs[0] == pytest.approx(1e-7) and lrs[-1] == pytest.approx(10.0)
    ratios = np.array(lrs[1:]) / np.array(lrs[:-1])
    assert ratios == pytest.approx(np.full(99, 1e8 ** (1 / 99)), rel=1e-9)


def test_smooth_is_torch_lr_finders_moving_average() -> None:
    assert smooth([1.0, 2.0, 3.0], 0.5) == pytest.approx([1.0, 1.5, 2.25])
    assert smooth([2.0, 4.0, 4.0], 0.05) == pytest.approx([2.0, 2.1, 2.195])
    assert smooth([1.0, 2.0, 3.0], 0.0) == [1.0, 2.0, 3.0]  # 0 disables smoothing
    assert smooth([], 0.05) == []


def test_smooth_passes_non_finite_losses_without_poisoning_the_rest() -> None:
    out = smooth([float("nan"), 1.0, float("inf"), 3.0], 0.5)
    assert math.isnan(out[0]) and out[2] == math.inf
    assert out[1] == 1.0 and out[3] == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="1.5"):
        smooth([1.0], 1.5)


# --- suggestions on hand-made curves ---------------------------------------------------------


def u_curve() -> list[float]:
    """Falls fastest at index 40 (centre of the tanh), lowest around 62, explodes at the end."""
    i = np.arange(100)
    return (2.0 - np.tanh((i - 40) / 5) + np.exp((i - 85) / 4)).tolist()


def valley_curve() -> list[float]:
    """Flat until 19, strictly falling over 20..59, rising after."""
    flat = [3.0] * 20
    fall = np.linspace(2.9, 1.0, 40).tolist()
    rise = np.linspace(1.05, 10.0, 40).tolist()
    return flat + fall + rise


def test_steepest_is_the_largest_drop_and_indexes_the_untrimmed_curve() -> None:
    s = suggest_steepest(LRS, u_curve(), skip_start=10, skip_end=5)
    assert s is not None and s.rule == "steepest"
    assert s.index == 40 and s.lr == LRS[40]
    assert "e-" in s.explanation


def test_steepest_matches_torch_lr_finder_on_a_geometric_schedule() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        losses = np.cumsum(rng.normal(size=60)).tolist()
        trimmed = np.array(losses[10:-5])
        expected = 10 + int(np.gradient(trimmed).argmin())  # torch-lr-finder's plot()
        s = suggest_steepest(LRS[:60], losses)
        assert s is not None and s.index == expected


def fastai_valley_index(losses: list[float]) -> int:
    """fastai's ``valley`` transcribed literally (index into the trimmed curve)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if (losses[i] < losses[j]) and (lds[i] < lds[j] + 1):
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return max_start + int(sections) + int(sections / 2)


def test_valley_picks_the_middle_of_the_longest_valley() -> None:
    # Trimmed (skip 10): the fall is trimmed 10..49, lds[49] = 41, max_start = 8,
    # sections = 41/3, pick 8 + 13 + 6 = 27 -> untrimmed 37, inside the fall.
    s = suggest_valley(LRS, valley_curve(), skip_start=10, skip_end=5)
    assert s is not None and s.rule == "valley"
    assert s.index == 37 and s.lr == LRS[37]


def test_valley_reproduces_fastai_on_random_curves() -> None:
    rng = np.random.default_rng(1)
    for n in (30, 60, 100):
        for _ in range(10):
            losses = (np.cumsum(rng.normal(size=n)) + rng.normal(size=n)).tolist()
            expected = fastai_valley_index(losses[10:-5])
            assert expected >= 0  # fastai's -1 only happens on tiny curves
            s = suggest_valley(LRS[:n], losses)
            assert s is not None and s.index == 10 + expected


def test_valley_clamps_fastais_minus_one_on_tiny_curves() -> None:
    assert fastai_valley_index([3.0, 1.0, 2.0]) == -1  # fastai would wrap to the last point
    s = suggest_valley([1e-3, 1e-2, 1e-1], [3.0, 1.0, 2.0], 0, 0)
    assert s is not None and s.index == 0


def test_min_div10_is_a_tenth_of_the_lowest_point() -> None:
    losses = [abs(i - 60) / 10 + 1.0 for i in range(100)]
    s = suggest_min_div10(LRS, losses)
    assert s is not None and s.rule == "min_div10"
    assert s.lr == pytest.approx(LRS[60] / 10)
    # one decade is 99/8 = 12.375 steps: 60 - 12.375 = 47.6 -> nearest recorded point 48
    assert s.index == 48


def test_suggest_all_has_the_three_rules() -> None:
    out = suggest_all(LRS, u_curve(), 10, 5)
    assert set(out) == {"steepest", "valley", "min_div10"}
    assert all(s is not None and s.rule == name for name, s in out.items())


def test_suggestions_ignore_nan_and_inf_points() -> None:
    losses = u_curve()
    for i in (15, 50, 70):
        losses[i] = float("nan")
    losses[90:] = [float("inf")] * 10
    s = suggest_steepest(LRS, losses)
    assert s is not None and s.index == 40
    m = suggest_min_div10(LRS, losses)
    assert m is not None and math.isfinite(m.lr)
    v = suggest_valley(LRS, losses)
    assert v is not None and math.isfinite(losses[v.index])


@pytest.mark.parametrize("n", [0, 1, 2])
def test_too_short_curves_give_none(n: int) -> None:
    assert all(s is None for s in suggest_all(LRS[:n], [1.0] * n).values())


def test_all_non_finite_curve_gives_none() -> None:
    assert all(s is None for s in suggest_all(LRS[:20], [float("nan")] * 20).values())


def test_short_curve_falls_back_to_all_points() -> None:
    losses = [5.0, 4.0, 2.0, 1.5, 1.4]  # 5 points: nothing left after skipping 10 + 5
    out = suggest_all(LRS[:5], losses, 10, 5)
    # central differences: -1, (2-5)/2 = -1.5, (1.5-4)/2 = -1.25, ... -> steepest at 1
    assert out["steepest"] is not None and out["steepest"].index == 1
    assert "too short" in out["steepest"].explanation
    assert out["min_div10"] is not None and out["min_div10"].lr == pytest.approx(LRS[4] / 10)
    assert out["valley"] is not None and 0 <= out["valley"].index < 5


def test_suggestions_validate_their_arguments() -> None:
    with pytest.raises(ConfigError, match="-2"):
        suggest_steepest(LRS, u_curve(), skip_start=-2)
    with pytest.raises(ConfigError, match="same length"):
        suggest_valley(LRS, [1.0, 2.0])


# --- find_lr on a tiny model -----------------------------------------------------------------


Batch = tuple[torch.Tensor, torch.Tensor]


def tiny_setup(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer, list[Batch]]:
    """MLP with BatchNorm (buffers) and Adam in two groups (ratio 0.1) that already has state."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))
    features = {"params": model[0].parameters(), "lr": 1e-4}
    head = {"params": [*model[1].parameters(), *model[3].parameters()], "lr": 1e-3}
    optimizer = torch.optim.Adam([features, head])
    g = torch.Generator().manual_seed(seed)
    batches = [(torch.randn(16, 8, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(4)]
    for x, y in batches[:3]:  # prior training: Adam has exp_avg etc., BN has running stats
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model, optimizer, batches


def snapshot(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "model": copy.deepcopy(model.state_dict()),
        "optim": copy.deepcopy(optimizer.state_dict()),
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
    }


def assert_same(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


def test_find_lr_restores_model_and_optimizer_exactly() -> None:
    model, optimizer, batches = tiny_setup()
    model[1].eval()  # mixed modes must come back too
    before = snapshot(model, optimizer)
    cfg = LRFinderConfig(num_iter=30)
    result = find_lr(model, optimizer, batches, cfg, loss_fn=nn.functional.cross_entropy)
    assert result.restored and len(result.lrs) >= 2
    assert not torch.equal(before["model"]["0.weight"], torch.zeros(1))  # guard: snapshot is real
    assert_same(snapshot(model, optimizer), before)
    # the optimizer still drives the model's own parameters
    assert optimizer.param_groups[0]["params"][0] is model[0].weight


def test_find_lr_changes_weights_while_running() -> None:
    """Guard for the restoration tests: the test really trains, so restoring is not trivial."""
    model, optimizer, batches = tiny_setup()
    w0 = model[0].weight.detach().clone()
    seen: list[bool] = []
    cfg = LRFinderConfig(start_lr=1e-3, end_lr=1.0, num_iter=5)
    find_lr(model, optimizer, batches, cfg, loss_fn=nn.functional.cross_entropy,
            on_step=lambda s: seen.append(not torch.equal(model[0].weight, w0)))
    assert any(seen)
    assert torch.equal(model[0].weight, w0)


def test_find_lr_restores_gradients() -> None:
    model, optimizer, batches = tiny_setup()
    nn.functional.cross_entropy(model(batches[0][0]), batches[0][1]).backward()
    before = snapshot(model, optimizer)
    assert before["grads"][0] is not None
    find_lr(model, optimizer, batches, LRFinderConfig(num_iter=5), loss_fn=nn.functional.cross_entropy)
    assert_same(snapshot(model, optimizer), before)


def test_find_lr_restores_state_when_cancelled() -> None:
    model, optimizer, batches = tiny_setup()
    before = snapshot(model, optimizer)
    cancel = threading.Event()

    def on_step(step: LRFinderStep) -> None:
        if step.iteration == 2:
            cancel.set()

    cfg = LRFinderConfig(num_iter=50)
    result = find_lr(model, optimizer, batches, cfg, loss_fn=nn.functional.cross_entropy,
                     on_step=on_step, cancel=cancel)
    assert result.cancelled and not result.stopped_early and result.restored
    assert len(result.lrs) == 3
    assert_same(snapshot(model, optimizer), before)


def test_find_lr_restores_state_and_reraises_when_a_step_fails() -> None:
    model, optimizer, batches = tiny_setup()
    before = snapshot(model, optimizer)
    calls = 0

    def failing_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if calls == 5:
            raise RuntimeError("boom at iteration 5")
        return nn.functional.cross_entropy(logits, y)

    with pytest.raises(RuntimeError, match="boom"):
        find_lr(model, optimizer, batches, LRFinderConfig(num_iter=20), loss_fn=failing_loss)
    assert calls == 5
    assert_same(snapshot(model, optimizer), before)


def test_find_lr_stops_on_divergence() -> None:
    model, optimizer, batches = tiny_setup()
    before = snapshot(model, optimizer)

    def exploding_step(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        optimizer.step()
        return 1.0 if len(seen) < 5 else 1000.0

    seen: list[LRFinderStep] = []
    result = find_lr(model, optimizer, batches, LRFinderConfig(num_iter=50), step_fn=exploding_step,
                     on_step=seen.append)
    # smoothed at iteration 5: 0.05 * 1000 + 0.95 * 1 = 50.95 > 5 × 1
    assert result.stopped_early and not result.cancelled
    assert len(result.lrs) == 6 and result.smoothed[-1] == pytest.approx(50.95)
    assert_same(snapshot(model, optimizer), before)


def test_find_lr_stops_on_a_non_finite_loss() -> None:
    model, optimizer, batches = tiny_setup()
    losses = iter([2.0, 1.9, 1.8, float("nan"), 1.0])
    cfg = LRFinderConfig(num_iter=5)
    result = find_lr(model, optimizer, batches, cfg, step_fn=lambda m, x, y: next(losses))
    assert result.stopped_early and len(result.losses) == 4 and math.isnan(result.losses[-1])


def test_find_lr_follows_the_schedule_and_keeps_group_ratios() -> None:
    model, optimizer, batches = tiny_setup()
    cfg = LRFinderConfig(start_lr=1e-5, end_lr=1e-2, num_iter=20, skip_start=2, skip_end=2)
    steps: list[LRFinderStep] = []
    group_lrs: list[list[float]] = []

    def on_step(step: LRFinderStep) -> None:
        steps.append(step)
        group_lrs.append([g["lr"] for g in optimizer.param_groups])

    result = find_lr(model, optimizer, batches, cfg, loss_fn=nn.functional.cross_entropy, on_step=on_step)
    assert not result.stopped_early and not result.cancelled
    assert [s.iteration for s in steps] == list(range(20))  # one call per iteration; 4 batches cycled
    expected = lr_schedule(cfg)
    assert list(result.lrs) == pytest.approx(expected)
    assert [s.lr for s in steps] == pytest.approx(expected)
    assert [g[1] for g in group_lrs] == pytest.approx(expected)
    assert [g[0] for g in group_lrs] == pytest.approx([0.1 * lr for lr in expected])  # features at ×0.1
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-3]  # original lrs back
    assert [s.loss for s in steps] == list(result.losses)
    assert list(result.smoothed) == pytest.approx(smooth(result.losses, cfg.smooth_f))
    assert set(result.suggestions) == {"steepest", "valley", "min_div10"}
    assert result.suggestions["steepest"] is not None and result.seconds > 0


@pytest.mark.parametrize("kind", ["generator", "callable"])
def test_find_lr_accepts_iterators_and_factories(kind: str) -> None:
    model, optimizer, batches = tiny_setup()
    source = (b for b in batches[:2]) if kind == "generator" else (lambda: iter(batches[:2]))
    seen: list[torch.Tensor] = []

    def step(m: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
        seen.append(x)
        return 1.0

    result = find_lr(model, optimizer, source, LRFinderConfig(num_iter=5), step_fn=step)
    assert len(result.lrs) == 5
    assert [torch.equal(x, batches[i % 2][0]) for i, x in enumerate(seen)] == [True] * 5


def test_find_lr_with_no_batches_is_a_clear_error_and_restores() -> None:
    model, optimizer, _ = tiny_setup()
    before = snapshot(model, optimizer)
    with pytest.raises(DataUnavailableError, match="no batches"):
        find_lr(model, optimizer, [], LRFinderConfig(num_iter=5), loss_fn=nn.functional.cross_entropy)
    assert_same(snapshot(model, optimizer), before)


def test_find_lr_needs_a_loss_or_a_step() -> None:
    model, optimizer, batches = tiny_setup()
    with pytest.raises(ConfigError, match="loss_fn"):
        find_lr(model, optimizer, batches, LRFinderConfig())


def test_the_recommendation_is_the_lowest_point_of_the_smoothed_loss() -> None:
    from vgg.lr_finder import recommend

    from vgg.lr_finder import RECOMMEND_FLOOR
    from vgg.train import TrainConfig

    assert RECOMMEND_FLOOR == TrainConfig.lr  # the peak the default training was tested at
    lrs = [1e-7 * 10 ** (8 * i / 99) for i in range(100)]
    losses = [2.3 - 0.5 * math.exp(-((math.log10(lr) + 2) ** 2)) + (5.0 if lr > 1e-1 else 0.0) for lr in lrs]
    lowest = lrs[min(range(100), key=losses.__getitem__)]  # 1e-2, the bottom of the dip
    advice = recommend(lrs, losses)
    assert advice is not None and advice.rule == "recommended"
    assert advice.lr == pytest.approx(lowest) and lrs[advice.index] == advice.lr  # marked there on the curve
    # A dip that ends below the default training's peak (from scratch with Adam): that peak.
    early = [2.3 - 0.1 * math.exp(-((math.log10(lr) + 4.2) ** 2)) + (5.0 if lr > 1e-1 else 0.0) for lr in lrs]
    floored = recommend(lrs, early)
    assert floored is not None and floored.lr == RECOMMEND_FLOOR and "lowest at lr 6" in floored.explanation
    assert recommend(lrs, early, floor=None).lr == pytest.approx(lrs[min(range(100), key=early.__getitem__)])
    assert recommend(lrs[:3], losses[:3]) is None or recommend(lrs[:3], losses[:3]).lr > 0
    assert recommend([], []) is None
