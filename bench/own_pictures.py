"""A class's own pictures, from Start to a trained model: the fast fine-tune's two figures.

Builds a data set the way the Data page does (``vgg.datasets``: re-encoded JPEGs in class folders),
3 classes × 30 pictures by default taken from an image folder (the real CIFAR-10 when it is there),
then trains ``vgg.train.own_pictures_recipe`` on it with ``vgg.train.fit``, as the Train page's job
does: decoding the pictures, loading the weights, the frozen features, ten epochs of the last layer,
the test split and every checkpoint written.

- **cold**: the decoded-image and feature caches deleted first (the first pupil's run);
- **cached**: the features computed by an earlier run on the same pictures and weights (every
  later pupil's run).

Runs alternate (cold, cached, cold, cached, ...) and the medians are printed last, in that order.
Weights: ImageNet's file where it is cached here; ``--init run:<id> --runs DIR`` starts from an
earlier run instead; without either, a torchvision-shaped state dict of random weights is saved in a
temporary TORCH_HOME (the timing is the same, the accuracy is then meaningless and not printed).

    .venv/bin/python bench/own_pictures.py                      # 3 × 30 from ../shared/data/cifar10
    .venv/bin/python bench/own_pictures.py --init run:<id> --runs /path/to/runs --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEFAULT_PICTURES = ROOT.parent / "shared" / "data" / "cifar10" / "train"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pictures", type=Path, default=DEFAULT_PICTURES,
                        help="a folder of class folders to take the pictures from (default: %(default)s)")
    parser.add_argument("--classes", nargs="+", default=["cat", "ship", "truck"])
    parser.add_argument("--per-class", type=int, default=30)
    parser.add_argument("--init", default="imagenet", help="'imagenet' or 'run:<id>' (with --runs)")
    parser.add_argument("--runs", type=Path, help="the runs dir holding --init's run")
    parser.add_argument("--repeats", type=int, default=3, help="cold and cached runs each (default 3)")
    parser.add_argument("--size", type=int, default=224, help="the model's input size (default 224, ImageNet's)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="own-pictures-"))
    os.environ["VGG_DATA_DIR"] = str(work / "data")
    os.environ["VGG_RUNS_DIR"] = str(work / "runs")
    (work / "data").mkdir()
    if args.init.startswith("run:"):  # a copy: the bench's own runs never land in a real runs dir
        if args.runs is None:
            sys.exit("--init run:<id> needs --runs (the runs dir that holds it)")
        run_id = args.init.removeprefix("run:")
        shutil.copytree(args.runs / run_id, work / "runs" / run_id)
    from vgg.model import pretrained_available, weights_cache_dir, weights_file_name

    meaningful = True
    if args.init == "imagenet" and not pretrained_available("A", True):
        import torch
        import torchvision

        os.environ["TORCH_HOME"] = str(work / "torch")
        path = weights_cache_dir() / weights_file_name("A", True)
        path.parent.mkdir(parents=True)
        torch.save(torchvision.models.vgg11_bn().state_dict(), path)
        meaningful = False
        print("ImageNet weights are not cached here: timing with random torchvision-shaped weights "
              "(accuracy not shown)")

    from vgg import datasets
    from vgg.data import DataConfig
    from vgg.runs import RunStore
    from vgg.train import fit, own_pictures_recipe

    datasets.create_set("own", args.classes)
    for cls in args.classes:
        files = sorted(p for p in (args.pictures / cls).iterdir() if p.is_file())[: args.per_class]
        if len(files) < args.per_class:
            sys.exit(f"{args.pictures / cls} has {len(files)} pictures; --per-class asks for {args.per_class}")
        datasets.add_pictures("own", cls, [(f.name, f) for f in files])
    info = datasets.set_info("own")
    print(f"data set: {len(info.classes)} classes × {args.per_class} pictures ({datasets.format_size(info.bytes)}) "
          f"from {args.pictures}; start: {args.init}")
    cfg = own_pictures_recipe(DataConfig(source="own", input_size=224), args.init, args.size)
    store = RunStore(Path(os.environ["VGG_RUNS_DIR"]))
    cache = Path(os.environ["VGG_DATA_DIR"]) / ".cache"
    times: dict[str, list[float]] = {"cold": [], "cached": []}
    for i in range(args.repeats):
        for kind in ("cold", "cached"):
            if kind == "cold":
                shutil.rmtree(cache, ignore_errors=True)
            start = time.perf_counter()
            result = fit(cfg, store=store)
            seconds = time.perf_counter() - start
            assert result.status == "done", result
            times[kind].append(seconds)
            accuracy = f", test accuracy {result.test_accuracy:.1%}" if meaningful else ""
            print(f"run {i + 1} {kind:6s}: {seconds:5.1f} s{accuracy}", flush=True)
    shutil.rmtree(work, ignore_errors=True)
    print(f"Start → trained model, {len(args.classes)} classes × {args.per_class} pictures at {args.size} px "
          f"(median of {args.repeats}):")
    print(f"with the feature computation: {statistics.median(times['cold']):.1f} s")
    print(f"features cached:              {statistics.median(times['cached']):.1f} s")


if __name__ == "__main__":
    main()
