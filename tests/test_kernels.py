"""vgg.kernels: the small-map convolution path computes exactly what nn.Conv2d computes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vgg import kernels
from vgg.model import build_vgg


def _grads(conv: nn.Module, x: torch.Tensor, grad_out: torch.Tensor, forward) -> list[torch.Tensor]:
    x = x.detach().clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    y = forward(x)
    y.backward(grad_out)
    return [y.detach(), x.grad, conv.weight.grad.clone(), conv.bias.grad.clone()]


@pytest.mark.parametrize("side", [1, 2, 4])
@pytest.mark.parametrize("channels_last", [True, False])
def test_small_map_conv_matches_conv2d_in_fp32(side: int, channels_last: bool) -> None:
    torch.manual_seed(0)
    conv = kernels.Conv2d(24, 40, kernel_size=3, padding=1)
    x = torch.randn(6, 24, side, side)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    grad_out = torch.randn(6, 40, side, side)
    assert conv._takes_gemm_path(x)
    ours = _grads(conv, x, grad_out, conv)
    reference = _grads(conv, x, grad_out, lambda t: F.conv2d(t, conv.weight, conv.bias, padding=1))
    for name, a, b in zip(("output", "input grad", "weight grad", "bias grad"), ours, reference):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5), f"{name}: max diff {(a - b).abs().max():.2e}"


def test_small_map_conv_under_bf16_autocast_is_close_and_returns_fp32_grads() -> None:
    torch.manual_seed(0)
    conv = kernels.Conv2d(64, 64, kernel_size=3, padding=1)
    x = torch.randn(8, 64, 4, 4).to(memory_format=torch.channels_last).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
        ref = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert y.dtype == torch.bfloat16
    assert (y.float() - ref.float()).abs().max() < 0.05 * ref.float().abs().max()
    y.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and x.grad.dtype == torch.float32


def test_larger_maps_and_other_kernels_take_nn_conv2d() -> None:
    conv = kernels.Conv2d(8, 8, kernel_size=3, padding=1)
    assert not conv._takes_gemm_path(torch.zeros(1, 8, 8, 8))  # 64 pixels: oneDNN is as fast
    assert not conv._takes_gemm_path(torch.zeros(1, 8, 4, 4, device="meta"))
    one_by_one = kernels.Conv2d(8, 8, kernel_size=1)
    assert not one_by_one._takes_gemm_path(torch.zeros(1, 8, 2, 2))


def test_the_model_uses_it_and_stays_torchvision_in_names_and_print() -> None:
    ours = build_vgg("A", batch_norm=True, num_classes=10)
    theirs = torchvision.models.vgg11_bn(num_classes=10)
    assert all(type(m) is kernels.Conv2d for m in ours.features if isinstance(m, nn.Conv2d))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours.features) == repr(theirs.features)


def test_whole_network_at_32px_matches_plain_convolutions() -> None:
    torch.manual_seed(0)
    model = build_vgg("A", batch_norm=True, num_classes=10).eval()
    plain = torchvision.models.vgg11_bn(num_classes=10).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), rtol=1e-4, atol=1e-5)
