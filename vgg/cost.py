"""What a training will cost before it starts: multiply-adds, memory, and seconds per epoch.

Multiply-adds come from the layer table (``vgg.summary``), memory from ``vgg.resources``, and
time from a speed probe that runs the engine's own training step (``vgg.train.train_step``) on
this device: one step of ``PROBE_SMALL`` and one of ``PROBE_LARGE`` random images after a
warm-up. A VGG step has a large fixed part (the optimizer updates ~130 M parameters, most of them
in the first fully connected layer, whatever the batch) and a part that grows with the batch;
the two timings separate them.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch

from vgg.finetune import make_optimizer
from vgg.model import build_vgg, freeze
from vgg.resources import MemoryEstimate, estimate_training_memory
from vgg.settings import choose_precision, resolve_device
from vgg.speedups import switch as speedups
from vgg.summary import layer_table, table_totals
from vgg.train import TrainConfig, train_step

PROBE_SMALL = 2  # images in the probe's small step
PROBE_LARGE = 16  # and in its large one
# The probe runs on its own only when it is cheap (multiply-adds of its steps); larger models
# wait for a click, so opening the Train page never blocks for long.
PROBE_AUTO_MACS = 40e9


@dataclass(frozen=True)
class TrainingCost:
    """The arithmetic of one training, known without running it."""

    n_train: int  # training images per epoch
    n_val: int  # validation images per epoch
    steps_per_epoch: int
    forward_macs: int  # multiply-adds of one image's forward pass
    epoch_macs: float  # training ≈ 3 × forward per training image, 1 × per validation image
    memory: MemoryEstimate

    @property
    def probe_macs(self) -> float:
        """Multiply-adds the speed probe does (training ≈ 3 × forward)."""
        return 3.0 * self.forward_macs * (2 * PROBE_SMALL + PROBE_LARGE)

    @property
    def probe_is_cheap(self) -> bool:
        return self.probe_macs < PROBE_AUTO_MACS

    def epoch_seconds(self, per_step: float, per_image: float) -> float:
        """Seconds per epoch from the probe's fixed cost per step and cost per image."""
        return self.steps_per_epoch * per_step + self.n_train * per_image + self.n_val * per_image / 3


def training_cost(cfg: TrainConfig, num_classes: int, n_train: int, n_val: int) -> TrainingCost:
    """The cost of ``cfg`` on ``n_train`` training and ``n_val`` validation images."""
    totals = table_totals(layer_table(cfg.config, batch_norm=cfg.batch_norm, input_size=cfg.model_input_size,
                                      num_classes=num_classes))
    macs = int(totals["total_macs"])
    memory = estimate_training_memory(cfg.config, cfg.batch_norm, cfg.model_input_size, cfg.batch_size,
                                      num_classes, cfg.optimizer, freeze=cfg.freeze)
    return TrainingCost(n_train, n_val, math.ceil(n_train / cfg.batch_size), macs,
                        3.0 * macs * n_train + macs * n_val, memory)


def probe_key(cfg: TrainConfig, num_classes: int) -> tuple[Any, ...]:
    """What the speed of a step depends on: model, size, classes, device, optimizer, freezing,
    precision and the speed-up switch."""
    return (cfg.config, cfg.batch_norm, cfg.model_input_size, num_classes, cfg.device, cfg.optimizer,
            cfg.freeze, cfg.precision, cfg.speedups)


def speed_probe(cfg: TrainConfig, num_classes: int) -> tuple[float, float]:
    """(seconds per step, seconds per image) of ``cfg``'s training step on its device, measured once
    per ``probe_key`` (then remembered by this process)."""
    return _probe(*probe_key(cfg, num_classes))


@functools.lru_cache(maxsize=32)
def _probe(config: str, batch_norm: bool, size: int, num_classes: int, device: str, optimizer: str,
           freeze_mode: str, precision: str, fast: bool) -> tuple[float, float]:
    """The probe itself. Weights are filled with a constant: timing does not depend on their
    values, and a real initialisation of 130 M parameters would take longer than the probe."""
    cfg = TrainConfig(config=config, batch_norm=batch_norm, optimizer=optimizer, device=device,
                      precision=precision, freeze=freeze_mode, init="scratch" if freeze_mode == "none" else "imagenet",
                      speedups=fast, input_size=size)
    dev = resolve_device(device)
    with torch.device("meta"):
        model = build_vgg(config, batch_norm=batch_norm, num_classes=num_classes)
    model = model.to_empty(device=dev)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.fill_(1 if tensor.dtype == torch.long else 1e-3)
    freeze(model, freeze_mode)
    model.train()
    net: torch.nn.Module = model
    opt = make_optimizer(model, cfg)
    if fast:  # the step the training runs (vgg.train.start_training)
        speedups.accelerate(model)
        net = speedups.training_net(model, opt, map_side=max(1, size // 32), weight_decay=cfg.weight_decay)
    autocast = choose_precision(precision, dev)

    def step(batch: int) -> float:
        x = torch.randn(batch, 3, size, size, device=dev)
        if fast:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, num_classes, (batch,), device=dev)
        start = time.perf_counter()
        train_step(net, opt, x, y, autocast)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
        return time.perf_counter() - start

    step(PROBE_SMALL)  # warm-up: allocations, kernel choice, optimizer state
    step(PROBE_LARGE)  # and the large batch's buffers (its first step pays their page faults)
    small, large = step(PROBE_SMALL), step(PROBE_LARGE)
    per_image = max((large - small) / (PROBE_LARGE - PROBE_SMALL), large / PROBE_LARGE / 4)
    return max(small - PROBE_SMALL * per_image, 0.0), per_image
