"""A class's own data set: pictures that pupils and teachers collect, kept as an image folder.

A data set is ``<data dir>/<set>/<class>/<random name>.jpg``, the layout the folder reader
(``vgg.data.folders``) already reads, so every page and ``python -m vgg train --dataset NAME`` use it
by name. This module is the only writer of such folders:

- every picture goes through ``vgg.images.open_image`` (size limits, bomb checks, EXIF orientation,
  RGB) and is stored re-encoded as a JPEG without any metadata, its longest side at most
  ``MAX_SIDE`` pixels, under a random name: an uploaded name appears in messages, never in a path;
- a zip's class folders become classes; its central directory is checked before anything is read
  (bombs, ``..``, absolute paths, links) and each member's size again while it is read;
- each call is all-or-nothing: pictures are first encoded into a hidden staging folder, then the
  limits are checked and the files moved into place under the set's lock (a thread lock in this
  process and ``flock`` on ``<set>/.lock`` across processes: the app and the command line).

Refusals are ``DatasetError``s: one line naming the bad value and the limit; nothing is changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import secrets
import shutil
import stat
import threading
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from PIL import Image

from vgg import settings
from vgg.data.config import BUILTIN_SOURCES, ProgressFn
from vgg.errors import ImageError, PathError, VGGError, one_line
from vgg.files import atomic_write, fsync_dir
from vgg.images import DEFAULT_MAX_BYTES, SUPPORTED_EXTENSIONS, UNSUPPORTED_FORMATS, open_image
from vgg.paths import resolve_inside

try:
    import fcntl
except ImportError:  # Windows: only the thread lock (one process serves the app there)
    fcntl = None  # type: ignore[assignment]

MIN_CLASSES, MAX_CLASSES = 2, 20  # classes of a set: a classifier needs two, a lesson rarely twenty
MAX_NAME_LENGTH = 50  # characters of a set or class name
MAX_PICTURE_BYTES = DEFAULT_MAX_BYTES  # one uploaded picture (20 MB), as every upload of the app
MAX_CLASS_PICTURES = 1_000  # stored pictures per class
MAX_CLASS_BYTES = 200_000_000  # stored bytes per class
MAX_SET_PICTURES = 5_000  # stored pictures per set
MAX_SET_BYTES = 1_000_000_000  # stored bytes per set
MAX_SIDE = 1024  # longest side of a stored picture, pixels
JPEG_QUALITY = 90  # Pillow quality of the stored JPEGs
MAX_ZIP_ENTRIES = 20_000  # entries of one zip (its central directory)
MAX_ZIP_UNCOMPRESSED = 4_000_000_000  # bytes all entries of one zip unpack to
MAX_ZIP_RATIO = 100  # uncompressed ÷ compressed size of one entry; photos barely compress
RATIO_MIN_BYTES = 1_000_000  # smaller entries may compress well (a plain BMP); the total covers them
STALE_S = 24 * 3600  # hidden staging folders older than this were left by a killed process

RESERVED_SET_NAMES = BUILTIN_SOURCES  # "cifar10" and "synthetic" are data sources, not folders
# The folder reader takes these as splits or skips them as clutter (vgg.data.folders).
RESERVED_CLASS_NAMES = ("train", "test", "val", "valid", "validation", "__MACOSX", "__pycache__")
MARKER = ".vgg-dataset"  # the file that makes a folder of the data dir one of these sets
LOCK = ".lock"  # flock'ed by every change of a set
_ROOT_LOCK = ".datasets.lock"  # flock'ed in the data dir while a set is created or deleted
_JUNK = {"__MACOSX", "Thumbs.db", "desktop.ini", "__pycache__"}  # skipped silently, as hidden files
_REFUSED = "the zip is refused and nothing was added"
_NAME = re.compile(r"[^\W_][\w -]*")  # a letter (any script) or digit, then also '_', ' ' and '-'

Upload = tuple[str, "bytes | Path"]  # (name shown in messages, the file's bytes or its path)
Usage = dict[str, tuple[int, int]]  # class → (pictures, bytes)


class DatasetError(VGGError):
    """A data set operation is refused (a bad name, a limit, a hostile zip); nothing was changed."""


@dataclass(frozen=True)
class ClassInfo:
    """One class of a set: its name (= folder), stored pictures and bytes."""

    name: str
    pictures: int
    bytes: int


@dataclass(frozen=True)
class DatasetInfo:
    """A set as stored now; ``version`` changes whenever a picture or a class name changes."""

    name: str
    classes: tuple[ClassInfo, ...]  # sorted by name: the folder reader's label order
    pictures: int
    bytes: int
    version: str  # 16 hex digits over (file, size, mtime) of every picture; a cache key
    path: Path


@dataclass(frozen=True)
class PictureInfo:
    """A stored picture: its file name (for ``delete_picture``), path, size and modification time."""

    name: str
    path: Path
    bytes: int
    modified: float  # seconds since the epoch


@dataclass(frozen=True)
class AddReport:
    """What ``add_pictures`` did: pictures stored, files skipped with a reason, classes created."""

    added: int
    skipped: tuple[tuple[str, str], ...] = ()  # (uploaded name or zip entry, one-line reason)
    new_classes: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------- names


def _shown(value: object) -> str:
    text = "".join(ch if ch.isprintable() else "?" for ch in str(value))
    return text if len(text) <= 80 else text[:79] + "…"


def _q(value: object) -> str:
    """A name quoted for a message, as typed (no doubled backslashes), control characters as '?'."""
    return f"'{_shown(value)}'"


def _check_name(kind: str, value: object, reserved: Sequence[str]) -> str:
    if not isinstance(value, str):
        raise DatasetError(f"{kind} name must be text, got {type(value).__name__}")
    name = value.strip()
    rule = f"use 1 to {MAX_NAME_LENGTH} letters, digits, spaces, '-' or '_', starting with a letter or digit"
    if not name:
        raise DatasetError(f"{kind} name is empty; {rule}")
    if len(name) > MAX_NAME_LENGTH:
        raise DatasetError(f"{kind} name {_q(name)} has {len(name)} characters; {rule}")
    if not _NAME.fullmatch(name):
        raise DatasetError(f"{kind} name {_q(name)} is not allowed; {rule}")
    if name.lower() in {r.lower() for r in reserved}:
        raise DatasetError(f"{kind} name {_q(name)} is reserved ({', '.join(reserved)}); choose another")
    return name


def validate_set_name(name: str) -> str:
    """``name`` without surrounding spaces, or ``DatasetError``: 1..50 letters, digits, spaces, '-',
    '_', starting with a letter or digit, not ``cifar10`` or ``synthetic``."""
    return _check_name("data set", name, RESERVED_SET_NAMES)


def validate_class_name(name: str) -> str:
    """As ``validate_set_name``; not ``train``/``test``/``val`` (the folder reader's splits)."""
    return _check_name("class", name, RESERVED_CLASS_NAMES)


# ---------------------------------------------------------------------------------- paths, locks


def _set_path(name: str) -> tuple[str, Path]:
    """The validated name and the folder of a set, directly inside the data dir (not a link)."""
    name = validate_set_name(name)
    root = settings.data_dir()
    path = root / name
    try:
        if path.is_symlink() or resolve_inside(path, root).parent != root:
            raise DatasetError(f"data set {_q(name)} is a link; a set must be a folder inside {root}")
    except PathError as exc:
        raise DatasetError(str(exc)) from None
    return name, path


def _missing(name: str) -> DatasetError:
    names = ", ".join(info.name for info in list_sets()) or "none yet"
    return DatasetError(f"no data set named {_q(name)}; the data sets are: {names}")


class _Gone(Exception):
    """The folder of a lock disappeared (its set was deleted)."""


_registry_lock = threading.Lock()
_thread_locks: dict[Path, threading.Lock] = {}  # one per folder for the process's life (flock alone
# would serialise threads too, but a thread lock keeps waiting threads off the file system)


@contextlib.contextmanager
def _locked(folder: Path, lock_name: str = LOCK) -> Iterator[None]:
    """Hold this process's lock of ``folder`` and an exclusive ``flock`` on ``folder/lock_name``."""
    with _registry_lock:
        lock = _thread_locks.setdefault(folder, threading.Lock())
    with lock:
        if fcntl is None:
            yield
            return
        lock_path = folder / lock_name
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:
                raise _Gone() from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                try:  # the set may have been deleted (and made again) while we waited
                    same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if same:
                    yield
                    return
            finally:
                os.close(fd)  # releases the flock


@contextlib.contextmanager
def _open_set(name: str) -> Iterator[Path]:
    """The folder of an existing set, held under its lock."""
    name, path = _set_path(name)
    try:
        with _locked(path):
            if not (path / MARKER).is_file():
                raise _missing(name)
            yield path
    except _Gone:
        raise _missing(name) from None


# ------------------------------------------------------------------------------------ inventory


def _visible(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            entries = [e for e in it if not e.name.startswith(".") and e.name not in _JUNK]
    except (FileNotFoundError, NotADirectoryError):  # removed while we looked
        return []
    return sorted(entries, key=lambda e: e.name)


def _files(folder: Path, prefix: str = "") -> list[tuple[str, int, int]]:
    """(path relative to the class folder, bytes, mtime in ns) of every visible file below it."""
    rows: list[tuple[str, int, int]] = []
    for entry in _visible(folder):
        try:
            if entry.is_dir(follow_symlinks=False):
                rows += _files(Path(entry.path), f"{prefix}{entry.name}/")
            elif entry.is_file(follow_symlinks=False):
                info = entry.stat(follow_symlinks=False)
                rows.append((prefix + entry.name, info.st_size, info.st_mtime_ns))
        except FileNotFoundError:
            continue
    return rows


def _inventory(path: Path) -> dict[str, list[tuple[str, int, int]]]:
    """Class name → its files, for every class folder of a set."""
    return {e.name: _files(Path(e.path)) for e in _visible(path) if e.is_dir(follow_symlinks=False)}


def _usage(inventory: dict[str, list[tuple[str, int, int]]]) -> Usage:
    return {cls: (len(rows), sum(size for _, size, _ in rows)) for cls, rows in inventory.items()}


def _version(inventory: dict[str, list[tuple[str, int, int]]]) -> str:
    digest = hashlib.sha256()
    for cls in sorted(inventory):
        digest.update(f"{cls}\0".encode("utf-8", "surrogateescape"))
        for rel, size, mtime in inventory[cls]:
            digest.update(f"{rel}\0{size}\0{mtime}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def _info(name: str, path: Path) -> DatasetInfo:
    inventory = _inventory(path)
    classes = tuple(ClassInfo(cls, n, b) for cls, (n, b) in sorted(_usage(inventory).items()))
    return DatasetInfo(name, classes, sum(c.pictures for c in classes), sum(c.bytes for c in classes),
                       _version(inventory), path)


def set_info(name: str) -> DatasetInfo:
    """Classes, picture counts, bytes and version of the set ``name`` (``DatasetError`` if none)."""
    name, path = _set_path(name)
    if not (path / MARKER).is_file():
        raise _missing(name)
    return _info(name, path)


def set_version(name: str) -> str:
    """A stable hash of the set's files (names, sizes, mtimes): a cache key for its features."""
    return set_info(name).version


def list_sets() -> tuple[DatasetInfo, ...]:
    """Every set in the data dir, sorted by name (other folders there are not sets)."""
    root = settings.data_dir()
    return tuple(_info(e.name, Path(e.path)) for e in _visible(root)
                 if e.is_dir(follow_symlinks=False) and (Path(e.path) / MARKER).is_file())


def _class_of(path: Path, set_name: str, class_name: str) -> str:
    """The folder name of an existing class (exact, else the one equal ignoring case)."""
    classes = sorted(_inventory(path))
    if class_name in classes:
        return class_name
    same = [c for c in classes if c.lower() == str(class_name).lower()]
    if len(same) == 1:
        return same[0]
    if not (path / MARKER).is_file():  # the set itself is gone (deleted while we looked)
        raise _missing(set_name)
    raise DatasetError(f"data set {_q(set_name)} has no class {_q(class_name)}; its classes are: "
                       f"{', '.join(classes) or 'none'}")


def list_pictures(name: str, class_name: str) -> tuple[PictureInfo, ...]:
    """The pictures of one class, oldest first (for thumbnails)."""
    name, path = _set_path(name)
    folder = path / _class_of(path, name, class_name)
    rows = sorted(_files(folder), key=lambda row: (row[2], row[0]))
    return tuple(PictureInfo(rel, folder / rel, size, mtime / 1e9) for rel, size, mtime in rows)


# ------------------------------------------------------------------------------ sets and classes


def _check_classes(classes: Sequence[str]) -> list[str]:
    if isinstance(classes, str):
        raise DatasetError(f"classes must be a list of names, got the text {_q(classes)}")
    names = [validate_class_name(c) for c in classes]
    if not MIN_CLASSES <= len(names) <= MAX_CLASSES:
        raise DatasetError(f"a data set has {MIN_CLASSES} to {MAX_CLASSES} classes, got {len(names)}")
    seen: dict[str, str] = {}
    for cls in names:
        if cls.lower() in seen:
            raise DatasetError(f"class {_q(cls)} is given twice (names differing only in case count as one)")
        seen[cls.lower()] = cls
    return names


def create_set(name: str, classes: Sequence[str]) -> DatasetInfo:
    """Make an empty set with 2..20 class folders; refused when a folder of that name exists."""
    name, path = _set_path(name)
    names = _check_classes(classes)
    root = path.parent
    with _locked(root, _ROOT_LOCK):
        with os.scandir(root) as it:
            taken = any(e.name.lower() == name.lower() for e in it)
        if taken:
            raise DatasetError(f"a data set or folder named {_q(name)} already exists in {root}; "
                               "choose another name")
        building = root / f".{name}.{secrets.token_hex(4)}.creating"
        building.mkdir()
        try:  # built hidden, then renamed: nobody sees half a set
            for cls in names:
                (building / cls).mkdir()
            atomic_write(building / MARKER, lambda f: f.write(b"a class's own data set (vgg.datasets)\n"))
            os.rename(building, path)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
        fsync_dir(root)
    return _info(name, path)


def delete_set(name: str) -> None:
    """Delete a set and all its pictures."""
    name, path = _set_path(name)
    trash = path.parent / f".{name}.{secrets.token_hex(4)}.deleting"
    with _locked(path.parent, _ROOT_LOCK), _open_set(name):
        os.rename(path, trash)  # gone at once for every reader; removed below, outside the locks
    shutil.rmtree(trash, ignore_errors=True)


def add_class(name: str, class_name: str) -> DatasetInfo:
    """Add an empty class to a set (at most ``MAX_CLASSES``)."""
    class_name = validate_class_name(class_name)
    with _open_set(name) as path:
        classes = list(_inventory(path))
        if any(c.lower() == class_name.lower() for c in classes):
            raise DatasetError(f"data set {_q(path.name)} already has a class {_q(class_name)}")
        if len(classes) >= MAX_CLASSES:
            raise DatasetError(f"data set {_q(path.name)} already has {len(classes)} classes, "
                               f"the limit is {MAX_CLASSES}")
        (path / class_name).mkdir()
        return _info(path.name, path)


def rename_class(name: str, old: str, new: str) -> DatasetInfo:
    """Rename a class (its folder); its pictures stay."""
    new = validate_class_name(new)
    with _open_set(name) as path:
        old = _class_of(path, path.name, old)
        if any(c.lower() == new.lower() and c != old for c in _inventory(path)):
            raise DatasetError(f"data set {_q(path.name)} already has a class {_q(new)}")
        os.rename(path / old, path / new)
        fsync_dir(path)
        return _info(path.name, path)


def delete_class(name: str, class_name: str) -> DatasetInfo:
    """Delete a class and its pictures; a set keeps at least ``MIN_CLASSES`` classes."""
    with _open_set(name) as path:
        cls = _class_of(path, path.name, class_name)
        if len(_inventory(path)) <= MIN_CLASSES:
            raise DatasetError(f"data set {_q(path.name)} needs at least {MIN_CLASSES} classes; "
                               f"add another class before deleting {_q(cls)}")
        trash = path / f".{secrets.token_hex(8)}.deleting"
        os.rename(path / cls, trash)
        info = _info(path.name, path)
    shutil.rmtree(trash, ignore_errors=True)
    return info


def delete_picture(name: str, class_name: str, picture: str) -> DatasetInfo:
    """Delete one picture (its file name, as ``list_pictures`` gives it) from a class."""
    if not picture or "/" in picture or "\\" in picture or picture.startswith("."):
        raise DatasetError(f"{_q(picture)} is not a picture's file name; use one from the list of pictures")
    with _open_set(name) as path:
        cls = _class_of(path, path.name, class_name)
        file = path / cls / picture
        if file.is_symlink() or not file.is_file():
            raise DatasetError(f"class {_q(cls)} of {_q(path.name)} has no picture {_q(picture)}")
        file.unlink()
        fsync_dir(file.parent)
        return _info(path.name, path)


# ------------------------------------------------------------------------------- adding pictures


def format_size(size: int) -> str:
    """Bytes for people: ``512 B``, ``3.4 kB``, ``12.3 MB``, ``1.2 GB``."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:,.1f} {unit}"
    return f"{size} B"


def encode_picture(data: bytes | Path, label: str) -> bytes:
    """``data`` decoded safely (``open_image``), oriented, RGB, longest side ≤ ``MAX_SIDE``, as a JPEG
    without metadata; ``ImageError`` when it is not a readable picture."""
    img = open_image(data, name=label, max_bytes=MAX_PICTURE_BYTES, draft_size=MAX_SIDE)
    if max(img.size) > MAX_SIDE:
        scale = MAX_SIDE / max(img.size)
        size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        img = img.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    img.info.clear()  # no EXIF, ICC or comment travels into the stored file
    out = io.BytesIO()
    img.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
    return out.getvalue()


@dataclass
class _Batch:
    """Pictures of one ``add_pictures`` call, encoded into a staging folder (internal, mutable)."""

    set_name: str
    staging: Path
    usage: Usage  # the set's usage when the call began (checked again under the lock at the end)
    staged: list[tuple[str, Path, int]] = field(default_factory=list)  # (class, staged file, bytes)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    totals: Usage = field(default_factory=dict)  # class → staged pictures, bytes

    def stage(self, cls: str, label: str, data: bytes | Path) -> None:
        try:
            jpeg = encode_picture(data, label)
        except ImageError as exc:
            self.skipped.append((label, one_line(exc)))
            return
        file = self.staging / f"{secrets.token_hex(16)}.jpg"
        atomic_write(file, lambda f: f.write(jpeg))
        self.staged.append((cls, file, len(jpeg)))
        n, b = self.totals.get(cls, (0, 0))
        self.totals[cls] = (n + 1, b + len(jpeg))
        _check_limits(self.set_name, self.usage, self.totals)  # stop early, before encoding more


def _check_limits(set_name: str, usage: Usage, adding: Usage) -> None:
    """Refuse when the pictures ``adding`` would break a class or set limit of a set using ``usage``."""
    have = {cls.lower(): value for cls, value in usage.items()}
    for cls, (n, b) in adding.items():
        old_n, old_b = have.get(cls.lower(), (0, 0))
        where = f"class {_q(cls)} of {_q(set_name)}"
        if old_n + n > MAX_CLASS_PICTURES:
            raise DatasetError(f"{where} would hold {old_n + n:,} pictures, more than the limit of "
                               f"{MAX_CLASS_PICTURES:,} per class; nothing was added")
        if old_b + b > MAX_CLASS_BYTES:
            raise DatasetError(f"{where} would hold {format_size(old_b + b)}, more than the limit of "
                               f"{format_size(MAX_CLASS_BYTES)} per class; nothing was added")
    n = sum(v[0] for v in usage.values()) + sum(v[0] for v in adding.values())
    b = sum(v[1] for v in usage.values()) + sum(v[1] for v in adding.values())
    if n > MAX_SET_PICTURES:
        raise DatasetError(f"data set {_q(set_name)} would hold {n:,} pictures, more than the limit of "
                           f"{MAX_SET_PICTURES:,} per set; nothing was added")
    if b > MAX_SET_BYTES:
        raise DatasetError(f"data set {_q(set_name)} would hold {format_size(b)}, more than the limit of "
                           f"{format_size(MAX_SET_BYTES)} per set; nothing was added")


def _too_big(label: str, size: int) -> DatasetError:
    return DatasetError(f"{label} is {format_size(size)}, more than the limit of "
                        f"{format_size(MAX_PICTURE_BYTES)} for one picture; nothing was added")


def _is_zip(label: str, data: bytes | Path) -> bool:
    if label.lower().endswith(".zip"):
        return True
    if isinstance(data, Path):
        try:
            with open(data, "rb") as f:
                head = f.read(4)
        except OSError:
            return False
    else:
        head = bytes(data[:4])
    return head in (b"PK\x03\x04", b"PK\x05\x06")


def _zip_entries(zf: zipfile.ZipFile, label: str, target: str | None
                 ) -> tuple[list[tuple[zipfile.ZipInfo, str, str]], list[tuple[str, str]]]:
    """Check a zip's central directory; → (entry, class, shown name) to read, and entries skipped.

    Refuses the whole zip (``DatasetError``) for a bomb, a ``..`` or absolute path, a link, a
    picture over the size limit or a class folder with a bad name.
    """
    infos = zf.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise DatasetError(f"{label} has {len(infos):,} entries, more than the limit of {MAX_ZIP_ENTRIES:,}")
    total = 0
    files: list[tuple[zipfile.ZipInfo, list[str]]] = []
    for info in infos:
        raw = info.filename
        parts = [p for p in re.split(r"[\\/]+", raw) if p]
        shown = f"{label}: {_q(raw)}"
        if raw.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", raw):
            raise DatasetError(f"{shown} is an absolute path; {_REFUSED}")
        if ".." in parts:
            raise DatasetError(f"{shown} points outside the zip ('..'); {_REFUSED}")
        if stat.S_ISLNK(info.external_attr >> 16):
            raise DatasetError(f"{shown} is a symbolic link; {_REFUSED}")
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > RATIO_MIN_BYTES and ratio > MAX_ZIP_RATIO:
            raise DatasetError(f"{shown} unpacks to {ratio:,.0f} times its size (limit {MAX_ZIP_RATIO}×); "
                               f"refused as a possible zip bomb; {_REFUSED}")
        if not info.is_dir() and parts and not any(p.startswith(".") or p in _JUNK for p in parts):
            files.append((info, parts))
    if total > MAX_ZIP_UNCOMPRESSED:
        raise DatasetError(f"{label} unpacks to {format_size(total)}, more than the limit of "
                           f"{format_size(MAX_ZIP_UNCOMPRESSED)}; refused as a possible zip bomb")
    # A zipped folder ("fruit/apple/1.jpg"): its one top folder is not a class.
    tops = {parts[0] for _, parts in files}
    if len(tops) == 1 and all(len(p) >= 2 for _, p in files) and any(len(p) >= 3 for _, p in files):
        files = [(info, parts[1:]) for info, parts in files]
    chosen: list[tuple[zipfile.ZipInfo, str, str]] = []
    skipped: list[tuple[str, str]] = []
    for info, parts in files:
        shown = f"{label}/{_shown(info.filename)}"
        ext = os.path.splitext(parts[-1])[1].lower()
        if ext not in SUPPORTED_EXTENSIONS:
            reason = UNSUPPORTED_FORMATS.get(ext) or f"not a picture ({ext or 'no extension'})"
            skipped.append((shown, f"{shown}: {reason}"))
        elif len(parts) == 1 and target is None:
            skipped.append((shown, f"{shown} is not inside a class folder; choose a class for such pictures"))
        elif info.file_size > MAX_PICTURE_BYTES:
            raise _too_big(shown, info.file_size)
        elif info.flag_bits & 0x1:
            skipped.append((shown, f"{shown} is encrypted"))
        else:
            if len(parts) == 1:
                cls = target or ""
            else:
                try:
                    cls = validate_class_name(parts[0])
                except DatasetError as exc:
                    raise DatasetError(f"{label}: folder {_q(parts[0])} cannot be a class: {exc}; "
                                       f"{_REFUSED}") from None
            chosen.append((info, cls, shown))
    return chosen, skipped


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, shown: str) -> bytes:
    """An entry's bytes, never more than its header declares (headers can lie)."""
    with zf.open(info) as member:
        data = member.read(info.file_size + 1)
    if len(data) > info.file_size:
        raise DatasetError(f"{shown} holds more than its header says; refused as a possible zip bomb")
    return data


def _stage_zip(batch: _Batch, label: str, data: bytes | Path, target: str | None,
               progress: ProgressFn | None) -> None:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data) if isinstance(data, bytes) else data)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise DatasetError(f"{label} is not a readable zip file ({one_line(exc, 120)}); "
                           "nothing was added") from None
    with zf:
        chosen, skipped = _zip_entries(zf, label, target)
        have = {cls.lower() for cls in batch.usage}
        new = {cls.lower() for _, cls, _ in chosen} - have
        if len(have) + len(new) > MAX_CLASSES:
            raise DatasetError(f"{label} would give {_q(batch.set_name)} {len(have) + len(new)} classes, "
                               f"more than the limit of {MAX_CLASSES}; nothing was added")
        batch.skipped += skipped
        for i, (info, cls, shown) in enumerate(chosen):
            if progress is not None:
                progress(i, len(chosen), f"{label}: picture {i + 1} of {len(chosen)}")
            try:
                member = _read_member(zf, info, shown)
            except (zipfile.BadZipFile, OSError, RuntimeError, NotImplementedError, EOFError) as exc:
                batch.skipped.append((shown, f"{shown} cannot be unpacked ({one_line(exc, 120)})"))
                continue
            batch.stage(cls, shown, member)


def _sweep(path: Path) -> None:
    """Remove staging folders a killed process left behind."""
    with os.scandir(path) as it:
        stale = [e for e in it if e.name.startswith(".") and e.name.endswith((".staging", ".deleting"))]
    for entry in stale:
        with contextlib.suppress(OSError):
            if time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE_S:
                shutil.rmtree(entry.path, ignore_errors=True)


def add_pictures(name: str, class_name: str | None, uploads: Sequence[Upload], *,
                 progress: ProgressFn | None = None) -> AddReport:
    """Add pictures and zips to a set, all or nothing.

    ``uploads`` are (name, bytes or path); the name appears in messages only. A plain picture goes
    to ``class_name``; a zip's class folders become classes (created when missing) and the pictures
    at its top level go to ``class_name`` (listed as skipped when it is None). Files that are not
    readable pictures are skipped and listed in the report. A picture over ``MAX_PICTURE_BYTES``, a
    class or set over its limits, or a hostile zip refuse the whole call (``DatasetError``).
    ``progress(done, total, message)`` is called between pictures.
    """
    name, path = _set_path(name)
    if not (path / MARKER).is_file():
        raise _missing(name)
    target = _class_of(path, name, validate_class_name(class_name)) if class_name is not None else None
    staging = path / f".{secrets.token_hex(8)}.staging"
    try:
        _sweep(path)
        staging.mkdir()
        batch = _Batch(name, staging, _usage(_inventory(path)))
        _stage_all(batch, uploads, target, progress)
        with _open_set(name):
            return _commit(path, batch, target)
    except FileNotFoundError:
        if (path / MARKER).is_file():
            raise
        raise _missing(name) from None  # the set was deleted meanwhile, with the staging folder
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _stage_all(batch: _Batch, uploads: Sequence[Upload], target: str | None,
               progress: ProgressFn | None) -> None:
    """Encode every upload into the staging folder (zips entry by entry), checking limits as it goes."""
    for i, (label, data) in enumerate(uploads):
        label = _shown(label) or "uploaded file"
        data = Path(data) if isinstance(data, (str, os.PathLike)) else bytes(data)
        if progress is not None:
            progress(i, len(uploads), label)
        if _is_zip(label, data):
            _stage_zip(batch, label, data, target, progress)
            continue
        if target is None:
            raise DatasetError(f"{label}: choose the class this picture goes to")
        size = len(data) if isinstance(data, bytes) else (data.stat().st_size if data.is_file() else 0)
        if size > MAX_PICTURE_BYTES:
            raise _too_big(label, size)
        batch.stage(target, label, data)


def _commit(path: Path, batch: _Batch, target: str | None) -> AddReport:
    """Move the staged pictures into their class folders after checking the limits (under the lock)."""
    usage = _usage(_inventory(path))
    folder_of = {cls.lower(): cls for cls in usage}
    if target is not None and target.lower() not in folder_of:
        raise DatasetError(f"class {_q(target)} of {_q(batch.set_name)} was deleted meanwhile; "
                           "nothing was added")
    new = sorted({cls for cls, _, _ in batch.staged if cls.lower() not in folder_of}, key=str.lower)
    new = list({cls.lower(): cls for cls in new}.values())
    if len(usage) + len(new) > MAX_CLASSES:
        raise DatasetError(f"data set {_q(batch.set_name)} would have {len(usage) + len(new)} classes "
                           f"(new: {', '.join(new)}), more than the limit of {MAX_CLASSES}; "
                           "nothing was added")
    folder_of.update({cls.lower(): cls for cls in new})
    adding: Usage = {}
    for cls, (n, b) in batch.totals.items():
        key = folder_of[cls.lower()]
        old_n, old_b = adding.get(key, (0, 0))
        adding[key] = (old_n + n, old_b + b)
    _check_limits(batch.set_name, usage, adding)
    created: list[Path] = []
    moved: list[Path] = []
    try:
        for cls in new:
            (path / cls).mkdir()
            created.append(path / cls)
        for cls, staged, _ in batch.staged:
            dest = path / folder_of[cls.lower()] / staged.name
            os.rename(staged, dest)
            moved.append(dest)
        for folder in {dest.parent for dest in moved} | {path}:
            fsync_dir(folder)
    except BaseException:  # all or nothing: take back what this call moved
        for dest in moved:
            dest.unlink(missing_ok=True)
        for folder in created:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    return AddReport(len(moved), tuple(batch.skipped), tuple(new))


# --------------------------------------------------------------------------------------- export


def _write_zip(path: Path, out: IO[bytes]) -> None:
    """``<class>/<file>.jpg`` for every picture (stored: JPEGs do not compress)."""
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for cls, rows in sorted(_inventory(path).items()):
            zf.writestr(f"{cls}/", b"")  # keeps empty classes visible to other tools
            for rel, _, _ in rows:
                zf.write(path / cls / rel, f"{cls}/{rel}")


def export_zip(name: str) -> bytes:
    """The whole set as a zip (class folders of JPEGs), which ``add_pictures`` reads back."""
    with _open_set(name) as path:
        out = io.BytesIO()
        _write_zip(path, out)
        return out.getvalue()


def export_zip_to(name: str, dest: Path) -> Path:
    """Write the set's zip to ``dest`` (atomically; not inside the set itself); returns ``dest``."""
    dest = Path(dest).expanduser().resolve()
    with _open_set(name) as path:
        if dest.is_relative_to(path):
            raise DatasetError(f"{dest} is inside the data set {_q(path.name)}; write the zip elsewhere")
        atomic_write(dest, lambda f: _write_zip(path, f))
    return dest
