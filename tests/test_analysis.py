"""Analysis of predictions and weights: confusion, per-class accuracy, mistakes, PCA/t-SNE, filters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vgg import analysis
from vgg.errors import ConfigError


def test_confusion_matrix_counts_true_rows_against_predicted_columns() -> None:
    labels = [0, 0, 1, 2, 2, 2]
    preds = torch.tensor([0, 1, 1, 2, 0, 0])
    matrix = analysis.confusion_matrix(labels, preds, 3)
    assert matrix.tolist() == [[1, 1, 0], [0, 1, 0], [2, 0, 1]]
    assert matrix.dtype == np.int64 and matrix.sum() == 6
    assert analysis.confusion_matrix([], [], 4).tolist() == [[0] * 4] * 4
    with pytest.raises(ConfigError, match="outside 0..2"):
        analysis.confusion_matrix([0, 3], [0, 0], 3)
    with pytest.raises(ConfigError, match="2 labels but 1 predictions"):
        analysis.confusion_matrix([0, 1], [0], 3)


def test_per_class_accuracy_has_one_row_per_class() -> None:
    table = analysis.per_class_accuracy([0, 0, 1, 1, 1], [0, 1, 1, 1, 0], ["cat", "dog", "bird"])
    assert table["class"].tolist() == ["cat", "dog", "bird"]
    assert table["images"].tolist() == [2, 3, 0] and table["correct"].tolist() == [1, 2, 0]
    assert table["accuracy"].iloc[0] == pytest.approx(0.5) and table["accuracy"].iloc[1] == pytest.approx(
        2 / 3
    )
    assert math.isnan(table["accuracy"].iloc[2]), "a class without test images has no accuracy"


def test_most_confident_mistakes_are_the_surest_wrong_answers_first() -> None:
    probs = np.array(
        [
            [0.9, 0.05, 0.05],  # right
            [0.2, 0.7, 0.1],  # wrong, 0.7
            [0.05, 0.05, 0.9],  # wrong, 0.9
            [0.3, 0.6, 0.1],  # right
            [0.1, 0.35, 0.55],  # wrong, 0.55
        ],
        dtype=np.float32,
    )
    labels = np.array([0, 0, 1, 1, 1])
    worst = analysis.most_confident_mistakes(labels, torch.from_numpy(probs).half(), k=2)
    assert list(worst.columns) == ["index", "true", "predicted", "p_true", "p_pred"]
    assert worst["index"].tolist() == [2, 1]
    assert worst["true"].tolist() == [1, 0] and worst["predicted"].tolist() == [2, 1]
    assert worst["p_pred"].tolist() == pytest.approx([0.9, 0.7], abs=1e-3)
    assert worst["p_true"].tolist() == pytest.approx([0.05, 0.2], abs=1e-3)
    assert len(analysis.most_confident_mistakes(labels, probs, k=10)) == 3
    assert analysis.most_confident_mistakes([0], [[1.0, 0.0]], k=5).empty
    with pytest.raises(ConfigError, match="probabilities must be"):
        analysis.most_confident_mistakes(labels, probs[:3], k=2)


def two_clusters(n: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    centres = np.zeros((2, dims))
    centres[1, :5] = 6.0
    return centres[labels] + rng.normal(size=(n, dims)), labels


def test_pca_finds_the_direction_of_largest_variance() -> None:
    features, labels = two_clusters(200, 64)
    embedding = analysis.pca_2d(torch.from_numpy(features).half())
    assert embedding.points.shape == (200, 2) and embedding.method == "PCA"
    assert embedding.index.tolist() == list(range(200))
    first = embedding.points[:, 0]
    assert (first[labels == 0].max() < first[labels == 1].min()) or (
        first[labels == 1].max() < first[labels == 0].min()
    )
    share_1, share_2 = embedding.explained
    # between the clusters: 5 dims × 3² = 45 of a total variance of 45 + 64 (unit noise in 64 dims)
    assert share_1 == pytest.approx(46 / 109, abs=0.05) and 0 < share_2 < 0.05
    again = analysis.pca_2d(features)
    np.testing.assert_allclose(
        again.points, analysis.pca_2d(features).points
    )  # deterministic, signs included
    assert analysis.pca_2d(np.zeros((0, 5))).points.shape == (0, 2)
    assert analysis.pca_2d(np.ones((1, 5))).points.tolist() == [[0.0, 0.0]]


def test_tsne_keeps_clusters_apart_on_a_reproducible_sample() -> None:
    features, labels = two_clusters(260, 80, seed=1)
    embedding = analysis.tsne_2d(features, seed=3, max_points=200)
    assert embedding.points.shape == (200, 2) and embedding.method == "t-SNE"
    assert len(set(embedding.index.tolist())) == 200 and (np.diff(embedding.index) > 0).all()
    sampled = labels[embedding.index]
    centres = np.stack([embedding.points[sampled == c].mean(0) for c in (0, 1)])
    spread = max(np.linalg.norm(embedding.points[sampled == c] - centres[c], axis=1).mean() for c in (0, 1))
    assert np.linalg.norm(centres[0] - centres[1]) > 2 * spread
    np.testing.assert_array_equal(analysis.tsne_2d(features, seed=3, max_points=200).index, embedding.index)
    assert analysis.tsne_2d(features[:3], seed=0).points.shape == (3, 2)
    with pytest.raises(ConfigError, match="max_points"):
        analysis.tsne_2d(features, max_points=0)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3)
        )


def test_first_layer_filters_are_rescaled_per_filter() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    filters = analysis.first_layer_filters(net)
    assert filters.shape == (4, 3, 3, 3)
    for f, w in zip(filters, net.features[0].weight.detach().numpy(), strict=True):
        assert f.min() == pytest.approx(0) and f.max() == pytest.approx(1, abs=1e-3)
        np.testing.assert_allclose(f, (w - w.min()) / (w.max() - w.min() + 1e-5), atol=1e-6)


def test_filtered_images_apply_the_first_convolution_without_bias() -> None:
    torch.manual_seed(0)
    net = TinyNet()
    images = torch.randn(2, 3, 8, 8)
    maps = analysis.filtered_images(net, images, n_filters=3)
    assert maps.shape == (2, 3, 8, 8) and maps.min() >= 0 and maps.max() <= 1
    raw = F.conv2d(images, net.features[0].weight[:3].detach(), padding=1)
    low = raw.amin(dim=(2, 3), keepdim=True)
    high = raw.amax(dim=(2, 3), keepdim=True)
    np.testing.assert_allclose(maps, ((raw - low) / (high - low + 1e-5)).numpy(), atol=1e-6)
    assert analysis.filtered_images(net, images, n_filters=99).shape[1] == 4
    with pytest.raises(ConfigError, match=r"images must be \(N, 3, H, W\)"):
        analysis.filtered_images(net, torch.randn(3, 8, 8), 2)


def test_filters_of_vgg_features() -> None:
    from vgg.model import CONFIGS, make_layers

    features = make_layers(CONFIGS["A"], batch_norm=True)  # the convolutional part only: quick to build
    assert analysis.first_layer_filters(features).shape == (64, 3, 3, 3)
    assert analysis.filtered_images(features, torch.randn(1, 3, 32, 32), 8).shape == (1, 8, 32, 32)
