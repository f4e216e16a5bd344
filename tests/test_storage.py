"""Disk that lasts a term: compact checkpoints that are exact, references instead of copies of what a
frozen run did not change, downloads as torchvision state dicts, deleting and the quota.

Three tiny runs (VGG11-BN, synthetic shapes at 32 px, 20 images per class, 1 epoch) are trained once
for the module: ``scratch``, ``features`` (``freeze="features"`` from scratch's best.pt) and ``head``
(``freeze="all_but_last"`` from features's best.pt), so ``head`` refers to ``features``, which refers
to ``scratch``. Tests that change runs work on a copy of the store made of hard links (every write
to a run file replaces it, so the originals stay as they were).
"""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision

from vgg import checkpoints
from vgg.data import DataConfig, load_data
from vgg.errors import CheckpointError, ConfigError
from vgg.events import CheckpointEvent, DoneEvent, StartEvent, TrainResult
from vgg.files import read_json, save_torch, write_json
from vgg.finetune import prepare_model
from vgg.inference import load_model
from vgg.model import build_vgg, weights_cache_dir, weights_file_name
from vgg.process import owner_record
from vgg.runs import (
    QuotaError,
    RunInUseError,
    RunRecorder,
    RunStore,
    torchvision_state,
    torchvision_state_bytes,
)
from vgg.settings import runs_quota_bytes
from vgg.speedups.fold import fold_first_linear, unfold_first_linear
from vgg.train import TrainConfig, fit, model_state, run_config, run_epochs, start_training

TINY = DataConfig(source="synthetic", input_size=32, images_per_class=20)
MB = 1_000_000
Runs = tuple[RunStore, dict[str, str]]  # the store and the ids of "scratch", "features" and "head"
OLD_CHECKPOINT_BYTES = 515_291_945  # best.pt (and last.pt) of a default 32 px run before this change


@pytest.fixture(scope="module")
def splits():
    return load_data(TINY)


@pytest.fixture(scope="module")
def runs(module_tmp: Path, splits) -> Runs:
    store = RunStore(module_tmp / "runs")
    ids: dict[str, str] = {}
    for name, init, freeze in (("scratch", "scratch", "none"), ("features", "run:{scratch}", "features"),
                               ("head", "run:{features}", "all_but_last")):
        cfg = TrainConfig(data=TINY, epochs=1, batch_size=64, init=init.format(**ids), freeze=freeze)
        result = fit(cfg, store=store, splits=splits)
        assert result.status == "done" and result.run_id
        ids[name] = result.run_id
    return store, ids


@pytest.fixture
def copied(runs: Runs, tmp_path: Path) -> Runs:
    """The module's runs in a store of their own, made of hard links (no 200 MB copy)."""
    store, ids = runs
    shutil.copytree(store.root, tmp_path / "runs", copy_function=os.link)
    return RunStore(tmp_path / "runs"), ids


def full_states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key


def one_line_error(caught: pytest.ExceptionInfo[BaseException], *fragments: str) -> str:
    message = str(caught.value)
    assert "\n" not in message and len(message) < 400, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def assert_logits_match(reference: torch.nn.Module, other: torch.nn.Module, x: torch.Tensor) -> None:
    """The same logits to 1e-5 of their scale."""
    reference.eval()
    other.eval()
    with torch.no_grad():
        expected, got = reference(x), other(x)
    assert torch.linalg.vector_norm(got - expected) <= 1e-5 * torch.linalg.vector_norm(expected)
    assert (got.argmax(1) == expected.argmax(1)).all()


# ------------------------------------------------------------------------------------ the fold


def test_fold_and_unfold_are_exact_on_1x1_maps_for_any_weight() -> None:
    torch.manual_seed(0)
    model = build_vgg("A", batch_norm=True, num_classes=10).eval()  # 49 different random copies
    state = model.state_dict()
    folded = fold_first_linear(state)
    assert folded["classifier.0.weight"].shape == (4096, 512)
    assert list(folded) == list(state)
    assert all(folded[k] is state[k] for k in state if k != "classifier.0.weight")
    unfolded = unfold_first_linear(folded)
    assert unfolded["classifier.0.weight"].shape == (4096, 25088)
    copies = unfolded["classifier.0.weight"].view(4096, 512, 49)
    assert torch.equal(copies, copies[..., :1].expand_as(copies))  # 49 equal copies, W_folded / 49 each
    restored = build_vgg("A", batch_norm=True, num_classes=10)
    restored.load_state_dict(unfolded, strict=True)
    for size in (32, 48, 63):  # every input whose last map is 1×1
        assert_logits_match(model, restored, torch.randn(4, 3, size, size))
    with pytest.raises(ValueError, match="not a folded"):
        unfold_first_linear(state)


def test_pack_folds_only_below_64px_and_leaves_out_what_the_base_supplies() -> None:
    state = build_vgg("A", batch_norm=False, num_classes=3).state_dict()
    stored, meta = checkpoints.pack(state, {"input_size": 32, "folded_pool": 7})
    assert stored["classifier.0.weight"].shape == (4096, 512) and meta["folded_pool"] == 1
    stored, meta = checkpoints.pack(state, {"input_size": 64})
    assert stored["classifier.0.weight"].shape == (4096, 25088) and "folded_pool" not in meta
    keys = checkpoints.frozen_keys(state, "all_but_last")
    base = {"kind": "run", "run_id": "x", "keys": keys, "sha256": "0"}
    stored, meta = checkpoints.pack(state, {"input_size": 32}, base=base)
    assert sorted(stored) == ["classifier.6.bias", "classifier.6.weight"]
    assert meta["base"] == base and "folded_pool" not in meta  # the first Linear is not stored at all


# ------------------------------------------------------------------------------------ the runs


def test_a_default_32px_run_folder_holds_the_folded_first_linear(runs: Runs) -> None:
    store, ids = runs
    run_id = ids["scratch"]
    folder = store.root / run_id
    stored = store.read_checkpoint(run_id, "best")
    assert stored["format"] == 2 and stored["meta"]["folded_pool"] == 1 and "base" not in stored["meta"]
    assert stored["model"]["classifier.0.weight"].shape == (4096, 512)
    # One epoch: last.pt is best.pt (a hard link), so the folder holds one checkpoint.
    assert (folder / "best.pt").stat().st_ino == (folder / "last.pt").stat().st_ino
    used = store.disk_usage(run_id)
    assert used == sum(p.stat().st_size for p in folder.iterdir()) - (folder / "last.pt").stat().st_size
    assert used <= 150 * MB, f"{used:,} bytes"
    assert (folder / "best.pt").stat().st_size < OLD_CHECKPOINT_BYTES / 4
    full = store.load_checkpoint(run_id, "best")
    assert full["model"]["classifier.0.weight"].shape == (4096, 25088)
    assert "folded_pool" not in full["meta"] and full["meta"]["input_size"] == 32


def test_the_compact_checkpoint_gives_the_live_models_logits(tmp_path: Path, splits) -> None:
    store = RunStore(tmp_path / "runs")
    cfg = TrainConfig(data=TINY, epochs=1, batch_size=64, precision="fp32")
    prepared = prepare_model(cfg, tuple(splits.classes), splits.mean, splits.std)
    recorder = RunRecorder(store)
    recorder(StartEvent(run_config(cfg, splits, prepared), "exact"))
    t = start_training(cfg, splits, prepared, emit=recorder)
    run_epochs(t)  # one epoch: the live weights are the best epoch's
    live = build_vgg("A", batch_norm=True, num_classes=len(splits.classes))
    live.load_state_dict(model_state(t), strict=True)  # the weights as trained: 49 different copies
    copies = live.classifier[0].weight.detach().view(4096, 512, 49)
    assert not torch.equal(copies, copies[..., :1].expand_as(copies))
    # The test set was evaluated on what best.pt stands for, so evaluating it later gives the same answers.
    full_states_equal(t.best_state, store.load_checkpoint(recorder.run_id)["model"])
    loaded = load_model(recorder.run_id, store=store)
    assert store.read_checkpoint(recorder.run_id)["model"]["classifier.0.weight"].shape == (4096, 512)
    images = splits.val.images[:32].float() / 255
    x = (images - torch.tensor(splits.mean).view(1, 3, 1, 1)) / torch.tensor(splits.std).view(1, 3, 1, 1)
    assert_logits_match(live, loaded.model, x)


def test_runs_that_trained_only_the_head_refer_to_their_start(runs: Runs) -> None:
    store, ids = runs
    head = store.read_checkpoint(ids["head"])
    assert sorted(head["model"]) == ["classifier.6.bias", "classifier.6.weight"]
    base = head["meta"]["base"]
    assert (base["kind"], base["run_id"]) == ("run", ids["features"]) and len(base["sha256"]) == 64
    assert store.disk_usage(ids["head"]) <= 20 * MB, f"{store.disk_usage(ids['head']):,} bytes"

    features = store.read_checkpoint(ids["features"])
    assert all(k.startswith("classifier.") for k in features["model"])  # the classifier, compact:
    assert features["model"]["classifier.0.weight"].shape == (4096, 512)
    assert features["meta"]["folded_pool"] == 1
    assert features["meta"]["base"]["run_id"] == ids["scratch"]
    # 19 M trained parameters, 76 MB: more than 20 MB can hold exactly.
    assert store.disk_usage(ids["features"]) <= 80 * MB, f"{store.disk_usage(ids['features']):,} bytes"

    # Resolved, head = features's weights (themselves features of scratch) + its own last layer.
    full = {name: store.load_checkpoint(ids[name])["model"] for name in ids}
    for key, value in full["head"].items():
        if key.startswith("features."):
            assert torch.equal(value, full["scratch"][key]), key
        elif not key.startswith("classifier.6."):
            assert torch.equal(value, full["features"][key]), key
    assert not torch.equal(full["head"]["classifier.6.weight"], full["features"]["classifier.6.weight"])
    loaded = load_model(ids["head"], store=store)
    assert loaded.model.classifier[0].weight.shape == (4096, 25088) and "base" not in loaded.meta


def test_the_download_is_a_torchvision_state_dict(runs: Runs) -> None:
    store, ids = runs
    for name in ("scratch", "head"):
        data = torchvision_state_bytes(store, ids[name])
        state = torch.load(io.BytesIO(data), weights_only=True)
        model = torchvision.models.vgg11_bn(num_classes=10)
        model.load_state_dict(state, strict=True)
        full_states_equal(state, store.load_checkpoint(ids[name])["model"])
    assert len(data) > 500 * MB  # everything, in torchvision's shapes


@pytest.mark.parametrize("config", ["A-LRN", "C"])
def test_configs_torchvision_lacks_download_into_build_vgg(tmp_path: Path, config: str) -> None:
    store = RunStore(tmp_path / "runs")
    model = build_vgg(config, batch_norm=False, num_classes=3)
    meta = {"config": config, "batch_norm": False, "num_classes": 3, "classes": ["a", "b", "c"],
            "mean": [0.5] * 3, "std": [0.25] * 3, "input_size": 40}
    with store.create({"config": config}, name="other") as writer:
        writer.save_checkpoint("best", *checkpoints.pack(model.state_dict(), meta))
        writer.set_status("done")
    assert store.read_checkpoint(writer.run_id)["model"]["classifier.0.weight"].shape == (4096, 512)
    state = torch.load(io.BytesIO(torchvision_state_bytes(store, writer.run_id)), weights_only=True)
    restored = build_vgg(config, batch_norm=False, num_classes=3)
    restored.load_state_dict(state, strict=True)
    assert_logits_match(model, restored, torch.randn(2, 3, 40, 40))


# ------------------------------------------------------------------------------------ references refused


def test_a_reference_to_a_vanished_run_is_refused_with_one_line(copied: Runs) -> None:
    store, ids = copied
    shutil.rmtree(store.root / ids["scratch"])  # gone behind the store's back (RunStore.delete rebases first)
    with pytest.raises(CheckpointError) as caught:
        load_model(ids["head"], store=store)
    one_line_error(caught, ids["scratch"], "no longer exists")
    with pytest.raises(CheckpointError) as caught:
        store.load_checkpoint(ids["features"])
    one_line_error(caught, f"run {ids['features']}", ids["scratch"], "no longer exists")


def test_a_changed_source_is_refused(copied: Runs) -> None:
    store, ids = copied
    path = store.checkpoint_path(ids["features"])
    stored = store.read_checkpoint(ids["features"])
    stored["model"]["classifier.3.weight"][0, 0] += 1.0  # head takes classifier.3 from features
    save_torch(path, stored, ids["features"])
    with pytest.raises(CheckpointError) as caught:
        load_model(ids["head"], store=store)
    one_line_error(caught, f"run {ids['head']}", f"run {ids['features']}", "changed since", "SHA-256")
    with pytest.raises(CheckpointError) as caught:
        torchvision_state(store, ids["head"])
    one_line_error(caught, "changed since")
    load_model(ids["features"], store=store)  # features itself still loads: its own base is unchanged


@pytest.mark.parametrize(("change", "fragment"), [
    ({"folded_pool": 2}, "meta 'folded_pool' is 2"),
    ({"base": {"kind": "file", "path": "/etc/passwd", "keys": ["features.0.weight"], "sha256": "0"}},
     "outside the allowed folders"),
    ({"base": {"kind": "run", "run_id": "../x", "keys": ["features.0.weight"], "sha256": "0"}},
     "invalid run id"),
    ({"base": {"kind": "web", "keys": []}}, "expected a reference of kind run, imagenet, file"),
])
def test_hostile_storage_markers_are_refused(copied: Runs, change: dict[str, Any],
                                             fragment: str) -> None:
    store, ids = copied
    stored = store.read_checkpoint(ids["head"])
    stored["meta"].update(change)
    if "folded_pool" in change:
        stored["model"]["classifier.0.weight"] = torch.zeros(3, 512)
    path = store.root / "hostile.pt"
    save_torch(path, stored, "test")
    with pytest.raises(CheckpointError) as caught:
        load_model(str(path), store=store)
    one_line_error(caught, fragment)


def test_a_reference_cycle_stops_at_the_depth_limit(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    a, b = (store.create({"config": "A"}, name=name) for name in ("a", "b"))
    for writer, other in ((a, b), (b, a)):  # a takes "w" from b, b from a
        base = {"kind": "run", "run_id": other.run_id, "keys": ["v"], "sha256": "0" * 64}
        writer.save_checkpoint("best", tiny(0), {"base": base})
        writer.set_status("done")
        writer.close()
    with pytest.raises(CheckpointError) as caught:
        store.load_checkpoint(a.run_id)
    one_line_error(caught, "more than 16 deep")


# ------------------------------------------------------------------------------------ deleting


def test_deleting_a_source_keeps_the_runs_that_refer_to_it_loading(copied: Runs) -> None:
    store, ids = copied
    before = {name: store.load_checkpoint(ids[name])["model"] for name in ("features", "head")}
    head_size = store.disk_usage(ids["head"])

    store.delete(ids["features"])  # head took everything but its last layer from it
    head = store.read_checkpoint(ids["head"])
    base = head["meta"]["base"]  # what features took from scratch, head now takes from scratch itself
    assert (base["kind"], base["run_id"]) == ("run", ids["scratch"])
    assert all(k.startswith("features.") for k in base["keys"])
    assert head["model"]["classifier.0.weight"].shape == (4096, 512) and head["meta"]["folded_pool"] == 1
    folder = store.root / ids["head"]
    assert (folder / "best.pt").stat().st_ino == (folder / "last.pt").stat().st_ino  # still one file
    full_states_equal(store.load_checkpoint(ids["head"])["model"], before["head"])  # bitwise the same weights
    assert head_size < store.disk_usage(ids["head"]) <= head_size + 80 * MB

    store.delete(ids["scratch"])
    head = store.read_checkpoint(ids["head"])
    assert "base" not in head["meta"]
    full_states_equal(store.load_checkpoint(ids["head"])["model"], before["head"])
    load_model(ids["head"], store=store)
    assert [r.run_id for r in store.list_runs()] == [ids["head"]]


def test_a_source_is_not_deleted_while_a_run_from_it_trains(copied: Runs) -> None:
    store, ids = copied
    status = store.root / ids["head"] / "status.json"
    write_json(status, {**read_json(status), "status": "running", **owner_record()})  # this process trains it
    assert store.get(ids["head"]).status == "running"
    with pytest.raises(RunInUseError) as caught:
        store.delete(ids["features"])
    one_line_error(caught, ids["features"], ids["head"], "still training")
    assert store.get(ids["features"]).status == "done"


def test_a_source_whose_referrer_no_longer_resolves_is_not_deleted(copied: Runs) -> None:
    store, ids = copied
    stored = store.read_checkpoint(ids["features"])
    stored["model"]["classifier.3.weight"][0, 0] += 1.0
    save_torch(store.checkpoint_path(ids["features"]), stored, ids["features"])
    with pytest.raises(CheckpointError) as caught:
        store.delete(ids["features"])
    one_line_error(caught, f"run {ids['features']} is not deleted", ids["head"])
    assert store.get(ids["features"]).has_best


# ------------------------------------------------------------------------------------ ImageNet and files


def fake_imagenet_file(num_classes: int = 1000) -> Path:
    """A torchvision-layout vgg11_bn state dict where torchvision's cache keeps the ImageNet one."""
    path = weights_cache_dir() / weights_file_name("A", True)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    torch.save(torchvision.models.vgg11_bn(num_classes=num_classes).state_dict(), path)
    return path


def test_a_head_trained_on_imagenet_weights_refers_to_the_cache_file(tmp_path: Path, splits) -> None:
    cache = fake_imagenet_file()
    store = RunStore(tmp_path / "runs")
    result = fit(TrainConfig(data=TINY, epochs=1, batch_size=64, init="imagenet", freeze="all_but_last"),
                 store=store, splits=splits)
    stored = store.read_checkpoint(result.run_id)
    assert stored["meta"]["base"]["kind"] == "imagenet" and stored["meta"]["base"]["file"] == cache.name
    assert store.disk_usage(result.run_id) <= 20 * MB
    imagenet = torch.load(cache, weights_only=True)
    full = store.load_checkpoint(result.run_id)["model"]
    assert torch.equal(full["classifier.0.weight"], imagenet["classifier.0.weight"])
    torchvision.models.vgg11_bn(num_classes=10).load_state_dict(torchvision_state(store, result.run_id))

    cache.unlink()
    with pytest.raises(CheckpointError) as caught:
        load_model(result.run_id, store=store)
    one_line_error(caught, f"run {result.run_id}", cache.name, str(cache.parent), "put that file back")


def test_a_head_trained_on_a_weights_file_refers_to_it(tmp_path: Path, splits, isolated_dirs) -> None:
    weights = isolated_dirs["VGG_DATA_DIR"] / "start.pth"
    shutil.move(fake_imagenet_file(), weights)
    store = RunStore(tmp_path / "runs")
    result = fit(TrainConfig(data=TINY, epochs=1, batch_size=64, init=str(weights), freeze="features"),
                 store=store, splits=splits)
    base = store.read_checkpoint(result.run_id)["meta"]["base"]
    assert (base["kind"], base["path"]) == ("file", str(weights.resolve()))
    load_model(result.run_id, store=store)
    weights.unlink()
    with pytest.raises(CheckpointError) as caught:
        load_model(result.run_id, store=store)
    one_line_error(caught, str(weights.resolve()), "no longer exists")


# ------------------------------------------------------------------------------------ last.pt, usage, quota


def tiny(seed: int) -> dict[str, torch.Tensor]:
    return {"w": torch.randn(1000, generator=torch.Generator().manual_seed(seed))}


def result(status: str) -> TrainResult:
    return TrainResult(run_id=None, status=status, message=status, epochs_done=2, steps=2, best_val_loss=1.0,
                       best_val_accuracy=0.5, test_loss=None, test_accuracy=None, seconds=1.0,
                       images_per_second=1.0, classes=("a", "b"))


@pytest.mark.parametrize(("status", "last_is_best", "kept"), [
    ("done", False, False), ("cancelled", False, False), ("done", True, True), ("diverged", False, True),
])
def test_a_finished_run_keeps_last_pt_only_where_it_is_best_pt(tmp_path: Path, status: str,
                                                               last_is_best: bool, kept: bool) -> None:
    store = RunStore(tmp_path / "runs")
    recorder = RunRecorder(store)
    recorder(StartEvent({"config": "A"}, "last"))
    recorder(CheckpointEvent(1, tiny(1), {"epoch": 1}, is_best=True))
    recorder(CheckpointEvent(2, tiny(2), {"epoch": 2}, is_best=last_is_best))
    folder = store.root / recorder.run_id
    recorder(DoneEvent(result(status)))
    assert (folder / "last.pt").is_file() == kept
    assert store.load_checkpoint(recorder.run_id)["meta"]["epoch"] == (2 if last_is_best else 1)


def test_disk_usage_counts_a_hard_linked_checkpoint_once(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs")
    writer = store.create({"config": "A"}, name="usage")
    writer.save_checkpoint("last", tiny(0), {})
    writer.copy_checkpoint("last", "best")
    writer.close()
    files = {p.name: p.stat().st_size for p in writer.path.iterdir()}
    assert store.disk_usage(writer.run_id) == sum(files.values()) - files["last.pt"]
    assert store.disk_usage() == store.disk_usage(writer.run_id)
    (store.root / "elsewhere.bin").write_bytes(b"x" * 1000)
    assert store.disk_usage() == store.disk_usage(writer.run_id) + 1000


def test_the_quota_refuses_a_new_run_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   splits) -> None:
    store = RunStore(tmp_path / "runs")
    (store.root / "old-run.bin").write_bytes(b"x" * 5000)
    monkeypatch.setenv("VGG_RUNS_QUOTA_GB", "0.000004")  # 4 kB
    assert runs_quota_bytes() == 4000
    with pytest.raises(QuotaError) as caught:
        store.create({"config": "A"}, name="refused")
    assert str(caught.value) == ("the runs folder holds 5 kB of its 4 kB quota (VGG_RUNS_QUOTA_GB); "
                                 "delete runs on the Compare page")
    with pytest.raises(QuotaError):
        fit(TrainConfig(data=TINY, epochs=1), store=store, splits=splits)
    assert [p.name for p in store.root.iterdir()] == ["old-run.bin"]
    monkeypatch.setenv("VGG_RUNS_QUOTA_GB", "0.00001")
    store.create({"config": "A"}, name="fits").close()
    monkeypatch.delenv("VGG_RUNS_QUOTA_GB")
    assert runs_quota_bytes() is None
    for bad in ("four", "-1", "0", "nan"):
        monkeypatch.setenv("VGG_RUNS_QUOTA_GB", bad)
        with pytest.raises(ConfigError, match="VGG_RUNS_QUOTA_GB"):
            runs_quota_bytes()
