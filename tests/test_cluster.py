"""Jobs on a real local Ray cluster (vgg.cluster): a head and one worker node, 1 CPU each, no dashboard.

The cluster is started with ``ray start`` for this module and stopped afterwards; nothing of Ray is
mocked. Trainings go through the app's job manager (``vgg.tasks.train_task``) and through the CLI;
a cancelled job stops within 2 s; a worker killed mid-run leaves the run interrupted with its
metrics and best checkpoint, and the job's error names the node; an unreachable cluster refuses jobs
with one line.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vgg import cluster
from vgg.data import DataConfig, load_data
from vgg.events import CheckpointEvent, EpochEvent, StepEvent
from vgg.jobs import JobManager, JobStatus
from vgg.runs import RunStore
from vgg.tasks import DataRegistry, train_task
from vgg.train import TrainConfig

pytestmark = pytest.mark.timeout(600)
TINY = DataConfig(source="synthetic", input_size=32, images_per_class=20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def on_cluster(ray_cluster: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(cluster.ADDRESS_ENV, ray_cluster)
    return ray_cluster


@pytest.fixture(scope="module")
def tiny():  # noqa: ANN201
    return load_data(TINY)


def worker_pids() -> list[int]:
    """Processes of Ray workers running one of our tasks (Ray names them after the task)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if cmdline.startswith("ray::_on_worker"):
                pids.append(int(entry.name))
    return pids


def test_the_cluster_has_two_nodes_and_the_sidebar_status_says_so(on_cluster: str) -> None:
    deadline = time.monotonic() + 60
    while (status := cluster.cluster_status()).nodes < 2:  # the second node registers after its start
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status.reachable and status.address == on_cluster and status.cpus == 2.0


def test_a_training_through_the_job_manager_runs_on_a_node_and_is_written_here(
        on_cluster: str, tiny, tmp_path: Path) -> None:  # noqa: ANN001
    store = RunStore(tmp_path / "runs")
    jobs = JobManager(max_running=2)
    cfg = TrainConfig(data=TINY, epochs=2, batch_size=32)
    job = jobs.submit("train", cfg.title(), train_task(cfg, DataRegistry(loader=lambda c, p: tiny), store))
    snap = jobs.wait(job, timeout=300)
    assert snap.status is JobStatus.DONE, snap.error
    result = snap.result
    assert result.backend == "ray" and len(result.node) == 56  # a Ray node id
    assert [type(e) for e in snap.history].count(StepEvent) == 12
    assert sum(isinstance(e, EpochEvent) for e in snap.history) == 2
    info = store.get(result.run_id)
    assert info.status == "done" and info.has_best and info.summary["test_accuracy"] == result.test_accuracy
    assert (info.path / "predictions.pt").is_file()
    assert len(store.metrics(result.run_id)) >= 14, "every step and epoch row, written by the server"


def test_the_cli_trains_on_the_cluster_and_says_where(on_cluster: str, tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "vgg", "train", "--dataset", "synthetic", "--images-per-class", "20", "--epochs", "1",
         "--batch-size", "64", "--json", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300, env={**os.environ, cluster.ADDRESS_ENV: on_cluster})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["backend"] == "ray" and len(report["node"]) == 56 and report["status"] == "done"
    assert (tmp_path / "runs" / report["run_id"] / "best.pt").is_file()


def test_an_lr_range_test_and_an_evaluation_run_as_tasks_too(on_cluster: str, tiny, tmp_path: Path) -> None:  # noqa: ANN001
    """The LR range test's steps come back live; an evaluation's predictions are saved here. The
    same runs evaluated on the cluster and in this process agree."""
    from vgg.lr_finder import LRFinderConfig
    from vgg.tasks import evaluate_task, lr_find_task

    store = RunStore(tmp_path / "runs")
    jobs = JobManager(max_running=1)
    registry = DataRegistry(loader=lambda c, p: tiny)
    cfg = TrainConfig(data=TINY, batch_size=32)
    lr = jobs.wait(jobs.submit("lr_find", "LR", lr_find_task(cfg, LRFinderConfig(num_iter=12), registry, store)),
                   timeout=300)
    assert lr.status is JobStatus.DONE, lr.error
    assert len(lr.history) == len(lr.result.result.lrs) >= 5, "every iteration came back as it ran"
    trained = cluster.fit_on_cluster(TrainConfig(data=TINY, epochs=1, batch_size=64), store=store, splits=tiny)
    local = store.get(trained.run_id).summary["test_accuracy"]
    (store.get(trained.run_id).path / "predictions.pt").unlink()
    evaluation = jobs.wait(jobs.submit("evaluate", "evaluate", evaluate_task(trained.run_id, TINY, registry, store)),
                           timeout=300)
    assert evaluation.status is JobStatus.DONE, evaluation.error
    assert evaluation.result == pytest.approx(local) and store.get(trained.run_id).has_predictions


def test_without_a_cluster_the_cli_reports_the_local_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(cluster.ADDRESS_ENV, raising=False)
    out = subprocess.run(
        [sys.executable, "-m", "vgg", "train", "--dataset", "synthetic", "--images-per-class", "10", "--epochs", "1",
         "--json", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "data")],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["backend"] == "local" and report["node"] == cluster.LOCAL_NODE


def test_cancel_stops_the_task_within_two_seconds(on_cluster: str, tiny, tmp_path: Path) -> None:  # noqa: ANN001
    store = RunStore(tmp_path / "runs")
    cancel = threading.Event()
    arrivals: list[float] = []  # when each step's event reached the server
    outcome: dict = {}
    cfg = TrainConfig(data=TINY, epochs=200, batch_size=16)

    def on_event(event: object) -> None:
        if isinstance(event, StepEvent):
            arrivals.append(time.monotonic())

    def train() -> None:
        outcome["result"] = cluster.fit_on_cluster(cfg, store=store, splits=tiny, cancel=cancel, on_event=on_event)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 180
    while len(arrivals) < 5:
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.05)
    cancel.set()
    cancelled = time.monotonic()
    thread.join(timeout=120)
    result = outcome["result"]
    assert result.status == "cancelled" and result.steps < 200 * 12
    info = store.get(result.run_id)
    assert info.status == "cancelled"
    # the last step the worker ran reached the server (drained every DRAIN_S) within 2 s of the cancel
    assert arrivals[-1] - cancelled < 2.0 + cluster.DRAIN_S, arrivals[-1] - cancelled
    assert not worker_pids(), "the worker is free again"


def test_a_worker_killed_mid_run_leaves_an_interrupted_run_and_names_the_node(
        on_cluster: str, tiny, tmp_path: Path) -> None:  # noqa: ANN001
    store = RunStore(tmp_path / "runs")
    events: list = []
    outcome: dict = {}
    cfg = TrainConfig(data=TINY, epochs=200, batch_size=16)

    def train() -> None:
        try:
            cluster.fit_on_cluster(cfg, store=store, splits=tiny, on_event=events.append)
        except cluster.ClusterError as error:
            outcome["error"] = str(error)

    thread = threading.Thread(target=train)
    thread.start()
    deadline = time.monotonic() + 180
    while sum(isinstance(e, CheckpointEvent) for e in events) < 2:  # two epochs, a best checkpoint kept
        assert time.monotonic() < deadline and thread.is_alive(), outcome
        time.sleep(0.05)
    [pid] = worker_pids()
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=120)
    message = outcome["error"]
    node = next(e.message for e in events if getattr(e, "message", "").startswith("training on the cluster"))
    assert "was lost" in message and node.split("node ")[1].rstrip(")") in message, (message, node)
    [info] = store.list_runs()
    assert info.status == "interrupted" and info.message == message
    steps = sum(isinstance(e, StepEvent) for e in events)
    assert int((store.metrics(info.run_id)["kind"] == "step").sum()) == steps, "every metric received"
    assert store.load_checkpoint(info.run_id, "best")["meta"]["epoch"] >= 1, "its best checkpoint loads"


def test_an_unreachable_cluster_refuses_the_job_with_one_line(tiny, tmp_path: Path,  # noqa: ANN001
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cluster.stop_on_exit()  # a new connection, to nowhere
    monkeypatch.setenv(cluster.ADDRESS_ENV, f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(cluster.ClusterError) as caught:
        cluster.fit_on_cluster(TrainConfig(data=TINY, epochs=1), store=RunStore(tmp_path / "runs"), splits=tiny)
    text = str(caught.value)
    assert "\n" not in text and "cannot be reached" in text and "refused" in text
    assert time.monotonic() - started < 30
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
    status = cluster.cluster_status()
    assert status is not None and not status.reachable and status.problem


SERVER_SCRIPT = """
import sys
from pathlib import Path
from vgg import cluster
from vgg.data import DataConfig, load_data
from vgg.runs import RunStore
from vgg.train import TrainConfig
data = DataConfig(source="synthetic", input_size=32, images_per_class=20)
cluster.fit_on_cluster(TrainConfig(data=data, epochs=500, batch_size=16), store=RunStore(Path(sys.argv[1])),
                       splits=load_data(data), on_event=lambda e: print(type(e).__name__, flush=True))
"""


def test_a_server_that_dies_leaves_its_cluster_runs_interrupted_and_untouched(on_cluster: str,
                                                                               tmp_path: Path) -> None:
    """The process that receives a run's events is killed mid-run (a server restart): its run reads
    as interrupted, and nothing writes into the folder afterwards although the cluster lives on."""
    runs = tmp_path / "runs"
    server = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT, str(runs)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, cluster.ADDRESS_ENV: on_cluster})
    try:
        for line in server.stdout:  # wait for a few epochs' worth of events
            if line.startswith("EpochEvent"):
                break
        else:
            pytest.fail(f"the training never reached an epoch (exit {server.wait()})")
    finally:
        server.kill()
        server.wait()
    [folder] = [p for p in runs.iterdir() if p.is_dir()]
    store = RunStore(runs)
    info = store.get(folder.name)
    assert info.status == "interrupted" and info.has_best
    before = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    deadline = time.monotonic() + 60
    while worker_pids():  # the dead server's task is ended by Ray (its owner is gone)
        assert time.monotonic() < deadline, "the task of a dead server kept running"
        time.sleep(0.5)
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == before, "nothing wrote afterwards"
