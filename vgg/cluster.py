"""Jobs on a Ray cluster: trainings, LR range tests and evaluations as Ray tasks when
``VGG_RAY_ADDRESS`` is set.

Without the variable nothing here runs: jobs train in the server's process (``vgg.train.fit``).
With it (``auto``, ``host:6379`` or ``ray://host:10001``), ``fit_on_cluster``,
``find_lr_on_cluster`` and ``evaluate_on_cluster`` take the place of ``fit``, ``find_lr_for`` and
``evaluate_run`` and keep their interface:

- **The data** go to the workers through Ray's object store: the server decoded them once
  (``vgg.tasks.DataRegistry``) and puts each data set there once (``ray.put``); a lab PC needs only
  the Python environment, no data dir and no runs dir.
- **The events come back through an inbox actor** (``_Inbox``) that lives on the server's node: the
  worker sends every event (steps, epochs, checkpoints with their tensors, the test predictions)
  without waiting for an answer, and the server drains the inbox four times a second into the same
  listeners as a local run (``vgg.runs.RunRecorder`` writes the run folder, the job publishes its
  snapshot). An actor rather than a ``ray.util.queue.Queue``: a queue is an actor too, but its
  ``put`` waits for the answer; rather than object refs: a ref per event would have to be tracked
  and freed by hand. The server alone writes the run folder: a worker that dies, or a server that
  restarts, cannot leave a folder written by two writers.
- **Cancel** is cooperative, as locally: the server tells the inbox, a thread on the worker asks it
  every ``CANCEL_POLL_S`` and sets the training's cancel event, which stops it at the next step and
  keeps its best checkpoint. If the worker has not ended ``FORCE_AFTER_S`` later it is killed.
- **Faults:** a worker or node that dies leaves the run "interrupted" with every metric and
  checkpoint received, and the job fails naming the node. A server that restarts marks its running
  runs interrupted (``vgg.runs``: their writer's process is gone); the inbox died with it, so nothing
  reaches their folders afterwards. A cluster that cannot be reached refuses new jobs with one line
  (``ClusterError``); the sidebar says so (``cluster_status``).
- **Resources** per task: ``num_cpus`` from the run's cost (``cpus_for``), ``num_gpus=1`` where the
  run asks for CUDA.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vgg.data import DataSplits
from vgg.errors import VGGError, one_line
from vgg.events import DoneEvent, StartEvent, StatusEvent, TrainResult
from vgg.runs import RunRecorder, RunStore
from vgg.train import TrainConfig, fit

ADDRESS_ENV = "VGG_RAY_ADDRESS"
NAMESPACE = "vgg-classroom"
DRAIN_S = 0.25  # how often the server empties the inbox
CANCEL_POLL_S = 0.5  # how often a worker asks whether its job was cancelled
FORCE_AFTER_S = 10.0  # a cancelled task still running after this is killed
PROBE_TIMEOUT_S = 3.0  # a cluster address that accepts no connection within this is unreachable
LOCAL_NODE = platform.node() or "this machine"  # the "node" of a job run in the server's process

_lock = threading.Lock()
_data_refs: dict[int, tuple[DataSplits, Any]] = {}  # id(splits) → (splits, its object ref)


class ClusterError(VGGError):
    """The Ray cluster cannot be reached, or lost the worker of a job."""


def ray_address() -> str | None:
    """``$VGG_RAY_ADDRESS``, or None: jobs run in this process."""
    return os.environ.get(ADDRESS_ENV, "").strip() or None


def connect() -> Any:
    """``ray`` connected to the cluster (once per process); ``ClusterError`` with one line if it cannot be."""
    address = ray_address()
    if address is None:
        raise ClusterError(f"{ADDRESS_ENV} is not set")
    try:
        import ray
    except ImportError:
        raise ClusterError(f"{ADDRESS_ENV} is set but the ray package is not installed here: "
                           "pip install 'ray>=2.52,<3' (README: Many classes, many machines)") from None

    with _lock:
        if not ray.is_initialized():
            _probe(address)
            try:
                ray.init(address=address, namespace=NAMESPACE, log_to_driver=False, logging_level="ERROR")
            except Exception as error:  # noqa: BLE001 — ConnectionError, RuntimeError, auth: one line for all
                raise _unreachable(address, error) from None
    return ray


def _probe(address: str) -> None:
    """A host:port address (plain or ``ray://``) that answers no TCP connection within
    ``PROBE_TIMEOUT_S`` is refused at once: ``ray.init`` would wait minutes for it."""
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():  # "auto" and other forms: ray.init says it
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as error:
        raise _unreachable(address, error) from None


def _unreachable(address: str, error: BaseException) -> ClusterError:
    return ClusterError(f"the Ray cluster at {address} cannot be reached ({one_line(error)}); "
                        "new jobs are refused until it is back")


@dataclass(frozen=True)
class ClusterStatus:
    """What the sidebar says: reachable or not, and what the cluster has."""

    address: str
    reachable: bool
    nodes: int = 0
    cpus: float = 0.0
    gpus: float = 0.0
    problem: str = ""


def cluster_status() -> ClusterStatus | None:
    """None without ``VGG_RAY_ADDRESS``; else the cluster's alive nodes and resources, or why not."""
    address = ray_address()
    if address is None:
        return None
    try:
        ray = connect()
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        total = ray.cluster_resources()
    except Exception as error:  # noqa: BLE001 — a cluster gone away mid-session: one line
        return ClusterStatus(address, False, problem=one_line(error))
    return ClusterStatus(address, True, len(nodes), float(total.get("CPU", 0)), float(total.get("GPU", 0)))


def cpus_for(cfg: TrainConfig) -> float:
    """CPUs a task of ``cfg`` asks Ray for: its torch threads, one per 64 px of input side, 1 to 4."""
    if cfg.device == "cuda":
        return 1.0
    return float(min(4, max(1, cfg.model_input_size // 64)))


def _put_data(ray: Any, splits: DataSplits) -> Any:
    """The object ref of ``splits``, put into the object store once per data set of this process."""
    with _lock:
        held = _data_refs.get(id(splits))
        if held is not None and held[0] is splits:
            return held[1]
    ref = ray.put(splits)
    with _lock:
        _data_refs[id(splits)] = (splits, ref)
        while len(_data_refs) > 4:
            _data_refs.pop(next(iter(_data_refs)))
    return ref


# ------------------------------------------------------------------------------ the worker side


class _Inbox:
    """Events from one task to the server, and the server's cancel to the task (a Ray actor)."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self.cancelled = False

    def put(self, item: Any) -> None:
        self.items.append(item)

    def take(self) -> list[Any]:
        items, self.items = self.items, []
        return items

    def cancel(self) -> None:
        self.cancelled = True

    def is_cancelled(self) -> bool:
        return self.cancelled


def _start_run_folder(start: dict[str, Any] | None) -> Path | None:
    """On the worker: a runs dir holding the run a fine-tuning starts from, as the server sent it."""
    if start is None:
        return None
    import torch

    root = Path(tempfile.mkdtemp(prefix="vgg-start-"))
    folder = root / start["run_id"]
    folder.mkdir()
    for name, data in start["files"].items():
        (folder / name).write_bytes(data)
    torch.save(start["checkpoint"], folder / "best.pt")
    return root


def _on_worker(kind: str, cfg: TrainConfig | None, splits: DataSplits, inbox: Any, owner: str | None,
               start: dict[str, Any] | None, extra: Any) -> tuple[Any, str]:
    """The task's body on a worker: the training (or range test) with its events sent to ``inbox``."""
    import ray

    from vgg.settings import flush_denormals

    flush_denormals()
    node = ray.get_runtime_context().get_node_id()
    inbox.put.remote(("node", node))
    cancel = threading.Event()
    finished = threading.Event()

    def watch() -> None:
        while not finished.wait(CANCEL_POLL_S):
            try:
                if ray.get(inbox.is_cancelled.remote(), timeout=5):
                    cancel.set()
                    return
            except Exception:  # noqa: BLE001 — the server is gone: stop training for nobody
                cancel.set()
                return

    threading.Thread(target=watch, daemon=True, name="vgg-cancel-watch").start()
    runs_root = _start_run_folder(start)
    try:
        if kind == "train":
            result: Any = fit(cfg, splits=splits, on_event=inbox.put.remote, cancel=cancel, owner=owner,
                              runs_root=runs_root)
        elif kind == "evaluate":
            from vgg.evaluate import evaluate_loaded

            loaded, precision = extra
            result = evaluate_loaded(loaded, splits.test, precision=precision, cancel=cancel)
        else:
            from vgg.lr_finder import find_lr_for

            result = find_lr_for(cfg, extra, splits=splits, on_step=inbox.put.remote, on_event=inbox.put.remote,
                                 cancel=cancel, runs_root=runs_root)
    finally:
        finished.set()
        if runs_root is not None:
            shutil.rmtree(runs_root, ignore_errors=True)
    ray.get(inbox.put.remote(("end", node)))  # every event above has reached the inbox (one caller: in order)
    return result, node


_remote: dict[str, Any] = {}


def _remotes(ray: Any) -> tuple[Any, Any]:
    """The task and the actor class, made remote once per process."""
    with _lock:
        if not _remote:
            _remote["task"] = ray.remote(max_retries=0)(_on_worker)
            _remote["inbox"] = ray.remote(num_cpus=0)(_Inbox)
    return _remote["task"], _remote["inbox"]


# ------------------------------------------------------------------------------ the server side


def _start_payload(cfg: TrainConfig, store: RunStore) -> dict[str, Any] | None:
    """What a worker needs of the run ``cfg`` starts from: its small files and its best checkpoint in
    full (the server's copy may refer to other runs or to ImageNet's file for its frozen tensors)."""
    if not cfg.init.startswith("run:"):
        return None
    run_id = cfg.init.removeprefix("run:")
    info = store.get(run_id)
    files = {p.name: p.read_bytes() for p in info.path.iterdir()
             if p.is_file() and p.suffix in (".json", ".csv", ".jsonl")}
    return {"run_id": run_id, "files": files, "checkpoint": store.load_checkpoint(run_id, "best")}


def _lost(error: BaseException, node: str | None) -> str:
    where = f"node {node}" if node else "its node"
    return f"the Ray worker on {where} was lost ({one_line(error)})"


def _run(kind: str, cfg: TrainConfig | None, splits: DataSplits, deliver: Callable[[Any, str | None], None],
         cancel: threading.Event | None, owner: str | None, store: RunStore, extra: Any,
         on_lost: Callable[[str], None]) -> tuple[Any, str]:
    """Submit one task and pump its events into ``deliver(event, node)`` until it ends; (result, node)."""
    ray = connect()
    task, inbox_class = _remotes(ray)
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = ray.get_runtime_context().get_node_id()
    inbox = inbox_class.options(scheduling_strategy=NodeAffinitySchedulingStrategy(here, soft=True)).remote()
    resources = {"num_cpus": cpus_for(cfg), "num_gpus": 1 if cfg.device == "cuda" else 0} if cfg else {"num_cpus": 1}
    ref = task.options(**resources).remote(kind, cfg, _put_data(ray, splits), inbox, owner,
                                           _start_payload(cfg, store) if cfg else None, extra)
    node: str | None = None
    cancelled_at: float | None = None

    def drain() -> None:
        nonlocal node
        for item in ray.get(inbox.take.remote()):
            if isinstance(item, tuple) and len(item) == 2 and item[0] in ("node", "end"):
                node = item[1]
            else:
                deliver(item, node)

    try:
        while True:
            done, _ = ray.wait([ref], timeout=DRAIN_S)
            drain()
            if done:
                result, node = ray.get(ref)
                drain()
                return result, node
            if cancel is not None and cancel.is_set():
                if cancelled_at is None:
                    cancelled_at = time.monotonic()
                    inbox.cancel.remote()
                elif time.monotonic() - cancelled_at > FORCE_AFTER_S:
                    ray.cancel(ref, force=True)
    except ClusterError:
        raise
    except Exception as error:  # noqa: BLE001 — worker or node died, actor lost, cluster gone
        message = _lost(error, node)
        on_lost(message)
        raise ClusterError(message) from None


def fit_on_cluster(cfg: TrainConfig, *, store: RunStore, splits: DataSplits,
                   on_event: Callable[[Any], None] | None = None, cancel: threading.Event | None = None,
                   owner: str | None = None) -> TrainResult:
    """``vgg.train.fit`` as a Ray task: the run folder is written here from the events it sends."""
    store.check_quota()
    recorder = RunRecorder(store)

    def deliver(event: Any, node: str | None) -> None:
        if isinstance(event, DoneEvent):  # the worker knew neither the run's id nor where it ran
            event = DoneEvent(replace(event.result, run_id=recorder.run_id, backend="ray", node=node or ""))
        recorder(event)
        if on_event is None:
            return
        on_event(event)
        if isinstance(event, StartEvent) and recorder.run_id:
            on_event(StatusEvent(f"training on the cluster (node {node})", 0.0, run_id=recorder.run_id))

    def on_lost(message: str) -> None:
        if recorder.writer is not None:
            recorder.writer.set_status("interrupted", message)
            recorder.writer.close()

    result, node = _run("train", cfg, splits, deliver, cancel, owner, store, None, on_lost)
    return replace(result, run_id=recorder.run_id, backend="ray", node=node)


def find_lr_on_cluster(cfg: TrainConfig, lr_cfg: Any, *, store: RunStore, splits: DataSplits,
                       on_step: Callable[[Any], None] | None = None,
                       on_event: Callable[[Any], None] | None = None,
                       cancel: threading.Event | None = None) -> Any:
    """``vgg.lr_finder.find_lr_for`` as a Ray task; steps and status lines come back as it runs."""
    from vgg.lr_finder import LRFinderStep

    def deliver(item: Any, node: str | None) -> None:
        if isinstance(item, LRFinderStep):
            if on_step is not None:
                on_step(item)
        elif on_event is not None and isinstance(item, StatusEvent):
            on_event(item)

    result, _ = _run("lr_find", cfg, splits, deliver, cancel, None, store, lr_cfg, lambda message: None)
    return result


def evaluate_on_cluster(store: RunStore, run_id: str, splits: DataSplits, *,
                        cancel: threading.Event | None = None) -> Any:
    """``vgg.evaluate.evaluate_run`` as a Ray task: the server loads the run's model (its checkpoint may
    refer to files only the server has) and saves the predictions the worker computes."""
    from vgg.errors import CheckpointError
    from vgg.inference import load_model

    loaded = load_model(run_id, store=store)
    if tuple(splits.classes) != loaded.classes:
        raise CheckpointError(f"run {run_id} was trained on classes {', '.join(loaded.classes[:4])}… but the "
                              f"data set has {', '.join(splits.classes[:4])}…; it cannot be evaluated on it")
    precision = str(store.get(run_id).config.get("precision", "auto"))
    predictions = evaluate_loaded_on_cluster(loaded, splits, precision=precision, store=store, cancel=cancel)
    if cancel is not None and cancel.is_set():
        raise CheckpointError(f"the evaluation of run {run_id} was stopped; nothing was saved")
    store.save_predictions(run_id, predictions)
    return predictions


def evaluate_loaded_on_cluster(loaded: Any, splits: DataSplits, *, precision: str, store: RunStore,
                               cancel: threading.Event | None = None) -> Any:
    """``vgg.evaluate.evaluate_loaded`` of ``splits.test`` as a Ray task (the model travels with it)."""
    predictions, _ = _run("evaluate", None, splits, lambda item, node: None, cancel, None, store,
                          (loaded, precision), lambda message: None)
    return predictions


def stop_on_exit() -> None:
    """Leave the cluster (the CLI's last step; the app's process leaves when it ends)."""
    try:
        import ray

        if ray.is_initialized():
            ray.shutdown()
    except ImportError:
        pass


