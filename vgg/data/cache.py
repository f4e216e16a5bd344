"""Decoding image files in a few threads, and the disk cache of the decoded tensors.

The cache file of a folder is keyed by a hash of the folder, the input size and every file's name,
size and modification time, so an edited folder is decoded again. Files are written atomically.
"""

from __future__ import annotations

import hashlib
import os
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vgg.data.config import DataConfig, ProgressFn
from vgg.errors import DataUnavailableError, ImageError, os_reason
from vgg.files import atomic_write
from vgg.images import image_to_array, open_image

CACHE_VERSION = 1
CACHE_KEEP = 16  # decoded-image caches kept per cache folder (oldest deleted first)
DECODE_CHUNK = 64  # files per decoding task


@dataclass(frozen=True, eq=False)
class _Decoded:
    files: list[str]  # relative paths of the decoded images, one per row of ``images``
    images: torch.Tensor  # uint8 (M, 3, S, S)


def _cache_key(root: Path, size: int, rows: Sequence[tuple[str, int, int, int]]) -> str:
    """A hash of the folder, the input size and every file's name, size and modification time."""
    digest = hashlib.sha256(f"v{CACHE_VERSION}\0{root}\0{size}\0".encode())
    for rel, _, nbytes, mtime in sorted(rows):
        digest.update(f"{rel}\0{nbytes}\0{mtime}\n".encode())
    return digest.hexdigest()[:32]


def _decoded_images(
    cfg: DataConfig,
    root: Path,
    all_rows: list[tuple[str, int, int, int]],
    chosen_rows: list[tuple[str, int, int, int]],
    progress: ProgressFn | None,
) -> tuple[_Decoded, list[tuple[str, str]], bool, int, str | None]:
    """The decoded images: from the cache of the whole folder, else of the chosen files, else decoded.

    Returns (decoded, skipped, from_cache, number decoded now, a cache warning or None).
    """
    cache_dir = cfg.resolved_cache_dir()
    size = cfg.input_size
    full_key = _cache_key(root, size, all_rows)
    keys = [full_key]
    if len(chosen_rows) != len(all_rows):
        keys.append(_cache_key(root, size, chosen_rows))
    warning = None
    for key in keys:
        cached, problem = _load_cache(cache_dir / f"{key}.pt", size)
        warning = warning or problem
        if cached is not None:
            decoded, skipped = cached
            if progress is not None:
                n = len(decoded.files)
                progress(n, n, f"loaded {n:,} images from the cache")
            return decoded, skipped, True, 0, warning

    # Decode everything when everything is used (that cache then serves any later subset), else
    # only the chosen files (cached under their own key).
    rows = all_rows if len(keys) == 1 else sorted(chosen_rows)
    _check_memory(len(rows), size)
    decoded, skipped = _decode_files(root, [row[0] for row in rows], size, progress)
    problem = _save_cache(cache_dir, cache_dir / f"{keys[-1]}.pt", decoded, skipped, size)
    return decoded, skipped, False, len(decoded.files), warning or problem


def _check_memory(n: int, size: int) -> None:
    """Refuse a decode that would need more than half of this machine's memory."""
    need = n * 3 * size * size
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if need > total // 2:
        raise DataUnavailableError(
            f"{n:,} images at {size}×{size} px need {need / 1e9:.1f} GB of memory, more than half of this "
            f"machine's {total / 1e9:.1f} GB; choose a smaller input size or fewer images per class"
        )


def _decode_files(
    root: Path, rels: list[str], size: int, progress: ProgressFn | None
) -> tuple[_Decoded, list[tuple[str, str]]]:
    """Decode and resize files in a few threads (Pillow releases the GIL while decoding)."""
    n = len(rels)
    buffer = np.empty((n, size, size, 3), dtype=np.uint8)
    ok = np.zeros(n, dtype=bool)
    root_text = str(root)

    def work(first: int, stop: int) -> list[tuple[str, str]]:
        failures = []
        for i in range(first, stop):
            try:
                img = open_image(os.path.join(root_text, rels[i]), name=rels[i], draft_size=size)
                buffer[i] = image_to_array(img, size)
                ok[i] = True
            except ImageError as exc:
                failures.append((rels[i], str(exc)))
            except Exception as exc:  # never let one odd file stop the whole folder
                reason = f"{rels[i]} cannot be decoded ({exc.__class__.__name__}: {exc})"
                failures.append((rels[i], " ".join(reason.split())[:200]))
        return failures

    skipped: list[tuple[str, str]] = []
    workers = max(1, min(4, os.cpu_count() or 1))
    starts = deque(range(0, n, DECODE_CHUNK))
    pending: deque[tuple[int, Future[list[tuple[str, str]]]]] = deque()
    done = 0
    if progress is not None:
        progress(0, n, f"decoding {n:,} images")
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vgg-decode") as pool:
        try:
            while starts or pending:
                while starts and len(pending) < 2 * workers:
                    first = starts.popleft()
                    stop = min(first + DECODE_CHUNK, n)
                    pending.append((stop - first, pool.submit(work, first, stop)))
                count, future = pending.popleft()
                skipped.extend(future.result())
                done += count
                if progress is not None:
                    progress(done, n, f"decoding images ({done:,} of {n:,})")
        finally:
            for _, future in pending:  # on abort, queued chunks are dropped, running ones finish
                future.cancel()
    keep = np.flatnonzero(ok)
    kept = buffer if len(keep) == n else buffer[keep]
    images = torch.from_numpy(kept).permute(0, 3, 1, 2).contiguous()  # (M, 3, S, S)
    return _Decoded([rels[i] for i in keep.tolist()], images), skipped


def _load_cache(path: Path, size: int) -> tuple[tuple[_Decoded, list[tuple[str, str]]] | None, str | None]:
    """Read a cache file; a missing one is (None, None), a broken one (None, warning)."""
    if not path.is_file():
        return None, None
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        images = payload["images"]
        files = payload["files"].split("\0") if payload["files"] else []
        flat = payload["skipped"].split("\0") if payload["skipped"] else []
        skipped = list(zip(flat[0::2], flat[1::2], strict=True))
        valid = (
            payload.get("version") == CACHE_VERSION
            and isinstance(images, torch.Tensor)
            and images.dtype == torch.uint8
            and images.shape[1:] == (3, size, size)
            and images.shape[0] == len(files)
        )
    except Exception as exc:  # a truncated or foreign file: decode again
        return None, f"ignored a broken cache file {path.name} ({exc.__class__.__name__})"
    if not valid:
        return None, f"ignored a cache file {path.name} of another version"
    return (_Decoded(files, images), skipped), None


def _save_cache(
    cache_dir: Path, path: Path, decoded: _Decoded, skipped: list[tuple[str, str]], size: int
) -> str | None:
    """Write the cache atomically (temp file + os.replace); a failure is a warning, not an error."""
    # Names as one NUL-joined string: file names cannot contain NUL, and the weights-only
    # unpickler is slow per object (60,000 strings take seconds, one string microseconds).
    payload = {
        "version": CACHE_VERSION,
        "size": size,
        "files": "\0".join(decoded.files),
        "skipped": "\0".join(f"{rel}\0{reason}" for rel, reason in skipped),
        "images": decoded.images,
    }
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda handle: torch.save(payload, handle))
    except (OSError, RuntimeError) as exc:  # torch.save wraps a failed write in a RuntimeError
        return (
            f"could not write the decoded-image cache in {cache_dir} ({os_reason(exc)}); "
            "the next start decodes again"
        )
    _prune_cache(cache_dir)
    return None


def _prune_cache(cache_dir: Path) -> None:
    """Keep the newest CACHE_KEEP cache files."""
    try:
        files = sorted(cache_dir.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in files[CACHE_KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass


