"""Time to accuracy, the figure a class feels.

Trains VGG11-BN from scratch at 32 px on ``../shared/data/cifar10`` with the default short-run
settings (Adam, one-cycle) for a fixed wall-time budget (3 minutes by default, evaluation of each
epoch included), then evaluates the best checkpoint on the test set. Prints the peak resident
memory, and the test accuracy on its last line: ``test_accuracy 0.52``.

    .venv/bin/python bench/time_to_accuracy.py [--budget 180] [--images-per-class 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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
        lr=args.lr or defaults.lr,
    )

    def on_event(e) -> None:
        if isinstance(e, EpochEvent):
            print(f"epoch {e.epoch}: train {e.train_accuracy:.3f}  val {e.val_accuracy:.3f}  "
                  f"({e.elapsed:.0f} s)", flush=True)

    with tempfile.TemporaryDirectory() as runs:  # a run folder, as the app and the CLI write one
        result = fit(cfg, store=RunStore(Path(runs)), splits=splits, on_event=on_event)
    peak_mb = peak_rss_bytes() / 2**20
    print(f"steps {result.steps}, {result.images_per_second:.0f} img/s, {result.seconds:.0f} s, "
          f"best val {result.best_val_accuracy:.3f}")
    print(f"peak_rss_mb {peak_mb:.0f}")
    print(f"test_accuracy {result.test_accuracy:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
