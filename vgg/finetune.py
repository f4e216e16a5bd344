"""Fine-tuning: where the weights start, what stays frozen, and how fast each part learns.

A training from scratch and a fine-tuning run the same loop (``vgg.train``); they differ only in
the choices made here, in this order:

1. **Start weights** (``TrainConfig.init``): a fresh initialisation, torchvision's ImageNet
   weights, an earlier run's best checkpoint, or a state-dict file. Pretrained weights bring the
   normalisation they were trained with (ImageNet's mean and std), and a new last layer for this
   data set's classes unless an earlier run already had the same classes.
2. **Freezing** (``TrainConfig.freeze``): nothing, the convolutional ``features``, or everything
   but the last layer (``vgg.model.freeze``).
3. **Discriminative learning rates** (``TrainConfig.lr_ratio``): the features learn at
   ``lr × ratio`` and the classifier at ``lr`` (``vgg.model.param_groups``), 0.1 by default from
   pretrained weights, as in the notebook.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from vgg.checkpoints import reference_for
from vgg.errors import ConfigError
from vgg.model import VGG, build_vgg, freeze, load_pretrained, param_groups
from vgg.resources import check_config_memory
from vgg.runs import RunStore
from vgg.settings import choose_precision, resolve_device, runs_dir

if TYPE_CHECKING:
    from vgg.train import TrainConfig

Stats = tuple[float, float, float]


@dataclass
class Prepared:
    """A model ready to train, with what was needed to build it."""

    model: VGG
    classes: tuple[str, ...]
    mean: Stats  # the normalisation its inputs get
    std: Stats
    device: torch.device
    autocast_dtype: torch.dtype | None
    init_note: str  # where the weights came from, for the run's config.json
    # What the frozen layers' checkpoints refer to instead of storing them (vgg.checkpoints.reference_for)
    base: dict[str, Any] | None = None


def start_weights(cfg: TrainConfig, classes: tuple[str, ...], data_mean: Stats, data_std: Stats, *,
                  runs_root: Path | None = None) -> tuple[VGG, Stats, Stats, str]:
    """The model ``cfg.init`` names, with a head for ``classes``: (model, mean, std, note).

    From scratch the data set's own statistics normalise the inputs; pretrained weights bring
    theirs."""
    num_classes = len(classes)
    if cfg.init == "scratch":
        model = build_vgg(cfg.config, batch_norm=cfg.batch_norm, num_classes=num_classes)
        return model, data_mean, data_std, "random initialisation"
    if cfg.init == "imagenet":
        model, info = load_pretrained(cfg.config, batch_norm=cfg.batch_norm, num_classes=num_classes)
        return model, info.mean, info.std, f"ImageNet weights ({info.file_name}); new {num_classes}-class head"
    if cfg.init.startswith("run:"):
        return _from_run(cfg, cfg.init.removeprefix("run:"), classes, data_mean, data_std, runs_root)
    model, info = load_pretrained(cfg.config, batch_norm=cfg.batch_norm, num_classes=num_classes,
                                  weights_path=Path(cfg.init))
    return model, info.mean, info.std, f"weights from {Path(cfg.init).name}; new {num_classes}-class head"


def _from_run(cfg: TrainConfig, run_id: str, classes: tuple[str, ...], data_mean: Stats, data_std: Stats,
              runs_root: Path | None) -> tuple[VGG, Stats, Stats, str]:
    """An earlier run's best checkpoint; a new head unless it was trained on the same classes.

    ``load_checkpoint`` gives the full torchvision state dict even where the file is compact (a folded
    first Linear, a reference to the run it started from in turn): ``vgg.checkpoints``."""
    ckpt = RunStore(runs_root or runs_dir()).load_checkpoint(run_id, "best")
    meta = ckpt.get("meta", {})
    if meta.get("config") != cfg.config or bool(meta.get("batch_norm")) != cfg.batch_norm:
        raise ConfigError(
            f"run {run_id!r} is configuration {meta.get('config')!r} (batch norm {meta.get('batch_norm')}); "
            "choose the same configuration to start from it")
    with torch.device("meta"):  # no time spent initialising what the checkpoint overwrites
        model = build_vgg(cfg.config, batch_norm=cfg.batch_norm, num_classes=int(meta["num_classes"]))
    model.load_state_dict(ckpt["model"], strict=True, assign=True)  # (a fresh dict of tensors, shared by nobody)
    old_classes = tuple(meta.get("classes", ()))
    if old_classes != classes:
        model.classifier[6] = nn.Linear(4096, len(classes))
        note = f"run {run_id} ({len(old_classes)} classes); new {len(classes)}-class head"
    else:
        note = f"run {run_id} (same classes, head kept)"
    mean, std = data_mean, data_std
    if meta.get("mean") and meta.get("std"):
        mean, std = tuple(meta["mean"]), tuple(meta["std"])  # type: ignore[assignment]
    return model, mean, std, note


def prepare_model(cfg: TrainConfig, classes: tuple[str, ...], data_mean: Stats, data_std: Stats, *,
                  runs_root: Path | None = None) -> Prepared:
    """Build the model for ``cfg``: start weights (seeded), freezing, device and precision, and the
    reference its checkpoints make for what the freeze mode keeps unchanged (``Prepared.base``)."""
    device = resolve_device(cfg.device)
    # Refuse a run that would not fit before the kernel's OOM killer ends the whole server.
    check_config_memory(cfg, len(classes), device)
    torch.manual_seed(cfg.seed)
    model, mean, std, note = start_weights(cfg, classes, data_mean, data_std, runs_root=runs_root)
    for module in model.classifier:
        if isinstance(module, nn.Dropout):
            module.p = cfg.dropout
    freeze(model, cfg.freeze)
    base = None
    if cfg.freeze != "none":  # the digest of the start weights, before anything could change them
        store = RunStore(runs_root or runs_dir()) if runs_root or cfg.init.startswith("run:") else None
        base = reference_for(cfg, model.state_dict(), store=store)
    model.to(device)
    return Prepared(model, classes, mean, std, device, choose_precision(cfg.precision, device), note, base)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam (fused where available) or SGD with momentum over the discriminative parameter groups;
    each group remembers its peak learning rate for the schedule (``vgg.train.set_lr``)."""
    groups = param_groups(model, cfg.lr, cfg.effective_lr_ratio)
    for g in groups:
        g["peak_lr"] = g["lr"]
    if cfg.optimizer == "adam":
        try:
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=True)
        except (RuntimeError, TypeError):
            return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
