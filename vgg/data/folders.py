"""Image folders as data sets: class folders (optionally inside train/, val/ and test/).

Everything a teacher or pupil puts there is untrusted: hidden files and OS clutter are skipped,
links are followed only when they stay inside the data dir, files that are not images are listed
with a reason, empty classes are ignored with a warning. Nothing is decoded before the files of
each split are chosen, so a short run decodes only what it uses (``vgg.data.cache``).
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vgg.data.cache import _decoded_images
from vgg.data.config import TEST_SEED, DataConfig, DataSplits, ProgressFn, ReadReport, TensorData, _take
from vgg.data.splits import _relabel, finish_splits, stratified_split, take_per_class
from vgg.errors import DataUnavailableError, PathError, os_reason
from vgg.images import SUPPORTED_EXTENSIONS, UNSUPPORTED_FORMATS
from vgg.paths import resolve_inside

FOLDER_TEST_FRACTION = 0.2  # test split of an image folder that has no test/ folder
_SPLIT_FOLDERS = {"train": "train", "test": "test", "val": "val", "valid": "val", "validation": "val"}
_JUNK_NAMES = {"__MACOSX", "Thumbs.db", "desktop.ini", "__pycache__"}


@dataclass
class _Scan:
    """The files of an image folder, by split, before decoding (internal, mutable while scanning)."""

    root: Path
    classes: list[str] = field(default_factory=list)
    # split → rows (relative path, label, size in bytes, modification time in ns)
    files: dict[str, list[tuple[str, int, int, int]]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _visible_entries(path: Path) -> list[os.DirEntry[str]]:
    """Entries of a folder sorted by name, without hidden files and OS clutter (.DS_Store, __MACOSX)."""
    with os.scandir(path) as it:
        entries = [e for e in it if not e.name.startswith(".") and e.name not in _JUNK_NAMES]
    return sorted(entries, key=lambda e: e.name)


def _is_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir(follow_symlinks=False)
    except OSError:
        return False


def _scan_class(
    scan: _Scan, folder: str, rel_folder: str, allowed: Path, out: list[tuple[str, int, int]]
) -> None:
    """Collect candidate image files below ``folder`` (recursively) as (relative path, size, mtime)."""
    try:
        entries = _visible_entries(Path(folder))
    except OSError as exc:
        scan.skipped.append((rel_folder, f"{rel_folder}: cannot list this folder ({os_reason(exc)})"))
        return
    for entry in entries:
        rel = f"{rel_folder}/{entry.name}"
        stem, dot, suffix = entry.name.rpartition(".")
        ext = f".{suffix.lower()}" if dot and stem else ""
        try:
            if entry.is_symlink():
                try:
                    target = resolve_inside(entry.path, allowed)
                except PathError:
                    scan.skipped.append((rel, f"{rel} is a link pointing outside the data folder"))
                    continue
                if target.is_dir():
                    scan.skipped.append((rel, f"{rel} is a link to a folder (not followed)"))
                    continue
            if _is_dir(entry):
                if ext in SUPPORTED_EXTENSIONS:
                    scan.skipped.append((rel, f"{rel} is a folder, not an image file"))
                else:
                    _scan_class(scan, entry.path, rel, allowed, out)
            elif ext in SUPPORTED_EXTENSIONS:
                info = entry.stat()  # follows a (checked) file link
                if not stat.S_ISREG(info.st_mode):
                    scan.skipped.append((rel, f"{rel} is not a regular file"))
                else:
                    out.append((rel, info.st_size, info.st_mtime_ns))
            elif ext in UNSUPPORTED_FORMATS:
                scan.skipped.append((rel, f"{rel}: {UNSUPPORTED_FORMATS[ext]}"))
            else:
                scan.skipped.append((rel, f"{rel} is not an image file ({ext or 'no extension'})"))
        except OSError as exc:
            scan.skipped.append((rel, f"{rel} cannot be read ({os_reason(exc)})"))


def _scan_folder(root: Path, allowed: Path) -> _Scan:
    """Find splits, classes and candidate files of an image folder; nothing is decoded yet."""
    if not root.exists():
        raise DataUnavailableError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataUnavailableError(f"{root} is not a folder; choose a folder of class folders")
    scan = _Scan(root)
    try:
        top = _visible_entries(root)
    except OSError as exc:
        raise DataUnavailableError(f"cannot list {root} ({os_reason(exc)})") from None
    split_dirs = {
        _SPLIT_FOLDERS[e.name.lower()]: e for e in top if _is_dir(e) and e.name.lower() in _SPLIT_FOLDERS
    }
    if split_dirs and "train" not in split_dirs:
        raise DataUnavailableError(f"{root} has {', '.join(sorted(split_dirs))}/ but no train/ folder")
    if split_dirs:
        for e in top:
            if e.name.lower() not in _SPLIT_FOLDERS:
                scan.warnings.append(
                    f"ignored {e.name!r} in {root.name}: expected only train/, test/ and val/"
                )
        layout = {split: Path(entry.path) for split, entry in split_dirs.items()}
    else:
        layout = {"train": root}

    # Classes come from the training folder, sorted by name (torchvision ImageFolder's order).
    class_files: dict[str, dict[str, list[tuple[str, int, int]]]] = {}
    for split, split_root in layout.items():
        class_files[split] = {}
        prefix = "" if split_root == root else split_root.name + "/"
        for entry in _visible_entries(split_root):
            rel = prefix + entry.name
            if entry.is_symlink() and not _inside(entry.path, allowed):
                scan.skipped.append((rel, f"{rel} is a link pointing outside the data folder"))
            elif _is_dir(entry) or (entry.is_symlink() and Path(entry.path).is_dir()):
                found: list[tuple[str, int, int]] = []
                _scan_class(scan, entry.path, rel, allowed, found)
                class_files[split][entry.name] = found
            else:
                scan.skipped.append((rel, f"{rel} is not inside a class folder"))

    train_classes = class_files["train"]
    if not train_classes:
        raise DataUnavailableError(
            f"no class folders in {layout['train']}: put the images of each class in a folder "
            "named after the class"
        )
    for name, found in train_classes.items():
        if found:
            scan.classes.append(name)
        else:
            scan.empty_classes.append(name)
            scan.warnings.append(f"class folder {name!r} has no images; ignored")
    label_of = {name: i for i, name in enumerate(scan.classes)}
    for split, by_class in class_files.items():
        rows: list[tuple[str, int, int, int]] = []
        for name, found in by_class.items():
            if name not in label_of:
                if split != "train" and found:
                    scan.warnings.append(
                        f"{split}/{name} is not a training class; its {len(found)} images are ignored"
                    )
                continue
            rows.extend((rel, label_of[name], size, mtime) for rel, size, mtime in found)
        scan.files[split] = rows
    return scan


def _inside(path: str, allowed: Path) -> bool:
    try:
        resolve_inside(path, allowed)
    except PathError:
        return False
    return True


def load_folder(
    cfg: DataConfig, root: Path, progress: ProgressFn | None, source_name: str | None = None
) -> DataSplits:
    start = time.perf_counter()
    name = source_name or f"folder {root.name}"
    allowed = cfg.resolved_data_dir()
    scan = _scan_folder(root, allowed)
    if len(scan.classes) < 2:
        raise DataUnavailableError(
            f"{root} has {len(scan.classes)} class folder(s) with images; a classifier needs at least two"
        )

    # Choose the files of each split before decoding, so short runs decode only what they use.
    train_rows = scan.files["train"]
    test_rows = scan.files.get("test") or []
    val_rows = scan.files.get("val") or []
    if "test" not in scan.files:
        keep, held = stratified_split(_labels_of(train_rows), FOLDER_TEST_FRACTION, TEST_SEED)
        train_rows, test_rows = _pick(train_rows, keep), _pick(train_rows, held)
        scan.warnings.append(
            f"no test/ folder: {len(test_rows)} training images ({FOLDER_TEST_FRACTION:.0%}) "
            "held out as the test set"
        )
    all_rows = scan.files["train"] + (scan.files.get("test") or []) + val_rows
    if cfg.images_per_class is not None:
        train_rows = _pick(train_rows, take_per_class(_labels_of(train_rows), cfg.images_per_class, cfg.seed))
        if cfg.cap_test:
            test_rows = _pick(test_rows, take_per_class(_labels_of(test_rows), cfg.images_per_class, TEST_SEED))
        val_rows = _pick(val_rows, take_per_class(_labels_of(val_rows), cfg.images_per_class, TEST_SEED))

    decoded, skipped, from_cache, n_decoded, cache_warning = _decoded_images(
        cfg, root, all_rows, train_rows + val_rows + test_rows, progress
    )
    if cache_warning:
        scan.warnings.append(cache_warning)
    row_of = {rel: i for i, rel in enumerate(decoded.files)}

    def build(rows: list[tuple[str, int, int, int]]) -> TensorData:
        present = [(row_of[rel], label) for rel, label, _, _ in rows if rel in row_of]
        index = torch.tensor([i for i, _ in present], dtype=torch.int64)
        labels = torch.tensor([label for _, label in present], dtype=torch.int64)
        return TensorData(_take(decoded.images, index), labels)

    train_all, test, val = build(train_rows), build(test_rows), build(val_rows)
    classes = tuple(scan.classes)
    train_all, val, test, classes, dropped = _drop_empty_classes(train_all, val, test, classes)
    for cls in dropped:
        scan.empty_classes.append(cls)
        scan.warnings.append(f"class folder {cls!r} has no readable training images; ignored")
    if len(classes) < 2:
        raise DataUnavailableError(
            f"{root} has {len(classes)} class(es) with readable images; a classifier needs at least two"
        )
    chosen = {rel for rel, *_ in train_rows + val_rows + test_rows}
    report = ReadReport(
        skipped=tuple(sorted(set(scan.skipped) | {s for s in skipped if s[0] in chosen})),
        empty_classes=tuple(scan.empty_classes),
        warnings=tuple(scan.warnings),
        decoded=n_decoded,
        from_cache=from_cache,
        seconds=time.perf_counter() - start,
    )
    return finish_splits(cfg, train_all, val if len(val) else None, test, classes, report, name)


def _labels_of(rows: Sequence[tuple[str, int, int, int]]) -> torch.Tensor:
    return torch.tensor([row[1] for row in rows], dtype=torch.int64)


def _pick(rows: list[tuple[str, int, int, int]], index: torch.Tensor) -> list[tuple[str, int, int, int]]:
    return [rows[i] for i in index.tolist()]


def _drop_empty_classes(
    train: TensorData, val: TensorData, test: TensorData, classes: tuple[str, ...]
) -> tuple[TensorData, TensorData, TensorData, tuple[str, ...], list[str]]:
    """Remove classes left without training images (all files unreadable) and relabel 0..k-1."""
    counts = train.class_counts(len(classes))
    keep = [i for i, n in enumerate(counts) if n > 0]
    if len(keep) == len(classes):
        return train, val, test, classes, []
    dropped = [classes[i] for i, n in enumerate(counts) if n == 0]
    new_label = torch.full((len(classes),), -1, dtype=torch.int64)
    new_label[keep] = torch.arange(len(keep))
    return (
        _relabel(train, new_label), _relabel(val, new_label), _relabel(test, new_label),
        tuple(classes[i] for i in keep), dropped,
    )


