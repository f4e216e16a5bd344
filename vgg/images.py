"""Robust image decoding for untrusted files: one clear ``ImageError`` line, never a traceback.

Every image the app reads — an upload, a ``predict`` argument, a file of an image folder — goes
through ``open_image``: size limits first (bytes, then pixels from the header, before any pixel is
decoded), then decoding with truncated files refused, EXIF orientation applied, the first frame of
an animation, and every mode (grayscale, palette, transparency, CMYK, 16-bit) turned into RGB.
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError, features

from vgg.errors import ImageError

DEFAULT_MAX_BYTES = 20_000_000  # per file: a 12-megapixel phone JPEG is 3–8 MB
DEFAULT_MAX_PIXELS = 40_000_000  # width × height from the header; Pillow's own limit is ≈ 89 M

# Extensions the image-folder reader decodes (lower case, with the dot).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff",
    ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".ico",
) + ((".avif",) if features.check("avif") else ())

# Image formats people will try that Pillow cannot read here, with what to do instead.
UNSUPPORTED_FORMATS: dict[str, str] = {
    ".svg": "SVG is not supported; export it as PNG",
    ".svgz": "SVG is not supported; export it as PNG",
    ".heic": "HEIC photos are not supported; export them as JPEG",
    ".heif": "HEIF photos are not supported; export them as JPEG",
    ".pdf": "PDF is not supported; export the picture as PNG or JPEG",
    ".psd": "Photoshop files are not supported; export the picture as PNG or JPEG",
    ".dng": "raw camera files are not supported; export them as JPEG",
    ".cr2": "raw camera files are not supported; export them as JPEG",
    ".nef": "raw camera files are not supported; export them as JPEG",
    ".arw": "raw camera files are not supported; export them as JPEG",
}
if not features.check("avif"):
    UNSUPPORTED_FORMATS[".avif"] = "AVIF is not supported by this Pillow; export it as JPEG or PNG"

# warnings.catch_warnings swaps process-wide filters; one header parse at a time keeps the swaps
# from interleaving between decoding threads (pixel decoding itself runs outside the lock).
_OPEN_LOCK = threading.Lock()


class _Refused(Exception):
    """An internal refusal whose message template holds ``{label}``, filled in only when raised."""


def _label(source: object, name: str | None) -> str:
    """How a file is named in messages: the given name (an upload's), else the path."""
    if name is None:
        if isinstance(source, (bytes, bytearray, memoryview)):
            name = "uploaded image"
        else:
            name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else repr(source)
    text = "".join(ch if ch.isprintable() else "?" for ch in str(name))
    return text if len(text) <= 150 else text[:149] + "…"


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or exc.__class__.__name__
    return text if len(text) <= 160 else text[:159] + "…"


def _read_bytes(path: str, max_bytes: int) -> bytes:
    """Read a file after checking it exists, is a regular file and is not too large."""
    try:
        info = os.stat(path)  # follows symlinks: a link to a folder is a folder
    except FileNotFoundError:
        raise _Refused("{label}: no such file") from None
    except OSError as exc:
        raise _Refused(f"{{label}}: cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    if stat.S_ISDIR(info.st_mode):
        raise _Refused("{label} is a folder, not an image file")
    if not stat.S_ISREG(info.st_mode):
        raise _Refused("{label} is not a regular file")
    _check_byte_size(info.st_size, max_bytes)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in UNSUPPORTED_FORMATS:
        raise _Refused(f"{{label}}: {UNSUPPORTED_FORMATS[suffix]}")
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_bytes + 1)  # the file may have grown since stat
    except OSError as exc:
        raise _Refused(f"{{label}}: cannot be read ({exc.strerror or exc.__class__.__name__})") from None
    _check_byte_size(len(data), max_bytes)
    return data


def _check_byte_size(size: int, max_bytes: int) -> None:
    if size == 0:
        raise _Refused("{label} is empty (0 bytes)")
    if size > max_bytes:
        raise _Refused(
            f"{{label}} is {size / 1e6:.1f} MB, more than the limit of {max_bytes / 1e6:g} MB for one image"
        )


def _sniff_unreadable(data: bytes) -> _Refused:
    """The refusal for bytes Pillow does not recognise, saying what they look like."""
    head = data[:512].lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in data[:4096].lower()):
        return _Refused("{label}: SVG is not supported; export it as PNG")
    if head.startswith(b"%pdf"):
        return _Refused("{label} is a PDF, not an image; export the picture as PNG or JPEG")
    if data[4:12] in (b"ftypheic", b"ftypheix", b"ftypmif1", b"ftyphevc"):
        return _Refused("{label}: HEIC photos are not supported; export them as JPEG")
    if head.startswith((b"<!doctype html", b"<html")):
        return _Refused("{label} is a web page (HTML), not an image")
    try:
        data[:4096].decode("utf-8")
    except UnicodeDecodeError:
        return _Refused("{label} is not an image format Pillow can read")
    return _Refused("{label} is a text file, not an image")


def _open_checked(data: bytes, max_pixels: int) -> Image.Image:
    """Parse the header only, refusing bombs before any pixel is decoded."""
    try:
        with _OPEN_LOCK, warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Refused(f"{{label}} is refused as a possible decompression bomb ({_one_line(exc)})") from None
    except UnidentifiedImageError:
        raise _sniff_unreadable(data) from None
    except Exception as exc:  # Pillow raises many types on malformed headers
        raise _Refused(f"{{label}}: the image data is truncated or corrupt ({_one_line(exc)})") from None
    width, height = img.size
    if width <= 0 or height <= 0:
        raise _Refused(f"{{label}} has an invalid size {width}×{height}")
    if width * height > max_pixels:
        raise _Refused(
            f"{{label}} is {width}×{height} = {width * height:,} pixels, more than the limit of "
            f"{max_pixels:,}; refused as a possible decompression bomb"
        )
    return img


def _sixteen_bit_to_rgb(img: Image.Image) -> Image.Image:
    """Grayscale integer or float images (I;16*, I, F) scaled — not clipped — to 8-bit RGB."""
    arr = np.asarray(img)
    if img.mode.startswith("I;16"):
        scaled = arr.astype(np.float32) / 257.0  # 0..65535 → 0..255
    elif img.mode == "I":
        arr = arr.astype(np.float64)
        scaled = arr / 257.0 if arr.max(initial=0) > 255 else arr  # 16-bit data stored as 32-bit
    else:  # "F": either 0..1 or 0..255 floats
        arr = np.nan_to_num(arr.astype(np.float64))
        scaled = arr * 255.0 if arr.max(initial=0) <= 1.0 else arr
    gray = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _on_white(img: Image.Image) -> Image.Image:
    """Composite an image with transparency onto a white background."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any Pillow mode to RGB: transparency onto white, 16-bit scaled to 8-bit."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I") or mode == "F":
        return _sixteen_bit_to_rgb(img)
    if mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        return _on_white(img)
    if mode == "P":
        return _on_white(img) if "transparency" in img.info else img.convert("RGB")
    if mode in ("L", "1") and "transparency" in img.info:
        return _on_white(img)
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, HSV, ...


def _decode(source: str | bytes, max_bytes: int, max_pixels: int, draft_size: int | None) -> Image.Image:
    """The work of ``open_image``; refusals carry a ``{label}`` template."""
    if isinstance(source, bytes):
        _check_byte_size(len(source), max_bytes)
        data = source
    else:
        data = _read_bytes(source, max_bytes)
    img = _open_checked(data, max_pixels)
    try:
        if getattr(img, "n_frames", 1) > 1:
            img.seek(0)
        if draft_size is not None and img.format in ("JPEG", "MPO"):
            img.draft(None, (draft_size, draft_size))
        img.load()  # raises on truncated data: ImageFile.LOAD_TRUNCATED_IMAGES stays False
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _Refused(f"{{label}} is refused as a possible decompression bomb ({_one_line(exc)})") from None
    except Exception as exc:  # OSError "image file is truncated", SyntaxError, ValueError, ...
        raise _Refused(f"{{label}}: the image data is truncated or corrupt ({_one_line(exc)})") from None
    # A JPEG without an EXIF block has no orientation to apply; skip the (measurable) EXIF parse.
    if img.format != "JPEG" or "exif" in img.info or "xmp" in img.info:
        try:
            ImageOps.exif_transpose(img, in_place=True)
        except Exception:  # a broken EXIF block must not lose an otherwise good picture
            pass
    try:
        return to_rgb(img)
    except Exception as exc:
        raise _Refused(f"{{label}}: cannot convert mode {img.mode} to RGB ({_one_line(exc)})") from None


def open_image(
    source: Path | str | bytes,
    *,
    name: str | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Open a file (path) or an upload (bytes) as an RGB Pillow image, or raise ``ImageError``.

    ``name`` labels the image in messages (an upload's file name: used only in messages, never
    as a path). ``max_bytes`` limits the file size, ``max_pixels`` width × height read from the
    header before any pixel is decoded. ``draft_size`` lets JPEG decode at a reduced scale that is
    still at least that many pixels each way (much faster for phone photos that are resized
    anyway). The result has EXIF orientation applied and is the first frame of an animation.
    """
    try:
        if isinstance(source, (bytes, bytearray, memoryview)):
            suffix = os.path.splitext(name)[1].lower() if name else ""
            if suffix in UNSUPPORTED_FORMATS:
                raise _Refused(f"{{label}}: {UNSUPPORTED_FORMATS[suffix]}")
            return _decode(bytes(source), max_bytes, max_pixels, draft_size)
        if isinstance(source, (str, os.PathLike)):
            return _decode(os.fspath(source), max_bytes, max_pixels, draft_size)
        raise _Refused(f"{{label}}: expected a file path or bytes, got {type(source).__name__}")
    except _Refused as refusal:
        raise ImageError(str(refusal).replace("{label}", _label(source, name))) from None


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """Resize to ``size``×``size`` → uint8 tensor (3, size, size).

    Bilinear with antialiasing, as torchvision's Resize; the picture is squashed to a square, as
    the notebook's ``Resize((size, size))`` does.
    """
    arr = np.array(image_to_array(img, size))  # a writable copy for torch
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def image_to_array(img: Image.Image, size: int) -> np.ndarray:
    """Like ``image_to_tensor`` but a uint8 NumPy array (size, size, 3), for filling a batch buffer."""
    if img.mode != "RGB":
        img = to_rgb(img)
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR, reducing_gap=3.0)
    return np.asarray(img, dtype=np.uint8)
