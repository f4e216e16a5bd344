"""What the Train page tells a class: roughly what a run will reach, and whether more time would help."""

from __future__ import annotations

from pathlib import Path

from vgg.advice import expected_outcome, more_time
from vgg.events import EpochEvent
from vgg.runs import RunInfo
from vgg.train import TrainConfig


def epoch(n: int, train: float, val: float) -> EpochEvent:
    return EpochEvent(n, 1.0, train, 1.0, val, 1.0, 100 * n, 1.0 * n, True)


def test_close_curves_still_rising_mean_more_time_helps() -> None:
    verdict = more_time([epoch(1, 0.40, 0.42), epoch(2, 0.50, 0.52)])
    assert verdict.more_time_helps and "More time would help" in verdict.text and "52.0%" in verdict.text
    assert more_time([epoch(1, 0.55, 0.56)]).more_time_helps  # one epoch: nothing memorised yet


def test_memorising_means_more_epochs_would_not_help() -> None:
    far = more_time([epoch(1, 0.60, 0.50), epoch(2, 0.90, 0.55)])
    assert not far.more_time_helps and "memorise" in far.text and "90.0%" in far.text
    falling = more_time([epoch(1, 0.5, 0.55), epoch(2, 0.6, 0.58), epoch(3, 0.65, 0.55)])
    assert not falling.more_time_helps
    # validation falling while training is not above it: no claim of memorising (a tiny validation set)
    noisy = more_time([epoch(1, 0.33, 0.66), epoch(2, 0.40, 0.50), epoch(3, 0.47, 0.50)])
    assert not noisy.more_time_helps and "fell from 66.0% (epoch 1) to 50.0%" in noisy.text
    assert "well above" not in noisy.text
    assert more_time([]) is None


def info(config: dict, accuracy: float | None, status: str = "done") -> RunInfo:
    return RunInfo(run_id="r", path=Path("/nowhere"), config=config, status=status, message="",
                   summary={} if accuracy is None else {"test_accuracy": accuracy}, created_at=0.0, updated_at=0.0)


def test_runs_of_the_same_kind_set_the_expectation() -> None:
    cfg = TrainConfig().to_dict()
    other_lr = {**cfg, "lr": 1e-3, "seed": 5}  # the learning rate and seed do not make another kind
    other_data = {**cfg, "data": {**cfg["data"], "source": "cifar10"}}
    runs = [info(cfg, 0.6), info(other_lr, 0.7), info(other_lr, 0.5), info(other_data, 0.9),
            info(cfg, None, "interrupted")]
    expect = expected_outcome(cfg, runs, num_classes=10)
    assert (expect.test_accuracy, expect.runs, expect.chance) == (0.6, 3, 0.1)
    assert expected_outcome(other_data, [info(cfg, 0.6)], 10) is None
