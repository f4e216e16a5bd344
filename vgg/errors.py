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
