"""Looking inside a trained model: mistakes, confusion, representations and learned filters.

Pure functions on arrays (the saved test-set predictions of a run, or a model's weights) that
return NumPy arrays and DataFrames for the Evaluate page; drawing them is ``vgg.figures.evaluate``'s job.
They follow the notebook's analysis: the confusion matrix, the most confident mistakes, PCA and
t-SNE of the output representations, ``plot_filters`` and ``plot_filtered_images``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from vgg.errors import ConfigError

ArrayLike = np.ndarray | torch.Tensor | Sequence[float] | Sequence[int]
TSNE_MAX_POINTS = 500  # t-SNE on a 2-core CPU: about a second per few hundred points
TSNE_EXACT_BELOW = 800  # points up to which the exact t-SNE gradient is used
TSNE_PCA_DIMS = 50  # reduce to this many dimensions first (standard practice, and much faster)


def _array(values: ArrayLike, dtype: type | None = None) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu()
        if values.dtype in (torch.float16, torch.bfloat16):
            values = values.float()
        values = values.numpy()
    array = np.asarray(values)
    return array.astype(dtype) if dtype is not None else array


def _labels(labels: ArrayLike, name: str, num_classes: int | None = None) -> np.ndarray:
    array = _array(labels)
    if array.ndim != 1:
        raise ConfigError(f"{name} must be one class index per image (1-D), got shape {array.shape}")
    array = array.astype(np.int64)
    if num_classes is not None and len(array) and (array.min() < 0 or array.max() >= num_classes):
        raise ConfigError(
            f"{name} holds class {int(array.max() if array.max() >= num_classes else array.min())}, "
            f"outside 0..{num_classes - 1}"
        )
    return array


def confusion_matrix(labels: ArrayLike, preds: ArrayLike, num_classes: int) -> np.ndarray:
    """Counts (num_classes, num_classes) int64: row = true class, column = predicted class."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"num_classes must be a whole number of at least 1, got {num_classes!r}")
    true = _labels(labels, "labels", num_classes)
    pred = _labels(preds, "predictions", num_classes)
    if len(true) != len(pred):
        raise ConfigError(f"{len(true)} labels but {len(pred)} predictions")
    flat = np.bincount(true * num_classes + pred, minlength=num_classes * num_classes)
    return flat.reshape(num_classes, num_classes).astype(np.int64)


def per_class_accuracy(labels: ArrayLike, preds: ArrayLike, classes: Sequence[str]) -> pd.DataFrame:
    """One row per class: ``class``, ``images``, ``correct``, ``accuracy`` (NaN for a class with no image)."""
    matrix = confusion_matrix(labels, preds, len(classes))
    images = matrix.sum(1)
    correct = np.diag(matrix)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.where(images > 0, correct / np.maximum(images, 1), np.nan)
    return pd.DataFrame({"class": list(classes), "images": images, "correct": correct, "accuracy": accuracy})


def most_confident_mistakes(labels: ArrayLike, probs: ArrayLike, k: int = 16) -> pd.DataFrame:
    """The ``k`` wrong predictions the model was surest of, surest first.

    Columns: ``index`` (row in the test set), ``true``, ``predicted`` (class indices), ``p_true``
    (probability given to the true class) and ``p_pred`` (probability of the predicted class).
    """
    true = _labels(labels, "labels")
    p = _array(probs, np.float32)
    if p.ndim != 2 or len(p) != len(true):
        raise ConfigError(
            f"probabilities must be (images, classes) for {len(true)} images, got shape {p.shape}"
        )
    pred = p.argmax(1) if len(p) else np.zeros(0, dtype=np.int64)
    wrong = np.flatnonzero(pred != true)
    rows = np.arange(len(p))
    p_pred = p[rows, pred] if len(p) else np.zeros(0, dtype=np.float32)
    p_true = p[rows, np.clip(true, 0, max(p.shape[1] - 1, 0))] if len(p) else np.zeros(0, dtype=np.float32)
    order = wrong[np.argsort(-p_pred[wrong], kind="stable")][: max(int(k), 0)]
    return pd.DataFrame(
        {
            "index": order.astype(np.int64),
            "true": true[order],
            "predicted": pred[order].astype(np.int64),
            "p_true": p_true[order].astype(np.float64),
            "p_pred": p_pred[order].astype(np.float64),
        }
    )


@dataclass(frozen=True, eq=False)
class Embedding2D:
    """A 2-D picture of high-dimensional representations."""

    points: np.ndarray  # float32 (n, 2)
    index: np.ndarray  # int64 (n,): the rows of the input they belong to
    method: str  # "PCA" or "t-SNE"
    explained: tuple[float, float] | None = None  # PCA: share of the variance along each axis


def _features(features: ArrayLike) -> np.ndarray:
    x = _array(features, np.float64)
    if x.ndim != 2:
        raise ConfigError(f"features must be (images, dimensions), got shape {x.shape}")
    return np.nan_to_num(x)


def _top_components(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores (rows, n) on the top ``n`` principal axes and each axis' share of the variance.

    Randomised SVD with a fixed seed (deterministic, and about a second for 1000 × 4096 on two
    cores where a full eigendecomposition takes many); signs fixed as scikit-learn's ``svd_flip``.
    """
    from sklearn.decomposition import PCA

    n = min(n, x.shape[0], x.shape[1])
    solver = "randomized" if min(x.shape) > 4 * n else "full"
    pca = PCA(n_components=n, svd_solver=solver, random_state=0)
    scores = pca.fit_transform(x.astype(np.float32))
    return scores.astype(np.float64), np.nan_to_num(pca.explained_variance_ratio_.astype(np.float64))


def pca_2d(features: ArrayLike) -> Embedding2D:
    """Project every row onto the two principal axes (the two directions of largest variance)."""
    x = _features(features)
    if len(x) == 0:
        return Embedding2D(np.zeros((0, 2), np.float32), np.zeros(0, np.int64), "PCA", (0.0, 0.0))
    if len(x) < 2:
        return Embedding2D(
            np.zeros((len(x), 2), np.float32), np.arange(len(x), dtype=np.int64), "PCA", (0.0, 0.0)
        )
    scores, ratios = _top_components(x, 2)
    points = np.zeros((len(x), 2))
    points[:, : scores.shape[1]] = scores
    shares = [float(r) for r in ratios] + [0.0, 0.0]
    return Embedding2D(
        points.astype(np.float32), np.arange(len(x), dtype=np.int64), "PCA", (shares[0], shares[1])
    )


def sample_rows(n: int, max_points: int, seed: int = 0) -> np.ndarray:
    """At most ``max_points`` of ``range(n)``, drawn with ``seed``, in increasing order."""
    if n <= max_points:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False)).astype(np.int64)


def tsne_2d(features: ArrayLike, seed: int = 0, max_points: int = TSNE_MAX_POINTS) -> Embedding2D:
    """t-SNE of a random sample of at most ``max_points`` rows (after PCA to 50 dimensions).

    Unlike PCA, t-SNE keeps neighbours together but distorts distances between clusters, and a
    different ``seed`` gives a different (equally valid) picture.
    """
    from sklearn.manifold import TSNE

    if isinstance(max_points, bool) or not isinstance(max_points, int) or max_points < 1:
        raise ConfigError(f"max_points must be a whole number of at least 1, got {max_points!r}")
    x = _features(features)
    index = sample_rows(len(x), max_points, seed)
    x = x[index]
    if len(x) < 4:  # t-SNE needs a few neighbours; a tiny sample is shown as it is
        points = np.zeros((len(x), 2), np.float32)
        points[:, : min(2, x.shape[1])] = x[:, :2]
        return Embedding2D(points, index, "t-SNE")
    if x.shape[1] > TSNE_PCA_DIMS:
        x, _ = _top_components(x, TSNE_PCA_DIMS)
    perplexity = float(min(30.0, (len(x) - 1) / 3))
    # For a few hundred points the exact gradient is faster than Barnes-Hut's tree on this CPU.
    method = "exact" if len(x) <= TSNE_EXACT_BELOW else "barnes_hut"
    tsne = TSNE(
        n_components=2,
        perplexity=perplexity,
        init="pca",
        learning_rate="auto",
        random_state=seed,
        max_iter=500,
        method=method,
    )
    points = tsne.fit_transform(x.astype(np.float32))
    return Embedding2D(points.astype(np.float32), index, "t-SNE")


def _first_conv(model: nn.Module) -> nn.Conv2d:
    features = getattr(model, "features", model)
    for layer in features.modules():
        if isinstance(layer, nn.Conv2d):
            return layer
    raise ConfigError("the model has no convolution")


def _min_max(x: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """Rescale to [0, 1] over ``dims`` (each slice on its own), as the notebook's ``normalize_image``."""
    low = x.amin(dim=dims, keepdim=True)
    high = x.amax(dim=dims, keepdim=True)
    return (x - low) / (high - low + 1e-5)


@torch.no_grad()
def first_layer_filters(model: nn.Module) -> np.ndarray:
    """The first convolution's weights (n, 3, k, k), each filter rescaled to [0, 1] for display."""
    weight = _first_conv(model).weight.detach().float().cpu()
    return _min_max(weight, (1, 2, 3)).numpy()


@torch.no_grad()
def filtered_images(model: nn.Module, images: torch.Tensor, n_filters: int = 8) -> np.ndarray:
    """The first ``n_filters`` filters of the first convolution applied to ``images``.

    ``images`` are normalised float (N, 3, H, W) as the model sees them; the result is
    (N, n_filters, H, W), each map rescaled to [0, 1] (bright = strong response). The convolution
    runs without its bias, and before batch norm and ReLU, like the notebook's
    ``plot_filtered_images``.
    """
    conv = _first_conv(model)
    if images.dim() != 4 or images.shape[1] != conv.in_channels:
        raise ConfigError(f"images must be (N, {conv.in_channels}, H, W), got shape {tuple(images.shape)}")
    n = max(1, min(int(n_filters), conv.out_channels))
    weight = conv.weight.detach()[:n].float().cpu()
    out = F.conv2d(images.float().cpu(), weight, padding=conv.padding)
    return _min_max(out, (2, 3)).numpy()
