"""Memory preflight for training, and small process measurements for the benchmarks.

A training that does not fit is worse than one refused: on Linux the kernel's OOM killer ends
the whole server (every pupil's session with it) long before Python sees a ``MemoryError``. So
before a run starts, ``check_training_memory`` compares an estimate of what it needs with what
the device has free and refuses, with one line naming the sizes, when it would not fit.

The estimate (fp32 throughout; bf16 autocast only makes it pessimistic):

- weights: every parameter, 4 bytes each (from ``vgg.summary.layer_table``);
- gradients: one per trainable parameter;
- optimizer state: Adam keeps two moments per trainable parameter, SGD with momentum one;
- activations: the layer table's ``activation_bytes`` (every layer output of one image) × batch
  × ``ACTIVATION_FACTOR``. Measured on the CPU for VGG11-BN (64–224 px, batch 8–32), the peak
  of a training step beyond weights, gradients and optimizer state is 0.9–1.4 × the table's
  figure (autograd keeps most outputs for the backward pass, in-place ReLUs share theirs, the
  backward pass's own buffers are short-lived). The factor 2 is a margin for what the table
  does not see: the allocator's caching and fragmentation, oneDNN / cuDNN workspaces and the
  float copies of the batch made by augmentation and upsampling. (Peaks are read from the
  process's own ``VmHWM``: ``getrusage``'s ``ru_maxrss`` keeps the parent's peak across
  ``fork`` + ``exec``, which once made a step launched from a 4 GB test process look 2 GB larger.)
  With frozen features, no activation of the feature extractor is kept for a backward pass;
  only the largest layer transition (its input and output) is live at once.
"""

from __future__ import annotations

import math
import os
import resource
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vgg.errors import ConfigError, VGGError
from vgg.summary import BYTES_PER_VALUE, layer_table

ACTIVATION_FACTOR = 2.0  # × the layer table's activations: see the module docstring
USABLE_FRACTION = 0.85  # a run may plan on this share of the free memory, no more
OPTIMIZER_STATES = {"adam": 2, "sgd": 1}  # fp32 tensors per trainable parameter (SGD: momentum)
FREEZE_MODES = ("none", "features", "all_but_last")


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes a training step needs at its peak, by kind (see the module docstring)."""

    params_bytes: int  # all weights (fp32)
    optimizer_bytes: int  # optimizer state of the trainable weights (Adam: 2 moments)
    activation_bytes: int  # layer outputs kept for the backward pass, × ACTIVATION_FACTOR
    total_bytes: int  # params + gradients + optimizer + activations
    gradient_bytes: int = 0  # one gradient per trainable weight

    def describe(self) -> str:
        """One line: the total and its parts in GB."""
        return (f"about {gigabytes(self.total_bytes)} (weights {gigabytes(self.params_bytes)}, gradients "
                f"{gigabytes(self.gradient_bytes)}, optimizer {gigabytes(self.optimizer_bytes)}, activations "
                f"{gigabytes(self.activation_bytes)})")


def gigabytes(value: float) -> str:
    """``38_200_000_000 -> "38.2 GB"`` (decimal, as disks and task managers show memory to people)."""
    return f"{value / 1e9:.1f} GB"


def _check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a whole number ≥ 1, got {value!r}")
    return value


def estimate_training_memory(config: str, batch_norm: bool, input_size: int, batch_size: int,
                             num_classes: int, optimizer: str, *, freeze: str = "none") -> MemoryEstimate:
    """Peak memory of one training step of VGG ``config`` on ``input_size``-pixel images.

    ``optimizer`` is "adam" or "sgd" (with momentum), ``freeze`` one of ``FREEZE_MODES``.
    Nothing is allocated: the numbers come from the layer table (a ``meta``-device pass).
    """
    _check_positive_int("batch size", batch_size)
    if optimizer not in OPTIMIZER_STATES:
        raise ConfigError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZER_STATES)}")
    if freeze not in FREEZE_MODES:
        raise ConfigError(f"unknown freeze mode {freeze!r}; choose one of {', '.join(FREEZE_MODES)}")
    table = layer_table(config, batch_norm=batch_norm, input_size=input_size, num_classes=num_classes)
    is_feature = table["name"].str.startswith("features.")
    total_params = int(table["params"].sum())
    if freeze == "none":
        trainable = total_params
        kept = int(table["activation_bytes"].sum())
    else:
        last = table[table["type"] == "Linear"].iloc[-1]
        trainable = (int(last["params"]) if freeze == "all_but_last"
                     else int(table.loc[~is_feature, "params"].sum()))
        feature_out = table.loc[is_feature, "activation_bytes"].astype("int64").tolist()
        transient = max((a + b for a, b in zip([3 * input_size ** 2 * BYTES_PER_VALUE] + feature_out,
                                                feature_out)), default=0)
        kept = int(table.loc[~is_feature, "activation_bytes"].sum()) + transient
    params_bytes = total_params * BYTES_PER_VALUE
    gradient_bytes = trainable * BYTES_PER_VALUE
    optimizer_bytes = OPTIMIZER_STATES[optimizer] * trainable * BYTES_PER_VALUE
    activation_bytes = int(math.ceil(kept * batch_size * ACTIVATION_FACTOR))
    return MemoryEstimate(
        params_bytes=params_bytes, optimizer_bytes=optimizer_bytes, activation_bytes=activation_bytes,
        total_bytes=params_bytes + gradient_bytes + optimizer_bytes + activation_bytes,
        gradient_bytes=gradient_bytes)


# ------------------------------------------------------------------------------ free memory


def _meminfo_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    try:
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024  # the kernel writes kB (KiB)
    except (OSError, ValueError, IndexError):
        return None
    return None


def _sysconf_available() -> int | None:
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (cgroup v2) means no limit


def _cgroup_available(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """What the container's memory limit leaves free (reclaimable file cache counted as free)."""
    for limit_file, usage_file in (("memory.max", "memory.current"),  # cgroup v2
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):  # v1
        limit, usage = _read_int(root / limit_file), _read_int(root / usage_file)
        if limit is None or usage is None or limit >= 1 << 60:  # v1 writes a huge number for "none"
            continue
        cache = 0
        stat = root / Path(limit_file).parent / "memory.stat"
        try:
            for line in stat.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key in ("inactive_file", "total_inactive_file"):
                    cache = int(value)
                    break
        except (OSError, ValueError):
            pass
        return max(0, limit - max(0, usage - cache))
    return None


def available_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Memory free for a new run on ``device``, in bytes; 0 when it cannot be found out.

    CPU (and Apple MPS, whose memory is the system's): ``MemAvailable`` of ``/proc/meminfo``,
    else ``os.sysconf``, and no more than a container's cgroup limit leaves. CUDA: the free
    memory ``torch.cuda.mem_get_info`` reports for that GPU.
    """
    device = torch.device(device)
    if device.type == "cuda":
        try:
            free, _total = torch.cuda.mem_get_info(device)
        except (RuntimeError, AssertionError, ValueError):
            return 0
        return int(free)
    candidates = [value for value in (_meminfo_available() or _sysconf_available(), _cgroup_available())
                  if value is not None]
    return int(min(candidates)) if candidates else 0


def check_training_memory(config: str, batch_norm: bool, input_size: int, batch_size: int, num_classes: int,
                          optimizer: str, *, device: torch.device | str = "cpu", freeze: str = "none",
                          available: int | None = None, usable_fraction: float = USABLE_FRACTION
                          ) -> MemoryEstimate:
    """Refuse a run that would not fit: ``VGGError`` when the estimate exceeds ``usable_fraction``
    of the free memory (``available`` bytes, default measured on ``device``). Returns the estimate.

    Where the free memory cannot be found out (0), nothing is refused.
    """
    estimate = estimate_training_memory(config, batch_norm, input_size, batch_size, num_classes, optimizer,
                                        freeze=freeze)
    free = available_memory_bytes(device) if available is None else int(available)
    if free > 0 and estimate.total_bytes > usable_fraction * free:
        where = "on the GPU" if torch.device(device).type == "cuda" else "in memory"
        raise VGGError(
            f"this run needs about {gigabytes(estimate.total_bytes)} but only {gigabytes(free)} are free "
            f"{where} (batch size {batch_size}, {input_size}×{input_size} px input); "
            "use a smaller batch size or input size")
    return estimate


def check_config_memory(cfg: Any, num_classes: int, device: torch.device | str,
                        available: int | None = None) -> MemoryEstimate:
    """``check_training_memory`` for a ``vgg.train.TrainConfig`` (duck-typed: no import cycle)."""
    return check_training_memory(cfg.config, cfg.batch_norm, cfg.model_input_size, cfg.batch_size,
                                 num_classes, cfg.optimizer, device=device, freeze=cfg.freeze,
                                 available=available)


# ------------------------------------------------------------------------------ measurements


def peak_rss_bytes() -> int:
    """The largest resident set this process has had so far, in bytes.

    Linux: ``VmHWM`` of ``/proc/self/status``, the high-water mark of this process's own memory.
    ``getrusage``'s ``ru_maxrss`` (the fallback elsewhere) survives ``exec``: a process started by
    a large one reports the parent's peak. The current size is a lower bound and is taken where
    it is larger (the kernel updates its mark lazily).
    """
    peak = _status_bytes("VmHWM")
    if peak is None:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak = peak if sys.platform == "darwin" else peak * 1024  # macOS counts bytes, Linux KiB
    return int(max(peak, rss_bytes()))


def _status_bytes(field: str) -> int | None:
    """A ``kB`` field of ``/proc/self/status`` in bytes (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_bytes(pid: int | None = None) -> int:
    """The current resident set of process ``pid`` (default this one), in bytes; 0 if unknown (Linux)."""
    try:
        fields = Path(f"/proc/{pid or os.getpid()}/statm").read_text().split()
        return int(fields[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by process ``pid`` (default this one), all threads (Linux)."""
    if pid is None or pid == os.getpid():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2:].split()  # the command name may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime

