"""A class on one server: who is who, and what the teacher decides for everyone.

- **Names.** A pupil gives a name once; jobs and runs record it as their owner, so "yours" means
  the same after a reload (the name travels in the page's address). Names are free text within a
  small alphabet: they appear on every screen of the class.
- **The teacher.** The server is started with ``VGG_TEACHER_CODE``; whoever enters that code is the
  teacher for their browser session (compared in constant time; the code is never written to an
  address or a log). The teacher may stop or delete anyone's job or run and lock settings for the
  class. Without the variable everyone may do everything, and the app says so.
- **Locks** (``ClassLocks``): the data set, the most epochs, the largest input size, and whether
  ImageNet weights may be downloaded. They are kept in ``<runs dir>/.classroom.json`` (written
  atomically), so a restarted server keeps them. The command line is not affected.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import threading
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from vgg.data import DataConfig
from vgg.errors import ConfigError, VGGError
from vgg.files import atomic_write, read_json

TEACHER_CODE_ENV = "VGG_TEACHER_CODE"
LOCKS_FILE = ".classroom.json"
_NAME = re.compile(r"[^\W_][\w .'-]{0,39}")  # a letter or digit first; letters, digits, space . ' - _


class LockedError(VGGError):
    """A setting the teacher locked for the class; the message says which and the limit."""


def check_name(name: str) -> str:
    """A pupil's name, stripped: 1 to 40 letters, digits, spaces, ``.``, ``'``, ``-`` or ``_``."""
    name = " ".join(str(name).split())
    if not _NAME.fullmatch(name):
        raise ConfigError(f"the name {name[:60]!r} is not usable: use 1 to 40 letters, digits, spaces, "
                          "'.', \"'\", '-' or '_', starting with a letter or digit")
    return name


def teacher_code() -> str | None:
    """The teacher's code from the environment, or None (no teacher: everyone may do everything)."""
    code = os.environ.get(TEACHER_CODE_ENV, "")
    return code or None


def is_teacher_code(entered: str) -> bool:
    """Whether ``entered`` is the teacher's code (constant-time comparison; False without a code)."""
    code = teacher_code()
    return code is not None and hmac.compare_digest(entered.encode("utf-8"), code.encode("utf-8"))


@dataclass(frozen=True)
class ClassLocks:
    """What the teacher fixed for the class (None or True: not locked)."""

    data: DataConfig | None = None  # the data set every pupil uses
    max_epochs: int | None = None  # at most this many epochs per training
    max_input_size: int | None = None  # at most this many pixels a side
    allow_downloads: bool = True  # ImageNet weights may be downloaded (else only what is cached)

    def __post_init__(self) -> None:
        for name, low, high in (("max_epochs", 1, 1000), ("max_input_size", 32, 512)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high):
                raise ConfigError(f"{name.replace('_', ' ')} {value!r} is out of range; choose {low} to {high}")

    @property
    def any(self) -> bool:
        return self != ClassLocks()

    def check(self, cfg: Any, n_train: int | None = None) -> None:
        """Refuse a ``TrainConfig`` that breaks a lock (``LockedError`` naming the lock). Auto epochs
        count as what they will be on ``n_train`` images when that is known."""
        epochs = cfg.epochs if cfg.epochs is not None or n_train is None else cfg.epochs_for(n_train)
        if self.max_epochs is not None and epochs is not None and epochs > self.max_epochs:
            raise LockedError(f"the teacher allows at most {self.max_epochs} epoch(s) per training; "
                              f"this one has {epochs}")
        if self.max_input_size is not None and cfg.model_input_size > self.max_input_size:
            raise LockedError(f"the teacher allows inputs of at most {self.max_input_size} px; this one is "
                              f"{cfg.model_input_size} px")
        if self.data is not None and replace(cfg.data, images_per_class=self.data.images_per_class) != self.data:
            raise LockedError("the teacher fixed the class's data set; choose it on the Data page")

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        if self.data is not None:
            d["data"] = {k: (str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v)
                         for k, v in asdict(self.data).items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassLocks:
        data = d.get("data")
        if isinstance(data, dict):
            data = DataConfig(**{k: (tuple(v) if k == "classes" and v is not None else v) for k, v in data.items()
                                 if k in DataConfig.__dataclass_fields__})
        return cls(data=data, max_epochs=d.get("max_epochs"), max_input_size=d.get("max_input_size"),
                   allow_downloads=bool(d.get("allow_downloads", True)))


class Classroom:
    """The class's locks, shared by every session of the server and kept in the runs dir."""

    def __init__(self, runs_root: Path) -> None:
        self.path = Path(runs_root) / LOCKS_FILE
        self._lock = threading.Lock()
        self._locks = self._read()

    def _read(self) -> ClassLocks:
        try:
            return ClassLocks.from_json(read_json(self.path))
        except (OSError, ValueError, TypeError, VGGError):  # none yet, or unreadable: nothing locked
            return ClassLocks()

    @property
    def locks(self) -> ClassLocks:
        with self._lock:
            return self._locks

    def set_locks(self, locks: ClassLocks) -> None:
        """Replace the locks (the teacher's choice) and keep them on disk."""
        text = json.dumps(locks.to_json(), indent=2) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, lambda f: f.write(text.encode("utf-8")))
            self._locks = locks
