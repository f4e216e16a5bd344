"""The speed-ups (vgg.speedups) against the lesson path: each computes what the plain PyTorch computes.

- ``kernels``: the small-map convolution path against ``nn.Conv2d``;
- ``fold``: the pool folded into the first Linear against torchvision's forward; the compact first
  Linear against training the whole weight;
- ``features``: frozen features computed once against the full model;
- the switch: the same seed trained with and without the speed-ups gives the same curve.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from vgg.augment import BatchPipeline
from vgg.data import DataConfig, load_data
from vgg.finetune import prepare_model
from vgg.model import VGG, build_vgg, init_module
from vgg.runs import RunStore
from vgg.speedups import kernels
from vgg.speedups.features import FeaturePipeline
from vgg.speedups.fold import CompactVGG, FastVGG
from vgg.speedups.switch import accelerate
from vgg.train import StepEvent, TrainConfig, fit, model_state, start_training, train_epoch


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


def test_the_switch_gives_the_model_it_and_it_stays_torchvision_in_names_and_print() -> None:
    ours = build_vgg("A", batch_norm=True, num_classes=10)
    assert not any(type(m) is kernels.Conv2d for m in ours.modules())  # the lesson's model: plain layers
    accelerate(ours)
    theirs = torchvision.models.vgg11_bn(num_classes=10)
    assert all(type(m) is kernels.Conv2d for m in ours.features if isinstance(m, nn.Conv2d))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert repr(ours.features) == repr(theirs.features)


def test_whole_network_at_32px_matches_plain_convolutions() -> None:
    torch.manual_seed(0)
    model = accelerate(build_vgg("A", batch_norm=True, num_classes=10)).eval()
    plain = torchvision.models.vgg11_bn(num_classes=10).eval()
    plain.load_state_dict(model.state_dict())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), rtol=1e-4, atol=1e-5)


# -- fold: the adaptive pool folded into the first Linear --------------------------------------


def without_classifier_relus(model: VGG) -> VGG:
    """Fold and no fold differ by rounding (~1e-6); at a ReLU kink that can flip a derivative,
    so gradient checks run with the classifier's ReLUs removed (the fold sits before them)."""
    model.classifier[1] = nn.Identity()
    model.classifier[4] = nn.Identity()
    return model


@pytest.fixture(scope="module")
def head() -> VGG:
    """A VGG whose ``features`` is the identity: feed it any (B, 512, h, w) map directly."""
    torch.manual_seed(0)
    with torch.device("meta"):
        model = VGG(nn.Sequential(), num_classes=10)
    model.to_empty(device="cpu")
    for module in model.modules():
        init_module(module)
    for linear in (model.classifier[0], model.classifier[3], model.classifier[6]):
        nn.init.normal_(linear.bias, 0, 0.1)  # non-zero biases make the check stricter
    return without_classifier_relus(model).eval()


@pytest.fixture(scope="module")
def vgg11() -> VGG:
    torch.manual_seed(0)
    return build_vgg("A", num_classes=10).eval()


def outputs_and_grads(model: VGG, x: torch.Tensor, fold: bool) -> tuple[torch.Tensor, ...]:
    """Logits, hidden, and the gradients of input, first Linear's weight and bias, and first conv;
    through ``FastVGG`` (folded) or the model itself (torchvision's forward)."""
    net = FastVGG(model) if fold else model
    model.zero_grad(set_to_none=True)
    x = x.clone().requires_grad_(True)
    logits, hidden = net.forward_with_hidden(x)
    (logits.square().sum() + hidden.sum()).backward()
    # zero_grad(set_to_none=True) above gives every call fresh .grad tensors: no copies needed.
    grads = [p.grad for p in (x, *model.classifier[0].parameters(), *model.features[:1].parameters())]
    return logits.detach(), hidden.detach(), *(g for g in grads if g is not None)


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Largest difference relative to the largest magnitude (fp32 sums in another order: ~1e-6)."""
    return ((a - b).abs_().max() / b.abs().max().clamp_min(1e-12)).item()


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5)])
def test_folded_pool_is_exact(head: VGG, size: tuple[int, int]) -> None:
    x = torch.randn(3, 512, *size, generator=torch.Generator().manual_seed(1))
    folded = outputs_and_grads(head, x, fold=True)
    plain = outputs_and_grads(head, x, fold=False)
    for a, b in zip(folded, plain, strict=True):
        assert relative_error(a, b) < 1e-5


def test_pool_is_folded_only_below_7x7(head: VGG) -> None:
    calls: list[tuple[int, ...]] = []
    handle = head.avgpool.register_forward_hook(lambda m, i, o: calls.append(tuple(i[0].shape[-2:])))
    try:
        with torch.no_grad():
            for size in (1, 2, 6, 7, 9):
                FastVGG(head)(torch.randn(1, 512, size, size))
            head(torch.randn(1, 512, 1, 1))
    finally:
        handle.remove()
    assert calls == [(7, 7), (9, 9), (1, 1)]


def test_fold_matches_unfolded_whole_model_and_torchvision(vgg11: VGG) -> None:
    """End to end at 32 and 64 px: same logits and gradients; unfolded is torchvision's forward."""
    model = vgg11
    with torch.device("meta"):
        reference = torchvision.models.vgg11(num_classes=10)
    reference.load_state_dict(model.state_dict(), assign=True)  # shares the tensors
    reference.eval()
    inputs = {size: torch.randn(2, 3, size, size) for size in (32, 64)}
    fast = FastVGG(model)
    with torch.no_grad():
        for x in inputs.values():
            assert relative_error(model(x), reference(x)) < 1e-5  # the model is torchvision's
            assert relative_error(fast(x), reference(x)) < 1e-5
            assert torch.equal(fast.head_with_hidden(model.features(x))[0], fast(x))
    without_classifier_relus(model)
    model.classifier[0].requires_grad_(False)  # its gradient is checked on the head above
    for x in inputs.values():
        folded = outputs_and_grads(model, x, fold=True)
        plain = outputs_and_grads(model, x, fold=False)
        for a, b in zip(folded, plain, strict=True):
            assert relative_error(a, b) < 1e-5


# -- features and the compact first Linear, in training -----------------------------------------

TINY = DataConfig(source="synthetic", input_size=32, images_per_class=20)


@pytest.fixture(scope="module")
def tiny_splits():
    return load_data(TINY)


@pytest.fixture(scope="module")
def tiny_run(module_tmp, tiny_splits):
    """One tiny run to start fine-tunings from."""
    store = RunStore(module_tmp)
    return store, fit(TrainConfig(data=TINY, epochs=1, batch_size=64), store=store, splits=tiny_splits)


def test_frozen_features_are_computed_once_and_match_the_full_model(tiny_run, tiny_splits):
    store, first = tiny_run
    # fp32: where the CPU has bf16 units, "auto" computes the cached features under bf16 autocast.
    cfg = TrainConfig(data=TINY, init=f"run:{first.run_id}", freeze="features", augment=False, epochs=1,
                      precision="fp32")
    prepared = prepare_model(cfg, tuple(tiny_splits.classes), tiny_splits.mean, tiny_splits.std,
                             runs_root=store.root)
    t = start_training(cfg, tiny_splits, prepared)
    assert isinstance(t.net, FastVGG) and t.net.cached_features
    assert t.splits.train.images.shape[1:] == (512, 1, 1)
    assert isinstance(t.pipeline, FeaturePipeline)
    model = prepared.model.eval()
    x = BatchPipeline(prepared.mean, prepared.std, prepared.device, 32, False)(tiny_splits.val.images[:8], None)
    with torch.no_grad():
        full = model(x)
        head = t.net.eval()(t.splits.val.images[:8])
    torch.testing.assert_close(head, full, rtol=1e-4, atol=1e-5)
    loss, _, complete = train_epoch(t, 1)
    assert complete and t.step > 0 and loss > 0


# Adam only with frozen features: a conv bias before batch norm has a true gradient of 0, so Adam
# turns its rounding noise into ±lr steps in both runs alike, and the two can never agree there.
@pytest.mark.parametrize(("freeze", "optimizer"), [("features", "sgd"), ("none", "sgd"), ("features", "adam")])
def test_compact_head_trains_exactly_what_the_full_head_would(tiny_run, tiny_splits, monkeypatch, freeze,
                                                              optimizer):
    """1×1 feature maps (cached, or computed by trained features): training delta (4096×512) instead
    of the 25088-wide weight gives the same weights, up to rounding, as training the weight itself."""
    from vgg.speedups import switch

    store, first = tiny_run
    # With the features trained, a rounding difference in step 1 can flip a max-pool's choice or a
    # ReLU in step 2, a discrete change of size ~lr: compare them after one step (one batch of all).
    epochs = (1, 2) if freeze == "features" else (1,)
    cfg = TrainConfig(data=TINY, init=f"run:{first.run_id}", freeze=freeze, augment=False, epochs=2,
                      precision="fp32", lr=1e-3, batch_size=32 if freeze == "features" else 256,
                      optimizer=optimizer)
    states = {}
    real_training_net = switch.training_net
    for compact in (True, False):
        if not compact:  # the folded pool alone, the first Linear's whole weight trained
            monkeypatch.setattr(switch, "training_net",
                                lambda model, opt, **kw: real_training_net(model, opt, **{**kw, "map_side": 0}))
        torch.manual_seed(0)  # dropout masks
        prepared = prepare_model(cfg, tuple(tiny_splits.classes), tiny_splits.mean, tiny_splits.std,
                                 runs_root=store.root)
        t = start_training(cfg, tiny_splits, prepared)
        assert isinstance(t.net, CompactVGG) is compact
        weight = prepared.model.classifier[0].weight
        assert all(p is not weight for g in t.optimizer.param_groups for p in g["params"]) is compact
        before = weight.detach().clone()
        for epoch in epochs:
            train_epoch(t, epoch)
        states[compact] = {k: v.clone() for k, v in model_state(t).items()}
        assert not torch.equal(states[compact]["classifier.0.weight"], before)  # it did learn
    for key, value in states[False].items():
        diff = (states[True][key].float() - value.float()).abs()
        if optimizer == "sgd":  # updates linear in the gradients: rounding stays rounding
            assert diff.max() < 1e-5, (key, diff.max())
        else:  # Adam divides by √v: where a gradient is ~0, rounding flips a few updates of size ≤ lr
            # (a handful of a 4096-wide bias: 5 entries, 0.12 %, starting from a stored folded head)
            assert (diff > 1e-6).float().mean() < 5e-3 and diff.max() < cfg.lr, (key, diff.max())


# -- the switch: the lesson path is the reference of the fast path ----------------------------


@pytest.mark.parametrize(("init", "freeze", "augment"), [("scratch", "none", True), ("run", "features", False),
                                                        ("run", "all_but_last", False)],
                         ids=["from scratch", "frozen features", "last layer on cached inputs"])
def test_the_same_seed_trains_the_same_curve_with_and_without_the_speedups(tiny_run, tiny_splits, init, freeze,
                                                                          augment):
    """Two epochs of the tiny set, fp32, SGD: every step's loss and the validation curve agree.
    From scratch that covers the GEMM convolutions, channels_last, the folded pool and the compact
    first Linear, with frozen features also the feature cache, with all but the last layer frozen the
    cache of the last layer's inputs (``LastLayer``). The two sum in other orders, and
    from scratch a rounding difference can flip a max-pool's or a ReLU's choice, which training
    then carries on: measured, at most 0.4 % apart after 12 steps (hence 2 %)."""
    store, first = tiny_run
    cfg = TrainConfig(data=TINY, init="scratch" if init == "scratch" else f"run:{first.run_id}", freeze=freeze,
                      augment=augment, epochs=2, batch_size=32, precision="fp32", optimizer="sgd", lr=1e-3,
                      seed=3)
    curves = {}
    for fast in (True, False):
        events: list = []
        result = fit(TrainConfig(**{**cfg.__dict__, "speedups": fast}), splits=tiny_splits,
                     on_event=events.append, runs_root=store.root)
        assert result.status == "done"
        curves[fast] = ([e.loss for e in events if isinstance(e, StepEvent)],
                        [e.val_loss for e in events if type(e).__name__ == "EpochEvent"], result.test_loss)
    (fast_steps, fast_val, fast_test), (plain_steps, plain_val, plain_test) = curves[True], curves[False]
    assert len(fast_steps) == len(plain_steps) == 2 * 6 and len(fast_val) == len(plain_val) == 2
    assert fast_steps == pytest.approx(plain_steps, rel=2e-2)
    assert fast_val == pytest.approx(plain_val, rel=2e-2)
    assert fast_test == pytest.approx(plain_test, rel=2e-2)
    assert fast_steps != plain_steps  # the two paths really differ (a switch that did nothing would pass)


def test_the_last_layers_inputs_are_cached_on_disk_and_shared_by_later_runs(tiny_run, tiny_splits):
    """All but the last layer frozen, no dropout: the cached inputs (N, 4096) train ``LastLayer``; a
    second run reads them from the disk; a damaged file is computed again; other weights, other key."""
    from vgg.speedups.features import LastLayer

    store, first = tiny_run
    cfg = TrainConfig(data=TINY, init=f"run:{first.run_id}", freeze="all_but_last", augment=False, epochs=1,
                      precision="fp32", dropout=0.0)
    folder = TINY.resolved_cache_dir() / "features"

    def start(c: TrainConfig):
        messages: list[str] = []
        prepared = prepare_model(c, tuple(tiny_splits.classes), tiny_splits.mean, tiny_splits.std,
                                 runs_root=store.root)
        t = start_training(c, tiny_splits, prepared,
                           emit=lambda e: messages.append(getattr(e, "message", "")))
        return t, [m for m in messages if m.endswith(("computed", "read from the disk cache"))]

    t, said = start(cfg)
    assert isinstance(t.net, LastLayer) and t.splits.train.images.shape[1:] == (4096,)
    assert said == [f"frozen features ({s}): computed" for s in ("train", "val", "test")]
    model = t.prepared.model.eval()
    x = BatchPipeline(t.prepared.mean, t.prepared.std, t.prepared.device, 32, False)(tiny_splits.val.images[:8], None)
    with torch.no_grad():
        torch.testing.assert_close(t.net(t.splits.val.images[:8]), model(x), rtol=1e-4, atol=1e-5)
    files = sorted(folder.glob("*.pt"))
    assert len(files) == 3
    again, said = start(cfg)
    assert said == [f"frozen features ({s}): read from the disk cache" for s in ("train", "val", "test")]
    assert torch.equal(again.splits.val.images, t.splits.val.images)
    files[0].write_bytes(b"half a file")
    _, said = start(cfg)
    assert sum(m.endswith("computed") for m in said) == 1
    _, said = start(TrainConfig(**{**cfg.__dict__, "freeze": "features"}))
    assert all(m.endswith("computed") for m in said), "other frozen weights or depth: not the same features"
