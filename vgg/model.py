"""The VGG networks of Simonyan & Zisserman (2014), Table 1, with torchvision's layout and names.

All six configurations (A, A-LRN, B, C, D, E) live in one table, ``CONFIGS``, and one builder turns
an entry into layers. Module and parameter names equal torchvision's ``VGG``, so torchvision's
ImageNet state dicts of A, B, D and E (with and without batch norm) load with ``strict=True``.
"""

from __future__ import annotations

import http.client
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models import WeightsEnum

from vgg.errors import CheckpointError, ConfigError, WeightsUnavailableError
from vgg.safeload import load_weights_only

# Table 1 of the paper: ints are 3×3 convolutions (padding 1) with that many output channels,
# "1x1-N" a 1×1 convolution (padding 0) with N channels, "M" a 2×2 max-pool with stride 2 and
# "LRN" local response normalisation.
CONFIGS: dict[str, list[int | str]] = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "A-LRN": [64, "LRN", "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "C": [64, 64, "M", 128, 128, "M", 256, 256, "1x1-256", "M", 512, 512, "1x1-512", "M",
          512, 512, "1x1-512", "M"],
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
          512, 512, 512, 512, "M"],
}
CONFIG_NAMES: tuple[str, ...] = tuple(CONFIGS)

# Short labels for pickers: the paper's letter and the common name.
CONFIG_LABELS: dict[str, str] = {
    "A": "A · VGG11",
    "A-LRN": "A-LRN · VGG11 + LRN",
    "B": "B · VGG13",
    "C": "C · VGG16 with 1×1 convs",
    "D": "D · VGG16",
    "E": "E · VGG19",
}

# torchvision's model names; A-LRN and C were never published as pretrained models.
_TORCHVISION_NAMES: dict[str, str] = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}

# Krizhevsky et al. (2012): n = 5, alpha = 1e-4, beta = 0.75, k = 2. PyTorch (like Caffe) divides
# alpha by n inside the sum.
LRN_SETTINGS: dict[str, float] = {"size": 5, "alpha": 1e-4, "beta": 0.75, "k": 2.0}

POOL_SIZE = 7  # avgpool output is 7×7, so classifier[0] takes 512·7·7 = 25088 inputs
FREEZE_MODES: tuple[str, ...] = ("none", "features", "all_but_last")

# Fallbacks only: prefer the mean/std of the weights' own transforms.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def check_config(config: str) -> str:
    """Return ``config`` if it names a row of Table 1, else raise ``ConfigError`` with the choices."""
    if config not in CONFIGS:
        raise ConfigError(f"unknown config {config!r}; choose one of {', '.join(CONFIG_NAMES)}")
    return config


def check_num_classes(num_classes: int) -> int:
    """Return ``num_classes`` if it is an integer of at least 2, else raise ``ConfigError``."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ConfigError(f"num_classes must be an integer of at least 2, got {num_classes!r}")
    return num_classes


def conv_spec(entry: int | str) -> tuple[int, int]:
    """``(out_channels, kernel_size)`` of a conv entry: ``64 -> (64, 3)``, ``"1x1-256" -> (256, 1)``."""
    if isinstance(entry, int):
        return entry, 3
    kernel, _, channels = entry.partition("-")
    size = int(kernel.split("x")[0])
    return int(channels), size


def make_layers(cfg: list[int | str], *, batch_norm: bool = False) -> nn.Sequential:
    """Turn one configuration list into ``features`` (torchvision's layer order and indices)."""
    layers: list[nn.Module] = []
    in_channels = 3
    for entry in cfg:
        if entry == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif entry == "LRN":
            layers.append(nn.LocalResponseNorm(**LRN_SETTINGS))
        else:
            out_channels, kernel = conv_spec(entry)
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=kernel, padding=kernel // 2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
            in_channels = out_channels
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """torchvision's VGG: the same attribute and parameter names and the same forward,
    ``features`` → ``avgpool`` → ``flatten`` → ``classifier``.

    ``forward_with_hidden(x) -> (logits, h)`` also returns ``h``, the 4096-d input of the last
    Linear (the representation the Evaluate page projects). The model holds no speed tricks;
    ``vgg.speedups`` applies them from outside.
    """

    def __init__(self, features: nn.Sequential, *, num_classes: int = 1000, dropout: float = 0.5,
                 config_name: str = "", batch_norm: bool = False, init_weights: bool = True) -> None:
        super().__init__()
        self.config_name = config_name
        self.batch_norm = batch_norm
        self.num_classes = num_classes
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((POOL_SIZE, POOL_SIZE))
        self.classifier = nn.Sequential(
            nn.Linear(512 * POOL_SIZE * POOL_SIZE, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),
            nn.ReLU(True),
            nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            for module in self.modules():
                init_module(module)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(B, num_classes)`` for images ``(B, 3, H, W)``."""
        x = self.features(x)  # (B, 512, H/32, W/32)
        x = self.avgpool(x)  # (B, 512, 7, 7)
        x = torch.flatten(x, 1)  # (B, 25088)
        return self.classifier(x)

    def forward_with_hidden(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(logits, h)``: logits ``(B, num_classes)`` and penultimate activations ``h`` ``(B, 4096)``."""
        return self.head_with_hidden(self.features(x))

    def head_with_hidden(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Pool and classifier on a feature map ``(B, 512, h, w)``: ``(logits, h)``."""
        h = self.classifier[:6](torch.flatten(self.avgpool(x), 1))  # (B, 4096)
        return self.classifier[6](h), h


def init_module(module: nn.Module) -> None:
    """torchvision's VGG initialisation for one module (Kaiming convs, N(0, 0.01) Linears)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if module.bias is not None:
            nn.init.constant_(module.bias, 0)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.constant_(module.weight, 1)
        nn.init.constant_(module.bias, 0)
    elif isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, 0, 0.01)
        nn.init.constant_(module.bias, 0)


def _build(config: str, batch_norm: bool, num_classes: int, dropout: float, init_weights: bool) -> VGG:
    check_config(config)
    check_num_classes(num_classes)
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"dropout must be in [0, 1), got {dropout!r}")
    features = make_layers(CONFIGS[config], batch_norm=batch_norm)
    return VGG(features, num_classes=num_classes, dropout=dropout, config_name=config,
               batch_norm=batch_norm, init_weights=init_weights)


def build_vgg(config: str, *, batch_norm: bool = False, num_classes: int = 1000, dropout: float = 0.5) -> VGG:
    """A freshly initialised VGG of Table 1 (``config`` in ``CONFIG_NAMES``), optionally with batch norm."""
    return _build(config, batch_norm, num_classes, dropout, init_weights=True)


def torchvision_name(config: str, batch_norm: bool) -> str | None:
    """torchvision's name of the model (``"vgg11_bn"``); None for A-LRN and C, which it lacks."""
    base = _TORCHVISION_NAMES.get(check_config(config))
    if base is None:
        return None
    return f"{base}_bn" if batch_norm else base


def model_name(config: str, batch_norm: bool) -> str:
    """A lowercase name for any config: torchvision's where it has one, else ``"vgg11_lrn"``/``"vgg16_c"``."""
    name = torchvision_name(config, batch_norm)
    if name is None:
        name = {"A-LRN": "vgg11_lrn", "C": "vgg16_c"}[config] + ("_bn" if batch_norm else "")
    return name


def imagenet_weights(config: str, batch_norm: bool) -> WeightsEnum:
    """torchvision's ImageNet weights enum member, e.g. ``VGG11_BN_Weights.IMAGENET1K_V1``."""
    name = torchvision_name(config, batch_norm)
    if name is None:
        raise WeightsUnavailableError(
            f"no published ImageNet weights for config {config}: the paper's models A-LRN and C have no "
            "published ImageNet weights (torchvision has A, B, D and E); train it from scratch instead")
    return torchvision.models.get_model_weights(name).IMAGENET1K_V1


def weights_cache_dir() -> Path:
    """torchvision's weight cache: ``$TORCH_HOME/hub/checkpoints`` (``torch.hub.get_dir()/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def weights_file_name(config: str, batch_norm: bool) -> str:
    """The file name torchvision stores the ImageNet weights under, e.g. ``vgg16_bn-6c64b313.pth``."""
    return os.path.basename(imagenet_weights(config, batch_norm).url)


def pretrained_available(config: str, batch_norm: bool) -> bool:
    """True when torchvision's cached ImageNet file for the model exists; never downloads."""
    if torchvision_name(config, batch_norm) is None:
        return False
    return (weights_cache_dir() / weights_file_name(config, batch_norm)).is_file()


def load_state_dict_file(path: Path | str) -> dict[str, Tensor]:
    """Read a state dict with ``torch.load(..., weights_only=True)``; anything else: ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"state-dict file {str(path)!r} does not exist")
    obj = load_weights_only(path)
    if not isinstance(obj, Mapping) or not obj:
        raise CheckpointError(f"{path.name} holds a {type(obj).__name__}, not a state dict "
                              "(a mapping of parameter names to tensors)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path.name} is not a state dict: entry {bad[0]!r} is not a name with a "
                              "tensor")
    return dict(obj)


@dataclass(frozen=True)
class PretrainedInfo:
    """Where pretrained weights came from and what they expect."""

    name: str  # model name, e.g. "vgg16_bn"
    categories: tuple[str, ...]  # class names of the original 1000-way head; () when unknown
    mean: tuple[float, float, float]  # input normalisation the weights were trained with
    std: tuple[float, float, float]
    file_name: str  # basename of the weights file
    source: str  # "cache", "download" or "file"


def _limited(items: list[str], limit: int = 3) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def check_state_fits(model: nn.Module, state: Mapping[str, Tensor], what: str) -> None:
    """Raise ``CheckpointError`` "<what>: missing …; unexpected …; wrong shape …" when ``state``
    does not load into ``model`` with ``strict=True``."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} is {tuple(state[k].shape)} instead of {expected[k]}"
              for k in expected if k in state and tuple(state[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {_limited(missing)}")
    if unexpected:
        problems.append(f"unexpected {_limited(unexpected)}")
    if shapes:
        problems.append(f"wrong shape: {_limited(shapes)}")
    if problems:
        raise CheckpointError(f"{what}: " + "; ".join(problems))


def _weights_state(weights: WeightsEnum, name: str, allow_download: bool,
                   progress: bool) -> tuple[dict[str, Tensor], str]:
    """The state dict from torchvision's cache, downloading it there first if allowed."""
    folder = weights_cache_dir()
    file_name = os.path.basename(weights.url)
    path = folder / file_name
    if path.is_file():
        return load_state_dict_file(path), "cache"
    advice = (f"put {file_name} (from {weights.url}) into {folder}, or set TORCH_HOME to a folder whose "
              "hub/checkpoints holds it, or choose a local .pth state-dict file")
    if not allow_download:
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not cached and downloads are off: {advice}")
    match = torch.hub.HASH_REGEX.search(file_name)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        # download_url_to_file writes to a temporary file first, so a failure leaves no partial file.
        torch.hub.download_url_to_file(weights.url, str(path), match.group(1) if match else None,
                                       progress=progress)
    except (OSError, RuntimeError, ValueError, http.client.HTTPException) as e:
        reason = " ".join(str(e).split())[:160] or type(e).__name__
        raise WeightsUnavailableError(
            f"ImageNet weights for {name} are not cached and could not be downloaded ({reason}): {advice}"
        ) from e
    return load_state_dict_file(path), "download"


def load_pretrained(config: str, *, batch_norm: bool, num_classes: int | None,
                    weights_path: Path | str | None = None, allow_download: bool = True,
                    progress: bool = False) -> tuple[VGG, PretrainedInfo]:
    """A VGG with pretrained weights and a fresh last layer ``Linear(4096, num_classes)``
    (``num_classes=None`` keeps the weights' own head, e.g. ImageNet's 1000 classes).

    Without ``weights_path`` the ImageNet weights come from torchvision's cache
    (``$TORCH_HOME/hub/checkpoints``), downloaded there when missing and ``allow_download`` is True
    (``progress`` draws torch's download bar on stderr). With ``weights_path`` a local state-dict
    file is read instead (any config; any head size). Raises ``WeightsUnavailableError`` when the
    weights cannot be had and ``CheckpointError`` when the file is not a fitting state dict.
    """
    check_config(config)
    if num_classes is not None:
        check_num_classes(num_classes)
    name = model_name(config, batch_norm)
    if weights_path is None:
        weights: WeightsEnum | None = imagenet_weights(config, batch_norm)  # raises for A-LRN and C
        state, source = _weights_state(weights, name, allow_download, progress)
        file_name = os.path.basename(weights.url)
    else:
        published = torchvision_name(config, batch_norm) is not None
        weights = imagenet_weights(config, batch_norm) if published else None
        state, source, file_name = load_state_dict_file(weights_path), "file", Path(weights_path).name

    head = state.get("classifier.6.weight")
    head_classes = head.shape[0] if isinstance(head, Tensor) and head.dim() == 2 else 1000
    with torch.device("meta"):  # no time spent initialising what the state dict overwrites
        features = make_layers(CONFIGS[config], batch_norm=batch_norm)
        model = VGG(features, num_classes=head_classes, config_name=config, batch_norm=batch_norm,
                    init_weights=False)
    for key in model.state_dict():  # old BN files lack the counter; BatchNorm would default it to 0
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    check_state_fits(model, state, f"{file_name} does not fit {name}")
    model.load_state_dict(state, strict=True, assign=True)

    if num_classes is not None:
        model.classifier[6] = nn.Linear(4096, num_classes)
        init_module(model.classifier[6])
        model.num_classes = num_classes

    categories: tuple[str, ...] = ()
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None:
        meta_categories = tuple(weights.meta.get("categories") or ())
        if len(meta_categories) == head_classes:
            categories = meta_categories
        transforms = weights.transforms()
        mean, std = tuple(transforms.mean), tuple(transforms.std)
    info = PretrainedInfo(name=name, categories=categories, mean=mean, std=std, file_name=file_name,
                          source=source)
    return model, info


def freeze(model: VGG, mode: str) -> None:
    """Set ``requires_grad``: ``"none"`` trains all, ``"features"`` freezes the convolutional part,
    ``"all_but_last"`` trains only ``classifier[6]``."""
    if mode not in FREEZE_MODES:
        raise ConfigError(f"unknown freeze mode {mode!r}; choose one of {', '.join(FREEZE_MODES)}")
    for param in model.parameters():
        param.requires_grad_(mode == "none")
    if mode == "features":
        for param in model.classifier.parameters():
            param.requires_grad_(True)
    if mode == "all_but_last":
        for param in model.classifier[6].parameters():
            param.requires_grad_(True)


def param_groups(model: VGG, lr: float, ratio: float = 0.1) -> list[dict[str, Any]]:
    """Optimizer groups for discriminative fine-tuning: features at ``lr × ratio``, classifier at ``lr``.

    Frozen parameters are left out, and so is a group with nothing to train.
    """
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ConfigError(f"learning rate must be a positive number, got {lr!r}")
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and ratio > 0):
        raise ConfigError(f"learning-rate ratio must be a positive number, got {ratio!r}")
    groups = []
    parts = (("features", model.features, lr * ratio), ("classifier", model.classifier, lr))
    for name, module, group_lr in parts:
        params = [p for p in module.parameters() if p.requires_grad]
        if params:
            groups.append({"params": params, "lr": group_lr, "name": name})
    return groups
