"""``python -m vgg``: the command line over the same engine and run folders as the app.

Subcommands: ``summary``, ``lr-find``, ``train``, ``evaluate RUN``, ``predict RUN_OR_CHECKPOINT
IMAGE...`` and ``runs``. ``python -m vgg <command> --help`` lists each one's options.

The library never prints; this module owns all output. Progress goes to stderr as a one-line
text bar; results go to stdout, as text or (``--json``) as exactly one JSON object. Every error
a user can cause ends as one line ``error: <message>`` on stderr: exit 2 for a malformed command
line (as argparse), 1 for anything else, 130 after Ctrl-C (a training is cancelled cleanly and its
run folder kept). Set ``VGG_DEBUG=1`` to see tracebacks instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
import threading
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TextIO, TypeVar

from vgg.errors import CheckpointError, ConfigError, VGGError

if TYPE_CHECKING:  # the heavy imports (torch) happen inside the commands, so --help is quick
    from vgg.data import DataConfig, DataSplits
    from vgg.runs import RunInfo, RunStore
    from vgg.train import TrainConfig

T = TypeVar("T")

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
TOP_K = 5  # predict shows the five most likely classes, as the notebook
DEFAULT_LR = 3e-4  # TrainConfig.lr, spelled out so that --help needs no torch (a test checks they agree)
EXAMPLES = """examples:
  python -m vgg summary --config D --batch-norm
  python -m vgg lr-find --dataset cifar10 --num-iter 100
  python -m vgg train --dataset cifar10 --epochs 3 --lr 5e-4
  python -m vgg runs
  python -m vgg evaluate <run id>
  python -m vgg predict <run id> photo.jpg

'python -m vgg COMMAND --help' lists a command's options; add --json for one JSON object on stdout."""


# ============================================================================================
# Output helpers


class ProgressBar:
    """A one-line text progress bar on a stream (stderr): ``[#####·····]  45%  0:12 < 0:15  text``.

    On a terminal the line is redrawn in place (at most every ``interval`` seconds); on a pipe or
    a log file a plain line is written at most every ``log_interval`` seconds instead. Disabled,
    it writes nothing at all.
    """

    def __init__(self, stream: TextIO, *, enabled: bool = True, width: int = 24, interval: float = 0.1,
                 log_interval: float = 5.0) -> None:
        self.stream = stream
        self.enabled = enabled
        self.width = width
        self.tty = _isatty(stream)
        self.interval = interval if self.tty else log_interval
        self.started = time.monotonic()
        self._last_draw = -math.inf
        self._drawn = 0  # length of the line currently on screen (tty only)
        self._lock = threading.Lock()

    def restart(self) -> None:
        """Measure elapsed time and the time left from now on."""
        self.started = time.monotonic()

    def update(self, fraction: float | None, text: str = "", *, force: bool = False) -> None:
        """Show ``fraction`` (0..1, or None when unknown) done, with a short status ``text``."""
        if not self.enabled:
            return
        now = time.monotonic()
        with self._lock:
            if not force and now - self._last_draw < self.interval:
                return
            self._last_draw = now
            self._draw(self._render(fraction, text, now))

    def message(self, text: str) -> None:
        """A permanent line (e.g. an epoch's summary) above the bar."""
        if not self.enabled:
            return
        with self._lock:
            self._clear()
            self.stream.write(text + "\n")
            self.stream.flush()
            self._last_draw = -math.inf  # redraw the bar on the next update

    def close(self) -> None:
        """End the bar's line so that whatever follows starts on a fresh one."""
        if not self.enabled:
            return
        with self._lock:
            self._clear()

    def _render(self, fraction: float | None, text: str, now: float) -> str:
        elapsed = now - self.started
        if fraction is None or not math.isfinite(fraction):
            return f"[{'·' * self.width}]       {_clock(elapsed)}  {text}".rstrip()
        fraction = min(max(fraction, 0.0), 1.0)
        filled = int(round(fraction * self.width))
        left = ""
        if 0.01 < fraction < 1.0:
            left = f" < {_clock(elapsed * (1.0 - fraction) / fraction)}"
        bar = "#" * filled + "·" * (self.width - filled)
        return f"[{bar}] {fraction:>4.0%}  {_clock(elapsed)}{left}  {text}".rstrip()

    def _draw(self, line: str) -> None:
        if self.tty:
            columns = _terminal_columns(self.stream)
            line = line[: columns - 1]
            self.stream.write("\r" + line + " " * max(0, self._drawn - len(line)))
            self._drawn = len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r" + " " * self._drawn + "\r")
            self.stream.flush()
            self._drawn = 0


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def _terminal_columns(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 100


def _clock(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


def jsonable(value: Any) -> Any:
    """``value`` with NumPy/torch scalars turned into Python numbers, paths into strings, tuples into
    lists and NaN/inf into None, so that ``json.dumps`` writes strict JSON."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    item = getattr(value, "item", None)  # numpy / torch scalars
    if callable(item):
        try:
            return jsonable(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    tolist = getattr(value, "tolist", None)  # numpy arrays, tensors
    if callable(tolist):
        return jsonable(tolist())
    if value.__class__.__name__ in ("NAType", "NaTType"):  # pandas' missing values
        return None
    return str(value)


def _print_json(obj: Mapping[str, Any], stream: TextIO) -> None:
    stream.write(json.dumps(jsonable(obj), indent=2, ensure_ascii=False, allow_nan=False) + "\n")
    stream.flush()


def _percent(value: float | None) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.1%}"


def _number(value: float | None, fmt: str = ".4f") -> str:
    return "–" if value is None or not math.isfinite(value) else format(value, fmt)


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _describe_exception(exc: BaseException) -> str:
    """The one line shown for an error: a VGGError's own text, else ``Type: message``."""
    if isinstance(exc, VGGError):
        return _one_line(str(exc)) or exc.__class__.__name__
    if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
        return "out of memory; choose a smaller batch size or input size"
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename}" if exc.filename else ""
        return f"{exc.strerror}{where}"
    text = _one_line(str(exc))
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


# ============================================================================================
# Command line


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <message> (see '<prog> --help')`` and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {_one_line(message)} (see '{self.prog} --help')\n")


def _images_per_class(value: str) -> int | None:
    """``all`` → None (every image); otherwise a whole number (its range is the data config's)."""
    if value.strip().lower() == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"images per class must be a whole number or 'all', got {value!r}")


def _add_dirs(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    if data:
        p.add_argument("--data-dir", metavar="DIR",
                       help="data directory (default $VGG_DATA_DIR or ./data)")
    p.add_argument("--runs-dir", metavar="DIR", help="runs directory (default $VGG_RUNS_DIR or ./runs)")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout at the end (no progress bar)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=os.environ.get("VGG_DEVICE", "auto"),
                   help="auto (cuda, mps, cpu), cpu, cuda or mps (default $VGG_DEVICE or auto)")


def _add_model_and_data(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``lr-find``: the model, where it starts, the data, the step."""
    p.add_argument("--config", default="A", metavar="{A,A-LRN,B,C,D,E}",
                   help="VGG configuration of the paper's Table 1 (default A = VGG11)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=True,
                   help="batch norm after every convolution (default on: VGG11-BN is the lesson's model)")
    p.add_argument("--init", default="scratch", metavar="{scratch,imagenet,RUN,FILE.pth}",
                   help="start from random weights, ImageNet weights, an earlier run's best checkpoint "
                        "(its id) or a state-dict file inside the data or runs dir (default scratch)")
    p.add_argument("--freeze", default="none", choices=("none", "features", "all_but_last"),
                   help="what not to train when starting from pretrained weights (default none)")
    p.add_argument("--dataset", default="synthetic", metavar="{cifar10,synthetic,PATH}",
                   help="cifar10, the built-in synthetic shapes, or an image folder inside the data dir "
                        "(default synthetic)")
    p.add_argument("--input-size", type=int, default=32, metavar="PIXELS",
                   help="side of the square images the network sees, 32 to 512 (default 32)")
    p.add_argument("--images-per-class", type=_images_per_class, default=500, metavar="N",
                   help="training images per class for a short run, or 'all' (default 500)")
    p.add_argument("--val-fraction", type=float, default=0.1, metavar="F",
                   help="share of the training images held out for validation (default 0.1)")
    p.add_argument("--batch-size", type=int, default=128, help="images per step (default 128)")
    p.add_argument("--lr", type=float, default=DEFAULT_LR,
                   help=f"(peak) learning rate of the classifier (default {DEFAULT_LR:g})")
    p.add_argument("--lr-ratio", type=float, default=None, metavar="R",
                   help="features learn at lr × R (default 0.1 from pretrained weights, 1 from scratch)")
    p.add_argument("--optimizer", default="adam", choices=("adam", "sgd"), help="default adam")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                   help="rotation ±5°, horizontal flips, random crops (default on)")
    p.add_argument("--seed", type=int, default=0, help="seed of initialisation, splits and batches (default 0)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                   help="bf16 autocast where it pays (auto), or force one (default auto)")
    _add_device(p)
    _add_dirs(p)
    _add_json(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m vgg`` argument parser with its six subcommands."""
    parser = _Parser(prog="python -m vgg", formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="VGG classroom on the command line: the same engine and run folders as the app.",
                     epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("summary", help="layer table of a VGG configuration",
                       description="The layer table of one configuration: shapes, parameters, multiply-adds.")
    p.add_argument("--config", required=True, metavar="{A,A-LRN,B,C,D,E}",
                   help="configuration of the paper's Table 1")
    p.add_argument("--batch-norm", action="store_true", help="with batch norm (torchvision's *_bn)")
    p.add_argument("--input-size", type=int, default=224, metavar="PIXELS", help="32 to 512 (default 224)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the last layer (default 1000)")
    _add_json(p)

    p = sub.add_parser("lr-find", help="learning-rate range test",
                       description="The LR range test (Smith 2015) on the model and data a training would use.")
    _add_model_and_data(p)
    p.add_argument("--start-lr", type=float, default=1e-7, help="lr of the first batch (default 1e-7)")
    p.add_argument("--end-lr", type=float, default=10.0, help="lr of the last batch (default 10)")
    p.add_argument("--num-iter", type=int, default=100, help="batches (default 100)")
    p.add_argument("--smooth-f", type=float, default=0.05, help="loss smoothing factor (default 0.05)")
    p.add_argument("--diverge-th", type=float, default=5.0,
                   help="stop once the smoothed loss exceeds this × the best (default 5)")
    p.add_argument("--skip-start", type=int, default=10, help="points ignored at the start (default 10)")
    p.add_argument("--skip-end", type=int, default=5, help="points ignored at the end (default 5)")

    p = sub.add_parser("train", help="train from scratch or fine-tune; writes a run folder",
                       description="Train a VGG and write a run folder (the app's Compare and Evaluate "
                                   "pages show it too). Ctrl-C stops the run cleanly.")
    _add_model_and_data(p)
    p.add_argument("--epochs", type=int, default=2, help="passes over the training images (default 2)")
    p.add_argument("--schedule", default="onecycle", choices=("onecycle", "constant"),
                   help="one-cycle with --lr as the peak, or a constant lr (default onecycle)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop after this many seconds; the schedule fits into them")

    p = sub.add_parser("evaluate", help="test loss, accuracy and per-class accuracy of a run",
                       description="Test-set loss, accuracy and per-class accuracy of a run; computed "
                                   "from its checkpoint when the run has no saved predictions.")
    p.add_argument("run", metavar="RUN", help="run id (see 'python -m vgg runs')")
    p.add_argument("--checkpoint", default="best", choices=("best", "last"),
                   help="which checkpoint (default best; 'last' is always recomputed)")
    p.add_argument("--recompute", action="store_true",
                   help="evaluate the checkpoint on the test set even when predictions are saved")
    _add_device(p)
    _add_dirs(p)
    _add_json(p)

    p = sub.add_parser("predict", help="top-5 classes of image files",
                       description="Classify image files with a run's best checkpoint or a checkpoint file.")
    p.add_argument("source", metavar="RUN_OR_CHECKPOINT",
                   help="a run id, or the path of a run checkpoint (e.g. runs/<id>/best.pt)")
    p.add_argument("images", metavar="IMAGE", nargs="+", help="image files (JPEG, PNG, WebP, ...)")
    _add_device(p)
    _add_dirs(p)
    _add_json(p)

    p = sub.add_parser("runs", help="list the training runs", description="The runs in the runs directory.")
    _add_dirs(p, data=False)
    _add_json(p)
    return parser


# ============================================================================================
# Shared plumbing


@dataclass(frozen=True)
class Dirs:
    """The data and runs directories of this invocation (options first, then the environment)."""

    data: Path
    runs: Path


def _dirs(args: argparse.Namespace) -> Dirs:
    """Resolve ``--data-dir`` / ``--runs-dir``; they also become ``$VGG_DATA_DIR`` / ``$VGG_RUNS_DIR``
    of this process, so every part of the engine sees the same folders."""
    from vgg import settings

    if getattr(args, "data_dir", None):
        os.environ["VGG_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    if getattr(args, "runs_dir", None):
        os.environ["VGG_RUNS_DIR"] = str(Path(args.runs_dir).expanduser().resolve())
    return Dirs(settings.data_dir(), settings.runs_dir())


def _store(dirs: Dirs) -> RunStore:
    from vgg.runs import RunStore

    return RunStore(dirs.runs)


class _Cancelled(Exception):
    """Raised inside the worker when Ctrl-C arrives before a run folder exists."""


class Interrupted(Exception):
    """Ctrl-C: the work was cancelled; ``result`` is what it returned (None if it never did)."""

    def __init__(self, result: Any = None) -> None:
        super().__init__("interrupted")
        self.result = result


def run_cancellable(work: Callable[[], T], cancel: threading.Event, err: TextIO) -> T:
    """Run ``work`` in a worker thread; Ctrl-C sets ``cancel`` and waits for the work to wind down.

    The engine checks ``cancel`` between batches (a training stops within seconds and keeps its
    run folder), so the main thread only waits. A second Ctrl-C ends the process at once. Raises
    ``Interrupted`` after a Ctrl-C; re-raises the work's own exception otherwise.
    """
    box: dict[str, Any] = {}
    finished = threading.Event()

    def target() -> None:
        try:
            box["result"] = work()
        except BaseException as exc:  # handed to the main thread below
            box["error"] = exc
        finally:
            finished.set()

    # Wait on an Event, not Thread.join: on Python 3.11 a Ctrl-C that lands inside join() can
    # leave the thread marked as stopped while it still runs.
    threading.Thread(target=target, name="vgg-cli-worker", daemon=True).start()
    try:
        while not finished.wait(0.2):
            pass
    except KeyboardInterrupt:
        cancel.set()
        err.write("\ncancelling (Ctrl-C again to quit at once)…\n")
        err.flush()
        try:
            while not finished.wait(0.2):
                pass
        except KeyboardInterrupt:  # the second Ctrl-C: leave now, the worker cannot be stopped
            err.write("interrupted: quitting at once (a run in progress will be listed as interrupted)\n")
            err.flush()
            os._exit(EXIT_INTERRUPTED)
        error = box.get("error")
        if error is not None and not isinstance(error, _Cancelled):
            raise error
        raise Interrupted(box.get("result")) from None
    if "error" in box:
        if isinstance(box["error"], _Cancelled):
            raise Interrupted(None)
        raise box["error"]
    return box["result"]


def _resolve_source(value: str, data_dir: Path) -> str:
    """The ``--dataset`` value for ``DataConfig``: built-in names unchanged; a folder given relative
    to the current directory becomes absolute (DataConfig then checks it lies in the data dir)."""
    from vgg.data import BUILTIN_SOURCES

    if value in BUILTIN_SOURCES:
        return value
    path = Path(value).expanduser()
    if not path.is_absolute() and not (data_dir / path).exists() and path.exists():
        return str(path.resolve())
    return value


def _resolve_init(value: str, dirs: Dirs) -> str:
    """``--init``: scratch | imagenet | a run id (→ ``run:<id>``) | a ``.pth``/``.pt`` file, which must
    lie inside the data or runs directory (untrusted files are read from there only)."""
    from vgg.paths import resolve_inside, validate_run_id

    if value in ("scratch", "imagenet"):
        return value
    if value.startswith("run:"):
        return "run:" + validate_run_id(value[4:])
    if value.endswith((".pth", ".pt")) or os.sep in value or "/" in value:
        if not value.endswith((".pth", ".pt")):
            raise ConfigError(f"init file {value!r} must be a .pth state-dict file")
        path = Path(value).expanduser()
        if not path.is_absolute():
            path = Path.cwd() / path
        resolved = resolve_inside(path, dirs.data, dirs.runs)
        if not resolved.is_file():
            raise CheckpointError(f"init file {value!r} does not exist")
        return str(resolved)
    return "run:" + validate_run_id(value)


def _train_config(args: argparse.Namespace, dirs: Dirs, *, for_training: bool) -> TrainConfig:
    """Build (and so validate) the TrainConfig the options describe."""
    from vgg.data import DataConfig
    from vgg.train import TrainConfig

    data = DataConfig(
        source=_resolve_source(args.dataset, dirs.data), input_size=args.input_size,
        images_per_class=args.images_per_class, val_fraction=args.val_fraction,
        seed=args.seed, data_dir=dirs.data,
    )
    extra: dict[str, Any] = {}
    if for_training:
        extra = {"epochs": args.epochs, "schedule": args.schedule, "time_budget_s": args.time_budget}
    return TrainConfig(
        config=args.config, batch_norm=args.batch_norm, init=_resolve_init(args.init, dirs),
        freeze=args.freeze, optimizer=args.optimizer, lr=args.lr, lr_ratio=args.lr_ratio,
        batch_size=args.batch_size, data=data, augment=args.augment, seed=args.seed,
        device=args.device, precision=args.precision, **extra,
    )


def _load_splits(cfg: DataConfig, bar: ProgressBar, cancel: threading.Event) -> DataSplits:
    """Load the data set with progress on the bar; Ctrl-C aborts between files."""
    from vgg.data import load_data

    def progress(done: int, total: int, message: str) -> None:
        if cancel.is_set():
            raise _Cancelled()
        bar.update(done / total if total else None, message)

    bar.update(None, "loading the data set", force=True)
    splits = load_data(cfg, progress)
    bar.close()
    return splits


def _data_summary(splits: DataSplits) -> dict[str, Any]:
    report = splits.report
    return {
        "source": splits.source_name, "classes": list(splits.classes),
        "train_images": len(splits.train), "val_images": len(splits.val), "test_images": len(splits.test),
        "input_size": splits.input_size, "skipped_files": len(report.skipped),
        "skipped": [{"file": f, "reason": r} for f, r in report.skipped[:20]],
        "warnings": list(report.warnings),
    }


def _report_data(splits: DataSplits, err: TextIO) -> None:
    """Warnings of the data reader, one line each (the library never prints them itself)."""
    report = splits.report
    for warning in report.warnings:
        err.write(f"warning: {_one_line(warning)}\n")
    if report.skipped:
        first, reason = report.skipped[0]
        more = f" and {len(report.skipped) - 1} more" if len(report.skipped) > 1 else ""
        err.write(f"warning: skipped {len(report.skipped)} unreadable file(s): {first} ({_one_line(reason, 160)}){more}\n")


# ============================================================================================
# summary


def cmd_summary(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from vgg.model import model_name
    from vgg.summary import format_layer_table, layer_table, table_totals

    table = layer_table(args.config, batch_norm=args.batch_norm, input_size=args.input_size,
                        num_classes=args.num_classes)
    totals = table_totals(table)
    name = model_name(args.config, args.batch_norm)
    if args.json:
        rows = table.astype(object).where(table.notna(), None).to_dict(orient="records")
        _print_json({"config": args.config, "batch_norm": args.batch_norm, "model": name,
                     "input_size": args.input_size, "num_classes": args.num_classes,
                     **totals, "layers": rows}, out)
        return EXIT_OK
    bn = "with" if args.batch_norm else "without"
    out.write(f"VGG configuration {args.config} ({name}), {bn} batch norm, "
              f"{args.input_size}×{args.input_size} input, {args.num_classes} classes\n\n")
    out.write(format_layer_table(table) + "\n")
    return EXIT_OK


# ============================================================================================
# lr-find


def cmd_lr_find(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from vgg.lr_finder import LRFinderConfig, LRFinderStep
    from vgg.settings import flush_denormals
    from vgg.train import StatusEvent, find_lr_for

    dirs = _dirs(args)
    cfg = _train_config(args, dirs, for_training=False)
    lr_cfg = LRFinderConfig(start_lr=args.start_lr, end_lr=args.end_lr, num_iter=args.num_iter,
                            smooth_f=args.smooth_f, diverge_th=args.diverge_th,
                            skip_start=args.skip_start, skip_end=args.skip_end)
    bar = ProgressBar(err, enabled=not args.json)
    cancel = threading.Event()

    def on_event(event: Any) -> None:
        if isinstance(event, StatusEvent):
            bar.update(event.progress, event.message, force=True)

    def on_step(step: LRFinderStep) -> None:
        bar.update((step.iteration + 1) / lr_cfg.num_iter,
                   f"iteration {step.iteration + 1}/{lr_cfg.num_iter} · lr {step.lr:.2e} · loss {step.loss:.3f}")

    def work() -> tuple[Any, DataSplits]:
        flush_denormals()  # the thread that trains, before its first torch op
        splits = _load_splits(cfg.data, bar, cancel)
        bar.restart()
        return find_lr_for(cfg, lr_cfg, splits=splits, on_step=on_step, on_event=on_event, cancel=cancel,
                           runs_root=dirs.runs), splits

    try:
        result, splits = run_cancellable(work, cancel, err)
    except Interrupted as stop:
        if stop.result is None:
            raise
        result, splits = stop.result  # the points so far, model and optimizer restored
    finally:
        bar.close()
    if not args.json:
        _report_data(splits, err)
    suggestions = {rule: (s.lr if s is not None else None) for rule, s in result.suggestions.items()}
    if args.json:
        _print_json({
            "suggestions": suggestions,
            "explanations": {rule: (s.explanation if s is not None else None)
                             for rule, s in result.suggestions.items()},
            "lrs": list(result.lrs), "losses": list(result.losses), "smoothed": list(result.smoothed),
            "iterations": len(result.lrs), "stopped_early": result.stopped_early,
            "cancelled": result.cancelled, "restored": result.restored, "seconds": result.seconds,
            "config": cfg.to_dict(), "lr_finder": asdict(lr_cfg),
            "data": _data_summary(splits),
        }, out)
    else:
        ending = " (stopped early: the loss diverged)" if result.stopped_early else ""
        out.write(f"LR range test: {len(result.lrs)} iterations in {result.seconds:.1f} s{ending}; "
                  "model and optimizer restored\n")
        for rule, suggestion in result.suggestions.items():
            if suggestion is None:
                out.write(f"  {rule:<10} –         not enough points for this rule\n")
            else:
                out.write(f"  {rule:<10} {suggestion.lr:.2e}  {suggestion.explanation}\n")
        chosen = next((lr for lr in suggestions.values() if lr is not None), None)
        if chosen is not None:
            out.write(f"Train with one of them, e.g. python -m vgg train --lr {chosen:.1e}\n")
    if result.cancelled:
        err.write(f"interrupted: LR range test cancelled after {len(result.lrs)} iterations\n")
        return EXIT_INTERRUPTED
    return EXIT_OK


# ============================================================================================
# train


def cmd_train(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from vgg.settings import flush_denormals
    from vgg.train import DoneEvent, EpochEvent, StatusEvent, StepEvent, fit

    dirs = _dirs(args)
    cfg = _train_config(args, dirs, for_training=True)
    store = _store(dirs)
    bar = ProgressBar(err, enabled=not args.json)
    cancel = threading.Event()
    run_id: list[str] = []

    def on_event(event: Any) -> None:
        if isinstance(event, StepEvent):
            bar.update(event.progress, f"epoch {event.epoch}/{cfg.epochs} · step {event.step} · "
                                       f"loss {event.loss:.3f} · {event.images_per_second:.0f} img/s")
        elif isinstance(event, EpochEvent):
            best = "  (best so far)" if event.is_best else ""
            bar.message(f"epoch {event.epoch}: train loss {event.train_loss:.3f}, accuracy "
                        f"{_percent(event.train_accuracy)} · validation loss {event.val_loss:.3f}, accuracy "
                        f"{_percent(event.val_accuracy)} · {event.seconds:.1f} s{best}")
        elif isinstance(event, StatusEvent):
            if event.run_id and not run_id:
                run_id.append(event.run_id)
                bar.message(f"run {event.run_id} in {store.root / event.run_id}")
                bar.restart()
            bar.update(event.progress, event.message, force=True)
        elif isinstance(event, DoneEvent):
            bar.update(1.0, event.result.status, force=True)

    def work() -> tuple[Any, DataSplits]:
        flush_denormals()  # the thread that trains, before its first torch op
        splits = _load_splits(cfg.data, bar, cancel)
        if not args.json:
            _report_data(splits, err)
        return fit(cfg, store=store, splits=splits, on_event=on_event, cancel=cancel), splits

    interrupted = False
    try:
        result, splits = run_cancellable(work, cancel, err)
    except Interrupted as stop:
        if stop.result is None:
            bar.close()
            where = f"; run {run_id[0]} is kept" if run_id else ""
            err.write(f"interrupted: training cancelled{where}\n")
            return EXIT_INTERRUPTED
        result, splits = stop.result
        interrupted = True
    finally:
        bar.close()

    run_dir = store.root / result.run_id if result.run_id else None
    if args.json:
        _print_json({
            "run_id": result.run_id, "status": result.status, "message": result.message,
            "best_val_accuracy": result.best_val_accuracy, "best_val_loss": result.best_val_loss,
            "test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
            "seconds": result.seconds, "images_per_second": result.images_per_second,
            "epochs": result.epochs_done, "epochs_planned": cfg.epochs, "steps": result.steps,
            "classes": list(result.classes), "run_dir": run_dir, "config": cfg.to_dict(),
            "data": _data_summary(splits),
        }, out)
    else:
        out.write(f"run {result.run_id}: {result.status}"
                  + (f" ({result.message})" if result.message and result.message != result.status else "") + "\n")
        out.write(f"  epochs {result.epochs_done}/{cfg.epochs} · {result.steps} steps · {result.seconds:.1f} s · "
                  f"{result.images_per_second:.0f} images/s\n")
        out.write(f"  best validation accuracy {_percent(result.best_val_accuracy)} "
                  f"(loss {_number(result.best_val_loss, '.3f')})\n")
        out.write(f"  test accuracy {_percent(result.test_accuracy)} (loss {_number(result.test_loss, '.3f')})\n")
        if run_dir is not None:
            out.write(f"  folder {run_dir}\n")
    if interrupted or result.status == "cancelled":
        err.write(f"interrupted: training cancelled; run {result.run_id} is kept with its best checkpoint\n")
        return EXIT_INTERRUPTED
    if result.status != "done":
        err.write(f"error: training {result.status}: {_one_line(result.message)}\n")
        return EXIT_ERROR
    return EXIT_OK


# ============================================================================================
# evaluate


def _per_class(labels: Any, predicted: Any, classes: Sequence[str]) -> tuple[dict[str, float | None], dict[str, int]]:
    """Per-class accuracy (None for a class without test images) and image counts."""
    from vgg.analysis import per_class_accuracy

    table = per_class_accuracy(labels, predicted, classes)
    accuracy = {str(row["class"]): (None if math.isnan(row["accuracy"]) else float(row["accuracy"]))
                for row in table.to_dict(orient="records")}
    counts = {str(row["class"]): int(row["images"]) for row in table.to_dict(orient="records")}
    return accuracy, counts


def _evaluate_checkpoint(info: RunInfo, store: RunStore, which: str, device_name: str,
                         bar: ProgressBar, cancel: threading.Event) -> dict[str, Any]:
    """Evaluate a run's checkpoint on the test split of the data set it was trained on."""
    from vgg.inference import evaluate_loaded, load_model, run_data_config
    from vgg.settings import resolve_device

    device = resolve_device(device_name)
    if which == "best":
        loaded = load_model(info.run_id, store=store, device=device)
    else:
        path = store.checkpoint_path(info.run_id, "last")
        if not path.is_file():
            raise CheckpointError(f"run {info.run_id} has no last.pt yet")
        loaded = load_model(str(path), store=store, allowed_roots=(store.root,), device=device)
    splits = _load_splits(run_data_config(info.config), bar, cancel)
    if tuple(splits.classes) != tuple(loaded.classes):
        raise CheckpointError(f"run {info.run_id} was trained on {len(loaded.classes)} classes "
                              f"({', '.join(loaded.classes[:3])}, …) but its data set now has "
                              f"{len(splits.classes)} ({', '.join(splits.classes[:3])}, …)")
    bar.update(None, f"evaluating {which}.pt on {len(splits.test)} test images", force=True)
    result = evaluate_loaded(loaded, splits.test, precision=str(info.config.get("precision", "auto")),
                             cancel=cancel)
    if cancel.is_set():
        raise _Cancelled()
    labels = result["labels"]
    per_class, counts = _per_class(labels, result["probabilities"].float().argmax(1), loaded.classes)
    return {"test_loss": result["loss"], "test_accuracy": result["accuracy"], "per_class_accuracy": per_class,
            "per_class_images": counts, "classes": list(loaded.classes), "test_images": len(labels),
            "epoch": loaded.meta.get("epoch"), "source": f"{which}.pt evaluated on the test set now"}


def _evaluate_predictions(info: RunInfo, store: RunStore) -> dict[str, Any]:
    """Numbers from the saved test-set predictions of the best checkpoint (no model needed)."""
    import torch

    predictions = store.load_predictions(info.run_id)
    try:
        labels = torch.as_tensor(predictions["labels"]).long()
        probabilities = torch.as_tensor(predictions["probabilities"]).float()
        classes = tuple(str(c) for c in predictions.get("classes") or info.summary.get("classes") or ())
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"predictions.pt of run {info.run_id} is malformed: {_one_line(str(exc), 160)}") from exc
    if (probabilities.dim() != 2 or labels.dim() != 1 or len(labels) != len(probabilities)
            or probabilities.shape[1] != len(classes)):
        raise CheckpointError(f"predictions.pt of run {info.run_id} is malformed (its shapes do not match)")
    predicted = probabilities.argmax(1)
    accuracy = float((predicted == labels).float().mean()) if len(labels) else None
    loss = info.summary.get("test_loss")
    if (not isinstance(loss, (int, float)) or isinstance(loss, bool)) and len(labels):
        picked = probabilities.gather(1, labels[:, None]).squeeze(1).clamp_min(1e-7)
        loss = float(-picked.log().mean())  # from float16 probabilities: close, not exact
    per_class, counts = _per_class(labels, predicted, classes)
    return {"test_loss": loss, "test_accuracy": accuracy, "per_class_accuracy": per_class,
            "per_class_images": counts, "classes": list(classes), "test_images": len(labels),
            "epoch": None, "source": "saved test-set predictions of best.pt"}


def cmd_evaluate(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    dirs = _dirs(args)
    store = _store(dirs)
    info = store.get(args.run)
    bar = ProgressBar(err, enabled=not args.json)
    cancel = threading.Event()
    if info.has_predictions and args.checkpoint == "best" and not args.recompute:
        numbers = _evaluate_predictions(info, store)
    else:
        try:
            numbers = run_cancellable(
                lambda: _evaluate_checkpoint(info, store, args.checkpoint, args.device, bar, cancel), cancel, err)
        except Interrupted:
            bar.close()
            err.write("interrupted: evaluation cancelled\n")
            return EXIT_INTERRUPTED
        finally:
            bar.close()
    if args.json:
        _print_json({"run_id": info.run_id, "status": info.status, "checkpoint": args.checkpoint, **numbers}, out)
        return EXIT_OK
    out.write(f"run {info.run_id} ({info.status}) · {numbers['source']}\n")
    out.write(f"  test loss {_number(numbers['test_loss'])} · test accuracy {_percent(numbers['test_accuracy'])} "
              f"on {numbers['test_images']} images\n")
    width = max((len(c) for c in numbers["classes"]), default=5)
    out.write("  per class:\n")
    for name in numbers["classes"]:
        out.write(f"    {name:<{width}}  {_percent(numbers['per_class_accuracy'][name]):>6}  "
                  f"({numbers['per_class_images'][name]} images)\n")
    return EXIT_OK


# ============================================================================================
# predict


def cmd_predict(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from vgg.images import open_image
    from vgg.inference import load_model, predict
    from vgg.settings import resolve_device

    dirs = _dirs(args)
    store = _store(dirs)
    loaded = load_model(args.source, store=store, allowed_roots=(dirs.runs, dirs.data),
                        device=resolve_device(args.device))
    entries: list[dict[str, Any]] = []
    for name in args.images:  # one at a time: a bad file must not stop the others
        try:
            if Path(name).is_dir():
                raise VGGError(f"{name} is a folder, not an image file")
            (prediction,) = predict(loaded, [open_image(Path(name))], k=TOP_K)
            entries.append({"file": name, "top5": [{"class": c, "probability": p} for c, p in prediction.top]})
        except (VGGError, OSError, ValueError, RuntimeError) as exc:
            entries.append({"file": name, "error": _describe_exception(exc)})
    failed = [e for e in entries if "error" in e]
    for entry in failed:
        message = entry["error"]
        err.write(f"error: {message if str(entry['file']) in message else entry['file'] + ': ' + message}\n")
    if args.json:
        model = {"source": loaded.source, "run_id": loaded.run_id, "name": loaded.name, "config": loaded.config,
                 "batch_norm": loaded.batch_norm, "input_size": loaded.input_size, "classes": list(loaded.classes)}
        _print_json({"model": model, "predictions": entries, "failed": len(failed)}, out)
    else:
        out.write(f"{loaded.name} · {loaded.source}\n")
        for entry in entries:
            if "error" in entry:
                continue
            out.write(f"{entry['file']}\n")
            for item in entry["top5"]:
                out.write(f"  {item['probability']:>6.1%}  {item['class']}\n")
    return EXIT_ERROR if failed else EXIT_OK


# ============================================================================================
# runs


def _run_row(info: RunInfo) -> dict[str, Any]:
    config = info.config if isinstance(info.config, dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    summary = info.summary
    return {
        "run_id": info.run_id, "status": info.status, "message": info.message,
        "config": config.get("config"), "batch_norm": config.get("batch_norm"),
        "init": config.get("init"), "dataset": data.get("source"), "input_size": data.get("input_size"),
        "epochs": config.get("epochs"), "epochs_done": summary.get("epochs_done"),
        "best_val_accuracy": summary.get("best_val_accuracy"), "test_accuracy": summary.get("test_accuracy"),
        "created_at": datetime.fromtimestamp(info.created_at).isoformat(timespec="seconds"),
        "path": info.path, "has_best": info.has_best, "has_predictions": info.has_predictions,
    }


def cmd_runs(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    dirs = _dirs(args)
    store = _store(dirs)
    rows = [_run_row(info) for info in store.list_runs()]
    if args.json:
        _print_json({"runs_dir": store.root, "runs": rows}, out)
        return EXIT_OK
    if not rows:
        out.write(f"no runs in {store.root} yet; start one with: python -m vgg train\n")
        return EXIT_OK
    header = ("run", "status", "model", "data", "epochs", "best val acc", "test acc")
    lines = [header]
    for row in rows:
        model = f"{row['config'] or '?'}{'-BN' if row['batch_norm'] else ''} from {row['init'] or '?'}"
        epochs = f"{row['epochs_done'] if row['epochs_done'] is not None else '–'}/{row['epochs'] or '–'}"
        data = f"{row['dataset'] or '?'} {row['input_size'] or ''}px".strip()
        lines.append((row["run_id"], row["status"], model, data, epochs,
                      _percent(row["best_val_accuracy"]), _percent(row["test_accuracy"])))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    for line in lines:
        out.write("  ".join(str(v).ljust(w) if i < 5 else str(v).rjust(w)
                            for i, (v, w) in enumerate(zip(line, widths))).rstrip() + "\n")
    return EXIT_OK


# ============================================================================================
# Entry point

COMMANDS: dict[str, Callable[[argparse.Namespace, TextIO, TextIO], int]] = {
    "summary": cmd_summary, "lr-find": cmd_lr_find, "train": cmd_train, "evaluate": cmd_evaluate,
    "predict": cmd_predict, "runs": cmd_runs,
}


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      file: TextIO | None = None, line: str | None = None) -> None:
    stream = file or sys.stderr
    try:
        stream.write(f"warning: {_one_line(str(message), 300)}\n")
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run ``python -m vgg``; returns the exit status (0 ok, 1 error, 2 usage, 130 interrupted)."""
    out = out or sys.stdout
    err = err or sys.stderr
    debug = os.environ.get("VGG_DEBUG", "") not in ("", "0")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # --help and usage errors
            args = build_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error (2, already printed on one line)
        return int(stop.code) if isinstance(stop.code, int) else EXIT_USAGE
    previous = warnings.showwarning
    if not debug:
        warnings.showwarning = _one_line_warning
    try:
        return COMMANDS[args.command](args, out, err)
    except KeyboardInterrupt:
        err.write("\ninterrupted\n")
        return EXIT_INTERRUPTED
    except Interrupted:
        err.write("\ninterrupted\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `python -m vgg runs | head -1`
        return EXIT_OK
    except (VGGError, OSError, RuntimeError, ValueError, MemoryError) as exc:
        if debug:
            raise
        err.write(f"error: {_describe_exception(exc)}\n")
        return EXIT_ERROR
    except Exception as exc:  # a bug: still one line, and how to see the details
        if debug:
            raise
        err.write(f"error: internal error ({_describe_exception(exc)}); run with VGG_DEBUG=1 for details\n")
        return EXIT_ERROR
    finally:
        warnings.showwarning = previous
        try:
            out.flush()
        except (OSError, ValueError):
            pass
