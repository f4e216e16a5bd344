"""Reading torch files that may come from anyone: weights only, and one clean line when refused.

``torch.load(..., weights_only=True)`` refuses a pickle that would call a function or build an
object other than tensors and plain containers. Its own message, written for developers, spans
several paragraphs with terminal escape codes and advises loading with ``weights_only=False``
(running the file's code) or allow-listing the global: never advice for a pupil's upload. This
module keeps the one fact that matters (what the file would have called) and drops the rest.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

import torch

from vgg.errors import CheckpointError

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")
_OPERAND = re.compile(r"Unsupported operand (\d+)")
_LIMIT = 200  # characters of torch's own text kept for an unrecognised failure


def refusal_reason(error: BaseException) -> str:
    """Why ``torch.load(..., weights_only=True)`` refused a file, as one printable phrase."""
    text = _ANSI.sub("", str(error))
    if found := _GLOBAL.search(text):
        return (f"it would call {found.group(1)} when opened, which is not allowed (only tensors and "
                "plain containers are loaded, never code)")
    if found := _OPERAND.search(text):
        return (f"it holds pickle operand {found.group(1)}, which a weights-only checkpoint never "
                "contains (only tensors and plain containers are loaded, never code)")
    line = next((part.strip() for part in text.splitlines() if part.strip()), "") or type(error).__name__
    line = "".join(ch for ch in line if ch.isprintable())
    return line if len(line) <= _LIMIT else line[: _LIMIT - 1] + "…"


def load_weights_only(path: Path, *, label: str | None = None) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; a missing, corrupt, truncated or
    code-carrying file → ``CheckpointError`` with one line naming ``label`` (default the file name)."""
    label = label or path.name
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it did not write before refusing them.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise CheckpointError(f"{label} does not exist") from exc
    except IsADirectoryError as exc:
        raise CheckpointError(f"{label} is a folder, not a checkpoint file") from exc
    except Exception as exc:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        raise CheckpointError(f"refusing to load {label}: {refusal_reason(exc)}") from exc
