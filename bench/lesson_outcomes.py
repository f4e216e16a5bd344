"""The lesson's path, headless, on the real CIFAR-10: does the class see what the lesson says?

A teacher's steps with every default, on ``../shared/data/cifar10`` (as chosen on the Data page):

1. the LR range test (the notebook's settings) and its recommended learning rate;
2. the default training (Start with every default), then the same at the recommended LR;
3. the evaluation of that run: its test accuracy and the hidden-layer sample (every class);
4. the offline race of the Compare page (pretrain on the six animals, then fine-tuning against
   scratch on the four vehicles), through the job manager as the page runs it.

Prints each outcome against its target, one per line (``ok`` or ``MISSED``), and ``outcomes N/N``
last. About 10 minutes on a 2-core CPU.

    .venv/bin/python bench/lesson_outcomes.py [--seed 0] [--data ../shared/data/cifar10] [--runs DIR]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vgg.speedups.allocator import tune_allocator  # noqa: E402

tune_allocator()  # as the app and the CLI do, before torch allocates

from vgg import compare  # noqa: E402
from vgg.data import DataConfig  # noqa: E402
from vgg.evaluate import load_run_predictions  # noqa: E402
from vgg.jobs import JobManager  # noqa: E402
from vgg.lr_finder import LRFinderConfig, find_lr_for  # noqa: E402
from vgg.runs import RunStore  # noqa: E402
from vgg.settings import data_dir  # noqa: E402
from vgg.tasks import DataRegistry  # noqa: E402
from vgg.train import TrainConfig, fit  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"
DEFAULT_MIN_ACCURACY = 0.50  # the default training, on every default
DEFAULT_MAX_SECONDS = 120.0
RACE_MIN_GAP = 0.15  # transfer ahead of scratch, in test accuracy
RACE_MAX_SECONDS = 300.0


class Outcomes:
    def __init__(self) -> None:
        self.met: list[bool] = []

    def check(self, what: str, ok: bool, measured: str, target: str) -> None:
        self.met.append(ok)
        print(f"{'ok    ' if ok else 'MISSED'} {what}: {measured} (target {target})", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=Path, default=None, help="keep the runs here (default: a temporary folder)")
    args = ap.parse_args()
    if not (args.data / "train").is_dir():
        print(f"{args.data} is missing: this bench needs the real CIFAR-10 as JPEG class folders")
        return 1
    data = DataConfig(source=str(args.data), data_dir=args.data.parent, cache_dir=data_dir() / ".cache")
    registry = DataRegistry()
    splits = registry.get(data)
    out = Outcomes()
    with tempfile.TemporaryDirectory() as tmp:
        store = RunStore(args.runs or Path(tmp))
        default = TrainConfig(data=data, seed=args.seed)

        # 1. The range test and its advice.
        t = time.perf_counter()
        found = find_lr_for(default, LRFinderConfig(), splits=splits, runs_root=store.root)
        advice = found.recommended
        print(f"range test: {len(found.lrs)} batches in {time.perf_counter() - t:.0f} s; recommended "
              f"{advice.lr if advice else None} ({advice.rule if advice else 'none'})", flush=True)
        out.check("the range test recommends a learning rate", advice is not None,
                  f"{advice.lr:.2e}" if advice else "none", "a number")

        # 2. The default training, then the same at the recommended LR.
        plain = fit(default, store=store, splits=splits)
        out.check("the default training learns", (plain.test_accuracy or 0) >= DEFAULT_MIN_ACCURACY
                  and plain.seconds <= DEFAULT_MAX_SECONDS,
                  f"{plain.test_accuracy:.1%} test accuracy in {plain.seconds:.0f} s",
                  f"≥ {DEFAULT_MIN_ACCURACY:.0%} within {DEFAULT_MAX_SECONDS:.0f} s")
        advised = fit(replace(default, lr=advice.lr), store=store, splits=splits) if advice else plain
        out.check("training at the recommended LR learns at least as well as the default",
                  (advised.test_accuracy or 0) >= 0.9 * (plain.test_accuracy or 0),
                  f"{advised.test_accuracy:.1%} at {advice.lr if advice else default.lr:.2e} against "
                  f"{plain.test_accuracy:.1%} at {default.lr:.0e}", "≥ 90 % of the default's")

        # 3. The evaluation of the advised run, as the Evaluate page loads it.
        predictions = load_run_predictions(store, advised.run_id)
        shown = predictions.labels[predictions.hidden_rows]
        out.check("the evaluation shows the run's own test accuracy",
                  abs(predictions.accuracy - (advised.test_accuracy or 0)) < 1e-6,
                  f"{predictions.accuracy:.2%} against {advised.test_accuracy:.2%} at the end of the run",
                  "equal")
        kinds = len(set(shown.tolist()))
        out.check("the hidden-layer plots show every class", kinds == len(splits.classes),
                  f"{kinds} classes in {len(shown)} points", f"{len(splits.classes)} classes")

        # 4. The offline race, through the job manager as the Compare page submits it.
        manager = JobManager()
        try:
            plan = compare.TransferPlan(compare.race_config(data, seed=args.seed))
            t = time.perf_counter()
            chain = manager.wait(manager.submit(
                "train", "Race · step 1: pretraining", compare.transfer_task(plan, registry, store, manager)))
            followups = chain.extra.get("followups", ())
            results = [manager.wait(job).result for job in followups]
            seconds = time.perf_counter() - t
        finally:
            manager.shutdown()
        if len(results) != 2:
            out.check("the race ran", False, f"pretraining {chain.status.value}: {chain.message}", "two runs")
        else:
            scratch, transfer = (r.test_accuracy or 0.0 for r in results)
            print(f"race: pretraining {chain.result.test_accuracy:.1%} on the animals in "
                  f"{chain.result.seconds:.0f} s; scratch {scratch:.1%}, transfer {transfer:.1%}", flush=True)
            out.check("transfer beats scratch in the race", transfer - scratch >= RACE_MIN_GAP,
                      f"{(transfer - scratch) * 100:+.1f} points ({transfer:.1%} against {scratch:.1%})",
                      f"≥ {RACE_MIN_GAP * 100:.0f} points")
            out.check("the whole race is short", seconds <= RACE_MAX_SECONDS, f"{seconds:.0f} s",
                      f"≤ {RACE_MAX_SECONDS:.0f} s")
    print(f"outcomes {sum(out.met)}/{len(out.met)}")
    return 0 if all(out.met) else 1


if __name__ == "__main__":
    raise SystemExit(main())
