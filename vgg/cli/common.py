"""What the commands share: the result type, the folders, the options turned into configs, data loading."""

from __future__ import annotations

import argparse
import math
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vgg.cli.progress import Cancelled, Progress
from vgg.data import BUILTIN_SOURCES, DataConfig, DataSplits, load_data
from vgg.errors import CheckpointError, ConfigError, one_line
from vgg.paths import resolve_inside, validate_run_id
from vgg.settings import data_dir, runs_dir
from vgg.train import TrainConfig

EXIT_OK, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 130


@dataclass
class Result:
    """What a command tells: ``text()`` for people, ``json()`` for programs, the same facts."""

    errors: list[str] = field(default_factory=list, kw_only=True)  # one stderr line each
    exit_code: int = field(default=EXIT_OK, kw_only=True)

    def json(self) -> dict[str, Any]:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError


def percent(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1%}"


def number(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, fmt)


# ============================================================================================
# Shared plumbing


@dataclass(frozen=True)
class Dirs:
    """The data and runs directories of this invocation (options first, then the environment)."""

    data: Path
    runs: Path


def dirs_of(args: argparse.Namespace) -> Dirs:
    """Resolve ``--data-dir`` / ``--runs-dir``; they also become ``$VGG_DATA_DIR`` / ``$VGG_RUNS_DIR``
    of this process, so every part of the engine sees the same folders."""
    if getattr(args, "data_dir", None):
        os.environ["VGG_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    if getattr(args, "runs_dir", None):
        os.environ["VGG_RUNS_DIR"] = str(Path(args.runs_dir).expanduser().resolve())
    return Dirs(data_dir(), runs_dir())


def _resolve_source(value: str, data: Path) -> str:
    """The ``--dataset`` value for ``DataConfig``: built-in names unchanged; a folder given relative
    to the current directory becomes absolute (DataConfig then checks it lies in the data dir)."""
    if value in BUILTIN_SOURCES:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and not (data / path).exists() and path.exists():
        return str(path.resolve())
    return value


def _resolve_init(value: str, dirs: Dirs) -> str:
    """``--init``: scratch | imagenet | a run id (→ ``run:<id>``) | a ``.pth``/``.pt`` file, which must
    lie inside the data or runs directory (untrusted files are read from there only)."""
    if value in ("scratch", "imagenet"):
        return value
    if value.startswith("run:"):
        return "run:" + validate_run_id(value[4:])
    if value.endswith((".pth", ".pt")) or os.sep in value or "/" in value:
        if not value.endswith((".pth", ".pt")):
            raise ConfigError(f"init file {value!r} must be a .pth state-dict file")
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        resolved = resolve_inside(path, dirs.data, dirs.runs)
        if not resolved.is_file():
            raise CheckpointError(f"init file {value!r} does not exist")
        return str(resolved)
    return "run:" + validate_run_id(value)


def train_config(args: argparse.Namespace, dirs: Dirs, *, for_training: bool) -> TrainConfig:
    """Build (and so validate) the TrainConfig the options describe."""
    data = DataConfig(source=_resolve_source(args.dataset, dirs.data), input_size=args.input_size,
                      images_per_class=args.images_per_class, val_fraction=args.val_fraction,
                      seed=args.seed, data_dir=dirs.data)
    extra: dict[str, Any] = {}
    if for_training:
        extra = {"epochs": args.epochs, "schedule": args.schedule, "time_budget_s": args.time_budget,
                 "dropout": args.dropout, "label_smoothing": args.label_smoothing, "tta": args.tta}
    return TrainConfig(config=args.config, batch_norm=args.batch_norm, init=_resolve_init(args.init, dirs),
                       freeze=args.freeze, optimizer=args.optimizer, lr=args.lr, lr_ratio=args.lr_ratio,
                       batch_size=args.batch_size, data=data, augment=args.augment, seed=args.seed,
                       device=args.device, precision=args.precision, **extra)


def load_splits(cfg: DataConfig, bar: Progress, cancel: threading.Event) -> DataSplits:
    """Load the data set with progress on the bar; Ctrl-C aborts between files."""

    def progress(done: int, total: int, message: str) -> None:
        if cancel.is_set():
            raise Cancelled()
        bar.update(done / total if total else None, message)

    bar.update(None, "loading the data set", force=True)
    return load_data(cfg, progress)


def data_summary(splits: DataSplits) -> dict[str, Any]:
    report = splits.report
    return {"source": splits.source_name, "classes": list(splits.classes),
            "train_images": len(splits.train), "val_images": len(splits.val), "test_images": len(splits.test),
            "input_size": splits.input_size, "skipped_files": len(report.skipped),
            "skipped": [{"file": f, "reason": r} for f, r in report.skipped[:20]],
            "warnings": list(report.warnings)}


def data_warnings(splits: DataSplits) -> list[str]:
    """The data reader's warnings, one stderr line each (the library never prints them itself)."""
    report = splits.report
    lines = [f"warning: {one_line(w)}" for w in report.warnings]
    if report.skipped:
        first, reason = report.skipped[0]
        more = f" and {len(report.skipped) - 1} more" if len(report.skipped) > 1 else ""
        lines.append(f"warning: skipped {len(report.skipped)} unreadable file(s): {first} "
                     f"({one_line(reason, 160)}){more}")
    return lines
