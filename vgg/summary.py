"""What a VGG is made of: the layer table, its totals, the paper's Table 1 and small lesson maths.

Numbers are measured, not typed in: parameters are counted on the model, multiply-adds come from
``torch.utils.flop_counter`` (a forward pass on the ``meta`` device, so no arithmetic is done and
even VGG19 at 512×512 takes milliseconds), shapes from forward hooks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from vgg.errors import ConfigError
from vgg.model import CONFIG_NAMES, CONFIGS, POOL_SIZE, build_vgg, check_config, check_num_classes, conv_spec

MIN_INPUT_SIZE = 32  # five 2×2 max-pools need at least 32 pixels
MAX_INPUT_SIZE = 512
BYTES_PER_VALUE = 4  # fp32 activations

LAYER_COLUMNS: tuple[str, ...] = (
    "name", "stage", "type", "kernel", "stride", "padding", "output_shape", "params", "trainable_params",
    "macs", "receptive_field", "jump", "activation_bytes",
)


def check_input_size(input_size: int) -> int:
    """Return ``input_size`` if it is an integer from 32 to 512, else raise ``ConfigError``."""
    if (isinstance(input_size, bool) or not isinstance(input_size, int)
            or not MIN_INPUT_SIZE <= input_size <= MAX_INPUT_SIZE):
        raise ConfigError(f"input size must be an integer from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, "
                          f"got {input_size!r}")
    return input_size


def layer_table(config: str, *, batch_norm: bool = False, input_size: int = 224,
                num_classes: int = 1000) -> pd.DataFrame:
    """One row per leaf module of the model, for one ``input_size × input_size`` RGB image.

    Columns (``LAYER_COLUMNS``): ``name`` ("features.0"), ``stage`` ("block 1" … "block 5",
    "avgpool", "classifier"), ``type``, ``kernel``/``stride``/``padding`` (nullable ints),
    ``output_shape`` ("64×224×224"), ``params``, ``trainable_params``, ``macs`` (forward
    multiply-adds), ``receptive_field`` and ``jump`` in input pixels (null where a unit sees the
    whole image), ``activation_bytes`` (fp32 output of one image). Cached; returns a copy.
    """
    check_config(config)
    check_num_classes(num_classes)
    check_input_size(input_size)
    return _cached_layer_table(config, bool(batch_norm), input_size, num_classes).copy()


@functools.lru_cache(maxsize=64)
def _cached_layer_table(config: str, batch_norm: bool, input_size: int, num_classes: int) -> pd.DataFrame:
    with torch.device("meta"):
        model = build_vgg(config, batch_norm=batch_norm, num_classes=num_classes)
    return model_layer_table(model, input_size=input_size)


def model_layer_table(model: nn.Module, *, input_size: int = 224) -> pd.DataFrame:
    """The layer table of an existing VGG (e.g. a frozen one: ``trainable_params`` then differs).

    Runs one forward pass of a ``meta`` image (torchvision's computation: no speed-ups).
    """
    check_input_size(input_size)
    leaves = [(name, module) for name, module in model.named_modules() if name and not any(module.children())]
    shapes: dict[str, tuple[int, ...]] = {}
    handles = [module.register_forward_hook(_shape_recorder(shapes, name)) for name, module in leaves]
    counter = FlopCounterMode(display=False)
    try:
        image = torch.empty(1, 3, input_size, input_size, device="meta")
        with torch.no_grad(), counter:
            model(image)
    finally:
        for handle in handles:
            handle.remove()
    # Keys look like "VGG.features.0"; drop the root's class name.
    counts = counter.get_flop_counts()
    flops = {key.split(".", 1)[1]: sum(ops.values()) for key, ops in counts.items() if "." in key}

    rows = []
    geometry = _Geometry(size=input_size)
    block = 1
    for name, module in leaves:
        shape = shapes[name]
        stage = name.split(".")[0]
        if stage == "features":
            stage = f"block {block}"
            block += isinstance(module, nn.MaxPool2d)
        kernel, stride, padding = _window(module)
        rows.append({
            "name": name,
            "stage": stage,
            "type": type(module).__name__,
            "kernel": kernel,
            "stride": stride,
            "padding": padding,
            "output_shape": "×".join(str(d) for d in shape[1:]),
            "params": sum(p.numel() for p in module.parameters()),
            "trainable_params": sum(p.numel() for p in module.parameters() if p.requires_grad),
            "macs": flops.get(name, 0) // 2,
            **geometry.step(module, shape),
            "activation_bytes": math.prod(shape[1:]) * BYTES_PER_VALUE,
        })
    table = pd.DataFrame(rows, columns=list(LAYER_COLUMNS))
    for column in ("kernel", "stride", "padding", "receptive_field", "jump"):
        table[column] = table[column].astype("Int64")
    for column in ("params", "trainable_params", "macs", "activation_bytes"):
        table[column] = table[column].astype("int64")
    return table


def _shape_recorder(shapes: dict[str, tuple[int, ...]], name: str) -> Callable[..., None]:
    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        shapes[name] = tuple(output.shape)
    return hook


def _window(module: nn.Module) -> tuple[int | None, int | None, int | None]:
    """(kernel, stride, padding) of square convolutions and pools; Nones elsewhere."""
    if isinstance(module, (nn.Conv2d, nn.MaxPool2d)):
        return _first(module.kernel_size), _first(module.stride), _first(module.padding)
    return None, None, None


def _first(value: int | tuple[int, ...]) -> int:
    return value[0] if isinstance(value, tuple) else value


class _Geometry:
    """Receptive field and jump (product of strides) along the layers, in input pixels."""

    def __init__(self, size: int) -> None:
        self.size = size  # spatial size of the current map
        self.receptive_field: int | None = 1
        self.jump: int | None = 1

    def step(self, module: nn.Module, shape: tuple[int, ...]) -> dict[str, int | None]:
        kernel, stride, _ = _window(module)
        if kernel is not None and self.jump is not None:
            self.receptive_field += (kernel - 1) * self.jump
            self.jump *= stride
        elif isinstance(module, nn.AdaptiveAvgPool2d) and self.jump is not None:
            if self.size % POOL_SIZE == 0:  # then it is an ordinary pool with kernel = stride
                window = self.size // POOL_SIZE
                self.receptive_field += (window - 1) * self.jump
                self.jump *= window
            else:  # overlapping or repeating windows: no single receptive field
                self.receptive_field = self.jump = None
        elif isinstance(module, nn.Linear):  # every output sees the whole image
            self.receptive_field = self.jump = None
        if len(shape) == 4:
            self.size = shape[-1]
        return {"receptive_field": self.receptive_field, "jump": self.jump}


def table_totals(table: pd.DataFrame) -> dict[str, int]:
    """Totals of a layer table: ``total_params``, ``trainable_params``, ``total_macs``,
    ``conv_params``, ``conv_macs``, ``fc_params``, ``fc_macs``, ``bn_params``,
    ``activation_bytes`` (all layer outputs of one image) and ``param_bytes`` (fp32)."""
    conv = table["type"] == "Conv2d"
    fc = table["type"] == "Linear"
    bn = table["type"] == "BatchNorm2d"
    total_params = int(table["params"].sum())
    return {
        "total_params": total_params,
        "trainable_params": int(table["trainable_params"].sum()),
        "total_macs": int(table["macs"].sum()),
        "conv_params": int(table.loc[conv, "params"].sum()),
        "conv_macs": int(table.loc[conv, "macs"].sum()),
        "fc_params": int(table.loc[fc, "params"].sum()),
        "fc_macs": int(table.loc[fc, "macs"].sum()),
        "bn_params": int(table.loc[bn, "params"].sum()),
        "activation_bytes": int(table["activation_bytes"].sum()),
        "param_bytes": total_params * BYTES_PER_VALUE,
    }


def format_count(value: int) -> str:
    """``143667240 -> "143,667,240"``."""
    return f"{int(value):,}"


def format_si(value: float, digits: int = 2) -> str:
    """``19632062464 -> "19.63 G"`` (k, M, G, T)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= factor:
            return f"{value / factor:.{digits}f} {prefix}"
    return f"{value:.0f}"


def format_bytes(value: int) -> str:
    """``548_000_000 -> "522.6 MiB"`` (binary units)."""
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"  # pragma: no cover - loop always returns


def readable_layer_table(table: pd.DataFrame) -> pd.DataFrame:
    """The layer table for people: one text ``window`` column ("3×3 /1 pad 1") instead of kernel,
    stride and padding, and receptive field / jump as text ("whole image" after the pool);
    counts stay integers so a UI can format them."""
    def window(row: pd.Series) -> str:
        if pd.isna(row["kernel"]):
            return ""
        pad = f" pad {row['padding']}" if row["padding"] else ""
        return f"{row['kernel']}×{row['kernel']} /{row['stride']}{pad}"

    def pixels(value: float | int) -> str:
        return "whole image" if pd.isna(value) else f"{int(value)} px"

    return pd.DataFrame({
        "layer": table["name"],
        "type": table["type"],
        "window": table.apply(window, axis=1),
        "output": table["output_shape"],
        "parameters": table["params"],
        "trainable": table["trainable_params"],
        "multiply-adds": table["macs"],
        "receptive field": table["receptive_field"].map(pixels),
        "jump": table["jump"].map(pixels),
        "output memory": table["activation_bytes"],
    })


def format_layer_table(table: pd.DataFrame) -> str:
    """The layer table as aligned plain text with thousands separators, plus a totals line."""
    def cell(value: object) -> str:
        return "–" if value is None or value is pd.NA else str(value)

    header = ("layer", "type", "k/s/p", "output", "params", "MACs", "RF", "jump", "memory")
    lines = []
    for row in table.itertuples(index=False):
        window = "" if row.kernel is pd.NA else f"{row.kernel}/{row.stride}/{row.padding}"
        lines.append((row.name, row.type, window, row.output_shape, format_count(row.params),
                      format_count(row.macs), cell(row.receptive_field), cell(row.jump),
                      format_bytes(row.activation_bytes)))
    totals = table_totals(table)
    lines.append(("total", "", "", "", format_count(totals["total_params"]),
                  format_count(totals["total_macs"]), "", "", format_bytes(totals["activation_bytes"])))
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    left = {0, 1, 3}  # text columns; numbers align right

    def render(line: tuple[str, ...]) -> str:
        return "  ".join(str(v).ljust(w) if i in left else str(v).rjust(w)
                         for i, (v, w) in enumerate(zip(line, widths, strict=True))).rstrip()

    rule = "  ".join("-" * w for w in widths)
    body = [render(header), rule, *(render(line) for line in lines[:-1]), rule, render(lines[-1])]
    summary = (f"{format_count(totals['total_params'])} parameters "
               f"({format_count(totals['trainable_params'])} trainable), "
               f"{format_si(totals['total_macs'])}multiply-adds per image")
    return "\n".join([*body, summary])


def paper_notation(entry: int | str) -> str:
    """A config entry in the paper's notation: ``64 -> "conv3-64"``, ``"1x1-256" -> "conv1-256"``."""
    if entry == "M":
        return "maxpool"
    if entry == "LRN":
        return "LRN"
    channels, kernel = conv_spec(entry)
    return f"conv{kernel}-{channels}"


def _blocks(config: str) -> list[list[int | str]]:
    """The entries of each convolutional block, without the closing max-pool."""
    blocks: list[list[int | str]] = [[]]
    for entry in CONFIGS[config]:
        if entry == "M":
            blocks.append([])
        else:
            blocks[-1].append(entry)
    return blocks[:-1]


def weight_layers(config: str) -> int:
    """Number of weight layers (convolutions and fully connected): 11 for A, 19 for E."""
    return sum(1 for entry in CONFIGS[check_config(config)] if entry not in ("M", "LRN")) + 3


def paper_table1(num_classes: int = 1000) -> pd.DataFrame:
    """Table 1 of the paper, generated from ``CONFIGS``: columns A, A-LRN, B, C, D, E.

    Layers are aligned by block (a block's rows are filled from the top, "" where a column has
    fewer layers), then "maxpool"; after the fifth block "FC-4096", "FC-4096", "FC-1000", "soft-max".
    """
    blocks = {config: _blocks(config) for config in CONFIG_NAMES}
    rows: list[tuple[str, list[str]]] = []
    for b in range(len(blocks["A"])):
        depth = max(len(blocks[config][b]) for config in CONFIG_NAMES)
        for i in range(depth):
            cells = [paper_notation(blocks[c][b][i]) if i < len(blocks[c][b]) else "" for c in CONFIG_NAMES]
            rows.append((f"block {b + 1} · {i + 1}", cells))
        rows.append((f"pool {b + 1}", ["maxpool"] * len(CONFIG_NAMES)))
    for label, cell in (("fc 1", "FC-4096"), ("fc 2", "FC-4096"), ("fc 3", f"FC-{num_classes}"),
                        ("output", "soft-max")):
        rows.append((label, [cell] * len(CONFIG_NAMES)))
    table = pd.DataFrame([cells for _, cells in rows], columns=list(CONFIG_NAMES),
                         index=[label for label, _ in rows])
    table.index.name = "layer"
    return table


def adaptive_pool_windows(in_size: int, out_size: int) -> list[tuple[int, int]]:
    """The windows ``[start, end)`` of ``AdaptiveAvgPool`` along one axis, as PyTorch computes them:
    ``start = floor(i·in/out)``, ``end = ceil((i+1)·in/out)``. ``(32, 7)`` gives overlapping windows."""
    for label, value in (("input size", in_size), ("output size", out_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{label} must be a positive integer, got {value!r}")
    return [((i * in_size) // out_size, -((-(i + 1) * in_size) // out_size)) for i in range(out_size)]


def conv_stack_weights(channels: int, depth: int) -> tuple[int, int]:
    """Weights of ``depth`` stacked 3×3 convolutions vs one convolution with the same receptive field.

    Both keep ``channels`` channels and ignore biases: ``(depth·9·C², (2·depth+1)²·C²)``; two 3×3
    layers see 5×5 with 18C² instead of 25C², three see 7×7 with 27C² instead of 49C².
    """
    for label, value in (("channels", channels), ("depth", depth)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{label} must be a positive integer, got {value!r}")
    return depth * 9 * channels ** 2, (2 * depth + 1) ** 2 * channels ** 2


def trainable_by_freeze(config: str, *, batch_norm: bool = False, num_classes: int = 10) -> dict[str, int]:
    """Parameters that learn under each freeze mode (``"none"``, ``"features"``, ``"all_but_last"``),
    and the ``"total"``: with ``features`` frozen only the classifier learns, with ``all_but_last``
    only its last layer (4096 weights per class plus a bias)."""
    totals = table_totals(layer_table(config, batch_norm=batch_norm, input_size=MIN_INPUT_SIZE,
                                      num_classes=num_classes))
    return {"none": totals["total_params"], "features": totals["fc_params"],
            "all_but_last": 4096 * num_classes + num_classes, "total": totals["total_params"]}
