"""The run store: one folder per training run, written so that a crash loses nothing flushed.

A run folder ``<root>/<run_id>`` holds:

- ``config.json``: the run's configuration, written once, atomically;
- ``metrics.csv``: one row per step, epoch and test evaluation, appended and flushed as they come;
- ``status.json``: status, message, owning process and summary numbers, replaced atomically;
- ``best.pt`` / ``last.pt``: ``{"format": 2, "model": tensors, "meta": {...}}`` written to a temporary
  file in the same folder, flushed, fsynced and ``os.replace``-d, so the previous file survives a
  failure. They store what the run can use exactly (``vgg.checkpoints``: the first Linear folded
  on 1×1 maps, a reference for what a frozen run did not change); ``load_checkpoint`` gives the full
  torchvision state dict back. ``best.pt`` is a hard link to ``last.pt`` after a best epoch; once a
  run is done or cancelled, a ``last.pt`` that is not that same file is removed, since everything
  the app does with a finished run (evaluation, classification, transfer, downloads) reads
  ``best.pt``. Interrupted, failed and diverged runs keep what they have;
- ``predictions.pt``: test-set predictions for the Evaluate page, written the same way.

A run whose status says "running" but whose process has died (``kill -9``, a crash, a reboot) is
reported as "interrupted". Checkpoints are read with ``torch.load(..., weights_only=True)`` only.
``VGG_RUNS_QUOTA_GB`` (``vgg.settings.runs_quota_bytes``) caps the folder: new runs are refused
once it holds that much (``RunStore.disk_usage``).
"""

from __future__ import annotations

import csv
import errno
import io
import logging
import math
import os
import re
import secrets
import shutil
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch

from vgg import checkpoints
from vgg.errors import CheckpointError, ConfigError, PathError, VGGError, one_line
from vgg.events import (
    CheckpointEvent,
    DoneEvent,
    EpochEvent,
    Event,
    FailedEvent,
    StartEvent,
    StepEvent,
    TestEvent,
)
from vgg.files import (
    fsync_dir,
    jsonable,
    read_json,
    save_torch,
    temp_path,
    write_failure,
    write_json,
)
from vgg.model import build_vgg, check_state_fits, model_name
from vgg.paths import validate_run_id
from vgg.process import owner_alive, owner_record
from vgg.safeload import load_weights_only
from vgg.settings import runs_quota_bytes

if TYPE_CHECKING:
    from vgg.evaluate import Predictions

logger = logging.getLogger(__name__)

RUN_STATUSES = ("running", "done", "cancelled", "failed", "diverged", "interrupted")
FINAL_STATUSES = ("done", "cancelled", "failed", "diverged", "interrupted")
CHECKPOINT_NAMES = ("best", "last")
METRIC_KINDS = ("step", "epoch", "test")
METRIC_COLUMNS = ("kind", "step", "epoch", "images_seen", "seconds", "lr", "loss", "accuracy",
                  "train_loss", "train_accuracy", "val_loss", "val_accuracy", "images_per_second")
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.csv"
STATUS_FILE = "status.json"
PREDICTIONS_FILE = "predictions.pt"
CHECKPOINT_FORMAT = checkpoints.FORMAT


CheckpointName = Literal["best", "last"]


class RunNotFoundError(VGGError, LookupError):
    """No run with that id in the runs directory."""


class RunInUseError(VGGError):
    """The run is still being written by a live process."""


class QuotaError(VGGError):
    """The runs folder holds its quota (``VGG_RUNS_QUOTA_GB``): no new run until some are deleted."""


@dataclass(frozen=True)
class RunInfo:
    """What the store knows about one run (read from its folder)."""

    run_id: str
    path: Path
    config: dict[str, Any]  # config.json
    status: str  # one of RUN_STATUSES
    message: str  # why it ended, or what it is doing
    summary: dict[str, Any]  # e.g. best_val_accuracy, test_accuracy, classes
    created_at: float  # epoch seconds
    updated_at: float
    finished_at: float | None = None
    pid: int | None = None  # the process that writes (wrote) it
    has_best: bool = False
    has_last: bool = False
    has_predictions: bool = False

    @property
    def finished(self) -> bool:
        """True unless the run is still running."""
        return self.status != "running"

    @property
    def label(self) -> str:
        """A name a person can read, wherever a run is chosen or listed, ending in the run id's
        random tag so that two runs started in the same minute stay apart:
        "VGG11-BN · from scratch · cifar10 · lr 3e-04 · 3 Dec 14:02 · 19d0"."""
        return f"{run_label(self.config, self.created_at)} · {self.run_id.rsplit('-', 1)[-1]}"


def model_label(config: Mapping[str, Any]) -> str:
    """"VGG11-BN" for a run's ``config.json`` (the paper's letter when torchvision has no name)."""
    letter, batch_norm = str(config.get("config", "?")), bool(config.get("batch_norm", False))
    names = {"A": "VGG11", "A-LRN": "VGG11-LRN", "B": "VGG13", "C": "VGG16-C", "D": "VGG16", "E": "VGG19"}
    return names.get(letter, letter) + ("-BN" if batch_norm else "")


def describe_init(init: str) -> str:
    """A short human label of a ``TrainConfig.init`` value: "from scratch", "ImageNet", "run <id>"."""
    if init == "scratch":
        return "from scratch"
    if init == "imagenet":
        return "ImageNet"
    if init.startswith("run:"):
        return f"run {init[4:]}"
    return init.rsplit("/", 1)[-1]


def source_name(source: str) -> str:
    """A data source as people say it: "cifar10", "synthetic", or an image folder's own name."""
    return source if source in ("cifar10", "synthetic") else source.rstrip("/").rsplit("/", 1)[-1]


def describe_data(data: Mapping[str, Any]) -> str:
    """A short label of a run's ``config.json`` data section: "synthetic · 32 px · 20/class"."""
    name = source_name(str(data.get("source", "?")))
    per_class = data.get("images_per_class")
    return f"{name} · {data.get('input_size', '?')} px" + (f" · {per_class}/class" if per_class else "")


def run_label(config: Mapping[str, Any], created_at: float) -> str:
    """Model, start, data set, learning rate and start time of a run, in one line."""
    data = config.get("data") if isinstance(config.get("data"), Mapping) else {}
    name = source_name(str(data.get("source", "?")))
    lr = config.get("lr")
    when = time.strftime("%-d %b %H:%M", time.localtime(created_at)) if created_at else "?"
    parts = [model_label(config), describe_init(str(config.get("init", "scratch"))), name,
             f"lr {lr:.0e}" if isinstance(lr, (int, float)) else None, when]
    return " · ".join(p for p in parts if p)


# ------------------------------------------------------------------------ files


def _checkpoint_file(name: CheckpointName) -> str:
    """``best.pt`` or ``last.pt``; any other name → ConfigError naming the choices."""
    if name not in CHECKPOINT_NAMES:
        raise ConfigError(f"unknown checkpoint {name!r}; choose one of {', '.join(CHECKPOINT_NAMES)}")
    return f"{name}.pt"


def read_checkpoint_file(path: Path, *, label: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; anything that would run code, or a
    corrupt or truncated file, → ``CheckpointError`` with one line (``vgg.safeload``). The file as
    stored: ``vgg.checkpoints.expand`` turns a run checkpoint into the full state dict."""
    return load_weights_only(path, label=label)


def link_or_copy(src: Path, path: Path, where: str) -> None:
    """Make ``path`` the same file as ``src``: a hard link where the file system has them, else a
    copy; either way through a temporary name and ``os.replace``, so ``path`` is the old file or the
    new one, never half of one. A failure → ``CheckpointError`` naming ``where``; ``path`` kept."""
    tmp = temp_path(path)
    try:
        try:
            os.link(src, tmp)
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
            shutil.copyfile(src, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            logger.warning("could not remove the temporary file %s", tmp)
        raise write_failure(path.name, where, exc) from exc
    fsync_dir(path.parent)


def human_bytes(n: float) -> str:
    """"4.2 GB", "113 MB", "12 kB": a size for a message (powers of 1000, as disks are sold)."""
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}".replace(".0 ", " ") if value < 10 else f"{value:.0f} {unit}"
    return f"{int(n)} bytes"


# ------------------------------------------------------------------------ writing a run


class RunWriter:
    """Writes one run's folder; made by ``RunStore.create``. Use from one thread at a time.

    Also a context manager: an exception inside ``with`` marks the run "failed" with its message.
    """

    def __init__(self, run_id: str, path: Path, config: Mapping[str, Any]) -> None:
        self.run_id = run_id
        self.path = path
        now = time.time()
        self._status: dict[str, Any] = {
            "run_id": run_id, "status": "running", "message": "", **owner_record(),
            "created_at": now, "started_at": now, "updated_at": now, "finished_at": None,
            "summary": {}}
        write_json(path / STATUS_FILE, self._status)
        write_json(path / CONFIG_FILE, dict(config))
        self._metrics = open(path / METRICS_FILE, "a", newline="", encoding="utf-8")
        self._csv = csv.writer(self._metrics, lineterminator="\n")
        if self._metrics.tell() == 0:
            self._csv.writerow(METRIC_COLUMNS)
            self._metrics.flush()

    @property
    def status(self) -> str:
        """The status last written."""
        return str(self._status["status"])

    def append_metrics(self, row: Mapping[str, Any], *, fsync: bool = False) -> None:
        """Append one row to metrics.csv and flush it (a killed process keeps it).

        ``row["kind"]`` is "step", "epoch" or "test"; other keys are METRIC_COLUMNS; missing
        values stay empty. ``fsync`` also forces it to disk (survives a power cut).
        """
        unknown = set(row) - set(METRIC_COLUMNS)
        if unknown:
            raise ValueError(f"unknown metric column(s) {sorted(unknown)}; "
                             f"choose from {', '.join(METRIC_COLUMNS)}")
        kind = row.get("kind")
        if kind not in METRIC_KINDS:
            raise ValueError(f"metric row kind must be one of {METRIC_KINDS}, got {kind!r}")
        if self._metrics.closed:
            raise VGGError(f"run {self.run_id} is closed; its metrics cannot be appended")
        self._csv.writerow([_csv_value(row.get(column)) for column in METRIC_COLUMNS])
        self._metrics.flush()
        if fsync:
            os.fsync(self._metrics.fileno())

    def set_status(self, status: str, message: str = "", **summary: Any) -> None:
        """Replace status.json atomically; ``summary`` values are merged into its summary."""
        if status not in RUN_STATUSES:
            raise ConfigError(f"unknown run status {status!r}; choose one of {', '.join(RUN_STATUSES)}")
        now = time.time()
        self._status["status"] = status
        self._status["message"] = str(message)
        self._status["updated_at"] = now
        self._status["finished_at"] = now if status in FINAL_STATUSES else None
        self._status["summary"] = {**self._status["summary"], **jsonable(summary)}
        write_json(self.path / STATUS_FILE, self._status)

    def save_checkpoint(self, name: CheckpointName, model_state: Mapping[str, Any],
                        meta: Mapping[str, Any] | None = None) -> Path:
        """Write ``best.pt`` or ``last.pt`` atomically: ``{"format": 2, "model": state, "meta": meta}``,
        as given (the trainer gives what ``vgg.checkpoints.pack`` keeps of its state).

        A failure (a full disk) raises ``CheckpointError`` and leaves the previous file intact.
        """
        path = self.path / _checkpoint_file(name)
        payload = {"format": CHECKPOINT_FORMAT, "model": dict(model_state),
                   "meta": jsonable(dict(meta or {}))}
        save_torch(path, payload, self.run_id)
        return path

    def copy_checkpoint(self, source: CheckpointName, target: CheckpointName) -> Path:
        """Make ``target``.pt the same file as ``source``.pt (best = last after a best epoch).

        A hard link where the file system has them (no second 500 MB file on the disk), else a
        copy; either way through a temporary name and ``os.replace``, so ``target`` is the old
        file or the new one, never half of one. Checkpoints are only ever replaced, never
        written in place, so the next ``save_checkpoint(source)`` leaves ``target`` as it is.
        """
        src, path = self.path / _checkpoint_file(source), self.path / _checkpoint_file(target)
        link_or_copy(src, path, self.run_id)
        return path

    def keep_best_only(self) -> bool:
        """At the end of a finished run: remove ``last.pt`` unless it is the same file as ``best.pt``
        (a hard link costs no disk). Every use of a finished run reads ``best.pt``; a second full
        checkpoint would only double the folder. Returns whether ``last.pt`` was removed."""
        best, last = self.path / "best.pt", self.path / "last.pt"
        try:
            if not best.is_file() or not last.is_file() or os.path.samefile(best, last):
                return False
            last.unlink()
        except OSError:
            logger.warning("could not remove %s", last, exc_info=True)
            return False
        fsync_dir(self.path)
        return True

    def save_predictions(self, predictions: Predictions) -> Path:
        """Write the test-set predictions (``vgg.evaluate.Predictions``) atomically."""
        path = self.path / PREDICTIONS_FILE
        save_torch(path, predictions.payload(), self.run_id)
        return path

    def close(self) -> None:
        """Close metrics.csv. The status is left as last set."""
        if not self._metrics.closed:
            self._metrics.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        try:
            if exc is not None and self.status == "running":
                text = str(exc) if isinstance(exc, VGGError) else f"{type(exc).__name__}: {exc}"
                self.set_status("failed", one_line(text, 200) or type(exc).__name__)
        finally:
            self.close()


class RunRecorder:
    """Writes a run folder from a training's events (``vgg.events``): the one listener that touches
    the disk. ``StartEvent`` creates the folder (refused when the runs folder holds its quota); steps
    and epochs become metrics rows; a ``CheckpointEvent`` replaces ``last.pt`` (and makes ``best.pt``
    the same file after a best epoch); ``TestEvent`` writes ``predictions.pt`` and the test row;
    ``DoneEvent`` or ``FailedEvent`` the final status, and a done or cancelled run keeps ``last.pt``
    only where it is ``best.pt`` (``RunWriter.keep_best_only``). Events before ``StartEvent`` are
    ignored."""

    def __init__(self, store: RunStore) -> None:
        self.store = store
        self.writer: RunWriter | None = None

    @property
    def run_id(self) -> str | None:
        return None if self.writer is None else self.writer.run_id

    def __call__(self, event: Event) -> None:
        if isinstance(event, StartEvent):
            self.writer = self.store.create(event.config, name_hint=event.name)
            return
        writer = self.writer
        if writer is None:
            return
        if isinstance(event, StepEvent):
            writer.append_metrics({
                "kind": "step", "step": event.step, "epoch": event.epoch, "images_seen": event.images_seen,
                "seconds": round(event.seconds, 3), "lr": event.lr, "loss": event.loss,
                "accuracy": event.accuracy, "images_per_second": round(event.images_per_second, 1)})
        elif isinstance(event, CheckpointEvent):
            writer.save_checkpoint("last", event.state, event.meta)
            if event.is_best:
                writer.copy_checkpoint("last", "best")
        elif isinstance(event, EpochEvent):
            writer.append_metrics({
                "kind": "epoch", "step": event.step, "epoch": event.epoch, "images_seen": event.images_seen,
                "seconds": round(event.elapsed, 3), "train_loss": event.train_loss,
                "train_accuracy": event.train_accuracy, "val_loss": event.val_loss,
                "val_accuracy": event.val_accuracy})
        elif isinstance(event, TestEvent):
            predictions = event.predictions
            writer.append_metrics({"kind": "test", "step": event.step, "epoch": event.epoch,
                                   "images_seen": event.images_seen, "val_loss": predictions.loss,
                                   "val_accuracy": predictions.accuracy})
            writer.save_predictions(predictions)
        elif isinstance(event, DoneEvent):
            result = event.result
            writer.close()
            if result.status in ("done", "cancelled"):
                writer.keep_best_only()
            writer.set_status(result.status, result.message or result.status,
                              best_val_loss=result.best_val_loss, best_val_accuracy=result.best_val_accuracy,
                              test_loss=result.test_loss, test_accuracy=result.test_accuracy,
                              epochs_done=result.epochs_done, steps=result.steps,
                              seconds=round(result.seconds, 2),
                              images_per_second=round(result.images_per_second, 1),
                              classes=list(result.classes))
        elif isinstance(event, FailedEvent):
            writer.set_status("failed", event.message)
            writer.close()


def _csv_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, torch.Tensor):
        value = value.item()
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else str(value)  # "nan", "inf" stay readable
    return value


# ------------------------------------------------------------------------ the store


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")
    return slug[:48].strip("-._") or "run"


class RunStore:
    """All runs in one directory (``settings.runs_dir()`` in the app and the CLI)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    # ---------------------------------------------------------------- paths

    def run_path(self, run_id: str) -> Path:
        """The folder of ``run_id``, checked to lie directly inside the root (no symlinks out)."""
        validate_run_id(run_id)
        path = self.root / run_id
        if path.is_symlink() or path.resolve().parent != self.root:
            raise PathError(f"run {run_id!r} points outside the runs directory {self.root}")
        return path

    def _existing(self, run_id: str) -> Path:
        path = self.run_path(run_id)
        if not (path / STATUS_FILE).is_file():
            raise RunNotFoundError(f"no run {run_id!r} in {self.root}")
        return path

    def checkpoint_path(self, run_id: str, which: CheckpointName = "best") -> Path:
        """Where ``best.pt`` / ``last.pt`` of a run is (whether or not it exists yet)."""
        return self.run_path(run_id) / _checkpoint_file(which)

    # ---------------------------------------------------------------- writing

    def create(self, config: Mapping[str, Any], *, name_hint: str | None = None,
               name: str | None = None) -> RunWriter:
        """Make a new run folder ``<date>-<time>-<name>-<random>`` and return its writer.

        ``name`` (alias ``name_hint``) becomes part of the id after cleaning, e.g. "vgg11_bn-scratch".
        Refused with a ``QuotaError`` once the runs folder holds its quota (``check_quota``).
        """
        self.check_quota()
        slug = _slug(name or name_hint or "run")
        for _ in range(20):
            run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{slug}-{secrets.token_hex(2)}"
            path = self.run_path(run_id)
            try:
                path.mkdir()
            except FileExistsError:
                continue
            return RunWriter(run_id, path, config)
        raise VGGError(f"could not create a new run folder in {self.root}")

    def check_quota(self) -> None:
        """``QuotaError`` when the runs folder holds at least ``VGG_RUNS_QUOTA_GB``
        (``vgg.settings.runs_quota_bytes``; no limit when it is unset)."""
        quota = runs_quota_bytes()
        if quota is None:
            return
        used = self.disk_usage()
        if used >= quota:
            raise QuotaError(f"the runs folder holds {human_bytes(used)} of its {human_bytes(quota)} quota "
                             "(VGG_RUNS_QUOTA_GB); delete runs on the Compare page")

    # ---------------------------------------------------------------- reading

    def disk_usage(self, run_id: str | None = None) -> int:
        """Bytes the runs folder (or one run's folder) holds on the disk: the sizes of its files, a
        file with several hard links (``best.pt`` and ``last.pt`` after a best epoch) counted once."""
        folder = self.root if run_id is None else self._existing(run_id)
        seen: set[tuple[int, int]] = set()
        total = 0
        for parent, _, names in os.walk(folder):  # symbolic links are neither followed nor counted
            for name in names:
                try:
                    info = os.lstat(os.path.join(parent, name))
                except OSError:  # removed meanwhile
                    continue
                if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                    seen.add((info.st_dev, info.st_ino))
                    total += info.st_size
        return total

    def get(self, run_id: str) -> RunInfo:
        """The run's info; a "running" run whose process died reads as "interrupted"."""
        return self._info(run_id, self._existing(run_id))

    def list_runs(self) -> list[RunInfo]:
        """All runs, newest first. Folders that are not runs are skipped."""
        infos = []
        for path in self.root.iterdir():
            try:
                validate_run_id(path.name)
            except PathError:  # hidden folders (.deleting-…) and anything else
                continue
            if path.is_symlink() or not (path / STATUS_FILE).is_file():
                continue
            try:
                infos.append(self._info(path.name, path))
            except OSError:  # deleted meanwhile
                continue
        infos.sort(key=lambda info: (info.created_at, info.run_id), reverse=True)
        return infos

    def _info(self, run_id: str, path: Path) -> RunInfo:
        try:
            status = read_json(path / STATUS_FILE)
        except (OSError, ValueError) as exc:
            status = {"status": "failed", "message": f"status.json is unreadable: {one_line(exc, 200)}"}
        try:
            config = read_json(path / CONFIG_FILE)
        except (OSError, ValueError):
            config = {}
        state = status.get("status") if status.get("status") in RUN_STATUSES else "failed"
        message = str(status.get("message", ""))
        if state == "running" and not owner_alive(status):
            status = self._mark_interrupted(path, status)
            state, message = "interrupted", status["message"]
        created = _number(status.get("created_at"), _mtime(path))
        summary = status.get("summary")
        pid = status.get("pid")
        return RunInfo(
            run_id=run_id, path=path, config=config, status=state, message=message,
            summary=dict(summary) if isinstance(summary, dict) else {},
            created_at=created, updated_at=_number(status.get("updated_at"), created),
            finished_at=_number(status.get("finished_at"), 0.0) or None,
            pid=pid if isinstance(pid, int) else None,
            has_best=(path / "best.pt").is_file(), has_last=(path / "last.pt").is_file(),
            has_predictions=(path / PREDICTIONS_FILE).is_file())

    def _mark_interrupted(self, path: Path, status: dict[str, Any]) -> dict[str, Any]:
        """Record the interruption in status.json (best effort) and return the new record."""
        message = (f"interrupted: the process that ran it (pid {status.get('pid')}) stopped; "
                   "metrics up to the last flush and the checkpoints are kept")
        now = time.time()
        status = {**status, "status": "interrupted", "message": message,
                  "updated_at": now, "finished_at": now}
        try:
            write_json(path / STATUS_FILE, status)
            for tmp in path.glob(".*.tmp"):  # half-written files of the dead process
                tmp.unlink(missing_ok=True)
        except OSError:
            logger.warning("could not mark %s as interrupted", path, exc_info=True)
        return status

    def metrics(self, run_id: str) -> pd.DataFrame:
        """metrics.csv as a DataFrame (numeric columns as floats, empty cells as NaN).

        A partially written last line (the process was killed mid-write) is dropped.
        """
        path = self._existing(run_id) / METRICS_FILE
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            text = ""
        if text and not text.endswith("\n"):
            text = text[: text.rfind("\n") + 1]
        lines = text.splitlines()
        width = len(METRIC_COLUMNS)
        body = [line for line in lines[1:] if line.count(",") == width - 1]
        if not body:
            return pd.DataFrame({c: pd.Series(dtype="object" if c == "kind" else "float64")
                                 for c in METRIC_COLUMNS})
        frame = pd.read_csv(io.StringIO("\n".join([",".join(METRIC_COLUMNS), *body]) + "\n"),
                            dtype=str, keep_default_na=False)
        frame = frame[frame["kind"].isin(METRIC_KINDS)].reset_index(drop=True)
        for column in METRIC_COLUMNS[1:]:
            frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        return frame

    def best_val_accuracy(self, info: RunInfo) -> float | None:
        """The run's best validation accuracy: from its summary, or for a run that ended before
        writing one (interrupted, failed, cancelled) the best of its epoch rows; None if none."""
        best = info.summary.get("best_val_accuracy")
        if isinstance(best, (int, float)):
            return float(best)
        frame = self.metrics(info.run_id)
        values = frame.loc[frame["kind"] == "epoch", "val_accuracy"].dropna()
        return float(values.max()) if len(values) else None

    def load_checkpoint(self, run_id: str, which: CheckpointName = "best") -> dict[str, Any]:
        """Load ``best.pt`` or ``last.pt`` (weights only) as the full torchvision state dict it stands
        for: ``{"model": state_dict, "meta": {...}}``, the folded first Linear expanded and a frozen
        run's reference resolved (``vgg.checkpoints.expand``); a source that is gone or changed →
        ``CheckpointError`` naming it."""
        data = self.read_checkpoint(run_id, which)
        return checkpoints.expand(data, f"{which}.pt of run {run_id}", store=self)

    def read_checkpoint(self, run_id: str, which: CheckpointName = "best") -> dict[str, Any]:
        """``best.pt`` or ``last.pt`` as stored (weights only): ``{"model": tensors, "meta": {...}}``,
        which may be compact (``vgg.checkpoints``); ``load_checkpoint`` is what readers want."""
        path = self.checkpoint_path(run_id, which)
        self._existing(run_id)
        if not path.is_file():
            raise CheckpointError(f"run {run_id} has no {which}.pt yet")
        data = read_checkpoint_file(path, label=f"{which}.pt of run {run_id}")
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise CheckpointError(f"{which}.pt of run {run_id} is not a run checkpoint "
                                  "(expected a dict with a 'model' state dict)")
        if not isinstance(data.get("meta"), dict):
            data["meta"] = {}
        return data

    def predictions_path(self, run_id: str) -> Path:
        """Where a run's ``predictions.pt`` is; ``CheckpointError`` while it has none
        (``vgg.evaluate.load_run_predictions`` reads it)."""
        path = self._existing(run_id) / PREDICTIONS_FILE
        if not path.is_file():
            raise CheckpointError(f"run {run_id} has no test-set predictions yet")
        return path

    def save_predictions(self, run_id: str, predictions: Predictions) -> Path:
        """Write ``predictions.pt`` into an existing run's folder (atomically; e.g. after a run that
        stopped before its test evaluation was evaluated later)."""
        path = self._existing(run_id) / PREDICTIONS_FILE
        save_torch(path, predictions.payload(), run_id)
        return path

    # ---------------------------------------------------------------- deleting

    def delete(self, run_id: str) -> None:
        """Delete a run's folder; refused while a live process still writes it.

        Runs that started from it with frozen layers refer to its ``best.pt`` for them
        (``vgg.checkpoints``): their checkpoints are first made independent of it (``rebase``: what
        they take from it moves into their own files), so they keep loading, with the same weights.
        Refused while such a run is still training, or when one of them cannot be made independent
        (its reference no longer resolves): the message names it."""
        info = self.get(run_id)
        if info.status == "running":
            raise RunInUseError(f"run {run_id} is still running (process {info.pid}); "
                                "cancel it before deleting it")
        self._release(run_id)
        # Rename first so a half-deleted folder never shows up as a run.
        trash = self.root / f".deleting-{run_id}-{secrets.token_hex(3)}"
        os.replace(info.path, trash)
        shutil.rmtree(trash, ignore_errors=True)


    def referring_runs(self, run_id: str) -> list[RunInfo]:
        """The runs whose ``best.pt`` or ``last.pt`` takes tensors from ``run_id``'s ``best.pt``
        (``vgg.checkpoints``), and those still training from it with frozen layers (their next
        checkpoint will). Only runs with frozen layers can refer to another; their files' metadata
        is read without reading their tensors."""
        referring = []
        for other in self.list_runs():
            if other.run_id == run_id or other.config.get("freeze", "none") == "none":
                continue
            if other.status == "running":
                if other.config.get("init") == f"run:{run_id}":
                    referring.append(other)
            elif any(checkpoints.refers_to(_stored_meta(other.path / f"{name}.pt"), run_id)
                     for name in CHECKPOINT_NAMES):
                referring.append(other)
        return referring

    def _release(self, run_id: str) -> None:
        """Make every checkpoint that takes tensors from ``run_id`` independent of it."""
        referring = self.referring_runs(run_id)
        busy = [other.run_id for other in referring if other.status == "running"]
        if busy:
            raise RunInUseError(f"run {run_id} cannot be deleted while run {busy[0]}, which started from it "
                                "and refers to its weights, is still training; delete it once that run ended")
        for other in referring:
            best, last = other.path / "best.pt", other.path / "last.pt"
            try:
                linked = best.is_file() and last.is_file() and os.path.samefile(best, last)
            except OSError:
                linked = False
            for name in ("best", "last"):
                path = other.path / f"{name}.pt"
                if name == "last" and linked:
                    if best.stat().st_ino != last.stat().st_ino:  # best.pt was rewritten: link again
                        link_or_copy(best, last, other.run_id)
                    continue
                if not path.is_file():
                    continue
                stored = self.read_checkpoint(other.run_id, name)  # type: ignore[arg-type]
                if not checkpoints.refers_to(stored["meta"], run_id):
                    continue
                label = f"{name}.pt of run {other.run_id}"
                try:
                    independent = checkpoints.rebase(stored, label, store=self)
                except CheckpointError as exc:
                    raise CheckpointError(f"run {run_id} is not deleted: {exc}") from exc
                save_torch(path, independent, other.run_id)


def torchvision_state(store: RunStore, run_id: str,
                      which: CheckpointName = "best") -> dict[str, torch.Tensor]:
    """A run's checkpoint as a full torchvision state dict (the fold expanded, references resolved:
    ``vgg.checkpoints``): it loads with ``strict=True`` into
    ``torchvision.models.vgg11_bn(num_classes=k)`` and its siblings (A-LRN and C into
    ``vgg.model.build_vgg``). ``which``: "best" (default) or "last"."""
    checkpoint = store.load_checkpoint(run_id, which)
    meta, state = checkpoint["meta"], checkpoint["model"]
    label = f"{which}.pt of run {run_id}"
    try:
        config, batch_norm = meta["config"], bool(meta["batch_norm"])
        with torch.device("meta"):  # only the names and shapes are needed
            model = build_vgg(config, batch_norm=batch_norm, num_classes=len(meta["classes"]))
    except (KeyError, TypeError, VGGError) as exc:
        raise CheckpointError(f"{label}: its meta names no model that can be built "
                              f"({one_line(exc, 80)})") from exc
    check_state_fits(model, state, f"{label} does not fit {model_name(config, batch_norm)}")
    return state


def torchvision_state_bytes(store: RunStore, run_id: str, which: CheckpointName = "best") -> bytes:
    """``torchvision_state`` written by ``torch.save``: the file the Evaluate page's download offers."""
    buffer = io.BytesIO()
    torch.save(torchvision_state(store, run_id, which), buffer)
    return buffer.getvalue()


def _stored_meta(path: Path) -> Mapping[str, Any]:
    """A checkpoint file's ``meta`` without reading its tensors (memory-mapped, weights only);
    empty when the file is missing or unreadable (it cannot be loaded either way)."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # missing, corrupt, code-carrying: no reference to follow
        return {}
    meta = data.get("meta") if isinstance(data, Mapping) else None
    return meta if isinstance(meta, Mapping) else {}


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
