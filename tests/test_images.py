"""Untrusted images: broken files give one clear line, odd formats decode to the right RGB pixels."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from vgg.errors import ImageError
from vgg.images import SUPPORTED_EXTENSIONS, image_to_tensor, open_image

RED, GREEN, BLUE, WHITE = (255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)


def close(pixel: tuple[int, ...], expected: tuple[int, int, int], tol: int = 12) -> bool:
    return all(abs(int(a) - b) <= tol for a, b in zip(pixel, expected, strict=True))


def noisy_jpeg_bytes(size: int = 64) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def png_with_declared_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height pixels (no real pixel data)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit grayscale
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


# --- refusals: one clear line naming the file ---------------------------------------------------


def refusal(source: Path | bytes, **kwargs: object) -> str:
    with pytest.raises(ImageError) as info:
        open_image(source, **kwargs)  # type: ignore[arg-type]
    message = str(info.value)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.jpg"
    assert refusal(path) == f"{path}: no such file"


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpg"
    path.touch()
    assert refusal(path) == f"{path} is empty (0 bytes)"


def test_text_renamed_jpg(tmp_path: Path) -> None:
    path = tmp_path / "notes.jpg"
    path.write_text("these are my lesson notes, not a picture\n")
    assert refusal(path) == f"{path} is a text file, not an image"


def test_random_binary_is_not_an_image(tmp_path: Path) -> None:
    path = tmp_path / "blob.png"
    path.write_bytes(bytes(range(256)) * 8)
    message = refusal(path)
    assert str(path) in message and "not an image" in message


def test_truncated_jpeg_refused(tmp_path: Path) -> None:
    data = noisy_jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) * 2 // 3])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    message = refusal(path)
    assert str(path) in message and "truncated" in message
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # never switched on globally


def test_svg_by_extension_and_by_content(tmp_path: Path) -> None:
    svg = b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>'
    path = tmp_path / "logo.svg"
    path.write_bytes(svg)
    assert refusal(path) == f"{path}: SVG is not supported; export it as PNG"
    disguised = tmp_path / "logo.png"
    disguised.write_bytes(svg)
    assert refusal(disguised) == f"{disguised}: SVG is not supported; export it as PNG"
    assert "SVG is not supported" in refusal(svg, name="upload.svg")


def test_folder_named_like_an_image(tmp_path: Path) -> None:
    folder = tmp_path / "x.jpg"
    folder.mkdir()
    assert refusal(folder) == f"{folder} is a folder, not an image file"


def test_file_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "big.jpg"
    path.write_bytes(noisy_jpeg_bytes(128))
    message = refusal(path, max_bytes=1000)
    assert str(path) in message and "limit" in message
    assert "limit" in refusal(path.read_bytes(), name="big.jpg", max_bytes=1000)


def test_pixel_limit_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    Image.new("L", (3000, 3000)).save(buf, "PNG")  # 9 M pixels in a few kB

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    message = refusal(buf.getvalue(), name="bomb.png", max_pixels=1_000_000)
    assert message.startswith("bomb.png is 3000×3000 = 9,000,000 pixels") and "decompression bomb" in message


def test_pillow_decompression_bomb_limit(tmp_path: Path) -> None:
    data = png_with_declared_size(100_000, 100_000)  # 10^10 pixels declared in ~100 bytes
    assert len(data) < 200
    message = refusal(data, name="huge.png", max_pixels=10**12)  # only Pillow's own limit applies
    assert message.startswith("huge.png") and "decompression bomb" in message
    path = tmp_path / "huge.png"
    path.write_bytes(data)
    assert "decompression bomb" in refusal(path)  # default limits


def test_upload_name_is_only_a_label(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "secret.png").write_bytes(b"should never be read")
    message = refusal(b"plain text", name="../../secret.png\nINJECTED")
    assert message.startswith("../../secret.png?INJECTED")  # control characters neutralised
    assert "text file" in message
    assert open_image(png_bytes(Image.new("RGB", (4, 4), RED)), name="secret.png").getpixel((0, 0)) == RED


def test_bytes_without_name_and_bad_type() -> None:
    assert refusal(b"") == "uploaded image is empty (0 bytes)"
    with pytest.raises(ImageError):
        open_image(12345)  # type: ignore[arg-type]


# --- odd formats decode to RGB ------------------------------------------------------------------


def png_bytes(img: Image.Image, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG", **kwargs)
    return buf.getvalue()


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path: Path) -> None:
    values = np.array([[0, 32768, 65535, 1000]], dtype=np.uint16)
    path = tmp_path / "depth.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    img = open_image(path)
    assert img.mode == "RGB"
    row = [img.getpixel((x, 0)) for x in range(4)]
    assert row == [(0, 0, 0), (128, 128, 128), (255, 255, 255), (4, 4, 4)]


def test_grayscale_and_gray_alpha() -> None:
    assert open_image(png_bytes(Image.new("L", (3, 3), 77))).getpixel((1, 1)) == (77, 77, 77)
    transparent = Image.new("LA", (3, 3), (0, 0))
    assert open_image(png_bytes(transparent)).getpixel((1, 1)) == WHITE


def test_cmyk_jpeg(tmp_path: Path) -> None:
    path = tmp_path / "print.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=95)  # cyan 0, magenta+yellow → red
    img = open_image(path)
    assert img.mode == "RGB" and close(img.getpixel((8, 8)), RED)


def test_palette_png_with_transparency_goes_on_white(tmp_path: Path) -> None:
    img = Image.new("P", (4, 2))
    img.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    img.putpixel((0, 0), 0)
    img.paste(1, (2, 0, 4, 2))
    img.info["transparency"] = 1  # the green entry is transparent
    path = tmp_path / "palette.png"
    img.save(path, transparency=1)
    rgb = open_image(path)
    assert rgb.getpixel((0, 0)) == RED and rgb.getpixel((3, 1)) == WHITE


def test_rgba_webp_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (8, 8), (0, 0, 255, 255))
    img.paste((0, 0, 0, 0), (4, 0, 8, 8))  # right half fully transparent black
    path = tmp_path / "sticker.webp"
    img.save(path, lossless=True)
    rgb = open_image(path)
    assert close(rgb.getpixel((1, 4)), BLUE) and close(rgb.getpixel((6, 4)), WHITE)


def test_animated_gif_gives_first_frame(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), colour) for colour in (RED, GREEN, BLUE)]
    path = tmp_path / "anim.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(path).n_frames == 3
    assert close(open_image(path).getpixel((4, 4)), RED)


def test_exif_orientation_applied(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 20), RED)
    img.paste(BLUE, (20, 0, 40, 20))  # stored: red left half, blue right half
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    path = tmp_path / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    shown = open_image(path)
    assert shown.size == (20, 40)  # portrait after rotation
    # the stored left half (red) went to the top
    assert close(shown.getpixel((10, 3)), RED) and close(shown.getpixel((10, 36)), BLUE)


def test_one_pixel_image() -> None:
    img = open_image(png_bytes(Image.new("RGB", (1, 1), GREEN)))
    tensor = image_to_tensor(img, 32)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.uint8
    assert torch.equal(tensor, torch.tensor(GREEN, dtype=torch.uint8).view(3, 1, 1).expand(3, 32, 32))


def test_draft_decodes_large_jpeg_at_reduced_scale(tmp_path: Path) -> None:
    path = tmp_path / "photo.jpg"
    Image.new("RGB", (800, 600), BLUE).save(path)
    small = open_image(path, draft_size=64)
    assert min(small.size) >= 64 and small.size[0] <= 200  # decoded at 1/4 or 1/8 scale, not 800×600
    assert open_image(path).size == (800, 600)


def test_image_to_tensor_layout() -> None:
    img = Image.new("RGB", (50, 30), RED)
    img.paste(BLUE, (25, 0, 50, 30))
    tensor = image_to_tensor(img, 32)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.uint8 and tensor.is_contiguous()
    assert tensor[:, 16, 2].tolist() == list(RED) and tensor[:, 16, 29].tolist() == list(BLUE)


def test_supported_extensions_are_lower_case_with_dot() -> None:
    assert {".jpg", ".png", ".webp"} <= set(SUPPORTED_EXTENSIONS)
    assert all(ext.startswith(".") and ext == ext.lower() for ext in SUPPORTED_EXTENSIONS)
    assert ".svg" not in SUPPORTED_EXTENSIONS
