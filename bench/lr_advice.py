"""Does the LR finder's recommendation lead to learning? A matrix of setups the app offers.

For each setup: the LR range test as the app runs it (the notebook's settings, the training's own
step), its recommended learning rate (``vgg.lr_finder.recommend``), then a training at that LR and
at each LR of a sweep, all on the budget of the default training (``TrainConfig``'s automatic
epochs, about 45,000 training images). One row per setup:

    setup  recommended LR and its test accuracy  best sweep LR and its test accuracy  ratio

and the worst ratio last (``worst 0.93``). The target: in every setup the recommendation reaches
at least 90 % of the best accuracy of the sweep, and never less than the default LR.

Setups (on ``../shared/data/cifar10``; the synthetic set needs no files): CIFAR-10 from scratch
with Adam and with SGD, at 64 px, an offline transfer from a run pretrained on CIFAR-10's six
animals (freeze none, freeze features) fine-tuned on the four vehicles, the synthetic set, and a
photo folder of two classes (cat and dog, 300 pictures each, made from CIFAR-10's JPEGs).

Trainings are kept in ``--cache`` (JSON lines, one per setup, LR and seed), so that a second run
only trains what is new; ``--fresh`` ignores it. About 2 hours on a 2-core CPU with the default
budget; ``--per-class 500 --epochs 3`` (15,000 images seen per training, a third of the default
budget; the 64 px setup costs four times as much per image) takes about 45 minutes.

    .venv/bin/python bench/lr_advice.py [--setups NAME ...] [--seeds 0] [--per-class N] [--epochs N]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgg.speedups.allocator import tune_allocator  # noqa: E402

tune_allocator()  # as the app and the CLI do, before torch allocates

from vgg.data import DataConfig, load_data  # noqa: E402
from vgg.lr_finder import LRFinderConfig, find_lr_for, recommend  # noqa: E402
from vgg.runs import RunStore  # noqa: E402
from vgg.settings import data_dir  # noqa: E402
from vgg.train import TrainConfig, fit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
ADAM_SWEEP = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3)
SGD_SWEEP = (1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1)
ANIMALS = ("bird", "cat", "deer", "dog", "frog", "horse")
VEHICLES = ("airplane", "automobile", "ship", "truck")


def photo_folder(root: Path, per_class: int = 300) -> Path:
    """A folder of two classes of "photos" (cat, dog) copied from CIFAR-10's JPEG folders."""
    folder = root / "photos-cat-dog"
    if not folder.is_dir():
        for name in ("cat", "dog"):
            (folder / name).mkdir(parents=True)
            for path in sorted((SHARED / "train" / name).iterdir())[:per_class]:
                shutil.copyfile(path, folder / name / path.name)
    return folder


def setups(work: Path, store: RunStore, per_class: int | None = None,
           epochs: int | None = None) -> dict[str, tuple[TrainConfig, tuple[float, ...]]]:
    """name → (the training the app would run, the sweep of learning rates). ``per_class`` and
    ``epochs`` shrink the CIFAR-10 setups' budget (None: the app's defaults)."""
    cifar = DataConfig(source=str(SHARED), data_dir=SHARED.parent, cache_dir=data_dir() / ".cache",
                       images_per_class=per_class)
    base = TrainConfig(data=cifar, epochs=epochs)
    out = {
        "cifar10 scratch adam": (base, ADAM_SWEEP),
        "cifar10 scratch sgd": (replace(base, optimizer="sgd"), SGD_SWEEP),
        "cifar10 64px adam": (replace(base, data=replace(cifar, input_size=64)), ADAM_SWEEP),
        "synthetic adam": (TrainConfig(epochs=epochs), ADAM_SWEEP),
    }
    photos = photo_folder(work)
    out["photos 2 classes adam"] = (TrainConfig(data=DataConfig(source=str(photos), data_dir=work,
                                                                cache_dir=work / ".cache")), ADAM_SWEEP)
    pre = pretrained_run(store, TrainConfig(data=replace(cifar, classes=ANIMALS, images_per_class=None)))
    vehicles = replace(cifar, classes=VEHICLES)
    out["transfer adam"] = (replace(base, data=vehicles, init=f"run:{pre}"), ADAM_SWEEP)
    out["transfer frozen adam"] = (replace(base, data=vehicles, init=f"run:{pre}", freeze="features"), ADAM_SWEEP)
    return out


def pretrained_run(store: RunStore, cfg: TrainConfig) -> str:
    """The run the transfer setups start from: the default training on the six animals (once)."""
    for info in store.list_runs():
        if info.status == "done" and info.config.get("data", {}).get("classes") == list(ANIMALS):
            return info.run_id
    result = fit(cfg, store=store)
    print(f"pretrained on the animals: run {result.run_id}, test {result.test_accuracy:.3f}", flush=True)
    return result.run_id


def load_cache(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(row["setup"], row["key"], row["seed"]): row for row in rows}


def remember(path: Path, row: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setups", nargs="*", default=None, help="names (default: all)")
    ap.add_argument("--seeds", nargs="*", type=int, default=[0])
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "vgg-lr-advice.jsonl")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vgg-lr-advice")
    ap.add_argument("--fresh", action="store_true", help="ignore the cache")
    ap.add_argument("--per-class", type=int, default=None, help="CIFAR-10 images per class (default: all)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per training (default: automatic)")
    args = ap.parse_args()
    if not (SHARED / "train").is_dir():
        print(f"{SHARED} is missing: this bench needs the real CIFAR-10")
        return 1
    args.work.mkdir(parents=True, exist_ok=True)
    store = RunStore(args.work / "runs")
    cache = {} if args.fresh else load_cache(args.cache)
    matrix = setups(args.work, store, args.per_class, args.epochs)
    budget = f"per-class {args.per_class} epochs {args.epochs}"
    names = args.setups or list(matrix)
    rows = []
    for name in names:
        cfg, sweep = matrix[name]
        splits = load_data(cfg.data)
        for seed in args.seeds:
            key = (name, f"range test {budget}", seed)
            if key not in cache:
                t = time.perf_counter()
                found = find_lr_for(replace(cfg, seed=seed), LRFinderConfig(), splits=splits, runs_root=store.root)
                cache[key] = {"setup": name, "key": key[1], "seed": seed, "lrs": list(found.lrs),
                              "smoothed": list(found.smoothed), "seconds": time.perf_counter() - t}
                remember(args.cache, cache[key])
            curve = cache[key]
            advice = recommend(curve["lrs"], curve["smoothed"])
            lrs = sorted({*sweep, cfg.lr, advice.lr if advice else cfg.lr})
            accuracy: dict[float, float] = {}
            for lr in lrs:
                key = (name, f"lr {lr:.3g} {budget}", seed)
                if key not in cache:
                    result = fit(replace(cfg, lr=lr, seed=seed), splits=splits, runs_root=store.root)
                    cache[key] = {"setup": name, "key": key[1], "seed": seed, "lr": lr,
                                  "test": result.test_accuracy, "seconds": result.seconds, "status": result.status}
                    remember(args.cache, cache[key])
                    print(f"  {name} lr {lr:.3g}: test {result.test_accuracy}", flush=True)
                accuracy[lr] = cache[key]["test"] or 0.0
            rec_lr = advice.lr if advice else cfg.lr
            best_lr = max(sweep, key=lambda lr: accuracy[lr])
            ratio = accuracy[rec_lr] / max(accuracy[best_lr], accuracy[rec_lr])
            rows.append(ratio)
            print(f"{name} (seed {seed}): recommended {rec_lr:.2e} → {accuracy[rec_lr]:.1%}; best of the sweep "
                  f"{best_lr:.0e} → {accuracy[best_lr]:.1%}; default {cfg.lr:.0e} → {accuracy[cfg.lr]:.1%}; "
                  f"ratio {ratio:.2f}", flush=True)
    print(f"worst {min(rows):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
