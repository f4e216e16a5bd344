"""The commands of ``python -m vgg``. Each one does its work through the library and returns one
result object; ``vgg.cli.main`` prints its ``text()`` or, with ``--json``, its ``json()``."""

from __future__ import annotations

import argparse
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

from vgg import cluster
from vgg.cli import describe_exception
from vgg.cli.common import (
    EXIT_ERROR,
    EXIT_INTERRUPTED,
    Result,
    data_summary,
    data_warnings,
    dirs_of,
    load_splits,
    number,
    percent,
    train_config,
)
from vgg.cli.progress import Cancelled, Interrupted, Progress, run_cancellable
from vgg.data import DataSplits
from vgg.datasets import (
    AddReport,
    DatasetInfo,
    add_pictures,
    create_set,
    delete_set,
    export_zip_to,
    format_size,
    list_sets,
    set_info,
)
from vgg.errors import CheckpointError, VGGError, one_line
from vgg.evaluate import Predictions, evaluate_loaded, load_run_predictions
from vgg.events import DoneEvent, EpochEvent, StatusEvent, StepEvent, TrainResult
from vgg.export import (
    FORMAT_NAMES,
    ONNX_INPUT,
    ONNX_OPSET,
    ONNX_OUTPUT,
    Export,
    check_destination,
    export_run,
    write_export,
)
from vgg.images import open_image
from vgg.inference import TOP_K, load_model, predict, run_data_config
from vgg.lr_finder import LRFinderConfig, LRFinderResult, LRFinderStep, find_lr_for
from vgg.model import model_name
from vgg.runs import RunInfo, RunStore
from vgg.settings import flush_denormals, resolve_device
from vgg.summary import format_layer_table, layer_table, table_totals
from vgg.train import TrainConfig, fit

# ============================================================================================
# summary


@dataclass
class SummaryResult(Result):
    args: argparse.Namespace
    table: Any  # pandas DataFrame

    def json(self) -> dict[str, Any]:
        a = self.args
        rows = self.table.astype(object).where(self.table.notna(), None).to_dict(orient="records")
        return {"config": a.config, "batch_norm": a.batch_norm, "model": model_name(a.config, a.batch_norm),
                "input_size": a.input_size, "num_classes": a.num_classes, **table_totals(self.table),
                "layers": rows}

    def text(self) -> str:
        a = self.args
        bn = "with" if a.batch_norm else "without"
        return (f"VGG configuration {a.config} ({model_name(a.config, a.batch_norm)}), {bn} batch norm, "
                f"{a.input_size}×{a.input_size} input, {a.num_classes} classes\n\n"
                + format_layer_table(self.table) + "\n")


def cmd_summary(args: argparse.Namespace, err: TextIO) -> SummaryResult:
    table = layer_table(args.config, batch_norm=args.batch_norm, input_size=args.input_size,
                        num_classes=args.num_classes)
    return SummaryResult(args, table)


# ============================================================================================
# lr-find


@dataclass
class LRFindOutcome(Result):
    result: LRFinderResult
    cfg: TrainConfig
    lr_cfg: LRFinderConfig
    splits: DataSplits

    def suggestions(self) -> dict[str, float | None]:
        return {rule: (s.lr if s is not None else None) for rule, s in self.result.suggestions.items()}

    def json(self) -> dict[str, Any]:
        r = self.result
        recommended = self.result.recommended
        return {"recommended": recommended.lr if recommended else None,
                "recommended_rule": recommended.rule if recommended else None,
                "suggestions": self.suggestions(),
                "explanations": {rule: (s.explanation if s is not None else None)
                                 for rule, s in r.suggestions.items()},
                "lrs": list(r.lrs), "losses": list(r.losses), "smoothed": list(r.smoothed),
                "iterations": len(r.lrs), "stopped_early": r.stopped_early, "cancelled": r.cancelled,
                "restored": r.restored, "seconds": r.seconds, "config": self.cfg.to_dict(),
                "lr_finder": asdict(self.lr_cfg), "data": data_summary(self.splits)}

    def text(self) -> str:
        r = self.result
        ending = " (stopped early: the loss diverged)" if r.stopped_early else ""
        lines = [f"LR range test: {len(r.lrs)} iterations in {r.seconds:.1f} s{ending}; "
                 "model and optimizer restored"]
        for rule, suggestion in r.suggestions.items():
            if suggestion is None:
                lines.append(f"  {rule:<10} –         not enough points for this rule")
            else:
                lines.append(f"  {rule:<10} {suggestion.lr:.2e}  {suggestion.explanation}")
        recommended = r.recommended
        if recommended is not None:
            lines.append(f"Recommended: {recommended.lr:.2e} ({recommended.explanation})")
            lines.append(f"Train with it: python -m vgg train --lr {recommended.lr:.1e}")
        return "\n".join(lines) + "\n"


def cmd_lr_find(args: argparse.Namespace, err: TextIO) -> LRFindOutcome:
    dirs = dirs_of(args)
    cfg = train_config(args, dirs, for_training=False)
    lr_cfg = LRFinderConfig(start_lr=args.start_lr, end_lr=args.end_lr, num_iter=args.num_iter,
                            smooth_f=args.smooth_f, diverge_th=args.diverge_th,
                            skip_start=args.skip_start, skip_end=args.skip_end)
    bar = Progress(err, enabled=not args.json)
    cancel = threading.Event()

    def on_event(event: Any) -> None:
        if isinstance(event, StatusEvent):
            bar.update(event.progress, event.message, force=True)

    def on_step(step: LRFinderStep) -> None:
        bar.update((step.iteration + 1) / lr_cfg.num_iter,
                   f"iteration {step.iteration + 1}/{lr_cfg.num_iter} · lr {step.lr:.2e} · loss {step.loss:.3f}")

    def work() -> tuple[LRFinderResult, DataSplits]:
        flush_denormals()  # the thread that trains, before its first torch op
        splits = load_splits(cfg.data, bar, cancel)
        bar.restart()
        if cluster.ray_address():  # a Ray task on the cluster (vgg.cluster)
            return cluster.find_lr_on_cluster(cfg, lr_cfg, store=RunStore(dirs.runs), splits=splits, on_step=on_step,
                                              on_event=on_event, cancel=cancel), splits
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
    outcome = LRFindOutcome(result, cfg, lr_cfg, splits, errors=[] if args.json else data_warnings(splits))
    if result.cancelled:
        outcome.errors.append(f"interrupted: LR range test cancelled after {len(result.lrs)} iterations")
        outcome.exit_code = EXIT_INTERRUPTED
    return outcome


# ============================================================================================
# train


@dataclass
class TrainOutcome(Result):
    result: TrainResult
    cfg: TrainConfig
    splits: DataSplits
    run_dir: Path | None

    def json(self) -> dict[str, Any]:
        r = self.result
        return {"run_id": r.run_id, "status": r.status, "message": r.message,
                "best_val_accuracy": r.best_val_accuracy, "best_val_loss": r.best_val_loss,
                "test_accuracy": r.test_accuracy, "test_loss": r.test_loss, "seconds": r.seconds,
                "images_per_second": r.images_per_second, "epochs": r.epochs_done,
                "epochs_planned": r.epochs_planned, "steps": r.steps, "classes": list(r.classes),
                "run_dir": self.run_dir, "config": self.cfg.to_dict(), "data": data_summary(self.splits),
                "backend": r.backend, "node": r.node}

    def text(self) -> str:
        r = self.result
        why = f" ({r.message})" if r.message and r.message != r.status else ""
        lines = [f"run {r.run_id}: {r.status}{why}",
                 f"  epochs {r.epochs_done}/{r.epochs_planned} · {r.steps} steps · {r.seconds:.1f} s · "
                 f"{r.images_per_second:.0f} images/s",
                 f"  best validation accuracy {percent(r.best_val_accuracy)} (loss {number(r.best_val_loss, '.3f')})",
                 f"  test accuracy {percent(r.test_accuracy)} (loss {number(r.test_loss, '.3f')})"]
        if self.run_dir is not None:
            lines.append(f"  folder {self.run_dir}")
        return "\n".join(lines) + "\n"


def cmd_train(args: argparse.Namespace, err: TextIO) -> TrainOutcome:
    dirs = dirs_of(args)
    cfg = train_config(args, dirs, for_training=True)
    store = RunStore(dirs.runs)
    bar = Progress(err, enabled=not args.json)
    cancel = threading.Event()
    run_id: list[str] = []

    def on_event(event: Any) -> None:
        if isinstance(event, StepEvent):
            bar.update(event.progress, f"epoch {event.epoch} · step {event.step} · "
                                       f"loss {event.loss:.3f} · {event.images_per_second:.0f} img/s")
        elif isinstance(event, EpochEvent):
            best = "  (best so far)" if event.is_best else ""
            bar.message(f"epoch {event.epoch}: train loss {event.train_loss:.3f}, accuracy "
                        f"{percent(event.train_accuracy)} · validation loss {event.val_loss:.3f}, accuracy "
                        f"{percent(event.val_accuracy)} · {event.seconds:.1f} s{best}")
        elif isinstance(event, StatusEvent):
            if event.run_id and not run_id:
                run_id.append(event.run_id)
                bar.message(f"run {event.run_id} in {store.root / event.run_id}")
                bar.restart()
            bar.update(event.progress, event.message, force=True)
        elif isinstance(event, DoneEvent):
            bar.update(1.0, event.result.status, force=True)

    def work() -> tuple[TrainResult, DataSplits]:
        flush_denormals()  # the thread that trains, before its first torch op
        splits = load_splits(cfg.data, bar, cancel)
        if not args.json:
            for line in data_warnings(splits):
                err.write(line + "\n")
        train = cluster.fit_on_cluster if cluster.ray_address() else fit  # a Ray task, or in this process
        return train(cfg, store=store, splits=splits, on_event=on_event, cancel=cancel), splits

    interrupted = False
    try:
        result, splits = run_cancellable(work, cancel, err)
    except Interrupted as stop:
        if stop.result is None:
            bar.close()
            where = f"; run {run_id[0]} is kept" if run_id else ""
            raise Interrupted(None) from VGGError(f"interrupted: training cancelled{where}")
        result, splits = stop.result
        interrupted = True
    finally:
        bar.close()
    outcome = TrainOutcome(result, cfg, splits, store.root / result.run_id if result.run_id else None)
    if interrupted or result.status == "cancelled":
        outcome.errors.append(f"interrupted: training cancelled; run {result.run_id} is kept with its "
                              "best checkpoint")
        outcome.exit_code = EXIT_INTERRUPTED
    elif result.status != "done":
        outcome.errors.append(f"error: training {result.status}: {one_line(result.message, 400)}")
        outcome.exit_code = EXIT_ERROR
    return outcome


# ============================================================================================
# evaluate


@dataclass
class EvaluationResult(Result):
    info: RunInfo
    checkpoint: str
    predictions: Predictions
    source: str
    epoch: int | None = None

    def per_class(self) -> tuple[dict[str, float | None], dict[str, int]]:
        rows = self.predictions.per_class().to_dict(orient="records")
        accuracy = {str(r["class"]): (None if math.isnan(r["accuracy"]) else float(r["accuracy"])) for r in rows}
        return accuracy, {str(r["class"]): int(r["images"]) for r in rows}

    def loss(self) -> float | None:
        loss = self.predictions.loss
        recorded = self.info.summary.get("test_loss")
        if self.checkpoint == "best" and loss is None and isinstance(recorded, (int, float)):
            return float(recorded)  # predictions written before the loss was kept in them
        return loss

    def json(self) -> dict[str, Any]:
        accuracy, counts = self.per_class()
        p = self.predictions
        return {"run_id": self.info.run_id, "status": self.info.status, "checkpoint": self.checkpoint,
                "test_loss": self.loss(), "test_accuracy": p.accuracy if len(p) else None,
                "per_class_accuracy": accuracy, "per_class_images": counts, "classes": list(p.classes),
                "test_images": len(p), "epoch": self.epoch, "source": self.source}

    def text(self) -> str:
        accuracy, counts = self.per_class()
        p = self.predictions
        lines = [f"run {self.info.run_id} ({self.info.status}) · {self.source}",
                 f"  test loss {number(self.loss())} · test accuracy {percent(p.accuracy if len(p) else None)} "
                 f"on {len(p)} images", "  per class:"]
        width = max((len(c) for c in p.classes), default=5)
        lines += [f"    {name:<{width}}  {percent(accuracy[name]):>6}  ({counts[name]} images)" for name in p.classes]
        return "\n".join(lines) + "\n"


def _evaluate_checkpoint(info: RunInfo, store: RunStore, which: str, device_name: str, bar: Progress,
                         cancel: threading.Event) -> tuple[Predictions, int | None]:
    """Evaluate a run's checkpoint on the test split of the data set it was trained on."""
    device = resolve_device(device_name)
    if which == "best":
        loaded = load_model(info.run_id, store=store, device=device)
    else:
        path = store.checkpoint_path(info.run_id, "last")
        if not path.is_file():
            raise CheckpointError(f"run {info.run_id} has no last.pt yet")
        loaded = load_model(str(path), store=store, allowed_roots=(store.root,), device=device)
    splits = load_splits(run_data_config(info.config), bar, cancel)
    if tuple(splits.classes) != tuple(loaded.classes):
        raise CheckpointError(f"run {info.run_id} was trained on {len(loaded.classes)} classes "
                              f"({', '.join(loaded.classes[:3])}, …) but its data set now has "
                              f"{len(splits.classes)} ({', '.join(splits.classes[:3])}, …)")
    bar.update(None, f"evaluating {which}.pt on {len(splits.test)} test images", force=True)
    precision = str(info.config.get("precision", "auto"))
    if cluster.ray_address():  # a Ray task on the cluster (vgg.cluster)
        predictions = cluster.evaluate_loaded_on_cluster(loaded, splits, precision=precision, store=store,
                                                         cancel=cancel)
    else:
        predictions = evaluate_loaded(loaded, splits.test, precision=precision, cancel=cancel)
    if cancel.is_set():
        raise Cancelled()
    epoch = loaded.meta.get("epoch")
    return predictions, epoch if isinstance(epoch, int) else None


def cmd_evaluate(args: argparse.Namespace, err: TextIO) -> EvaluationResult:
    store = RunStore(dirs_of(args).runs)
    info = store.get(args.run)
    if info.has_predictions and args.checkpoint == "best" and not args.recompute:
        return EvaluationResult(info, "best", load_run_predictions(store, info.run_id),
                                "saved test-set predictions of best.pt")
    bar = Progress(err, enabled=not args.json)
    cancel = threading.Event()
    try:
        predictions, epoch = run_cancellable(
            lambda: _evaluate_checkpoint(info, store, args.checkpoint, args.device, bar, cancel), cancel, err)
    except Interrupted:
        raise Interrupted(None) from VGGError("interrupted: evaluation cancelled")
    finally:
        bar.close()
    return EvaluationResult(info, args.checkpoint, predictions,
                            f"{args.checkpoint}.pt evaluated on the test set now", epoch)


# ============================================================================================
# predict


@dataclass
class PredictResult(Result):
    model: dict[str, Any]
    entries: list[dict[str, Any]]

    def json(self) -> dict[str, Any]:
        return {"model": self.model, "predictions": self.entries,
                "failed": sum("error" in e for e in self.entries)}

    def text(self) -> str:
        lines = [f"{self.model['name']} · {self.model['source']}"]
        for entry in self.entries:
            if "error" not in entry:
                lines.append(entry["file"])
                lines += [f"  {item['probability']:>6.1%}  {item['class']}" for item in entry["top5"]]
        return "\n".join(lines) + "\n"


def cmd_predict(args: argparse.Namespace, err: TextIO) -> PredictResult:
    dirs = dirs_of(args)
    store = RunStore(dirs.runs)
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
            entries.append({"file": name, "error": describe_exception(exc)})
    model = {"source": loaded.source, "run_id": loaded.run_id, "name": loaded.name, "config": loaded.config,
             "batch_norm": loaded.batch_norm, "input_size": loaded.input_size, "classes": list(loaded.classes)}
    result = PredictResult(model, entries)
    for entry in entries:
        if "error" in entry:
            message = entry["error"]
            result.errors.append(f"error: {message if str(entry['file']) in message else entry['file'] + ': ' + message}")
            result.exit_code = EXIT_ERROR
    return result


# ============================================================================================
# export


@dataclass
class ExportResult(Result):
    export: Export
    path: Path

    def json(self) -> dict[str, Any]:
        e, info = self.export, self.export.info
        data: dict[str, Any] = {
            "run_id": info.run_id, "format": e.fmt, "path": self.path, "bytes": len(e.data),
            "seconds": e.seconds, "model": info.model, "config": info.config, "batch_norm": info.batch_norm,
            "torchvision_name": info.torchvision_name, "classes": list(info.classes),
            "input_size": info.input_size, "mean": list(info.mean), "std": list(info.std)}
        if e.fmt == "onnx":
            data.update(opset=ONNX_OPSET, input=ONNX_INPUT, output=ONNX_OUTPUT)
        return data

    def text(self) -> str:
        e, info = self.export, self.export.info
        size = info.input_size
        lines = [f"wrote {info.model} of run {info.run_id} as {FORMAT_NAMES[e.fmt]} to {self.path} "
                 f"({len(e.data) / 1e6:.1f} MB, {e.seconds:.1f} s)"]
        if e.fmt == "pt":
            build = (f"torchvision.models.{info.torchvision_name}(num_classes={len(info.classes)})"
                     if info.torchvision_name else
                     f"vgg.model.build_vgg({info.config!r}, batch_norm={info.batch_norm}, "
                     f"num_classes={len(info.classes)})")
            lines.append(f"  load it: model = {build}; "
                         f"model.load_state_dict(torch.load({str(self.path)!r}, weights_only=True))")
        else:
            lines.append(f"  input {ONNX_INPUT!r}: float32 (N, 3, {size}, {size}) · output {ONNX_OUTPUT!r}: "
                         f"(N, {len(info.classes)}) · opset {ONNX_OPSET} · classes, input size, mean and std "
                         "are in the file's metadata")
        lines += [f"  input: RGB {size}×{size} / 255, minus mean {_triple(info.mean)}, divided by std "
                  f"{_triple(info.std)}",
                  f"  classes in output order: {', '.join(info.classes)}"]
        return "\n".join(lines) + "\n"


def _triple(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.4f}" for v in values) + ")"


def cmd_export(args: argparse.Namespace, err: TextIO) -> ExportResult:
    store = RunStore(dirs_of(args).runs)
    store.get(args.run)  # an unknown run before a bad destination
    check_destination(store, args.output)  # before the slow part
    exported = export_run(store, args.run, args.format)
    return ExportResult(exported, write_export(exported, args.output, store=store))


# ============================================================================================
# runs


def run_row(info: RunInfo) -> dict[str, Any]:
    config = info.config if isinstance(info.config, dict) else {}
    data = config.get("data") if isinstance(config.get("data"), dict) else {}
    summary = info.summary
    return {"run_id": info.run_id, "status": info.status, "message": info.message,
            "config": config.get("config"), "batch_norm": config.get("batch_norm"),
            "init": config.get("init"), "dataset": data.get("source"), "input_size": data.get("input_size"),
            "epochs": config.get("epochs_planned") or config.get("epochs"), "epochs_done": summary.get("epochs_done"),
            "best_val_accuracy": summary.get("best_val_accuracy"), "test_accuracy": summary.get("test_accuracy"),
            "created_at": datetime.fromtimestamp(info.created_at).isoformat(timespec="seconds"),
            "path": info.path, "has_best": info.has_best, "has_predictions": info.has_predictions}


@dataclass
class RunsResult(Result):
    root: Path
    rows: list[dict[str, Any]]

    def json(self) -> dict[str, Any]:
        return {"runs_dir": self.root, "runs": self.rows}

    def text(self) -> str:
        if not self.rows:
            return f"no runs in {self.root} yet; start one with: python -m vgg train\n"
        header = ("run", "status", "model", "data", "epochs", "best val acc", "test acc")
        lines: list[Sequence[str]] = [header]
        for row in self.rows:
            model = f"{row['config'] or '?'}{'-BN' if row['batch_norm'] else ''} from {row['init'] or '?'}"
            epochs = f"{row['epochs_done'] if row['epochs_done'] is not None else '–'}/{row['epochs'] or '–'}"
            data = f"{row['dataset'] or '?'} {row['input_size'] or ''}px".strip()
            lines.append((row["run_id"], row["status"], model, data, epochs,
                          percent(row["best_val_accuracy"]), percent(row["test_accuracy"])))
        widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
        return "".join("  ".join(str(v).ljust(w) if i < 5 else str(v).rjust(w)
                                 for i, (v, w) in enumerate(zip(line, widths))).rstrip() + "\n" for line in lines)


def cmd_runs(args: argparse.Namespace, err: TextIO) -> RunsResult:
    store = RunStore(dirs_of(args).runs)
    return RunsResult(store.root, [run_row(info) for info in store.list_runs()])


# ============================================================================================
# dataset


def _pictures(n: int) -> str:
    return f"{n:,} picture{'' if n == 1 else 's'}"


def dataset_row(info: DatasetInfo) -> dict[str, Any]:
    return {"name": info.name, "pictures": info.pictures, "bytes": info.bytes, "version": info.version,
            "path": info.path, "classes": [{"name": c.name, "pictures": c.pictures, "bytes": c.bytes}
                                           for c in info.classes]}


@dataclass
class DatasetResult(Result):
    """What a ``dataset`` action did: one sentence, the data sets it shows, and an add's report."""

    action: str
    message: str
    datasets: list[DatasetInfo]
    report: AddReport | None = None

    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"action": self.action, "message": self.message,
                                "datasets": [dataset_row(info) for info in self.datasets]}
        if self.report is not None:
            data.update(added=self.report.added, new_classes=list(self.report.new_classes),
                        skipped=[{"file": f, "reason": r} for f, r in self.report.skipped])
        return data

    def text(self) -> str:
        lines = [self.message] if self.message else []
        for info in self.datasets:
            lines.append(f"{info.name}: {len(info.classes)} classes · {_pictures(info.pictures)} · "
                         f"{format_size(info.bytes)} · version {info.version}")
            width = max((len(c.name) for c in info.classes), default=5)
            lines += [f"  {c.name:<{width}}  {_pictures(c.pictures):>14}  {format_size(c.bytes):>9}"
                      for c in info.classes]
        return "\n".join(lines) + "\n"


def cmd_dataset(args: argparse.Namespace, err: TextIO) -> DatasetResult:
    data = dirs_of(args).data
    if args.action == "create":
        info = create_set(args.name, args.classes)
        return DatasetResult("create", f"created data set {info.name!r} in {info.path}; add pictures with: "
                             f"python -m vgg dataset add {info.name!r} CLASS FILE...", [info])
    if args.action == "add":
        report = add_pictures(args.name, args.class_name, [(f, Path(f)) for f in args.files])
        info = set_info(args.name)
        new = f" (new classes: {', '.join(report.new_classes)})" if report.new_classes else ""
        skipped = f"; skipped {len(report.skipped)} file(s)" if report.skipped else ""
        message = f"added {_pictures(report.added)} to {info.name!r}{new}{skipped}"
        result = DatasetResult("add", message, [info], report)
        if not args.json:
            result.errors += [f"warning: {one_line(reason, 300)} (skipped)" for _, reason in report.skipped]
        if report.added == 0:
            result.errors.append(f"error: no picture was added to {info.name!r}")
            result.exit_code = EXIT_ERROR
        return result
    if args.action == "list":
        sets = list(list_sets())
        empty = f"no data sets in {data} yet; make one with: python -m vgg dataset create NAME --classes A B"
        return DatasetResult("list", "" if sets else empty, sets)
    if args.action == "export":
        path = export_zip_to(args.name, Path(args.output))
        return DatasetResult("export", f"wrote {path}", [set_info(args.name)])
    delete_set(args.name)
    return DatasetResult("delete", f"deleted data set {args.name.strip()!r}", [])


COMMANDS: Mapping[str, Any] = {
    "summary": cmd_summary, "lr-find": cmd_lr_find, "train": cmd_train, "evaluate": cmd_evaluate,
    "predict": cmd_predict, "export": cmd_export, "runs": cmd_runs, "dataset": cmd_dataset,
}
