"""A faster CPU path for VGG's 3×3 convolutions on small feature maps (4×4 and below).

At 32 px inputs the last four convolutions of VGG11 run on 4×4 and 2×2 maps with 256–512
channels. oneDNN's convolution kernels are slow there (about 70 GFLOP/s forward + backward on
this project's 2-core reference machine, against 400–700 on the larger maps): the maps are too
small to fill its blocking. The same convolution written as one matrix product over the nine
shifted copies of the padded input ("im2col") runs 2.3–4× faster in bf16 on those layers, and
1.1–2.4× faster in fp32. It is the same arithmetic, so results agree with ``F.conv2d`` to
rounding (a test checks outputs and all three gradients).

``Conv2d`` is a drop-in ``nn.Conv2d`` (same parameters, state dict, repr and hooks) that takes
this path only on the CPU, for 3×3 / stride 1 / padding 1 layers on maps of at most
``SMALL_MAP_PIXELS`` pixels, and calls ``nn.Conv2d`` everywhere else (CUDA, MPS, the meta device,
larger maps). The model (``vgg.model``) is built with plain ``nn.Conv2d`` layers, as torchvision's;
``use_small_map_convs`` switches a built model's convolutions to this class in place.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SMALL_MAP_PIXELS = 16  # 4×4; measured: at 8×8 oneDNN is as fast or faster


def _shifted_copies(x: Tensor) -> Tensor:
    """``(B, H, W, C)`` → ``(B·H·W, 9·C)``: the 3×3 neighbourhood of every pixel (zero padded),
    ordered (row offset, column offset, channel)."""
    b, h, w, c = x.shape
    padded = F.pad(x, (0, 0, 1, 1, 1, 1))
    cols = x.new_empty(b, h, w, 9, c)
    for k in range(9):
        i, j = divmod(k, 3)
        cols[:, :, :, k].copy_(padded[:, i:i + h, j:j + w])
    return cols.view(b * h * w, 9 * c)


class _SmallMapConv3x3(torch.autograd.Function):
    """``conv2d(x, weight, bias, padding=1)`` as one GEMM; backward as two GEMMs and a fold."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # type: ignore[override]
        b, c, h, w = x.shape
        cols = _shifted_copies(x.permute(0, 2, 3, 1))  # channels_last input: a free view
        wm = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 9 * c)  # (O, 9C), same ordering
        # Written straight into a channels_last (B, O, H, W) tensor: not a view, so that an
        # in-place ReLU after it is allowed.
        y = torch.empty((b, wm.shape[0], h, w), dtype=cols.dtype, memory_format=torch.channels_last)
        rows = y.permute(0, 2, 3, 1).view(b * h * w, wm.shape[0])
        if bias is None:
            torch.mm(cols, wm.t(), out=rows)
        else:
            torch.addmm(bias.to(cols.dtype), cols, wm.t(), out=rows)
        ctx.save_for_backward(cols, wm)
        ctx.input_shape = (b, c, h, w)
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_y: Tensor) -> tuple[Tensor | None, Tensor, Tensor | None]:  # type: ignore[override]
        cols, wm = ctx.saved_tensors
        b, c, h, w = ctx.input_shape
        g = grad_y.permute(0, 2, 3, 1).reshape(b * h * w, -1).to(cols.dtype)  # (BHW, O)
        grad_weight = (g.t() @ cols).view(-1, 3, 3, c).permute(0, 3, 1, 2)
        grad_bias = g.sum(0, dtype=torch.float32) if ctx.has_bias else None
        grad_x = None
        if ctx.needs_input_grad[0]:
            gc = (g @ wm).view(b, h, w, 9, c)
            padded = gc.new_zeros(b, h + 2, w + 2, c)
            for k in range(9):
                i, j = divmod(k, 3)
                padded[:, i:i + h, j:j + w].add_(gc[:, :, :, k])
            grad_x = padded[:, 1:h + 1, 1:w + 1].permute(0, 3, 1, 2)
        return grad_x, grad_weight, grad_bias


def small_map_conv3x3(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``F.conv2d(x, weight, bias, padding=1)`` for a 3×3 kernel, through one matrix product."""
    return _SmallMapConv3x3.apply(x, weight, bias)


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that runs 3×3 convolutions on small CPU feature maps as one matrix product."""

    def _takes_gemm_path(self, x: Tensor) -> bool:
        return (x.device.type == "cpu" and x.dim() == 4 and x.shape[-2] * x.shape[-1] <= SMALL_MAP_PIXELS
                and self.kernel_size == (3, 3) and self.stride == (1, 1) and self.padding == (1, 1)
                and self.dilation == (1, 1) and self.groups == 1 and self.padding_mode == "zeros"
                and not torch.jit.is_scripting())

    def forward(self, x: Tensor) -> Tensor:
        if self._takes_gemm_path(x):
            return small_map_conv3x3(x, self.weight, self.bias)
        return super().forward(x)

    def _get_name(self) -> str:  # print as torchvision's layer does
        return "Conv2d"


def use_small_map_convs(model: nn.Module) -> nn.Module:
    """Give every plain ``nn.Conv2d`` of ``model`` this module's faster small-map path, in place.

    Only the class changes: parameters, buffers, hooks and the optimizer's references stay the same
    objects, and the state dict and ``print(model)`` are unchanged. Returns ``model``.
    """
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = Conv2d
    return model
