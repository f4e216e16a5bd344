"""Time to accuracy, the figure a class feels.

Trains VGG11-BN from scratch at 32 px on ``../shared/data/cifar10`` with the Train page's
defaults (every training image, Adam, one-cycle, batch 128, no dropout) for a fixed wall-time
budget (3 minutes by default, evaluation of each epoch included; the one-cycle schedule fits into
it), then evaluates the best checkpoint on the test set. One training per seed, one after the
other; prints each, the peak resident memory, and the median test accuracy on its last line:
``test_accuracy 0.69``.

    .venv/bin/python bench/time_to_accuracy.py [--budget 180] [--seeds 0 1 2] [--images-per-class N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgg.speedups.allocator import tune_allocator  # noqa: E402

tune_allocator()  # as the app and the CLI do, before torch allocates

from vgg.data import DataConfig, load_data  # noqa: E402
from vgg.events import EpochEvent  # noqa: E402
from vgg.resources import peak_rss_bytes  # noqa: E402
from vgg.runs import RunStore  # noqa: E402
from vgg.settings import data_dir  # noqa: E402
from vgg.train import TrainConfig, fit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=180.0, help="wall-time budget in seconds")
    ap.add_argument("--images-per-class", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None, help="default: as many as fit in the budget")
    ap.add_argument("--lr", type=float, default=None, help="peak LR (default: TrainConfig's)")
    ap.add_argument("--schedule", default="onecycle", choices=["onecycle", "constant"])
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--dropout", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--label-smoothing", type=float, default=None, help="default: TrainConfig's")
    ap.add_argument("--batch-size", type=int, default=None, help="default: TrainConfig's")
    ap.add_argument("--tta", action="store_true", help="flip test-time augmentation")
    args = ap.parse_args()

    defaults = TrainConfig()
    ipc = args.images_per_class or defaults.data.images_per_class
    if (args.data / "train").is_dir():
        data_cfg = DataConfig(source=str(args.data), input_size=32, images_per_class=ipc,
                              data_dir=args.data.parent, cache_dir=data_dir() / ".cache")
    else:
        print("../shared/data absent: using the synthetic set")
        data_cfg = DataConfig(source="synthetic", input_size=32, images_per_class=ipc)
    t = time.perf_counter()
    splits = load_data(data_cfg)
    print(f"data: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test "
          f"images, loaded in {time.perf_counter() - t:.1f} s")
    cfg = TrainConfig(
        config="A", batch_norm=True, init="scratch", data=data_cfg, epochs=args.epochs or 1000,
        time_budget_s=args.budget, schedule=args.schedule, precision=args.precision,
        lr=args.lr or defaults.lr, tta=args.tta,
        dropout=defaults.dropout if args.dropout is None else args.dropout,
        label_smoothing=defaults.label_smoothing if args.label_smoothing is None else args.label_smoothing,
        batch_size=args.batch_size or defaults.batch_size,
    )

    def on_event(e) -> None:
        if isinstance(e, EpochEvent):
            print(f"epoch {e.epoch}: train {e.train_accuracy:.3f}  val {e.val_accuracy:.3f}  "
                  f"({e.elapsed:.0f} s)", flush=True)

    accuracies = []
    for seed in args.seeds:
        with tempfile.TemporaryDirectory() as runs:  # a run folder, as the app and the CLI write one
            result = fit(replace(cfg, seed=seed), store=RunStore(Path(runs)), splits=splits,
                         on_event=on_event)
        accuracies.append(result.test_accuracy or 0.0)
        print(f"seed {seed}: steps {result.steps}, {result.images_per_second:.0f} img/s, "
              f"{result.seconds:.0f} s, best val {result.best_val_accuracy:.3f}, "
              f"test {result.test_accuracy:.3f}",
              flush=True)
    peak_mb = peak_rss_bytes() / 2**20
    print(f"peak_rss_mb {peak_mb:.0f}")
    print(f"test accuracies {' '.join(f'{a:.3f}' for a in accuracies)}")
    print(f"test_accuracy {statistics.median(accuracies):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
