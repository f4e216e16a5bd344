"""What a model looks at: Grad-CAM (Selvaraju et al. 2017).

The last convolution's feature maps ``A_k`` are weighted by the mean gradient of the class score
``∂y_c / ∂A_k`` and summed, then clipped at 0. The layers run one by one from a copy of the
activation instead of registering hooks, so a model shared by several sessions is never modified.
The map has the last convolution's resolution, 2×2 for a 32 px input, 14×14 at 224 px. It is
returned at that resolution and drawn as what it is: coarse maps as blocks over the picture the
model saw (a smooth rainbow over a large photo would suggest detail the map does not have).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from vgg.errors import ConfigError
from vgg.inference import LoadedModel, preprocess
from vgg.model import VGG


def last_conv_index(model: VGG) -> int:
    """Index in ``model.features`` of the last ``nn.Conv2d``."""
    convs = [i for i, layer in enumerate(model.features) if isinstance(layer, nn.Conv2d)]
    if not convs:
        raise ConfigError("the model has no convolution to explain")
    return convs[-1]


def grad_cam(loaded: LoadedModel, img: Image.Image, target: int | None = None) -> np.ndarray:
    """Grad-CAM heat map (h, w) in [0, 1] of the class ``target`` (default: the predicted class), at
    the last convolution's resolution (2×2 for a 32 px input).

    The last convolution's maps ``A_k`` are weighted by the mean gradient of the class score
    ``∂y_c / ∂A_k`` and summed, then clipped at 0. The layers run one by one from a copy of the
    activation, so the in-place ReLUs never overwrite it and the shared model is not changed (no
    hooks).
    """
    model = loaded.model
    x = preprocess([img], loaded).to(next(model.parameters()).dtype)  # a bf16 copy too (vgg.live)
    last = last_conv_index(model)
    with torch.no_grad():
        for layer in model.features[: last + 1]:
            x = layer(x)
    activation = x.detach().requires_grad_(True)  # (1, C, h, w)
    with torch.enable_grad():
        y = activation.clone()  # the next ReLU is in place: it must not touch `activation`
        for layer in model.features[last + 1 :]:
            y = layer(y)
        logits = model.head_with_hidden(y)[0]  # pool and classifier, as the model's forward
        if target is None:
            target = int(logits.argmax(1))
        if not 0 <= target < logits.shape[1]:
            raise ConfigError(f"class index {target} is out of range; choose 0 to {logits.shape[1] - 1}")
        (gradient,) = torch.autograd.grad(logits[0, target], activation)
    weights = gradient.mean(dim=(2, 3), keepdim=True)  # (1, C, 1, 1)
    cam = F.relu((weights * activation.detach()).sum(1, keepdim=True))[0, 0].float()  # (h, w)
    top = float(cam.max())
    cam = cam / top if top > 0 else torch.zeros_like(cam)
    return cam.clamp(0, 1).cpu().numpy().astype(np.float32)


COARSE_BELOW = 7  # maps with fewer cells a side are drawn as blocks


def overlay_heatmap(img: Image.Image, heatmap: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """``img`` with ``heatmap`` (h, w) in [0, 1] stretched over it in a blue→red colour scale: as
    blocks when the map is coarse (under ``COARSE_BELOW`` cells a side), smoothly otherwise."""
    rgb = img.convert("RGB")
    coarse = min(heatmap.shape) < COARSE_BELOW
    heat = Image.fromarray(np.uint8(np.clip(heatmap, 0, 1) * 255), mode="L").resize(
        rgb.size, Image.Resampling.NEAREST if coarse else Image.Resampling.BICUBIC
    )
    h = np.asarray(heat, dtype=np.float32)[..., None] / 255.0
    colour = np.concatenate(
        [
            np.clip(1.5 - np.abs(4 * h - 3), 0, 1),  # red
            np.clip(1.5 - np.abs(4 * h - 2), 0, 1),  # green
            np.clip(1.5 - np.abs(4 * h - 1), 0, 1),
        ],
        axis=-1,
    )  # blue: a "jet" scale
    base = np.asarray(rgb, dtype=np.float32) / 255.0
    blended = (1 - alpha) * base + alpha * colour
    return Image.fromarray(np.uint8(np.clip(blended, 0, 1) * 255 + 0.5), mode="RGB")


