"""The engine's other speed and precision figures, on real CIFAR-10 at 32 px (VGG11-BN, batch 128).

1. LR range test: the notebook's 100 iterations (1e-7 → 10), wall seconds (target ≤ 60 s).
2. Frozen features: with the features frozen and augmentation off the engine computes the feature
   maps once and trains the classifier on them. Training images per second of that against full
   fine-tuning (nothing frozen, augmentation on), runs interleaved, medians (target ≥ 5×); the
   whole run's wall time, feature computation included, too.
3. bf16 autocast against fp32: the same seed, data and schedule; the per-epoch validation curves
   of both, to judge whether bf16 learns like fp32.

Frozen features need pretrained weights; offline there are none, so a randomly initialised
torchvision-layout state dict stands in (speed does not depend on the values of the weights).
The last lines are the figures: ``lr_find_seconds 41.2``, ``frozen_speedup 12.3``, ….

    .venv/bin/python bench/engine_checks.py [--images-per-class 500] [--repeats 2] [--data ../shared/data/cifar10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgg.speedups.allocator import tune_allocator  # noqa: E402

tune_allocator()  # as the app and the CLI do, before torch allocates

from vgg.data import DataConfig, load_data  # noqa: E402
from vgg.events import EpochEvent  # noqa: E402
from vgg.lr_finder import (
    LRFinderConfig,  # noqa: E402
    find_lr_for,  # noqa: E402
)
from vgg.model import build_vgg  # noqa: E402
from vgg.settings import data_dir  # noqa: E402
from vgg.train import TrainConfig, fit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images-per-class", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs of each frozen/full setting")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of the bf16 / fp32 comparison")
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--skip", nargs="*", default=[], choices=["lr", "frozen", "precision"])
    args = ap.parse_args()

    if (args.data / "train").is_dir():
        data_cfg = DataConfig(source=str(args.data), input_size=32, images_per_class=args.images_per_class,
                              data_dir=args.data.parent, cache_dir=data_dir() / ".cache")
    else:
        print("../shared/data absent: using the synthetic set")
        data_cfg = DataConfig(source="synthetic", input_size=32, images_per_class=args.images_per_class)
    splits = load_data(data_cfg)
    print(f"data: {len(splits.train)} train, {len(splits.val)} val, {len(splits.test)} test images; "
          f"threads {torch.get_num_threads()}", flush=True)
    base = TrainConfig(config="A", batch_norm=True, data=data_cfg, batch_size=128, device="cpu")
    figures: list[str] = []

    if "lr" not in args.skip:
        t = time.perf_counter()
        result = find_lr_for(base, LRFinderConfig(), splits=splits)
        seconds = time.perf_counter() - t
        steepest = result.suggestions.get("steepest")
        print(f"LR range test: {len(result.lrs)} iterations, stopped early {result.stopped_early}, "
              f"restored {result.restored}, steepest {steepest.lr if steepest else None}", flush=True)
        figures.append(f"lr_find_seconds {seconds:.1f}")

    if "frozen" not in args.skip:
        weights = data_dir() / "bench-random-vgg11_bn.pth"  # inside the data dir, as .pth files must be
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save(build_vgg("A", batch_norm=True, num_classes=1000).state_dict(), weights)
        runs = {
            "full fine-tuning": replace(base, init=str(weights), freeze="none", augment=True, epochs=1),
            "frozen features": replace(base, init=str(weights), freeze="features", augment=False, epochs=1),
        }
        speed: dict[str, list[float]] = {name: [] for name in runs}
        wall: dict[str, list[float]] = {name: [] for name in runs}
        try:
            for i in range(args.repeats):
                for name, cfg in runs.items():
                    t = time.perf_counter()
                    result = fit(cfg, splits=splits)
                    wall[name].append(time.perf_counter() - t)
                    speed[name].append(result.images_per_second)
                    print(f"{name} #{i + 1}: {result.images_per_second:.0f} img/s, {wall[name][-1]:.1f} s "
                          f"for the run, val {result.best_val_accuracy:.3f}", flush=True)
        finally:
            weights.unlink(missing_ok=True)
        med = {name: statistics.median(v) for name, v in speed.items()}
        med_wall = {name: statistics.median(v) for name, v in wall.items()}
        figures.append(f"full_finetune_images_per_second {med['full fine-tuning']:.0f}")
        figures.append(f"frozen_images_per_second {med['frozen features']:.0f}")
        figures.append(f"frozen_wall_speedup {med_wall['full fine-tuning'] / med_wall['frozen features']:.2f}")
        figures.append(f"frozen_speedup {med['frozen features'] / med['full fine-tuning']:.2f}")

    if "precision" not in args.skip:
        curves: dict[str, list[tuple[int, float, float]]] = {}
        for precision in ("fp32", "bf16"):
            cfg = replace(base, precision=precision, epochs=args.epochs, seed=0)
            epochs: list[tuple[int, float, float]] = []

            def on_event(e: object, epochs: list[tuple[int, float, float]] = epochs) -> None:
                if isinstance(e, EpochEvent):
                    epochs.append((e.epoch, e.val_loss, e.val_accuracy))

            result = fit(cfg, splits=splits, on_event=on_event)
            curves[precision] = epochs
            print(f"{precision}: {result.images_per_second:.0f} img/s, test {result.test_accuracy:.3f}", flush=True)
        for (epoch, l32, a32), (_, l16, a16) in zip(curves["fp32"], curves["bf16"], strict=False):
            figures.append(f"epoch {epoch}: fp32 val loss {l32:.3f} acc {a32:.3f} · "
                           f"bf16 val loss {l16:.3f} acc {a16:.3f}")

    print("\n".join(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
