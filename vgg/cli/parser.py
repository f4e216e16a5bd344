"""The ``python -m vgg`` argument parser. Defaults and choices come from the config dataclasses
(``TrainConfig``, ``DataConfig``, ``LRFinderConfig``), so the command line and the app start
from the same settings; values are validated by those dataclasses, not here."""

from __future__ import annotations

import argparse
import os
from typing import Any, NoReturn

from vgg.datasets import MAX_CLASSES, MIN_CLASSES
from vgg.errors import one_line
from vgg.export import FORMATS, ONNX_OPSET
from vgg.lr_finder import LRFinderConfig
from vgg.model import CONFIG_NAMES, FREEZE_MODES
from vgg.settings import DEVICE_CHOICES
from vgg.train import OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig

EXIT_USAGE = 2
TRAIN = TrainConfig()  # the defaults, written once (in the dataclasses)
RANGE_TEST = LRFinderConfig()
EXAMPLES = """examples:
  python -m vgg summary --config D --batch-norm
  python -m vgg lr-find --dataset cifar10 --num-iter 100
  python -m vgg train --dataset cifar10 --epochs 3 --lr 5e-4
  python -m vgg runs
  python -m vgg evaluate <run id>
  python -m vgg predict <run id> photo.jpg
  python -m vgg export <run id> --format onnx -o model.onnx
  python -m vgg dataset create fruit --classes apple banana cherry
  python -m vgg dataset add fruit apple photo.jpg more_fruit.zip

'python -m vgg COMMAND --help' lists a command's options; add --json for one JSON object on stdout."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``error: <message> (see '<prog> --help')`` and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"error: {one_line(message)} (see '{self.prog} --help')\n")


def _images_per_class(value: str) -> int | None:
    """``all`` → None (every image); otherwise a whole number (its range is the data config's)."""
    if value.strip().lower() == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"images per class must be a whole number or 'all', got {value!r}")


def _braces(choices: tuple[str, ...]) -> str:
    return "{" + ",".join(choices) + "}"


def _add_dirs(p: argparse.ArgumentParser, *, data: bool = True) -> None:
    if data:
        p.add_argument("--data-dir", metavar="DIR", help="data directory (default $VGG_DATA_DIR or ./data)")
    p.add_argument("--runs-dir", metavar="DIR", help="runs directory (default $VGG_RUNS_DIR or ./runs)")


def _add_json(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout at the end (no progress bar)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=os.environ.get("VGG_DEVICE", TRAIN.device),
                   help=f"{', '.join(DEVICE_CHOICES)} (default $VGG_DEVICE or {TRAIN.device})")


def _add_model_and_data(p: argparse.ArgumentParser) -> None:
    """Options shared by ``train`` and ``lr-find``: the model, where it starts, the data, the step."""
    d = TRAIN.data
    p.add_argument("--config", default=TRAIN.config, metavar=_braces(CONFIG_NAMES),
                   help=f"VGG configuration of the paper's Table 1 (default {TRAIN.config} = VGG11)")
    p.add_argument("--batch-norm", action=argparse.BooleanOptionalAction, default=TRAIN.batch_norm,
                   help="batch norm after every convolution (default on: VGG11-BN is the lesson's model)")
    p.add_argument("--init", default=TRAIN.init, metavar="{scratch,imagenet,RUN,FILE.pth}",
                   help="start from random weights, ImageNet weights, an earlier run's best checkpoint "
                        f"(its id) or a state-dict file inside the data or runs dir (default {TRAIN.init})")
    p.add_argument("--freeze", default=TRAIN.freeze, choices=FREEZE_MODES,
                   help=f"what not to train when starting from pretrained weights (default {TRAIN.freeze})")
    p.add_argument("--dataset", default=d.source, metavar="{cifar10,synthetic,PATH}",
                   help="cifar10, the built-in synthetic shapes, or an image folder inside the data dir "
                        f"(default {d.source})")
    p.add_argument("--input-size", type=int, default=d.input_size, metavar="PIXELS",
                   help=f"side of the square images the network sees, 32 to 512 (default {d.input_size})")
    p.add_argument("--images-per-class", type=_images_per_class, default=d.images_per_class, metavar="N",
                   help=f"training images per class for a short run, or 'all' (default {d.images_per_class})")
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, metavar="F",
                   help=f"share of the training images held out for validation (default {d.val_fraction})")
    p.add_argument("--batch-size", type=int, default=TRAIN.batch_size,
                   help=f"images per step (default {TRAIN.batch_size})")
    p.add_argument("--lr", type=float, default=TRAIN.lr,
                   help=f"(peak) learning rate of the classifier (default {TRAIN.lr:g})")
    p.add_argument("--lr-ratio", type=float, default=TRAIN.lr_ratio, metavar="R",
                   help="features learn at lr × R (default 0.1 from pretrained weights, 1 from scratch)")
    p.add_argument("--optimizer", default=TRAIN.optimizer, choices=OPTIMIZERS, help=f"default {TRAIN.optimizer}")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=TRAIN.augment,
                   help="rotation ±5°, horizontal flips, random crops (default on)")
    p.add_argument("--seed", type=int, default=TRAIN.seed,
                   help=f"seed of initialisation, splits and batches (default {TRAIN.seed})")
    p.add_argument("--precision", default=TRAIN.precision, choices=PRECISIONS,
                   help=f"bf16 autocast where it pays (auto), or force one (default {TRAIN.precision})")
    _add_device(p)
    _add_dirs(p)
    _add_json(p)


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m vgg`` argument parser with its subcommands."""
    parser = _Parser(prog="python -m vgg", formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="VGG classroom on the command line: the same engine and run folders as the app.",
                     epilog=EXAMPLES)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("summary", help="layer table of a VGG configuration",
                       description="The layer table of one configuration: shapes, parameters, multiply-adds.")
    p.add_argument("--config", required=True, metavar=_braces(CONFIG_NAMES), help="configuration of the paper's Table 1")
    p.add_argument("--batch-norm", action="store_true", help="with batch norm (torchvision's *_bn)")
    p.add_argument("--input-size", type=int, default=224, metavar="PIXELS", help="32 to 512 (default 224)")
    p.add_argument("--num-classes", type=int, default=1000, help="classes of the last layer (default 1000)")
    _add_json(p)

    p = sub.add_parser("lr-find", help="learning-rate range test",
                       description="The LR range test (Smith 2015) on the model and data a training would use.")
    _add_model_and_data(p)
    r = RANGE_TEST
    p.add_argument("--start-lr", type=float, default=r.start_lr, help=f"lr of the first batch (default {r.start_lr:g})")
    p.add_argument("--end-lr", type=float, default=r.end_lr, help=f"lr of the last batch (default {r.end_lr:g})")
    p.add_argument("--num-iter", type=int, default=r.num_iter, help=f"batches (default {r.num_iter})")
    p.add_argument("--smooth-f", type=float, default=r.smooth_f, help=f"loss smoothing factor (default {r.smooth_f:g})")
    p.add_argument("--diverge-th", type=float, default=r.diverge_th,
                   help=f"stop once the smoothed loss exceeds this × the best (default {r.diverge_th:g})")
    p.add_argument("--skip-start", type=int, default=r.skip_start,
                   help=f"points ignored at the start (default {r.skip_start})")
    p.add_argument("--skip-end", type=int, default=r.skip_end, help=f"points ignored at the end (default {r.skip_end})")

    p = sub.add_parser("train", help="train from scratch or fine-tune; writes a run folder",
                       description="Train a VGG and write a run folder (the app's Compare and Evaluate "
                                   "pages show it too). Ctrl-C stops the run cleanly.")
    _add_model_and_data(p)
    p.add_argument("--epochs", type=int, default=TRAIN.epochs,
                   help="passes over the training images (default: auto, about 45,000 images: "
                        "1 epoch of CIFAR-10, 10 of the synthetic set)")
    p.add_argument("--schedule", default=TRAIN.schedule, choices=SCHEDULES,
                   help=f"one-cycle with --lr as the peak, or a constant lr (default {TRAIN.schedule})")
    p.add_argument("--time-budget", type=float, default=TRAIN.time_budget_s, metavar="SECONDS",
                   help="stop after this many seconds; the schedule fits into them")
    p.add_argument("--dropout", type=float, default=TRAIN.dropout, metavar="P",
                   help=f"dropout of the classifier (default {TRAIN.dropout}; torchvision's VGG has 0.5)")
    p.add_argument("--label-smoothing", type=float, default=TRAIN.label_smoothing, metavar="S",
                   help=f"share of each target spread over the other classes (default {TRAIN.label_smoothing})")
    p.add_argument("--tta", action=argparse.BooleanOptionalAction, default=TRAIN.tta,
                   help="average each validation and test answer with its mirror image's (default off)")

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

    p = sub.add_parser("export", help="write a run's best model as a file to take home",
                       description="Write a run's best model as a file that runs without this app: a "
                                   "torchvision state dict (pt) or ONNX (onnx). What the model expects "
                                   "(classes, input size, mean, std) is printed, and stored in the ONNX "
                                   "file's metadata.")
    p.add_argument("run", metavar="RUN", help="run id (see 'python -m vgg runs')")
    p.add_argument("--format", required=True, choices=FORMATS,
                   help="pt: state dict for torchvision.models.<name>(num_classes=K), loads with "
                        f"strict=True; onnx: opset {ONNX_OPSET}, input 'image' (N, 3, S, S), output 'logits'")
    p.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the file to write (replaced if it exists; never a file inside a run folder)")
    _add_dirs(p, data=False)
    _add_json(p)

    p = sub.add_parser("runs", help="list the training runs", description="The runs in the runs directory.")
    _add_dirs(p, data=False)
    _add_json(p)

    _add_dataset_commands(sub)
    return parser


def _add_dataset_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """``dataset create|add|list|export|delete``: a class's own data sets (``vgg.datasets``)."""
    p = sub.add_parser("dataset", help="a class's own data sets: create, add pictures, list, export, delete",
                       description="A class's own data sets: image folders <data dir>/NAME/CLASS/*.jpg "
                                   "that 'train --dataset NAME' and every page read. Pictures are checked "
                                   "and stored as JPEGs of at most 1024 px without metadata.")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, what: str) -> argparse.ArgumentParser:
        q = actions.add_parser(name, help=what, description=what[0].upper() + what[1:] + ".")
        q.add_argument("--data-dir", metavar="DIR", help="data directory (default $VGG_DATA_DIR or ./data)")
        _add_json(q)
        return q

    q = action("create", "make an empty data set with its classes")
    q.add_argument("name", metavar="NAME", help="letters, digits, spaces, '-' and '_'")
    q.add_argument("--classes", nargs="+", required=True, metavar="CLASS",
                   help=f"{MIN_CLASSES} to {MAX_CLASSES} class names")
    q = action("add", "add pictures and zips of class folders to a data set")
    q.add_argument("name", metavar="NAME", help="the data set")
    q.add_argument("class_name", metavar="CLASS",
                   help="the class of the pictures (and of the pictures at the top level of a zip)")
    q.add_argument("files", metavar="FILE_OR_ZIP", nargs="+",
                   help="pictures (JPEG, PNG, ...) and zips; a zip's class folders become classes")
    action("list", "list the data sets with their classes and picture counts")
    q = action("export", "write a data set as a zip of class folders")
    q.add_argument("name", metavar="NAME", help="the data set")
    q.add_argument("-o", "--output", required=True, metavar="FILE.zip", help="the zip file to write")
    q = action("delete", "delete a data set and all its pictures")
    q.add_argument("name", metavar="NAME", help="the data set")
