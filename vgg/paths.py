"""Path checks for untrusted input: folders and files are read only from inside allowed roots.

Image-folder data sets and checkpoint files come from teachers and pupils (a text field, an
upload, a CLI argument). Everything they name is resolved — ``..`` collapsed, symbolic links
followed — and must then lie inside the data dir or the runs dir. Run ids become folder names,
so they are restricted to a small safe alphabet.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from vgg.errors import PathError

# Letters, digits, dot, underscore and dash; at most 100 characters; no leading dot.
_RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9._-]{1,100}")
RUN_ID_MAX_LENGTH = 100


def _shown(value: object, limit: int = 120) -> str:
    """A path or name made safe for a one-line message: no control characters, bounded length."""
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def resolve_inside(path: str | os.PathLike[str], *roots: str | os.PathLike[str]) -> Path:
    """Resolve ``path`` (symlinks followed, ``..`` collapsed) and require it inside one of ``roots``.

    A relative ``path`` is taken relative to the first root. Returns the resolved path (which
    need not exist). Raises ``PathError`` naming the path and the allowed roots otherwise.
    """
    if not roots:
        raise PathError(f"no allowed folder given for {_shown(path)!r}")
    resolved_roots = [Path(root).expanduser().resolve() for root in roots]
    candidate = Path(path).expanduser()
    if not candidate.is_absolute():
        candidate = resolved_roots[0] / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop, or an unreadable component
        raise PathError(f"cannot resolve {_shown(path)!r}: {exc.__class__.__name__}") from exc
    for root in resolved_roots:
        if resolved == root or resolved.is_relative_to(root):
            return resolved
    allowed = ", ".join(str(root) for root in resolved_roots)
    raise PathError(f"{_shown(path)!r} is outside the allowed folders ({allowed}); put it inside one of them")


def validate_run_id(run_id: str) -> str:
    """Return ``run_id`` if it is a safe folder name: ``[A-Za-z0-9._-]``, no leading dot, ≤ 100 chars."""
    if not isinstance(run_id, str) or not _RUN_ID_PATTERN.fullmatch(run_id) or run_id.startswith("."):
        raise PathError(
            f"invalid run id {_shown(run_id)!r}: use 1 to {RUN_ID_MAX_LENGTH} letters, digits, '.', '_' "
            "or '-', not starting with '.'"
        )
    return run_id
