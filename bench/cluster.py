"""Trainings on a Ray cluster (vgg.cluster) against the server's own queue, on this machine.

1. **Two trainings, wall time for both:** through the single-process queue (one after the other,
   each with every core) and on a local two-node Ray cluster (``ray start``: a head and one more
   node, 1 CPU each; the two at once, one per node). On one 2-core machine this shows Ray's
   overhead, not a speed-up: the two nodes share the same two cores.
2. **The per-step cost of reporting through Ray:** the time a worker spends sending one step's event
   to the server's inbox (the only thing a step does beyond training), against the time of a
   training step at 32 px, batch 128.

Data: the real CIFAR-10 in ../shared/data/cifar10 where present (``--per-class`` images per class),
else the synthetic set. The figures are printed last.

    .venv/bin/python bench/cluster.py
    .venv/bin/python bench/cluster.py --per-class 300 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_trainings(cfg, splits, store, max_running: int) -> float:  # noqa: ANN001
    """Wall time of two trainings submitted at once to a job manager with ``max_running`` slots."""
    from vgg.jobs import JobManager, JobStatus
    from vgg.tasks import DataRegistry, train_task

    jobs = JobManager(max_running=max_running)
    registry = DataRegistry(loader=lambda c, p: splits)
    start = time.perf_counter()
    ids = [jobs.submit("train", f"training {i}", train_task(cfg, registry, store)) for i in range(2)]
    for job in ids:
        snap = jobs.wait(job, timeout=3600)
        assert snap.status is JobStatus.DONE, snap.error
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--puts", type=int, default=300, help="step events sent to time one send")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    os.environ["VGG_RUNS_DIR"] = str(work / "runs")
    from vgg import cluster
    from vgg.data import DataConfig, load_data
    from vgg.events import StepEvent
    from vgg.runs import RunStore
    from vgg.train import TrainConfig

    if CIFAR.is_dir():
        data = DataConfig(source=str(CIFAR), data_dir=CIFAR.parent, input_size=32, images_per_class=args.per_class,
                          cache_dir=work / "cache")
    else:
        data = DataConfig(source="synthetic", input_size=32, images_per_class=args.per_class)
    splits = load_data(data)
    cfg = TrainConfig(data=data, epochs=args.epochs, batch_size=128)
    store = RunStore(work / "runs")
    print(f"data: {splits.source_name}, {len(splits.train)} training images; {args.epochs} epoch(s), batch 128")

    local = two_trainings(cfg, splits, store, max_running=1)
    print(f"single-process queue: {local:.1f} s", flush=True)
    step_seconds = statistics.median(128 / e.images_per_second for e in _steps(store))

    ray_bin = str(Path(sys.executable).with_name("ray"))
    port = free_port()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--num-cpus=1", "--disable-usage-stats"]
    subprocess.run([ray_bin, "start", "--head", f"--port={port}", "--include-dashboard=false",
                    f"--temp-dir={work / 'ray'}", *common], check=True, env=env, capture_output=True)
    try:
        subprocess.run([ray_bin, "start", f"--address=127.0.0.1:{port}", *common], check=True, env=env,
                       capture_output=True)
        os.environ[cluster.ADDRESS_ENV] = f"127.0.0.1:{port}"
        ray = cluster.connect()
        while len([n for n in ray.nodes() if n.get("Alive")]) < 2:
            time.sleep(0.2)
        on_ray = two_trainings(cfg, splits, store, max_running=2)
        print(f"two-node Ray cluster: {on_ray:.1f} s", flush=True)

        _, inbox_class = cluster._remotes(ray)
        inbox = inbox_class.remote()
        event = StepEvent(1, 1, 2.3, 0.1, 3e-4, 500.0, 128, 1.0, 0.01)
        ray.get(inbox.put.remote(event))
        sends = []
        for _ in range(args.puts):
            start = time.perf_counter()
            inbox.put.remote(event)  # as the worker sends: without waiting for the answer
            sends.append(time.perf_counter() - start)
        ray.get(inbox.take.remote())
    finally:
        cluster.stop_on_exit()
        subprocess.run([ray_bin, "stop", "--force"], env=env, capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    send = statistics.median(sends)
    print(f"Two trainings ({len(splits.train)} images, {args.epochs} epoch(s) each), wall time for both:")
    print(f"  single-process queue {local:.1f} s · two-node Ray cluster on the same 2 cores {on_ray:.1f} s "
          f"({on_ray / local:.2f}×)")
    print(f"Reporting a step through Ray: {send * 1e3:.2f} ms per step event against a {step_seconds * 1e3:.0f} ms "
          f"step at 32 px, batch 128: {100 * send / step_seconds:.2f} % of a step")


def _steps(store):  # noqa: ANN001, ANN202
    """The step rows of the store's runs as StepEvent-like objects (images per second only)."""
    from types import SimpleNamespace

    for info in store.list_runs():
        frame = store.metrics(info.run_id)
        for value in frame.loc[frame["kind"] == "step", "images_per_second"]:
            if value and value > 0:
                yield SimpleNamespace(images_per_second=float(value))


if __name__ == "__main__":
    main()
