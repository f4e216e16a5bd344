"""Layer table, totals, the paper's Table 1, adaptive pool windows, and the Architecture figures."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import torchvision

from vgg.errors import ConfigError
from vgg.figures import architecture as figures
from vgg.model import CONFIG_NAMES, build_vgg, freeze
from vgg.summary import (
    LAYER_COLUMNS,
    adaptive_pool_windows,
    conv_stack_weights,
    format_layer_table,
    layer_table,
    model_layer_table,
    paper_table1,
    readable_layer_table,
    table_totals,
    weight_layers,
)

# torchvision's published numbers: parameters, and multiply-adds (its "_ops", GFLOPS) in G.
TORCHVISION_TOTALS = {
    ("A", False): (132_863_336, 7.61), ("A", True): (132_868_840, 7.61),
    ("B", False): (133_047_848, 11.31), ("B", True): (133_053_736, 11.31),
    ("D", False): (138_357_544, 15.47), ("D", True): (138_365_992, 15.47),
    ("E", False): (143_667_240, 19.63), ("E", True): (143_678_248, 19.63),
}


@pytest.mark.parametrize(("config", "batch_norm"), sorted(TORCHVISION_TOTALS))
def test_totals_match_torchvision(config: str, batch_norm: bool) -> None:
    params, gmacs = TORCHVISION_TOTALS[config, batch_norm]
    totals = table_totals(layer_table(config, batch_norm=batch_norm, input_size=224, num_classes=1000))
    assert totals["total_params"] == totals["trainable_params"] == params
    assert totals["total_macs"] == pytest.approx(gmacs * 1e9, rel=0.01)
    name = ("vgg11", "vgg13", "vgg16", "vgg19")["ABDE".index(config)] + ("_bn" if batch_norm else "")
    meta = torchvision.models.get_model_weights(name).IMAGENET1K_V1.meta
    assert meta["num_params"] == params and meta["_ops"] == pytest.approx(gmacs, abs=0.01)


@pytest.mark.parametrize(("config", "millions"), [("A-LRN", 133), ("C", 134)])
def test_unpublished_configs_match_paper_table_2(config: str, millions: int) -> None:
    for batch_norm in (False, True):
        totals = table_totals(layer_table(config, batch_norm=batch_norm))
        assert round(totals["total_params"] / 1e6) == millions


def test_layer_table_rows_and_measurements() -> None:
    table = layer_table("D", input_size=224)
    assert tuple(table.columns) == LAYER_COLUMNS
    assert len(table) == 31 + 1 + 7  # features, avgpool, classifier
    first = table.iloc[0]
    assert (first["name"], first["type"], first["output_shape"]) == ("features.0", "Conv2d", "64×224×224")
    assert (first["kernel"], first["stride"], first["padding"]) == (3, 1, 1)
    assert first["macs"] == 64 * 3 * 9 * 224 * 224 and first["params"] == 64 * 3 * 9 + 64
    assert first["activation_bytes"] == 64 * 224 * 224 * 4
    rows = table.set_index("name")
    # Known receptive fields of VGG16: conv5_3 sees 196 pixels, pool5 212 (jump 32).
    assert rows.at["features.28", "receptive_field"] == 196
    assert rows.at["features.30", "receptive_field"] == 212
    assert rows.at["features.30", "jump"] == 32 and rows.at["features.30", "stage"] == "block 5"
    assert rows.at["classifier.6", "output_shape"] == "1000"
    assert rows.at["classifier.0", "macs"] == 25088 * 4096
    assert rows.at["avgpool", "receptive_field"] == 212  # 7×7 → 7×7 changes nothing
    assert table.loc[table["stage"] == "classifier", "receptive_field"].isna().all()


def test_small_inputs_and_class_counts() -> None:
    table = layer_table("E", batch_norm=True, input_size=32, num_classes=10)
    rows = table.set_index("name")
    assert rows.loc[rows["stage"] == "block 5", "output_shape"].iloc[-1] == "512×1×1"
    assert rows.at["avgpool", "output_shape"] == "512×7×7"
    assert pd.isna(rows.at["avgpool", "receptive_field"])  # 1×1 copied to 7×7: no single window
    assert rows.at["classifier.6", "params"] == 4096 * 10 + 10
    assert table_totals(table)["bn_params"] == 2 * (64 * 2 + 128 * 2 + 256 * 4 + 512 * 8)


def test_layer_table_is_a_cached_copy() -> None:
    table = layer_table("A", input_size=64, num_classes=5)
    table.loc[0, "params"] = -1
    assert layer_table("A", input_size=64, num_classes=5).loc[0, "params"] == 64 * 27 + 64


def test_frozen_model_shows_trainable_params() -> None:
    with torch.device("meta"):
        model = build_vgg("B", num_classes=10)
    freeze(model, "features")
    totals = table_totals(model_layer_table(model, input_size=32))
    assert totals["trainable_params"] == totals["fc_params"] < totals["total_params"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"input_size": 31}, "input size.*32 to 512.*31"),
    ({"input_size": 513}, "input size.*513"),
    ({"input_size": "224"}, "input size"),
    ({"num_classes": 1}, "num_classes.*1"),
])
def test_invalid_arguments_are_config_errors(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        layer_table("A", **kwargs)


def test_unknown_config_names_the_choices() -> None:
    with pytest.raises(ConfigError, match="'VGG16'.*A, A-LRN, B, C, D, E"):
        layer_table("VGG16")


def test_text_table_for_the_cli() -> None:
    table = layer_table("E")
    text = format_layer_table(table)
    lines = text.splitlines()
    assert len(lines) == len(table) + 5  # header, rule, rows, rule, total, summary line
    assert lines[0].split()[:3] == ["layer", "type", "k/s/p"]
    assert "143,667,240" in lines[-2] and "19.63 G" in lines[-1]
    assert "features.0" in lines[2] and "3/1/1" in lines[2] and "1,792" in lines[2]


def test_readable_table() -> None:
    readable = readable_layer_table(layer_table("C", input_size=32))
    rows = readable.set_index("layer")
    assert rows.at["features.0", "window"] == "3×3 /1 pad 1"
    assert rows.at["features.14", "window"] == "1×1 /1"  # C's first 1×1 convolution
    assert rows.at["classifier.0", "receptive field"] == "whole image"
    assert rows.at["features.0", "receptive field"] == "3 px"


def test_paper_table1() -> None:
    table = paper_table1()
    assert list(table.columns) == ["A", "A-LRN", "B", "C", "D", "E"]
    assert table.shape == (2 + 2 + 4 + 4 + 4 + 5 + 4, 6)  # block rows, max-pools, FC and soft-max
    assert table.loc["block 1 · 2", "A-LRN"] == "LRN" and table.loc["block 1 · 2", "A"] == ""
    assert list(table.loc["block 3 · 3"]) == ["", "", "", "conv1-256", "conv3-256", "conv3-256"]
    assert list(table["E"].iloc[-4:]) == ["FC-4096", "FC-4096", "FC-1000", "soft-max"]
    assert (table == "maxpool").sum().tolist() == [5] * 6
    counted = [table[c].str.match(r"(conv\d|FC)-").sum() for c in table.columns]
    assert counted == [weight_layers(c) for c in CONFIG_NAMES] == [11, 11, 13, 16, 16, 19]


def test_adaptive_pool_windows_32_to_7() -> None:
    assert adaptive_pool_windows(32, 7) == [(0, 5), (4, 10), (9, 14), (13, 19), (18, 23), (22, 28), (27, 32)]
    assert adaptive_pool_windows(1, 7) == [(0, 1)] * 7
    assert adaptive_pool_windows(14, 7) == [(2 * i, 2 * i + 2) for i in range(7)]
    with pytest.raises(ConfigError, match="output size"):
        adaptive_pool_windows(32, 0)


@pytest.mark.parametrize(("in_size", "out_size"), [(32, 7), (5, 7), (10, 3), (7, 7), (13, 4)])
def test_adaptive_pool_windows_are_pytorchs(in_size: int, out_size: int) -> None:
    eye = torch.eye(in_size).unsqueeze(1)  # (in, 1, in): pool each unit vector
    pooled = F.adaptive_avg_pool1d(eye, out_size).squeeze(1)  # (in, out)
    for i, (start, end) in enumerate(adaptive_pool_windows(in_size, out_size)):
        used = pooled[:, i].nonzero().flatten().tolist()
        assert used == list(range(start, end))


def test_conv_stack_weights() -> None:
    assert conv_stack_weights(1, 2) == (18, 25)
    assert conv_stack_weights(1, 3) == (27, 49)
    assert conv_stack_weights(256, 3) == (27 * 256**2, 49 * 256**2)


# -- figures of the Architecture page -----------------------------------------------------------


def test_layer_bars() -> None:
    table = layer_table("A", input_size=32)
    fig = figures.layer_bars(table, "params", log_y=True)
    assert fig.layout.yaxis.type == "log"
    bars = sum(len(trace.x) for trace in fig.data)
    assert bars == (table["params"] > 0).sum() == 8 + 3  # convolutions and linears


def test_block_diagram_draws_one_box_per_layer() -> None:
    table = layer_table("A-LRN", batch_norm=True, input_size=32)
    fig = figures.block_diagram(table)
    drawn = ["Conv2d", "LocalResponseNorm", "MaxPool2d", "AdaptiveAvgPool2d", "Linear"]
    boxes = table["type"].isin(drawn).sum()
    assert len(fig.layout.shapes) == 3 * boxes  # front, top and side face
    hover = fig.data[0].hovertext
    assert len(hover) == boxes and "BatchNorm2d" in hover[0] and "LocalResponseNorm" in hover[1]


def test_share_pool_and_stack_figures() -> None:
    fig = figures.stage_share_figure(layer_table("D"))
    params, macs = fig.data
    assert sum(params.y) == pytest.approx(100) and sum(macs.y) == pytest.approx(100)
    assert params.y[-1] > 85 and macs.y[-1] < 1  # the classifier: most weights, little compute
    windows = adaptive_pool_windows(32, 7)
    fig = figures.pool_windows_figure(windows, 32)
    assert list(fig.data[0].base) == [start for start, _ in windows]
    assert list(figures.conv_stack_figure(4).data[1].y) == [25 * 16, 49 * 16]
