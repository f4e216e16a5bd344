"""What a training tells the world: small frozen events, the only way progress leaves the loop.

``vgg.train.fit`` calls one callback with these, in this order: ``StatusEvent`` while preparing,
``StartEvent`` once the model is ready, then per step a ``StepEvent`` and per epoch a
``CheckpointEvent`` followed by an ``EpochEvent``, a ``TestEvent`` with the test set's
predictions, and ``DoneEvent`` (or ``FailedEvent``). Who listens decides what happens: the run
folder is written by ``vgg.runs.RunRecorder``, a job publishes them to the pages
(``vgg.tasks``), the CLI draws its progress bar.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from vgg.evaluate import Predictions


@dataclass(frozen=True)
class StatusEvent:
    message: str  # preparation steps: "decoding images", "loading weights", ...
    progress: float | None = None
    run_id: str | None = None  # set once the run folder exists


@dataclass(frozen=True)
class StartEvent:
    config: Mapping[str, Any]  # what the run's config.json holds: TrainConfig.to_dict() and the data's facts
    name: str  # a short name for the run's id, e.g. "vgg-A-bn-scratch"


@dataclass(frozen=True)
class StepEvent:
    step: int  # optimiser steps so far (1-based)
    epoch: int  # 1-based
    loss: float
    accuracy: float
    lr: float  # the classifier's learning rate at this step
    images_per_second: float
    images_seen: int
    seconds: float  # since the start of training
    progress: float  # 0..1 of the planned run


@dataclass(frozen=True)
class SamplePrediction:
    index: int  # into the validation set
    true: int
    predicted: int
    confidence: float


@dataclass(frozen=True)
class EpochEvent:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    seconds: float  # this epoch's duration
    images_seen: int
    elapsed: float  # since the start of training
    is_best: bool
    samples: tuple[SamplePrediction, ...] = ()  # a few validation predictions for the page's grid
    step: int = 0  # optimiser steps so far


@dataclass(frozen=True, eq=False)
class CheckpointEvent:
    epoch: int
    # What the checkpoint stores of the model's state dict (torchvision's names, on the CPU): compact where
    # exact, as meta's "folded_pool" and "base" say (vgg.checkpoints.pack; expand gives the full one)
    state: Mapping[str, torch.Tensor]
    meta: Mapping[str, Any] = field(default_factory=dict)  # config, classes, mean, std, input size, ...
    is_best: bool = False  # the lowest validation loss so far


@dataclass(frozen=True, eq=False)
class TestEvent:
    predictions: Predictions  # of the best epoch's weights on the test set
    step: int
    epoch: int
    images_seen: int


@dataclass(frozen=True)
class TrainResult:
    run_id: str | None
    status: str  # "done" | "cancelled" | "diverged" | "failed"
    message: str
    epochs_done: int
    steps: int
    best_val_loss: float | None
    best_val_accuracy: float | None
    test_loss: float | None
    test_accuracy: float | None
    seconds: float
    images_per_second: float
    classes: tuple[str, ...]
    epochs_planned: int = 0  # the epochs the run was to train (TrainConfig.epochs_for its data)
    backend: str = "local"  # where it trained: "local" (the calling process) or "ray" (vgg.cluster)
    node: str = ""  # the machine's name (local) or the Ray node's id that ran it


@dataclass(frozen=True)
class DoneEvent:
    result: TrainResult


@dataclass(frozen=True)
class FailedEvent:
    message: str  # one line: why the training stopped with an exception


Event = StatusEvent | StartEvent | StepEvent | EpochEvent | CheckpointEvent | TestEvent | DoneEvent | FailedEvent
EventCallback = Callable[[Event], None]
