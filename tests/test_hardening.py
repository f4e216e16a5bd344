"""Hardening across modules: hostile files, out-of-range settings, memory and a full classroom.

The unit tests of each module check its own refusals; these check the same hostile inputs
against every reader and entry point at once (library, job manager, ``python -m vgg``), plus the
memory preflight of ``vgg.resources``. One tiny run (VGG11-BN, synthetic shapes at 32 px, 20
images per class, 1 epoch, trained with ``vgg.train.fit``) is shared by the module.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import threading
import weakref
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, features

from vgg import cli, finetune, inference, resources
from vgg import train as train_mod
from vgg.data import DataConfig
from vgg.errors import CheckpointError, VGGError
from vgg.jobs import JobManager, JobStatus, QueueFullError
from vgg.model import build_vgg, load_pretrained, load_state_dict_file
from vgg.runs import RunStore, read_checkpoint_file
from vgg.tasks import DataRegistry, train_task
from vgg.train import TrainConfig, fit

REPO = Path(__file__).resolve().parent.parent
COMMAND_TIMEOUT_S = 240  # importing torch on a busy 2-core machine is slow; a hang still fails
WAIT_S = 120.0  # upper bound of condition waits on jobs (a tiny training on a loaded machine)
TINY = {"source": "synthetic", "input_size": 32, "images_per_class": 20}


# --------------------------------------------------------------------------------------------------- helpers


def make_dirs(base: Path) -> dict[str, Path]:
    dirs = {name: base / name for name in ("data", "runs", "torch")}
    for path in dirs.values():
        path.mkdir(parents=True, exist_ok=True)
    return dirs


def cli_env(dirs: dict[str, Path]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VGG_DEBUG"}
    env.update(VGG_DATA_DIR=str(dirs["data"]), VGG_RUNS_DIR=str(dirs["runs"]), TORCH_HOME=str(dirs["torch"]),
               VGG_DEVICE="cpu")
    return env


def run_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vgg", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=COMMAND_TIMEOUT_S)


def in_process(*args: str) -> tuple[int, str, str]:
    """``vgg.cli.main`` with captured streams (the conftest's autouse fixture isolates the dirs)."""
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(list(args), out=out, err=err)
    return code, out.getvalue(), err.getvalue()


def assert_one_line_error(stderr: str, *fragments: str) -> str:
    """stderr is a single ``error: ...`` line naming every fragment, with no traceback."""
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, stderr)
    return lines[0]


class WritesMarker:
    """Unpickling this object calls ``open(marker, "w")``: a stand-in for any code a pickle could run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))


def encoded(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def bomb_png(width: int = 30_000, height: int = 30_000) -> bytes:
    """A PNG whose header declares ``width × height`` RGB pixels (2.7 GB decoded) in a few hundred bytes."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", zlib.compress(b"\x00" * 4096, 9)) + png_chunk(b"IEND", b""))


def picture(size: tuple[int, int], seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "RGB")


@pytest.fixture(scope="module")
def tiny(module_tmp: Path) -> dict[str, Any]:
    """Dirs and one finished tiny run: {"dirs", "store", "run_id", "classes"}."""
    dirs = make_dirs(module_tmp)
    store = RunStore(dirs["runs"])
    cfg = TrainConfig(config="A", batch_norm=True, epochs=1, batch_size=64, device="cpu",
                      data=DataConfig(**TINY, data_dir=dirs["data"]))
    result = fit(cfg, store=store)
    assert result.status == "done" and result.run_id
    return {"dirs": dirs, "store": store, "run_id": result.run_id, "classes": list(result.classes)}


# ---------------------------------------------------------------------------------------------------- memory


def test_preflight_refuses_a_run_that_cannot_fit() -> None:
    with pytest.raises(VGGError, match="smaller batch size or input size") as caught:
        resources.check_training_memory("E", True, 512, 4096, 10, "adam", device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    assert "this run needs about" in message and "GB but only" in message and "batch size 4096" in message
    # Deterministic too: a modest run does not fit into 1 GB of free memory.
    with pytest.raises(VGGError, match="only 1.0 GB are free"):
        resources.check_training_memory("A", True, 32, 128, 10, "adam", available=10**9)


def test_preflight_lets_a_cpu_friendly_run_through() -> None:
    estimate = resources.check_training_memory("A", True, 32, 128, 10, "adam", device="cpu")
    free = resources.available_memory_bytes("cpu")
    assert 0 < estimate.total_bytes <= resources.USABLE_FRACTION * free
    cfg = TrainConfig(config="A", batch_norm=True, batch_size=128, data=DataConfig(**TINY))
    assert resources.check_config_memory(cfg, 10, "cpu") == estimate


def test_estimate_parts_follow_the_settings() -> None:
    base = resources.estimate_training_memory("A", True, 32, 64, 10, "adam")
    double = resources.estimate_training_memory("A", True, 32, 128, 10, "adam")
    sgd = resources.estimate_training_memory("A", True, 32, 64, 10, "sgd")
    frozen = resources.estimate_training_memory("A", True, 32, 64, 10, "adam", freeze="features")
    bigger = resources.estimate_training_memory("A", True, 64, 64, 10, "adam")
    assert base.params_bytes == 4 * 128_812_810  # VGG11-BN with a 10-class head, fp32
    assert double.activation_bytes == 2 * base.activation_bytes
    assert sgd.optimizer_bytes * 2 == base.optimizer_bytes
    last_only = resources.estimate_training_memory("A", True, 32, 64, 10, "adam", freeze="all_but_last")
    assert frozen.optimizer_bytes < base.optimizer_bytes
    assert frozen.activation_bytes < base.activation_bytes / 2
    assert last_only.optimizer_bytes < base.optimizer_bytes / 1000  # only Linear(4096, 10) learns
    assert bigger.activation_bytes > 3 * base.activation_bytes  # 4× the pixels per layer output
    for e in (base, double, sgd, frozen, last_only, bigger):
        assert e.total_bytes == e.params_bytes + e.gradient_bytes + e.optimizer_bytes + e.activation_bytes
    with pytest.raises(VGGError, match="batch size"):
        resources.estimate_training_memory("A", True, 32, 0, 10, "adam")
    with pytest.raises(VGGError, match="'rmsprop'"):
        resources.estimate_training_memory("A", True, 32, 8, 10, "rmsprop")


MEASURE_STEP = """
import json, resource, sys, torch
from vgg.model import build_vgg
from vgg.train import TrainConfig, make_optimizer, train_step
torch.set_num_threads(2)
size, batch = int(sys.argv[1]), int(sys.argv[2])
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
before = rss()
model = build_vgg("A", batch_norm=True, num_classes=10).to(memory_format=torch.channels_last)
optimizer = make_optimizer(model, TrainConfig(config="A"))
x = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
y = torch.randint(0, 10, (batch,))
for _ in range(2):
    train_step(model, optimizer, x, y, None)
# VmHWM, not ru_maxrss: the latter keeps the peak of the pytest process that started this one.
peak = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"used": peak - before}))
"""


@pytest.mark.slow
def test_estimate_bounds_a_measured_training_step_from_above() -> None:
    """The real peak of two Adam steps (a fresh process) fits in what the preflight reserves for the
    estimate (estimate ÷ USABLE_FRACTION), and the estimate is at most 2.5× the peak."""
    size, batch = 96, 16
    done = subprocess.run([sys.executable, "-c", MEASURE_STEP, str(size), str(batch)], cwd=REPO,
                          capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    used = json.loads(done.stdout)["used"]
    estimate = resources.estimate_training_memory("A", True, size, batch, 10, "adam").total_bytes
    assert used < estimate / resources.USABLE_FRACTION and estimate < 2.5 * used, (used, estimate)


def test_available_memory_is_plausible_and_respects_a_container_limit(tmp_path: Path) -> None:
    total = next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                 if line.startswith("MemTotal:"))
    assert 0 < resources.available_memory_bytes("cpu") <= total
    cgroup = tmp_path / "cgroup"
    cgroup.mkdir()
    (cgroup / "memory.max").write_text(f"{4 * 2**30}\n")
    (cgroup / "memory.current").write_text(f"{3 * 2**30}\n")
    (cgroup / "memory.stat").write_text(f"anon 123\ninactive_file {2**30}\nactive_file 5\n")
    assert resources._cgroup_available(cgroup) == 2 * 2**30  # the inactive file cache counts as free
    (cgroup / "memory.max").write_text("max\n")
    assert resources._cgroup_available(cgroup) is None


def test_peak_rss_and_process_measurements() -> None:
    now = resources.rss_bytes()
    assert resources.peak_rss_bytes() >= now > 10_000_000  # torch is loaded
    before = resources.cpu_seconds()
    sum(i * i for i in range(300_000))
    assert resources.cpu_seconds() > before
    assert resources.cpu_seconds(os.getpid()) > 0


def test_fit_refuses_a_run_that_does_not_fit_before_building_the_model(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(resources, "available_memory_bytes", lambda device="cpu": 10**9)
    built: list[str] = []
    monkeypatch.setattr(finetune, "build_vgg", lambda *a, **k: built.append("model") or pytest.fail("built"))
    store = RunStore(tmp_path / "runs")
    cfg = TrainConfig(config="A", batch_norm=True, epochs=1, batch_size=128, device="cpu",
                      data=DataConfig(source="synthetic", input_size=32, images_per_class=2))
    with pytest.raises(VGGError, match="smaller batch size or input size"):
        fit(cfg, store=store)
    assert built == [] and store.list_runs() == []


def test_out_of_memory_in_a_job_fails_it_cleanly_and_the_next_job_runs() -> None:
    manager = JobManager(max_running=1, max_queued=5)
    release = threading.Event()

    def hungry(ctx: Any) -> None:
        release.wait(WAIT_S)
        raise MemoryError()

    def cuda_hungry(ctx: Any) -> None:
        raise RuntimeError("CUDA out of memory. Tried to allocate 38.20 GiB")

    try:
        first = manager.submit("train", "too big", hungry)
        second = manager.submit("train", "too big on a GPU", cuda_hungry)
        third = manager.submit("train", "small", lambda ctx: "fine")
        assert manager.snapshot(third).status is JobStatus.QUEUED
        release.set()
        snaps = [manager.wait(job, WAIT_S) for job in (first, second, third)]
    finally:
        manager.shutdown(cancel=True, timeout=WAIT_S)
    assert [s.status for s in snaps] == [JobStatus.FAILED, JobStatus.FAILED, JobStatus.DONE]
    for snap in snaps[:2]:
        assert "out of memory" in snap.error and "smaller batch size" in snap.error
        assert "\n" not in snap.error and "Traceback" not in snap.error
    assert snaps[2].result == "fine"


def _training_that_runs_out_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = train_mod.train_step
    calls = []

    def step(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) >= 2:
            raise MemoryError()
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_mod, "train_step", step)


def test_out_of_memory_during_training_fails_the_job_and_keeps_the_run_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _training_that_runs_out_of_memory(monkeypatch)
    store = RunStore(tmp_path / "runs")
    cfg = TrainConfig(config="A", batch_norm=True, epochs=1, batch_size=16, device="cpu",
                      data=DataConfig(**TINY))
    manager = JobManager()
    try:
        job = manager.submit("train", "runs out of memory", train_task(cfg, DataRegistry(), store))
        snap = manager.wait(job, WAIT_S)
        after = manager.submit("x", "next", lambda ctx: 42)
        assert manager.wait(after, WAIT_S).result == 42
    finally:
        manager.shutdown(cancel=True, timeout=WAIT_S)
    assert snap.status is JobStatus.FAILED
    assert "smaller batch size" in snap.error
    (info,) = store.list_runs()
    assert info.status == "failed"
    assert len(store.metrics(info.run_id)) >= 1  # the step before the failure was flushed


def test_out_of_memory_during_training_is_explained_in_the_run_folder(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _training_that_runs_out_of_memory(monkeypatch)
    store = RunStore(tmp_path / "runs")
    cfg = TrainConfig(config="A", batch_norm=True, epochs=1, batch_size=16, device="cpu",
                      data=DataConfig(**TINY))
    with pytest.raises(MemoryError):
        fit(cfg, store=store)
    (info,) = store.list_runs()
    assert "out of memory" in info.message and "smaller batch size" in info.message


# --------------------------------------------------------------------------------------- hostile checkpoints


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["torch zip", "plain pickle"])
def test_a_pickle_that_runs_code_is_refused_by_every_reader(tiny: dict[str, Any], tmp_path: Path,
                                                            fmt: str) -> None:
    dirs, store = tiny["dirs"], tiny["store"]
    marker = tmp_path / "pwned"
    payload = {"model": {"features.0.weight": WritesMarker(marker)}, "meta": {"config": "A"}}
    hostile = dirs["data"] / f"hostile-{fmt.replace(' ', '-')}.pt"
    if fmt == "torch zip":
        torch.save(payload, hostile)
    else:
        hostile.write_bytes(pickle.dumps(payload))
    run_dir = dirs["runs"] / f"hostile-{fmt.replace(' ', '-')}"  # a run whose best.pt is the hostile file
    run_dir.mkdir()
    (run_dir / "status.json").write_text(json.dumps({"status": "done", "message": "", "summary": {}}))
    (run_dir / "config.json").write_text(json.dumps({"config": "A"}))
    (run_dir / "best.pt").write_bytes(hostile.read_bytes())
    image = tmp_path / "x.png"
    picture((40, 30)).save(image)
    try:
        readers = {
            "read_checkpoint_file": lambda: read_checkpoint_file(hostile),
            "load_state_dict_file": lambda: load_state_dict_file(hostile),
            "load_pretrained": lambda: load_pretrained("A", batch_norm=True, num_classes=10,
                                                       weights_path=hostile),
            "RunStore.load_checkpoint": lambda: store.load_checkpoint(run_dir.name, "best"),
            "inference.load_model(path)": lambda: inference.load_model(str(hostile), store=store,
                                                                        allowed_roots=(dirs["data"],)),
            "inference.load_model(run)": lambda: inference.load_model(run_dir.name, store=store),
        }
        for name, read in readers.items():
            with pytest.raises(CheckpointError) as caught:
                read()
            message = str(caught.value)
            assert hostile.name in message or "best.pt" in message, (name, message)
            assert "\n" not in message, name
            assert not marker.exists(), f"{name} ran the pickle's code"
        done = run_cli(cli_env(dirs), "predict", str(hostile), str(image))  # the real entry point
        assert done.returncode == 1, done
        assert done.stdout == "" and "Traceback" not in done.stderr
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and hostile.name in errors[0], done.stderr  # (a torch warning may precede it)
        assert not marker.exists(), "python -m vgg predict ran the pickle's code"
        code, out, err = in_process("predict", run_dir.name, str(image), "--runs-dir", str(dirs["runs"]),
                                    "--data-dir", str(dirs["data"]))
        assert code == 1 and out == "" and "best.pt" in err and "Traceback" not in err
        assert not marker.exists(), "python -m vgg predict RUN ran the pickle's code"
        # The payload is live: an unsafe load really would have run it.
        with contextlib.suppress(Exception):  # a plain pickle runs, then fails torch's magic-number check
            torch.load(hostile, weights_only=False)
        assert marker.exists()
    finally:
        hostile.unlink(missing_ok=True)
        for child in run_dir.iterdir():
            child.unlink()
        run_dir.rmdir()


def test_a_refused_pickle_is_explained_in_one_clean_line(tiny: dict[str, Any], tmp_path: Path) -> None:
    dirs = tiny["dirs"]
    payload = {"model": {"features.0.weight": WritesMarker(tmp_path / "pwned")}, "meta": {}}
    zipped, plain = dirs["data"] / "clean-zip.pt", dirs["data"] / "clean-plain.pt"
    torch.save(payload, zipped)
    plain.write_bytes(pickle.dumps(payload))
    try:
        messages = []
        for hostile in (zipped, plain):
            for read in (read_checkpoint_file, load_state_dict_file):
                with pytest.raises(CheckpointError) as caught:
                    read(hostile)
                messages.append(str(caught.value))
        image = tmp_path / "x.png"
        picture((8, 8)).save(image)
        done = run_cli(cli_env(dirs), "predict", str(plain), str(image))
        messages.append(assert_one_line_error(done.stderr, plain.name))
    finally:
        zipped.unlink(missing_ok=True)
        plain.unlink(missing_ok=True)
    for message in messages:
        assert message.isprintable(), repr(message)  # no terminal escape codes
        assert "weights_only` set to `False" not in message and "add_safe_globals" not in message, message
        assert "io.open" in message or "operand" in message or "not allowed" in message, message  # what
    assert not (tmp_path / "pwned").exists()


def test_a_state_dict_of_another_architecture_is_named_in_the_cli(isolated_dirs: dict[str, Path]) -> None:
    with torch.device("meta"):
        vgg13 = build_vgg("B", batch_norm=True, num_classes=1000)
    # vgg13_bn's key names with tiny tensors: the file is small, the mismatch is real.
    weights = isolated_dirs["VGG_DATA_DIR"] / "vgg13.pth"
    torch.save({key: torch.zeros(1) for key in vgg13.state_dict()}, weights)
    code, out, err = in_process("train", "--config", "A", "--init", str(weights), "--images-per-class", "2",
                                "--epochs", "1", "--json")
    assert code == 1 and out == ""
    assert_one_line_error(err, "vgg13.pth does not fit vgg11_bn", "unexpected features.", "wrong shape")


def test_starting_from_a_run_of_another_configuration_names_both(tiny: dict[str, Any]) -> None:
    dirs = tiny["dirs"]
    code, out, err = in_process("train", "--config", "B", "--init", tiny["run_id"], "--images-per-class", "2",
                                "--epochs", "1", "--runs-dir", str(dirs["runs"]),
                                "--data-dir", str(dirs["data"]), "--json")
    assert code == 1 and out == ""
    assert_one_line_error(err, tiny["run_id"], "'A'", "same configuration")


# ---------------------------------------------------------------------------------------------------- images


def bad_files(folder: Path) -> dict[str, str]:
    """Files ``predict`` must refuse, each with a fragment its one line must hold."""
    (folder / "bomb.png").write_bytes(bomb_png())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("Dear class, please bring a picture of a cat.\n")
    jpeg = encoded(picture((64, 64)), "JPEG", quality=90)
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "drawing.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>')
    (folder / "hidden-svg.png").write_text('<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"/>')
    (folder / "folder.jpg").mkdir()
    with open(folder / "huge.png", "wb") as handle:  # sparse: 25 MB by its size, nothing written
        handle.truncate(25_000_000)
    return {
        "bomb.png": "decompression bomb",
        "empty.jpg": "empty",
        "notes.jpg": "text file, not an image",
        "truncated.jpg": "truncated",
        "drawing.svg": "SVG",
        "hidden-svg.png": "SVG",
        "folder.jpg": "folder",
        "huge.png": "limit",
        "missing.png": "no such file",
    }


def odd_files(folder: Path) -> list[str]:
    """Awkward but valid pictures ``predict`` must classify."""
    base = picture((48, 36), seed=1)
    gradient = np.linspace(0, 65535, 24 * 16).reshape(16, 24).astype(np.uint16)
    Image.fromarray(gradient).save(folder / "16-bit.png")
    base.convert("CMYK").save(folder / "cmyk.jpg")
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(folder / "palette-transparent.png", transparency=0)
    frames = [picture((20, 20), seed=s).convert("P") for s in (3, 4)]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise on display
    base.save(folder / "exif-rotated.jpg", exif=exif.tobytes())
    Image.new("RGB", (1, 1), (200, 30, 30)).save(folder / "one-pixel.png")
    names = ["16-bit.png", "cmyk.jpg", "palette-transparent.png", "animated.gif", "exif-rotated.jpg",
             "one-pixel.png"]
    if features.check("webp"):
        rgba = base.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(folder / "rgba.webp")
        names.append("rgba.webp")
    return names


def test_predict_gives_one_line_per_bad_file_and_classifies_the_odd_ones(tiny: dict[str, Any],
                                                                        tmp_path: Path) -> None:
    refused = bad_files(tmp_path)
    accepted = odd_files(tmp_path)
    assert "16-bit.png" in accepted and Image.open(tmp_path / "16-bit.png").mode.startswith("I")
    assert Image.open(tmp_path / "cmyk.jpg").mode == "CMYK"
    names = [*refused, *accepted]
    done = run_cli(cli_env(tiny["dirs"]), "predict", tiny["run_id"], *(str(tmp_path / n) for n in names),
                   "--json")
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == len(refused), done.stderr
    for line, (name, fragment) in zip(lines, refused.items(), strict=True):
        assert line.startswith("error: ") and name in line and fragment in line, (name, line)
    result = json.loads(done.stdout)
    assert result["failed"] == len(refused)
    entries = {Path(e["file"]).name: e for e in result["predictions"]}
    assert list(entries) == names
    for name in refused:
        assert "top5" not in entries[name] and entries[name]["error"], name
    for name in accepted:
        top5 = entries[name].get("top5")
        assert top5 is not None and len(top5) == 5, (name, entries[name])
        assert {item["class"] for item in top5} <= set(tiny["classes"])
        probabilities = [item["probability"] for item in top5]
        assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1 + 1e-5


# ------------------------------------------------------------------------------------------- paths and names


@pytest.fixture
def outside_set(tmp_path: Path) -> Path:
    """A valid image-folder data set outside the data dir (two classes of tiny PNGs)."""
    root = tmp_path / "elsewhere" / "set"
    for cls, colour in (("cat", (200, 40, 40)), ("dog", (40, 40, 200))):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), colour).save(root / cls / f"{i}.png")
    return root


def test_cli_refuses_data_sets_outside_the_data_dir(isolated_dirs: dict[str, Path],
                                                    outside_set: Path) -> None:
    data = isolated_dirs["VGG_DATA_DIR"]
    (data / "link").symlink_to(outside_set, target_is_directory=True)
    (data / "inside").mkdir()
    (data / "inside" / "sneaky").symlink_to(outside_set.parent, target_is_directory=True)
    for dataset in ("../..", str(outside_set), "link", str(data / "link"), "inside/sneaky/set", "/"):
        code, out, err = in_process("train", "--dataset", dataset, "--epochs", "1")
        assert code == 1 and out == "", dataset
        assert_one_line_error(err, "outside the allowed folders")
        code, _, err = in_process("lr-find", "--dataset", dataset)
        assert code == 1, dataset
        assert_one_line_error(err, "outside the allowed folders")
    for source in ("../..", str(outside_set), "link"):
        with pytest.raises(VGGError, match="outside the allowed folders"):
            DataConfig(source=source, data_dir=data)


@pytest.mark.parametrize("run_id", ["../x", "a/b", "..", "/etc", "x\\..\\y", ".hidden", "run\nid"])
def test_run_ids_with_path_parts_are_refused(run_id: str) -> None:
    code, out, err = in_process("evaluate", run_id)
    assert code == 1 and out == ""
    line = assert_one_line_error(err)
    assert "invalid run id" in line or "not found" in line or "no run" in line.lower(), line
    code, _, err = in_process("train", "--init", f"run:{run_id}", "--epochs", "1")
    assert code == 1
    assert_one_line_error(err)


def test_predict_refuses_a_model_given_as_a_path_outside_the_allowed_folders(tiny: dict[str, Any],
                                                                             tmp_path: Path) -> None:
    image = tmp_path / "x.png"
    picture((8, 8)).save(image)
    runs = tiny["dirs"]["runs"]
    copy = tmp_path / "best.pt"  # a real checkpoint, but outside the data and runs dirs
    os.link(runs / tiny["run_id"] / "best.pt", copy)  # same file system (pytest's temporary folders)
    sneaky = f"{tiny['run_id']}/../../{copy.parent.name}/best.pt"
    for source in (str(copy), "/etc/passwd", "../../x.pt", sneaky):
        code, out, err = in_process("predict", source, str(image), "--runs-dir", str(runs),
                                    "--data-dir", str(tiny["dirs"]["data"]))
        assert code == 1 and out == "", source
        assert_one_line_error(err)


# -------------------------------------------------------------------------------------------------- settings


@pytest.mark.parametrize("args", [
    ["--lr", "nan"], ["--lr", "inf"], ["--lr", "-1"],
    ["--batch-size", "-4"], ["--batch-size", "100000"], ["--epochs", "0"], ["--epochs", "-1"],
    ["--input-size", "31"], ["--input-size", "100000"], ["--images-per-class", "-3"],
    ["--val-fraction", "0.9"], ["--val-fraction", "0"], ["--config", "a"], ["--config", ""],
    ["--time-budget", "0"], ["--lr-ratio", "5"],
], ids=" ".join)
def test_more_out_of_range_training_settings_are_one_line(args: list[str]) -> None:
    code, out, err = in_process("train", *args)
    assert code == 1, (args, err)
    assert out == ""
    assert_one_line_error(err)


def test_settings_refusal_never_reaches_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the engine was started with refused settings")

    monkeypatch.setattr(train_mod, "fit", boom)
    monkeypatch.setattr("vgg.data.load_data", boom)
    for args in (["--lr", "0"], ["--lr", "11"], ["--batch-size", "0"], ["--epochs", "1000000"],
                 ["--input-size", "16"], ["--images-per-class", "0"], ["--config", "Z"]):
        code, _, err = in_process("train", *args)
        assert code == 1, args
        assert_one_line_error(err)


# ------------------------------------------------------------------------------------------ a full classroom


class Payload:
    """What a job's closure holds (a model, data): must be released once the job has finished."""

    def __init__(self) -> None:
        self.data = bytearray(1_000_000)


def test_thirty_clicks_one_runs_twenty_queue_the_rest_refused_and_memory_is_released() -> None:
    manager = JobManager(max_running=1, max_queued=20, max_finished=10)
    release = threading.Event()
    started = threading.Event()
    barrier = threading.Barrier(30)
    payloads: list[weakref.ref[Payload]] = []
    accepted: list[str] = []
    refused: list[str] = []
    lock = threading.Lock()

    def job_for(payload: Payload) -> Any:
        def run(ctx: Any) -> None:
            started.set()
            release.wait(WAIT_S)
            assert len(payload.data) == 1_000_000

        return run

    def click(i: int) -> None:
        payload = Payload()
        with lock:
            payloads.append(weakref.ref(payload))
        fn = job_for(payload)
        del payload
        barrier.wait(WAIT_S)
        try:
            job_id = manager.submit("train", f"click {i}", fn, owner=f"pupil {i}")
        except QueueFullError as exc:
            with lock:
                refused.append(str(exc))
        else:
            with lock:
                accepted.append(job_id)

    threads = [threading.Thread(target=click, args=(i,)) for i in range(30)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(WAIT_S)
        assert started.wait(WAIT_S)
        snaps = manager.snapshots()
        assert sum(s.status is JobStatus.RUNNING for s in snaps) == 1
        assert sum(s.status is JobStatus.QUEUED for s in snaps) == 20
        assert len(accepted) == 21 and len(refused) == 9
        assert all("queue is full" in message and "wait" in message for message in refused)
        release.set()
        # One job runs at a time, in the order submitted: once the last is done, all are. (Waiting
        # for each in turn raced with the pruning of finished jobs, max_finished=10.)
        last = max(accepted, key=lambda job_id: int(job_id.rsplit("-", 1)[1]))
        assert manager.wait(last, WAIT_S).status is JobStatus.DONE
    finally:
        release.set()
        manager.shutdown(cancel=True, timeout=WAIT_S)
    assert len(manager.snapshots()) <= 10  # finished jobs are pruned
    gc.collect()
    assert sum(ref() is not None for ref in payloads) == 0  # closures (models, data) were let go
