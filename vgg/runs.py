"""The run store: one folder per training run, written so that a crash loses nothing flushed.

A run folder ``<root>/<run_id>`` holds:

- ``config.json``: the run's configuration, written once, atomically;
- ``metrics.csv``: one row per step, epoch and test evaluation, appended and flushed as they come;
- ``status.json``: status, message, owning process and summary numbers, replaced atomically;
- ``best.pt`` / ``last.pt``: ``{"model": state_dict, "meta": {...}}`` written to a temporary file in
  the same folder, flushed, fsynced and ``os.replace``-d, so the previous file survives a failure;
- ``predictions.pt``: test-set predictions for the Evaluate page, written the same way.

A run whose status says "running" but whose process has died (``kill -9``, a crash, a reboot) is
reported as "interrupted". Checkpoints are read with ``torch.load(..., weights_only=True)`` only.
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
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch

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
from vgg.paths import validate_run_id
from vgg.process import owner_alive, owner_record
from vgg.safeload import load_weights_only

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
CHECKPOINT_FORMAT = 1


CheckpointName = Literal["best", "last"]


class RunNotFoundError(VGGError, LookupError):
    """No run with that id in the runs directory."""


class RunInUseError(VGGError):
    """The run is still being written by a live process."""


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


# ------------------------------------------------------------------------ files


def _checkpoint_file(name: CheckpointName) -> str:
    """``best.pt`` or ``last.pt``; any other name → ConfigError naming the choices."""
    if name not in CHECKPOINT_NAMES:
        raise ConfigError(f"unknown checkpoint {name!r}; choose one of {', '.join(CHECKPOINT_NAMES)}")
    return f"{name}.pt"


def read_checkpoint_file(path: Path, *, label: str | None = None) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; anything that would run code, or a
    corrupt or truncated file, → ``CheckpointError`` with one line (``vgg.safeload``)."""
    return load_weights_only(path, label=label)


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
        """Write ``best.pt`` or ``last.pt`` atomically: ``{"model": state, "meta": meta}``.

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
            raise write_failure(path.name, self.run_id, exc) from exc
        fsync_dir(path.parent)
        return path

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
    the disk. ``StartEvent`` creates the folder; steps and epochs become metrics rows; a
    ``CheckpointEvent`` replaces ``last.pt`` (and makes ``best.pt`` the same file after a best
    epoch); ``TestEvent`` writes ``predictions.pt`` and the test row; ``DoneEvent`` or
    ``FailedEvent`` the final status. Events before ``StartEvent`` are ignored."""

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
        """
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

    # ---------------------------------------------------------------- reading

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

    def load_checkpoint(self, run_id: str, which: CheckpointName = "best") -> dict[str, Any]:
        """Load ``best.pt`` or ``last.pt`` (weights only): ``{"model": state_dict, "meta": {...}}``."""
        path = self.checkpoint_path(run_id, which)
        self._existing(run_id)
        if not path.is_file():
            raise CheckpointError(f"run {run_id} has no {which}.pt yet")
        data = read_checkpoint_file(path, label=f"{which}.pt of run {run_id}")
        if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
            raise CheckpointError(f"{which}.pt of run {run_id} is not a run checkpoint "
                                  "(expected a dict with a 'model' state dict)")
        data.setdefault("meta", {})
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
        """Delete a run's folder; refused while a live process still writes it."""
        info = self.get(run_id)
        if info.status == "running":
            raise RunInUseError(f"run {run_id} is still running (process {info.pid}); "
                                "cancel it before deleting it")
        # Rename first so a half-deleted folder never shows up as a run.
        trash = self.root / f".deleting-{run_id}-{secrets.token_hex(3)}"
        os.replace(info.path, trash)
        shutil.rmtree(trash, ignore_errors=True)


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0
