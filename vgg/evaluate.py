"""Evaluation: loss and accuracy over a split, and the test-set predictions a run keeps.

``evaluate`` runs a network over a split in eval mode (no augmentation) and returns every image's
probabilities. ``Predictions`` is what a run keeps of its test set (``predictions.pt``): labels,
probabilities, the predicted classes as counted, a sample of the 4096-d hidden representation,
the class names and the loss. The trainer writes it, the CLI and the Evaluate page read it, and
``evaluate_run`` makes it later for a run that stopped before its test evaluation.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from vgg.analysis import confusion_matrix, per_class_accuracy
from vgg.augment import BatchPipeline, iterate_batches
from vgg.data import TEST_SEED, DataSplits, TensorData, take_per_class
from vgg.errors import CheckpointError, one_line
from vgg.files import save_torch
from vgg.inference import LoadedModel, load_model
from vgg.safeload import load_weights_only
from vgg.settings import choose_precision
from vgg.speedups.switch import accelerate, evaluation_net

if TYPE_CHECKING:
    from vgg.runs import RunStore

HIDDEN_ROWS = 1000  # rows of the 4096-d representation kept in predictions.pt (a class-stratified sample)


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    labels: torch.Tensor  # (N,)
    probabilities: torch.Tensor  # (N, C) float32
    hidden: torch.Tensor | None  # (N, 4096) penultimate representation, when asked for


@torch.no_grad()
def evaluate(model: nn.Module, data: TensorData, pipeline: BatchPipeline, *, batch_size: int = 256,
             autocast_dtype: torch.dtype | None = None, keep_hidden: bool = False,
             cancel: threading.Event | None = None, flip: bool = False) -> EvalResult:
    """Loss and accuracy over ``data`` (eval mode, no augmentation), with per-image probabilities.

    ``model`` is a VGG (or a speed-up's wrapper of one) with ``forward_with_hidden``. With ``flip``
    (test-time augmentation) each image's probabilities are the mean of its own and its mirror
    image's, and the loss is that mean's cross-entropy.
    """
    was_training = model.training
    model.eval()
    eval_pipe = replace(pipeline, augment=False)
    total_loss, correct, n = 0.0, 0, 0
    probs: list[torch.Tensor] = []
    hiddens: list[torch.Tensor] = []
    try:
        for _, images, labels in iterate_batches(data, batch_size, shuffle=False):
            if cancel is not None and cancel.is_set():
                break
            x = eval_pipe(images, None)
            y = labels.to(pipeline.device)
            with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32,
                                enabled=autocast_dtype is not None):
                logits, h = model.forward_with_hidden(x)
                mirrored = model(x.flip(3)) if flip else None
            p = logits.float().softmax(1)
            if mirrored is None:
                total_loss += float(F.cross_entropy(logits.float(), y, reduction="sum"))
            else:
                p = (p + mirrored.float().softmax(1)) / 2
                total_loss += float(F.nll_loss(p.clamp_min(1e-12).log(), y, reduction="sum"))
            correct += int((p.argmax(1) == y).sum())
            n += len(y)
            probs.append(p.cpu())
            if keep_hidden:
                hiddens.append(h.float().cpu())
    finally:
        model.train(was_training)
    if n == 0:
        return EvalResult(float("nan"), float("nan"), data.labels[:0], torch.zeros(0, 0), None)
    return EvalResult(total_loss / n, correct / n, data.labels[:n].clone(), torch.cat(probs),
                      torch.cat(hiddens) if keep_hidden else None)


@dataclass(frozen=True, eq=False)
class Predictions:
    """A model's predictions on a run's test set, as ``predictions.pt`` keeps them."""

    labels: torch.Tensor  # int64 (N,): the true classes
    probabilities: torch.Tensor  # float16 (N, C), to keep files small
    predicted: torch.Tensor  # int64 (N,): the classes the accuracy counted (float16 probabilities can tie)
    classes: tuple[str, ...]
    hidden: torch.Tensor | None = None  # float16 (M, 4096): the representation of some test images
    hidden_index: torch.Tensor | None = None  # int64 (M,): which test images; None: the first M
    loss: float | None = None  # mean cross-entropy (None in files written before it was kept)
    split: str = "test"

    @classmethod
    def from_eval(cls, result: EvalResult, classes: tuple[str, ...], *,
                  hidden_rows: int | None = None) -> Predictions:
        """Keep what the pages need of an evaluation: float16 probabilities, and the hidden
        representation of at most ``hidden_rows`` test images, the same number of each class (a
        test set is often sorted by class: its first rows would show one or two classes)."""
        hidden = index = None
        if result.hidden is not None:
            index = hidden_sample(result.labels, len(classes), hidden_rows or HIDDEN_ROWS)
            hidden = result.hidden[index].half()
        return cls(labels=result.labels, probabilities=result.probabilities.half(),
                   predicted=result.probabilities.argmax(1), classes=tuple(classes), hidden=hidden,
                   hidden_index=index, loss=result.loss if math.isfinite(result.loss) else None)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def accuracy(self) -> float:
        """Share of right predictions (NaN without images)."""
        return float((self.predicted == self.labels).float().mean()) if len(self) else math.nan

    @property
    def hidden_rows(self) -> np.ndarray:
        """The test-set rows of ``hidden`` (int64)."""
        if self.hidden is None:
            return np.zeros(0, dtype=np.int64)
        if self.hidden_index is None:
            return np.arange(len(self.hidden), dtype=np.int64)
        return self.hidden_index.numpy().astype(np.int64)

    def per_class(self) -> pd.DataFrame:
        """One row per class: ``class``, ``images``, ``correct``, ``accuracy`` (NaN without images)."""
        return per_class_accuracy(self.labels, self.predicted, self.classes)

    def confusion(self) -> np.ndarray:
        """Counts (C, C): row = true class, column = predicted class."""
        return confusion_matrix(self.labels, self.predicted, len(self.classes))

    def payload(self) -> dict[str, Any]:
        """What ``predictions.pt`` holds: tensors, strings and numbers only (``weights_only`` loads it)."""
        out: dict[str, Any] = {"labels": self.labels, "probabilities": self.probabilities,
                               "predicted": self.predicted, "hidden": self.hidden,
                               "classes": list(self.classes), "split": self.split, "loss": self.loss,
                               "accuracy": self.accuracy}
        if self.hidden_index is not None:
            out["hidden_index"] = self.hidden_index
        return out

    def save(self, path: Path, where: str) -> None:
        """Write ``predictions.pt`` atomically (``where``: the run, for messages)."""
        save_torch(path, self.payload(), where)

    @classmethod
    def load(cls, path: Path, *, label: str | None = None) -> Predictions:
        """Read a ``predictions.pt`` (weights only), also one written before a field existed; a
        malformed file → ``CheckpointError`` with one line."""
        label = label or path.name
        data = load_weights_only(path, label=label)
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{label} does not hold a mapping")
        try:
            labels = torch.as_tensor(data["labels"]).long()
            probabilities = torch.as_tensor(data["probabilities"])
            classes = tuple(str(c) for c in data.get("classes") or ())
            predicted = data.get("predicted")
            predicted = (probabilities.float().argmax(1) if predicted is None
                         else torch.as_tensor(predicted).long())
            hidden, index = data.get("hidden"), data.get("hidden_index")
            loss = data.get("loss")
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{label} is malformed: {one_line(exc, 160)}") from exc
        if (probabilities.dim() != 2 or labels.dim() != 1 or len(labels) != len(probabilities)
                or probabilities.shape[1] != len(classes) or predicted.shape != labels.shape):
            raise CheckpointError(f"{label} is malformed (its shapes do not match)")
        if hidden is not None and (not isinstance(hidden, torch.Tensor) or hidden.dim() != 2
                                   or (index is not None and len(index) != len(hidden))):
            raise CheckpointError(f"{label} is malformed (its hidden representation does not fit)")
        number = isinstance(loss, (int, float)) and not isinstance(loss, bool) and math.isfinite(loss)
        return cls(labels=labels, probabilities=probabilities, predicted=predicted, classes=classes,
                   hidden=hidden, hidden_index=None if index is None else torch.as_tensor(index).long(),
                   loss=float(loss) if number else None, split=str(data.get("split", "test")))


def hidden_sample(labels: torch.Tensor, num_classes: int, rows: int = HIDDEN_ROWS) -> torch.Tensor:
    """Sorted test-set rows whose hidden representation is kept: all when there are at most
    ``rows``, else ``rows // num_classes`` of each class, drawn with the fixed test seed (so that
    runs on the same data keep the same images)."""
    if len(labels) <= rows:
        return torch.arange(len(labels))
    return take_per_class(labels, max(1, rows // max(num_classes, 1)), TEST_SEED)


def load_run_predictions(store: RunStore, run_id: str) -> Predictions:
    """A run's ``predictions.pt``; ``CheckpointError`` while it has none."""
    path = store.predictions_path(run_id)
    return Predictions.load(path, label=f"{path.name} of run {run_id}")


# --------------------------------------------------------------------------------------------
# Evaluating a checkpoint later (a run interrupted before its test evaluation)


def evaluate_loaded(loaded: LoadedModel, data: TensorData, *, precision: str = "auto",
                    cancel: threading.Event | None = None) -> Predictions:
    """The test-set predictions of a loaded checkpoint on ``data``.

    ``precision`` is the run's ``TrainConfig.precision``: evaluating as the training did gives the
    same test accuracy as the run recorded (near-ties flip between bf16 and fp32).
    """
    # The speed-ups the training evaluated with: the same arithmetic gives the same answers (near-ties
    # under bf16 flip with the convolution's summation order).
    pipeline = BatchPipeline(loaded.mean, loaded.std, loaded.device, loaded.input_size, False, channels_last=True)
    result = evaluate(evaluation_net(accelerate(loaded.model)), data, pipeline, keep_hidden=True, cancel=cancel,
                      autocast_dtype=choose_precision(precision, loaded.device))
    return Predictions.from_eval(result, loaded.classes)


def evaluate_run(store: RunStore, run_id: str, splits: DataSplits, *, cancel: threading.Event | None = None,
                 device: torch.device | str | None = None) -> Predictions:
    """Evaluate a run's ``best.pt`` on ``splits.test`` and save ``predictions.pt`` in its folder.

    For runs that stopped before their test evaluation (interrupted, failed, cancelled early).
    ``splits`` must be the run's data set (``inference.run_data_config``); other classes →
    ``CheckpointError``. Returns the predictions written.
    """
    loaded = load_model(run_id, store=store, device=device)
    if tuple(splits.classes) != loaded.classes:
        raise CheckpointError(
            f"run {run_id} was trained on classes {', '.join(loaded.classes[:4])}… but the "
            f"data set has {', '.join(splits.classes[:4])}…; it cannot be evaluated on it")
    precision = str(store.get(run_id).config.get("precision", "auto"))
    predictions = evaluate_loaded(loaded, splits.test, precision=precision, cancel=cancel)
    if cancel is not None and cancel.is_set():
        raise CheckpointError(f"the evaluation of run {run_id} was stopped; nothing was saved")
    store.save_predictions(run_id, predictions)
    return predictions
