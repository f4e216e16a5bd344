"""The VGG model library: Table 1 configs, torchvision compatibility, pretrained loading, freezing."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from vgg.errors import CheckpointError, ConfigError, WeightsUnavailableError
from vgg.model import (
    CONFIG_NAMES,
    CONFIGS,
    FREEZE_MODES,
    VGG,
    build_vgg,
    freeze,
    imagenet_weights,
    init_module,
    load_pretrained,
    load_state_dict_file,
    param_groups,
    pretrained_available,
    torchvision_name,
    weights_cache_dir,
)

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = {"A": "vgg11", "B": "vgg13", "D": "vgg16", "E": "vgg19"}
SavedWeights = tuple[Path, dict[str, torch.Tensor]]  # the file and a few of its tensors


def meta_model(config: str, batch_norm: bool = False, num_classes: int = 10) -> VGG:
    """A model without storage: building is instant, good for names, shapes and flags."""
    with torch.device("meta"):
        return build_vgg(config, batch_norm=batch_norm, num_classes=num_classes)


@pytest.fixture(scope="module")
def zero_classifier() -> nn.Sequential:
    """One classifier (10 classes, zeros) shared by the config tests: allocating and initialising
    120 M weights per config would dominate the test time."""
    classifier = meta_model("A").classifier.to_empty(device="cpu")
    for param in classifier.parameters():
        nn.init.zeros_(param)
    return classifier


def runnable_model(config: str, batch_norm: bool, classifier: nn.Sequential) -> VGG:
    """``build_vgg``'s model with storage: features initialised as from scratch, the shared head."""
    model = meta_model(config, batch_norm, num_classes=10)
    model.features.to_empty(device="cpu")
    for module in model.features.modules():
        init_module(module)
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
    model.classifier = classifier
    return model


# -- configurations --------------------------------------------------------------------------


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("config", CONFIG_NAMES)
def test_every_config_runs_on_32px(config: str, batch_norm: bool, zero_classifier: nn.Sequential) -> None:
    model = runnable_model(config, batch_norm, zero_classifier).eval()
    with torch.no_grad():
        logits, hidden = model.forward_with_hidden(torch.randn(2, 3, 32, 32))
        plain = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and plain.shape == (2, 10)
    assert hidden.shape == (2, 4096)
    assert torch.isfinite(logits).all()
    assert (model.config_name, model.batch_norm, model.num_classes) == (config, batch_norm, 10)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (
        sum(isinstance(m, nn.Conv2d) for m in model.modules()) if batch_norm else 0)


@pytest.fixture(scope="module")
def vgg11() -> VGG:
    """The one fully initialised model of this file (initialising 133 M weights takes seconds)."""
    torch.manual_seed(0)
    return build_vgg("A", num_classes=10).eval()


def test_build_vgg_initialises_like_torchvision(vgg11: VGG) -> None:
    conv, fc = vgg11.features[0], vgg11.classifier[0]
    assert torch.count_nonzero(conv.bias) == 0 and torch.count_nonzero(fc.bias) == 0
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)  # Kaiming, fan_out
    assert fc.weight.std().item() == pytest.approx(0.01, rel=0.01)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "bn"])
@pytest.mark.parametrize("config", sorted(PUBLISHED))
def test_torchvision_state_dict_loads_strictly(config: str, batch_norm: bool) -> None:
    name = torchvision_name(config, batch_norm)
    assert name == PUBLISHED[config] + ("_bn" if batch_norm else "")
    with torch.device("meta"):
        reference = getattr(torchvision.models, name)()
    ours = meta_model(config, batch_norm, num_classes=1000)
    ours.load_state_dict(reference.state_dict(), strict=True, assign=True)
    def kinds(model):
        return [type(m) for m in model.modules()][1:]
    assert kinds(ours) == kinds(reference)
    assert repr(ours.features) == repr(reference.features)


def test_a_lrn_and_c_follow_the_paper() -> None:
    lrn = meta_model("A-LRN").features
    assert isinstance(lrn[0], nn.Conv2d) and isinstance(lrn[1], nn.ReLU)
    assert isinstance(lrn[2], nn.LocalResponseNorm) and isinstance(lrn[3], nn.MaxPool2d)
    assert (lrn[2].size, lrn[2].alpha, lrn[2].beta, lrn[2].k) == (5, 1e-4, 0.75, 2.0)
    convs = [m for m in meta_model("C").features if isinstance(m, nn.Conv2d)]
    one_by_one = [(c.out_channels, c.padding) for c in convs if c.kernel_size == (1, 1)]
    assert one_by_one == [(256, (0, 0)), (512, (0, 0)), (512, (0, 0))]
    assert [convs.index(c) for c in convs if c.kernel_size == (1, 1)] == [6, 9, 12]
    assert torchvision_name("A-LRN", False) is None and torchvision_name("C", True) is None


def test_unknown_values_name_the_choices() -> None:
    with pytest.raises(ConfigError, match=r"'F'.*A, A-LRN, B, C, D, E"):
        build_vgg("F")
    with pytest.raises(ConfigError, match="num_classes.*got 1"):
        build_vgg("A", num_classes=1)
    with pytest.raises(ConfigError, match="dropout"):
        build_vgg("A", dropout=1.0)
    assert set(CONFIGS) == set(CONFIG_NAMES) == {"A", "A-LRN", "B", "C", "D", "E"}


# -- freezing and parameter groups --------------------------------------------------------------


def trainable(module: nn.Module) -> set[bool]:
    return {p.requires_grad for p in module.parameters()}


def test_freeze_modes() -> None:
    model = meta_model("B", batch_norm=True)
    freeze(model, "features")
    assert trainable(model.features) == {False} and trainable(model.classifier) == {True}
    freeze(model, "all_but_last")
    assert trainable(model.features) == {False} and trainable(model.classifier[:6]) == {False}
    assert trainable(model.classifier[6]) == {True}
    freeze(model, "none")
    assert trainable(model) == {True}
    with pytest.raises(ConfigError, match="'classifier'.*none, features, all_but_last"):
        freeze(model, "classifier")
    assert FREEZE_MODES == ("none", "features", "all_but_last")


def test_param_groups_follow_the_freeze() -> None:
    model = meta_model("A")
    groups = param_groups(model, 1e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("features", pytest.approx(1e-4)), ("classifier", 1e-3)]
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    freeze(model, "all_but_last")
    groups = param_groups(model, 0.01, ratio=0.5)
    assert [g["name"] for g in groups] == ["classifier"]
    assert groups[0]["params"] == list(model.classifier[6].parameters())
    with pytest.raises(ConfigError, match="learning rate"):
        param_groups(model, 0.0)
    with pytest.raises(ConfigError, match="ratio"):
        param_groups(model, 1e-3, ratio=-1)


# -- pretrained weights ------------------------------------------------------------------------


def file_name_of(name: str) -> str:
    return os.path.basename(torchvision.models.get_model_weights(name).IMAGENET1K_V1.url)


@pytest.fixture(scope="module")
def vgg16_bn_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SavedWeights]:
    """A randomly initialised torchvision vgg16_bn, saved once under torchvision's own file name."""
    torch.manual_seed(0)
    state = torchvision.models.vgg16_bn().state_dict()
    path = tmp_path_factory.mktemp("weights") / file_name_of("vgg16_bn")
    torch.save(state, path)
    keys = ("features.0.weight", "features.1.running_var", "classifier.3.bias")
    yield path, {key: state[key] for key in keys}
    path.unlink()


def put_in_cache(path: Path) -> Path:
    """Link the file into ``$TORCH_HOME/hub/checkpoints`` (the test's own TORCH_HOME)."""
    folder = Path(os.environ["TORCH_HOME"]) / "hub" / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / path.name).symlink_to(path)
    return folder


def test_cached_torchvision_file_loads_through_the_pretrained_path(vgg16_bn_file: SavedWeights) -> None:
    path, expected = vgg16_bn_file
    assert not pretrained_available("D", True)
    folder = put_in_cache(path)
    assert weights_cache_dir() == folder
    assert pretrained_available("D", True) and not pretrained_available("D", False)
    model, info = load_pretrained("D", batch_norm=True, num_classes=7, allow_download=False)
    state = model.state_dict()
    for key, value in expected.items():
        assert torch.equal(state[key], value), key
    assert model.classifier[6].out_features == 7 and model.num_classes == 7
    assert not any(t.is_meta for t in state.values())
    assert (info.name, info.source, info.file_name) == ("vgg16_bn", "cache", path.name)
    assert len(info.categories) == 1000 and info.categories[0] == "tench"
    assert info.mean == pytest.approx((0.485, 0.456, 0.406))
    assert info.std == pytest.approx((0.229, 0.224, 0.225))
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_local_state_dict_file_is_accepted(vgg16_bn_file: SavedWeights) -> None:
    path, expected = vgg16_bn_file
    model, info = load_pretrained("D", batch_norm=True, num_classes=3, weights_path=path)
    assert torch.equal(model.state_dict()["features.0.weight"], expected["features.0.weight"])
    assert (info.source, info.file_name, model.classifier[6].out_features) == ("file", path.name, 3)


def test_offline_error_names_file_and_folder() -> None:
    name = file_name_of("vgg11_bn")
    with pytest.raises(WeightsUnavailableError) as error:
        load_pretrained("A", batch_norm=True, num_classes=10, allow_download=False)
    message = str(error.value)
    assert name in message and str(weights_cache_dir()) in message and "\n" not in message


def test_failed_download_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(url: str, dst: str, *args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError, match="could not be downloaded") as error:
        load_pretrained("E", batch_norm=False, num_classes=10)
    assert file_name_of("vgg19") in str(error.value) and "\n" not in str(error.value)
    assert not (weights_cache_dir() / file_name_of("vgg19")).exists()


@pytest.mark.parametrize("config", ["A-LRN", "C"])
def test_unpublished_configs_have_no_weights(config: str) -> None:
    with pytest.raises(WeightsUnavailableError, match="A-LRN and C have no published ImageNet weights"):
        imagenet_weights(config, False)
    with pytest.raises(WeightsUnavailableError, match="no published"):
        load_pretrained(config, batch_norm=True, num_classes=10)
    assert not pretrained_available(config, False)


class NotAStateDict:
    def __init__(self) -> None:
        self.weights = [1.0, 2.0]


@pytest.mark.parametrize("content", ["object", "list", "ints", "garbage"])
def test_non_state_dicts_are_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "model.pth"
    if content == "object":
        with path.open("wb") as f:
            pickle.dump(NotAStateDict(), f, protocol=2)  # torch.load's own protocol
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    elif content == "ints":
        torch.save({"features.0.weight": 1}, path)
    else:
        path.write_bytes(b"not a pickle at all")
    with pytest.raises(CheckpointError, match="model.pth") as error:
        load_state_dict_file(path)
    assert "\n" not in str(error.value)
    with pytest.raises(CheckpointError):
        load_pretrained("A", batch_norm=False, num_classes=10, weights_path=path)


def test_mismatching_state_dict_names_keys_and_shapes(tmp_path: Path) -> None:
    path = tmp_path / "other.pth"
    torch.save({"features.0.weight": torch.zeros(32, 3, 3, 3), "head.weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError) as error:
        load_pretrained("A", batch_norm=False, num_classes=10, weights_path=path)
    message = str(error.value)
    assert "other.pth does not fit vgg11" in message
    assert "missing features.0.bias" in message and "unexpected head.weight" in message
    assert "features.0.weight is (32, 3, 3, 3) instead of (64, 3, 3, 3)" in message
    with pytest.raises(CheckpointError, match="does not exist"):
        load_state_dict_file(tmp_path / "missing.pth")


def test_library_never_imports_streamlit() -> None:
    code = ("import sys, vgg.model, vgg.summary, vgg.figures.architecture; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'streamlit'))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"
