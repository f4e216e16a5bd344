"""Training images per second: this engine against the notebook's loop, interleaved step by step.

The notebook's loop: torchvision ``ImageFolder`` with per-image PIL transforms (Resize,
RandomRotation(5), RandomHorizontalFlip, RandomCrop with padding, ToTensor, Normalize), a
``DataLoader`` with batch 128, fp32, NCHW, ``torch.optim.Adam`` with the two parameter groups.
The engine: uint8 tensors decoded once, batched augmentation, channels_last, fused Adam, bf16
autocast where the CPU has bf16 units, the 3×3 convolutions on maps of 4×4 and below as one
matrix product, the adaptive pool folded into the first classifier layer and, on 1×1 feature maps,
that layer trained through its compact update (``vgg.speedups``): exactly what
``vgg.train.start_training`` sets up for a training.

Both train VGG11-BN at 32×32 on the same images, one step of each in turn, so that the machine's
noise hits both alike. The last line is the ratio of the medians: ``ratio 5.21``.

    .venv/bin/python bench/throughput.py [--steps 30] [--data ../shared/data/cifar10]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# No vgg.speedups.allocator.tune_allocator() here, unlike the app, the CLI and the other benchmarks: it is
# process-wide, and the notebook loop's 411 MB blocks interleaved with the engine's in one heap made
# the engine slower here (245 against 375 img/s in one run each), though each alone is faster tuned.

from vgg.augment import iterate_batches  # noqa: E402
from vgg.data import DataConfig, load_data  # noqa: E402
from vgg.finetune import prepare_model  # noqa: E402
from vgg.settings import data_dir  # noqa: E402
from vgg.train import TrainConfig, start_training, train_step  # noqa: E402

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10"


def notebook_batches(root: Path | None, size: int, batch_size: int, mean, std):
    """The notebook's input pipeline (per-image PIL transforms), cycling forever."""
    from torchvision import datasets, transforms

    tf = transforms.Compose([
        transforms.Resize(size),
        transforms.RandomRotation(5),
        transforms.RandomHorizontalFlip(0.5),
        transforms.RandomCrop(size, padding=2),
        transforms.ToTensor(),
        transforms.Normalize(mean, std),
    ])
    if root is not None:
        ds = datasets.ImageFolder(str(root / "train"), transform=tf)
    else:  # the synthetic set, served through the same per-image PIL path
        from vgg.data import DataConfig as _DC
        from vgg.data import load_data as _ld

        splits = _ld(_DC(source="synthetic", input_size=size))
        pil = transforms.ToPILImage()

        class _DS(torch.utils.data.Dataset):
            def __len__(self) -> int:
                return len(splits.train)

            def __getitem__(self, i: int):
                return tf(pil(splits.train.images[i])), int(splits.train.labels[i])

        ds = _DS()
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, drop_last=True)
    while True:
        yield from loader


def engine_batches(splits, batch_size: int, pipeline, generator: torch.Generator):
    while True:
        for _, images, labels in iterate_batches(splits.train, batch_size, shuffle=True, generator=generator):
            if len(labels) == batch_size:
                yield pipeline(images, generator), labels


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="timed steps of each loop (after warm-up)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    args = ap.parse_args()

    root = args.data if (args.data / "train").is_dir() else None
    print(f"data: {root or 'synthetic (../shared/data absent)'}", flush=True)
    torch.manual_seed(0)

    # The notebook's model: torchvision's own VGG11-BN (nn.Conv2d, the 7×7 average pool), NCHW,
    # foreach Adam with the notebook's two parameter groups (features at lr/10).
    nb_model = torchvision.models.vgg11_bn(num_classes=10)
    nb_opt = torch.optim.Adam([{"params": nb_model.features.parameters(), "lr": 5e-5},
                               {"params": nb_model.classifier.parameters(), "lr": 5e-4}], lr=5e-4)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    nb_iter = notebook_batches(root, args.size, args.batch_size, mean, std)

    # The engine.
    if root is not None:
        splits = load_data(DataConfig(source=str(root), input_size=args.size, data_dir=root.parent,
                                      cache_dir=data_dir() / ".cache"))
    else:
        splits = load_data(DataConfig(source="synthetic", input_size=args.size))
    cfg = TrainConfig(lr=5e-4, precision=args.precision, device="cpu", input_size=args.size)
    prepared = prepare_model(cfg, tuple(splits.classes), mean, std)
    t = start_training(cfg, splits, prepared)  # what a training steps (the compact first Linear at 32 px)
    en_net, en_opt, dtype = t.net, t.optimizer, prepared.autocast_dtype
    en_iter = engine_batches(splits, args.batch_size, t.pipeline, torch.Generator().manual_seed(0))
    print(f"engine precision: {dtype or 'fp32'}; threads {torch.get_num_threads()}", flush=True)

    def nb_step() -> float:
        t = time.perf_counter()
        x, y = next(nb_iter)
        logits = nb_model(x)
        loss = F.cross_entropy(logits, y)
        nb_opt.zero_grad()
        loss.backward()
        nb_opt.step()
        return args.batch_size / (time.perf_counter() - t)

    def en_step() -> float:
        t = time.perf_counter()
        x, y = next(en_iter)
        train_step(en_net, en_opt, x, y, dtype)
        return args.batch_size / (time.perf_counter() - t)

    nb_model.train()
    en_net.train()
    for _ in range(args.warmup):
        nb_step()
        en_step()
    nb, en = [], []
    for i in range(args.steps):
        nb.append(nb_step())
        en.append(en_step())
        print(f"step {i + 1:3d}: notebook {nb[-1]:7.1f} img/s   engine {en[-1]:7.1f} img/s", flush=True)
    nb_med, en_med = statistics.median(nb), statistics.median(en)
    print(f"notebook median {nb_med:.1f} img/s")
    print(f"engine median {en_med:.1f} img/s")
    print(f"ratio {en_med / nb_med:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
