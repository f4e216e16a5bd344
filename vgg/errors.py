"""Errors meant for a user: each one's ``str()`` is one line a teacher can act on."""

from __future__ import annotations


class VGGError(Exception):
    """Base class of every error that pages show with ``st.error`` and the CLI prints on stderr."""


class ConfigError(VGGError, ValueError):
    """A setting is out of range or unknown; the message names the value and the choices."""


class WeightsUnavailableError(VGGError):
    """Pretrained weights cannot be had (offline and not cached, or never published)."""


class DataUnavailableError(VGGError):
    """A data set cannot be read or downloaded."""


class ImageError(VGGError):
    """An image file is missing, corrupt, too large or not an image."""


class CheckpointError(VGGError):
    """A checkpoint or state-dict file is unsafe, corrupt or for another model."""


class PathError(VGGError):
    """A path points outside the data and runs directories, or a run id is malformed."""


def one_line(text: object, limit: int = 300) -> str:
    """``text`` as one printable line of at most ``limit`` characters (whitespace collapsed)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def os_reason(exc: BaseException) -> str:
    """A short one-line reason from an I/O or network exception ("No space left on device")."""
    inner = getattr(exc, "reason", None)
    text = str(inner if inner is not None else (getattr(exc, "strerror", None) or exc))
    return one_line(text, 120) or exc.__class__.__name__
