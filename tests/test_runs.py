"""The run store: round trips, atomic checkpoints on a full disk, interrupted runs, hostile files."""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

import vgg.files as files_module
import vgg.process as process_module
import vgg.runs as runs_module
from vgg.errors import CheckpointError, ConfigError, PathError
from vgg.evaluate import Predictions, load_run_predictions
from vgg.process import owner_alive, owner_record
from vgg.runs import METRIC_COLUMNS, RunInUseError, RunNotFoundError, RunStore

REPO = Path(__file__).resolve().parent.parent
CONFIG = {"config": "A", "batch_norm": True, "lr": 1e-3, "data": {"source": "synthetic"},
          "data_dir": Path("/tmp/x")}


def tiny_state(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"features.0.weight": torch.randn(4, 3, 3, 3, generator=g),
            "features.0.bias": torch.randn(4, generator=g),
            "bn.num_batches_tracked": torch.tensor(7)}


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs")


def test_create_list_get_metrics_delete_round_trip(store: RunStore) -> None:
    writer = store.create(CONFIG, name_hint="vgg11_bn/scratch")
    run_id = writer.run_id
    assert "/" not in run_id and "vgg11_bn-scratch" in run_id
    writer.append_metrics({"kind": "step", "step": 1, "epoch": 1, "images_seen": 32, "seconds": 0.5,
                           "lr": 1e-3, "loss": 2.3, "accuracy": 0.1, "images_per_second": 64.0})
    writer.append_metrics({"kind": "step", "step": 2, "epoch": 1, "loss": float("nan")})
    writer.append_metrics({"kind": "epoch", "step": 2, "epoch": 1, "train_loss": 2.2,
                           "train_accuracy": 0.15, "val_loss": 2.1, "val_accuracy": 0.2})

    info = store.get(run_id)
    assert info.status == "running" and info.pid == os.getpid()
    assert info.config["lr"] == 1e-3 and info.config["data_dir"] == "/tmp/x"
    assert not info.has_best and not info.has_last

    frame = store.metrics(run_id)
    assert list(frame.columns) == list(METRIC_COLUMNS)
    assert list(frame["kind"]) == ["step", "step", "epoch"]
    assert frame["loss"].iloc[0] == pytest.approx(2.3)
    assert frame["loss"].isna().iloc[1]  # NaN loss stays NaN (a diverged step)
    assert frame["val_accuracy"].iloc[2] == pytest.approx(0.2)
    assert frame["lr"].isna().iloc[2]  # missing values are empty

    writer.set_status("done", "finished 1 epoch", best_val_accuracy=0.2, classes=["a", "b"])
    writer.close()
    info = store.get(run_id)
    assert (info.status, info.message) == ("done", "finished 1 epoch")
    assert info.summary == {"best_val_accuracy": 0.2, "classes": ["a", "b"]}
    assert info.finished_at is not None and info.finished

    second = store.create({"config": "B"}, name="second")
    assert [r.run_id for r in store.list_runs()] == [second.run_id, run_id]
    second.set_status("cancelled")
    second.close()

    store.delete(run_id)
    assert not (store.root / run_id).exists()
    assert [r.run_id for r in store.list_runs()] == [second.run_id]
    assert sorted(p.name for p in store.root.iterdir()) == [second.run_id]
    with pytest.raises(RunNotFoundError, match=run_id):
        store.get(run_id)


def test_bad_metric_rows_and_statuses_are_refused(store: RunStore) -> None:
    with store.create(CONFIG, name="x") as writer:
        with pytest.raises(ValueError, match="unknown metric column"):
            writer.append_metrics({"kind": "step", "loos": 1.0})
        with pytest.raises(ValueError, match="kind"):
            writer.append_metrics({"kind": "batch", "loss": 1.0})
        with pytest.raises(ConfigError, match="unknown run status"):
            writer.set_status("finished")


def test_exception_inside_writer_context_marks_the_run_failed(store: RunStore) -> None:
    with pytest.raises(ZeroDivisionError):
        with store.create(CONFIG, name="boom") as writer:
            raise ZeroDivisionError("division by zero")
    info = store.get(writer.run_id)
    assert (info.status, info.message) == ("failed", "ZeroDivisionError: division by zero")


def test_checkpoint_round_trip(store: RunStore) -> None:
    writer = store.create(CONFIG, name="ckpt")
    state = tiny_state()
    writer.save_checkpoint("best", state, {"epoch": 3, "classes": ("cat", "dog"), "path": Path("/a")})
    writer.save_checkpoint("last", tiny_state(1), {"epoch": 4})
    loaded = store.load_checkpoint(writer.run_id, "best")
    assert_same_state(loaded["model"], state)
    assert loaded["meta"] == {"epoch": 3, "classes": ["cat", "dog"], "path": "/a"}
    assert_same_state(store.load_checkpoint(writer.run_id, "last")["model"], tiny_state(1))
    info = store.get(writer.run_id)
    assert info.has_best and info.has_last
    assert store.checkpoint_path(writer.run_id, "best") == writer.path / "best.pt"
    assert leftovers(writer.path) == []
    with pytest.raises(ConfigError, match="unknown checkpoint"):
        store.load_checkpoint(writer.run_id, "middle")  # type: ignore[arg-type]


def test_missing_checkpoint_is_a_clear_error(store: RunStore) -> None:
    writer = store.create(CONFIG, name="empty")
    with pytest.raises(CheckpointError, match="has no best.pt yet"):
        store.load_checkpoint(writer.run_id)
    with pytest.raises(CheckpointError, match="no test-set predictions"):
        load_run_predictions(store, writer.run_id)


def test_predictions_round_trip(store: RunStore) -> None:
    writer = store.create(CONFIG, name="pred")
    probabilities = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]).half()
    predictions = Predictions(labels=torch.tensor([0, 1, 1]), probabilities=probabilities,
                              predicted=probabilities.float().argmax(1), classes=("a", "b"),
                              hidden=torch.randn(3, 8).half(), loss=0.4)
    writer.save_predictions(predictions)
    loaded = load_run_predictions(store, writer.run_id)
    assert torch.equal(loaded.probabilities, predictions.probabilities)
    assert loaded.classes == ("a", "b") and loaded.loss == 0.4 and loaded.accuracy == pytest.approx(2 / 3)
    assert store.get(writer.run_id).has_predictions


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("failure", ["torch.save", "os.replace", "write"])
def test_full_disk_keeps_the_previous_checkpoint(store: RunStore, monkeypatch: pytest.MonkeyPatch,
                                                 failure: str) -> None:
    writer = store.create(CONFIG, name="full-disk")
    old = tiny_state(0)
    writer.save_checkpoint("best", old, {"epoch": 1})

    if failure == "torch.save":
        real_save = torch.save

        def half_then_fail(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
            buffer = io.BytesIO()
            real_save(obj, buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            raise enospc()

        monkeypatch.setattr(runs_module.torch, "save", half_then_fail)
    elif failure == "os.replace":
        def no_replace(src: Any, dst: Any) -> None:
            raise enospc()

        monkeypatch.setattr(runs_module.os, "replace", no_replace)
    else:
        # The file's own write fails midway, as on a real full disk; torch wraps it in a RuntimeError.
        real_open = open

        class FullDisk(io.RawIOBase):
            def __init__(self, raw: Any) -> None:
                self.raw, self.written = raw, 0

            def writable(self) -> bool:
                return True

            def write(self, data: Any) -> int:
                if self.written + len(data) > 200:
                    raise enospc()
                self.written += len(data)
                return self.raw.write(data)

            def flush(self) -> None:
                self.raw.flush()

            def fileno(self) -> int:
                return self.raw.fileno()

            def close(self) -> None:
                super().close()  # flushes while the real file is still open
                self.raw.close()

        def full_disk_open(path: Any, mode: str = "r", *args: Any, **kwargs: Any) -> FullDisk:
            return FullDisk(real_open(path, mode, *args, **kwargs))

        monkeypatch.setattr(files_module, "open", full_disk_open, raising=False)

    with pytest.raises(CheckpointError) as caught:
        writer.save_checkpoint("best", tiny_state(1), {"epoch": 2})
    expected = f"could not write best.pt in {writer.run_id}: No space left on device"
    assert str(caught.value).startswith(expected)
    assert "\n" not in str(caught.value)
    monkeypatch.undo()
    assert leftovers(writer.path) == []
    loaded = store.load_checkpoint(writer.run_id, "best")
    assert_same_state(loaded["model"], old)
    assert loaded["meta"]["epoch"] == 1


def test_too_little_free_space_is_refused_before_writing(store: RunStore,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    writer = store.create(CONFIG, name="tight")
    monkeypatch.setattr(runs_module.shutil, "disk_usage", 
                        lambda p: SimpleNamespace(total=10, used=0, free=10))
    with pytest.raises(CheckpointError, match="No space left on device"):
        writer.save_checkpoint("last", tiny_state(), {})
    assert not (writer.path / "last.pt").exists() and leftovers(writer.path) == []


def test_best_after_a_best_epoch_is_a_link_to_last_not_a_second_copy(store: RunStore) -> None:
    writer = store.create(CONFIG, name="link")
    writer.save_checkpoint("last", tiny_state(1), {"epoch": 1})
    writer.copy_checkpoint("last", "best")
    best, last = writer.path / "best.pt", writer.path / "last.pt"
    assert best.stat().st_ino == last.stat().st_ino and last.stat().st_nlink == 2
    assert_same_state(store.load_checkpoint(writer.run_id, "best")["model"], tiny_state(1))
    # The next epoch replaces last.pt; best.pt keeps the first epoch's weights.
    writer.save_checkpoint("last", tiny_state(2), {"epoch": 2})
    assert best.stat().st_ino != last.stat().st_ino and best.stat().st_nlink == 1
    assert_same_state(store.load_checkpoint(writer.run_id, "best")["model"], tiny_state(1))
    assert store.load_checkpoint(writer.run_id, "best")["meta"]["epoch"] == 1
    assert_same_state(store.load_checkpoint(writer.run_id, "last")["model"], tiny_state(2))
    assert leftovers(writer.path) == []


def test_without_hard_links_best_is_copied_and_a_failed_copy_keeps_the_old_best(
        store: RunStore, monkeypatch: pytest.MonkeyPatch) -> None:
    writer = store.create(CONFIG, name="no-links")
    writer.save_checkpoint("best", tiny_state(0), {"epoch": 1})
    writer.save_checkpoint("last", tiny_state(1), {"epoch": 2})

    def no_links(src: Any, dst: Any) -> None:
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(runs_module.os, "link", no_links)
    real_copy = runs_module.shutil.copyfile

    def full_disk_copy(src: Any, dst: Any) -> None:
        Path(dst).write_bytes(b"half")
        raise enospc()

    monkeypatch.setattr(runs_module.shutil, "copyfile", full_disk_copy)
    with pytest.raises(CheckpointError, match="could not write best.pt .*No space left on device"):
        writer.copy_checkpoint("last", "best")
    assert leftovers(writer.path) == []
    assert_same_state(store.load_checkpoint(writer.run_id, "best")["model"], tiny_state(0))

    monkeypatch.setattr(runs_module.shutil, "copyfile", real_copy)
    writer.copy_checkpoint("last", "best")
    best, last = writer.path / "best.pt", writer.path / "last.pt"
    assert best.stat().st_ino != last.stat().st_ino
    assert_same_state(store.load_checkpoint(writer.run_id, "best")["model"], tiny_state(1))
    with pytest.raises(ConfigError, match="unknown checkpoint 'worst'"):
        writer.copy_checkpoint("last", "worst")  # type: ignore[arg-type]


class WritesMarker:
    """Unpickling this calls ``open(marker, "w")``: code execution that must never happen."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (open, (str(self.marker), "w"))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("fmt", ["plain pickle", "torch zip"])
def test_pickle_that_runs_code_is_refused(store: RunStore, tmp_path: Path, fmt: str) -> None:
    writer = store.create(CONFIG, name="evil")
    marker = tmp_path / "pwned"
    if fmt == "plain pickle":
        (writer.path / "best.pt").write_bytes(pickle.dumps({"model": WritesMarker(marker)}))
    else:
        torch.save({"model": {"w": WritesMarker(marker)}}, writer.path / "best.pt")
    with pytest.raises(CheckpointError, match="refusing to load best.pt of run"):
        store.load_checkpoint(writer.run_id)
    assert not marker.exists()

    control = tmp_path / "control"  # the payload really does run code when loaded unsafely
    pickle.loads(pickle.dumps(WritesMarker(control)))
    assert control.exists()


def test_corrupt_and_wrong_shaped_checkpoints(store: RunStore) -> None:
    writer = store.create(CONFIG, name="corrupt")
    writer.save_checkpoint("best", tiny_state(), {})
    data = (writer.path / "best.pt").read_bytes()
    (writer.path / "best.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        store.load_checkpoint(writer.run_id)
    torch.save([torch.zeros(2)], writer.path / "last.pt")
    with pytest.raises(CheckpointError, match="not a run checkpoint"):
        store.load_checkpoint(writer.run_id, "last")


def test_metrics_tolerate_a_truncated_last_line(store: RunStore) -> None:
    writer = store.create(CONFIG, name="torn")
    for step in (1, 2):
        writer.append_metrics({"kind": "step", "step": step, "epoch": 1, "loss": 1.0 / step})
    writer.close()
    with open(writer.path / "metrics.csv", "a", encoding="utf-8") as f:
        f.write("step,3,1,96,1.5,0.001,0.3")  # killed mid-line: no newline, too few cells
    frame = store.metrics(writer.run_id)
    assert list(frame["step"]) == [1.0, 2.0]
    with open(writer.path / "metrics.csv", "a", encoding="utf-8") as f:
        f.write("\ngarbage line\n")
    assert list(store.metrics(writer.run_id)["step"]) == [1.0, 2.0]


def test_metrics_of_a_run_without_rows(store: RunStore) -> None:
    writer = store.create(CONFIG, name="none")
    frame = store.metrics(writer.run_id)
    assert frame.empty and list(frame.columns) == list(METRIC_COLUMNS)


@pytest.mark.parametrize("bad", ["../x", "a/b", "a\\b", "", ".", "..", ".hidden", "/etc", "x" * 300,
                                 "run id", "ok\n"])
def test_run_ids_are_validated(store: RunStore, bad: str) -> None:
    with pytest.raises(PathError, match="invalid run id"):
        store.get(bad)
    with pytest.raises(PathError):
        store.load_checkpoint(bad)
    with pytest.raises(PathError):
        store.delete(bad)


def test_symlinked_run_folder_pointing_out_is_refused(store: RunStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "status.json").write_text(json.dumps({"status": "done"}))
    (store.root / "sneaky").symlink_to(outside, target_is_directory=True)
    with pytest.raises(PathError, match="outside the runs directory"):
        store.get("sneaky")
    with pytest.raises(PathError):
        store.delete("sneaky")
    assert store.list_runs() == []
    assert outside.exists()


def test_a_running_run_of_this_process_cannot_be_deleted(store: RunStore) -> None:
    writer = store.create(CONFIG, name="busy")
    with pytest.raises(RunInUseError, match="still running"):
        store.delete(writer.run_id)
    assert store.get(writer.run_id).status == "running"


def test_owner_checks_token_pid_and_start_time() -> None:
    me = owner_record()
    assert owner_alive(me)
    assert not owner_alive({**me, "token": "an-earlier-process-with-the-same-pid"})
    assert not owner_alive({**me, "pid": None})
    assert owner_alive({**me, "host": "another-machine", "pid": 999_999_999})
    parent = {**me, "pid": os.getppid(), "token": "other"}
    start = process_module._proc_stat(os.getppid())
    if start is None:
        pytest.skip("no /proc on this system")
    assert owner_alive({**parent, "process_start": start[1]})
    assert not owner_alive({**parent, "process_start": start[1] + 1})  # pid reused since


CHILD = textwrap.dedent("""
    import sys, torch
    from pathlib import Path
    from vgg.runs import RunStore
    store = RunStore(Path(sys.argv[1]))
    writer = store.create({"config": "A"}, name_hint="crash")
    for step in range(1, 6):
        writer.append_metrics({"kind": "step", "step": step, "epoch": 1, "loss": 1.0 / step})
    writer.append_metrics({"kind": "epoch", "step": 5, "epoch": 1, "val_loss": 0.5, "val_accuracy": 0.75})
    g = torch.Generator().manual_seed(0)
    writer.save_checkpoint("best", {"w": torch.randn(4, 3, generator=g)}, {"epoch": 1})
    print(writer.run_id, flush=True)
    sys.stdin.read()  # stay alive (a training in progress) until killed
""")


def start_child(root: Path) -> tuple[subprocess.Popen[str], str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(root)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    watchdog = threading.Timer(120, proc.kill)
    watchdog.start()
    try:
        run_id = proc.stdout.readline().strip()
    finally:
        watchdog.cancel()
    if not run_id:
        proc.kill()
        pytest.fail(f"child process did not start: {proc.communicate()[1][-2000:]}")
    return proc, run_id


def test_killed_process_leaves_an_interrupted_run_with_its_metrics_and_checkpoint(store: RunStore) -> None:
    proc, run_id = start_child(store.root)
    try:
        info = store.get(run_id)
        assert info.status == "running" and info.pid == proc.pid  # another live process owns it
        with pytest.raises(RunInUseError):
            store.delete(run_id)
    finally:
        proc.kill()  # kill -9
        proc.wait(30)
        proc.stdin.close()
        proc.stdout.close()
        proc.stderr.close()

    half_written = store.root / run_id / ".best.pt.0123abcd.tmp"  # as if killed mid-write
    half_written.write_bytes(b"PK\x03\x04 partial")
    fresh = RunStore(store.root)  # as after a restart
    info = fresh.get(run_id)
    assert info.status == "interrupted"
    assert "interrupted" in info.message and str(proc.pid) in info.message
    assert info.has_best
    assert [r.status for r in fresh.list_runs()] == ["interrupted"]
    frame = fresh.metrics(run_id)
    assert list(frame["kind"]) == ["step"] * 5 + ["epoch"]
    assert frame["val_accuracy"].iloc[-1] == pytest.approx(0.75)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(fresh.load_checkpoint(run_id)["model"]["w"], torch.randn(4, 3, generator=g))
    # The interruption is recorded in status.json, so it survives even if the pid is reused.
    assert json.loads((info.path / "status.json").read_text())["status"] == "interrupted"
    assert not half_written.exists()
    fresh.delete(run_id)
    assert fresh.list_runs() == []


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_but_unreaped_process_counts_as_dead(store: RunStore) -> None:
    proc, run_id = start_child(store.root)
    try:
        proc.kill()
        deadline = time.monotonic() + 30
        while (process_module._proc_stat(proc.pid) or ("Z",))[0] != "Z":  # wait for the kill to land
            assert time.monotonic() < deadline, "the killed child never became a zombie"
            time.sleep(0.01)
        assert store.get(run_id).status == "interrupted"
    finally:
        proc.wait(30)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


def test_runs_have_names_a_person_can_read() -> None:
    from vgg.runs import run_label

    config = {"config": "A", "batch_norm": True, "init": "scratch", "lr": 3e-4,
              "data": {"source": "/somewhere/cifar10", "input_size": 32}}
    created = time.mktime((2026, 12, 3, 14, 2, 0, 0, 0, -1))
    assert run_label(config, created) == "VGG11-BN · from scratch · cifar10 · lr 3e-04 · 3 Dec 14:02"
    transfer = {**config, "config": "D", "batch_norm": False, "init": "run:20261203-x", "lr": 1e-3,
                "data": {"source": "synthetic"}}
    assert run_label(transfer, created).startswith("VGG16 · run 20261203-x · synthetic · lr 1e-03")
