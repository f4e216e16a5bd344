"""Files that must survive a crash, and values that must become JSON.

Every file the app writes for later (run folders, decoded-image caches, pictures of a class's own
data set) goes through ``atomic_write``: a temporary file next to the target, flushed, fsynced and
``os.replace``-d, so a reader sees the old file or the new one, never half of one. ``jsonable``
turns engine values (paths, enums, dataclasses, tensors, NumPy scalars) into plain JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import errno
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import IO, Any

import torch

from vgg.errors import CheckpointError, one_line

logger = logging.getLogger(__name__)


def jsonable(value: Any, *, finite: bool = False) -> Any:
    """``value`` as plain JSON values: paths and devices → strings, enums → their value,
    dataclasses → dicts, tuples and sets → lists, tensors and NumPy values → Python numbers or lists.

    ``finite`` turns NaN and infinities into None (strict JSON, as the CLI prints); otherwise they
    stay floats (Python's json writes them as NaN, as status.json keeps them).
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return None if finite and not math.isfinite(value) else value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, finite=finite) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v, finite=finite) for v in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value, finite=finite)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, finite=finite)
    item = getattr(value, "item", None)  # NumPy and torch scalars (and one-element arrays)
    if callable(item):
        try:
            return jsonable(item(), finite=finite)
        except (TypeError, ValueError, RuntimeError):
            pass
    tolist = getattr(value, "tolist", None)  # NumPy arrays, tensors
    if callable(tolist):
        return jsonable(tolist(), finite=finite)
    if value.__class__.__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    return str(value)  # Path, torch.device and anything else


def temp_path(path: Path) -> Path:
    """A hidden temporary name next to ``path`` (``.<name>.<random>.tmp``)."""
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def fsync_dir(folder: Path) -> None:
    """Make a rename durable (POSIX); harmless to skip where directories cannot be opened."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write through ``write(file)`` to a temporary file next to ``path``, fsync, then replace.

    On any failure the temporary file is removed, ``path`` is left as it was, and the exception
    propagates.
    """
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            logger.warning("could not remove the temporary file %s", tmp)
        raise
    fsync_dir(path.parent)


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """``data`` as indented JSON, written atomically."""
    text = json.dumps(jsonable(data), indent=2, allow_nan=True) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path`` (``ValueError`` when it holds anything else)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} does not hold a JSON object")
    return data


def _os_error_in(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc`` (torch.save wraps a failed write in a RuntimeError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def write_failure(file_name: str, where: str, exc: BaseException) -> CheckpointError:
    """One line for a file that could not be written: "could not write X in Y: reason; the previous
    file is kept"."""
    os_error = _os_error_in(exc)
    if os_error is not None:
        reason = os_error.strerror or one_line(os_error, 200) or type(os_error).__name__
        if os_error.errno == errno.ENOSPC:
            reason = "No space left on device"
    else:
        reason = one_line(exc, 200) or type(exc).__name__
    return CheckpointError(f"could not write {file_name} in {where}: {reason}; the previous file is kept")


def tensor_bytes(value: Any) -> int:
    """Bytes of all tensors inside ``value`` (nested mappings and sequences)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, Mapping):
        return sum(tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(tensor_bytes(v) for v in value)
    return 0


def save_torch(path: Path, payload: Any, where: str) -> None:
    """Atomically ``torch.save`` ``payload`` to ``path``; a full disk or another failure →
    ``CheckpointError`` naming the file and ``where`` (a run id), the previous file kept."""
    needed = tensor_bytes(payload)
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    if free is not None and needed > free:
        raise CheckpointError(
            f"could not write {path.name} in {where}: No space left on device "
            f"(needs {needed / 1e6:.0f} MB, {free / 1e6:.0f} MB free); the previous file is kept")
    try:
        atomic_write(path, lambda f: torch.save(payload, f))
    except (OSError, RuntimeError) as exc:
        raise write_failure(path.name, where, exc) from exc
