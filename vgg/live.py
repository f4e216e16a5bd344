"""Classifying a video stream frame by frame: the top 3 written onto each frame, Grad-CAM optionally.

``LiveClassifier(loaded)`` takes an RGB frame ``(H, W, 3)`` uint8 and returns the frame to show:
the model's top 3 with their probabilities in a band at the top, and with ``grad_cam`` the heat map
of the top class blended over the picture. It preprocesses as the Classify page does
(``vgg.inference.preprocess``) and keeps no state between frames beside the last answer (for the
page to show). Frames come from a video thread (``streamlit-webrtc``); the model is shared
read-only, and Grad-CAM never modifies it (``vgg.gradcam``).

``frame_model(loaded)`` is the speed-up beside it: a copy in bf16 and channels_last where the device
has bf16 units, for 224 px models (VGG11-BN at 224 px, one frame, measured by bench/live_fps.py on a
2-core CPU with AMX: 120 ms in fp32, 32 ms so). At 32 px the fp32 model is faster (24 ms against 39):
the first Linear's 100 M weights dominate there, and are read once per frame either way.
"""

from __future__ import annotations

import copy
import functools
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from vgg import gradcam
from vgg.inference import LoadedModel, preprocess
from vgg.settings import choose_precision

TOP = 3  # classes written on a frame
BAND = (0, 0, 0, 150)  # RGBA of the band behind the text
LOW_PRECISION_FROM = 64  # input size from which the bf16 copy is faster (see the module's text)


def frame_model(loaded: LoadedModel) -> LoadedModel:
    """``loaded`` for one frame at a time: a bf16, channels_last copy where the device has bf16 units
    and the input is at least ``LOW_PRECISION_FROM`` px; else ``loaded`` itself."""
    dtype = choose_precision("auto", loaded.device)
    if dtype is None or loaded.input_size < LOW_PRECISION_FROM:
        return loaded
    model = copy.deepcopy(loaded.model).to(dtype=dtype, memory_format=torch.channels_last).eval()
    return replace(loaded, model=model)


@dataclass(frozen=True)
class LiveAnswer:
    """What the last frame got: its top classes and how long the frame took."""

    top: tuple[tuple[str, float], ...]
    seconds: float


class LiveClassifier:
    """Classify RGB frames with ``loaded`` (best a ``frame_model``; see the module's text)."""

    def __init__(self, loaded: LoadedModel, *, grad_cam: bool = False) -> None:
        self.loaded = loaded
        self.grad_cam = grad_cam
        self.dtype = next(loaded.model.parameters()).dtype
        self.last: LiveAnswer | None = None
        self._lock = threading.Lock()  # one frame at a time through this classifier

    @torch.no_grad()
    def top(self, img: Image.Image) -> tuple[tuple[str, float], ...]:
        """The ``TOP`` classes of one picture with their probabilities, most likely first."""
        x = preprocess([img], self.loaded).to(self.dtype).contiguous(memory_format=torch.channels_last)
        probabilities = self.loaded.model(x).float().softmax(1)[0]
        values, index = probabilities.topk(min(TOP, len(probabilities)))
        return tuple((self.loaded.classes[int(i)], float(v)) for v, i in zip(values, index, strict=True))

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        start = time.perf_counter()
        with self._lock:
            img = Image.fromarray(frame, "RGB")
            top = self.top(img)
            shown = img
            if self.grad_cam:
                cam = gradcam.grad_cam(self.loaded, img, target=self.loaded.classes.index(top[0][0]))
                shown = gradcam.overlay_heatmap(img, cam, alpha=0.4)
            out = draw_top(shown, top)
            self.last = LiveAnswer(top, time.perf_counter() - start)
        return out


@functools.lru_cache(maxsize=8)
def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's own font at ``size`` px, loaded once per size (not once per frame)."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: one bitmap size
        return ImageFont.load_default()


def draw_top(img: Image.Image, top: tuple[tuple[str, float], ...]) -> np.ndarray:
    """``img`` with one line per class ("cat 87 %") in a dark band at its top; as an RGB array."""
    size = max(12, img.height // 18)
    font = _font(size)
    band = Image.new("RGBA", img.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(band)
    lines = [f"{label} {p:.0%}" for label, p in top]
    height = int(len(lines) * size * 1.25 + size * 0.5)
    draw.rectangle((0, 0, img.width, height), fill=BAND)
    for i, line in enumerate(lines):
        draw.text((size // 2, size // 4 + i * size * 1.25), line, font=font,
                  fill=(255, 255, 255, 255) if i == 0 else (210, 210, 210, 255))
    return np.asarray(Image.alpha_composite(img.convert("RGBA"), band).convert("RGB"))
