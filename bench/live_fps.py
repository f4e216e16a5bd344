"""Frames per second of the Classify page's live mode (``vgg.live.LiveClassifier``) on this machine.

Each frame is a 640×480 camera-sized picture; the classifier resizes it to the model's input size,
runs the model, writes the top 3 on it (and with Grad-CAM blends the heat map over it), exactly as
the live stream does. Models: VGG11-BN at 224 px (ImageNet's file where it is cached, else a
torchvision-shaped file of random weights: the same work), and with ``--run ID --runs DIR`` a
run's own model at its input size. The medians are printed last.

    .venv/bin/python bench/live_fps.py
    .venv/bin/python bench/live_fps.py --run <id> --runs runs --frames 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def frames_per_second(classifier, frames: list[np.ndarray]) -> float:  # noqa: ANN001
    classifier(frames[0])  # the first frame pays for the kernels' set-up
    seconds = []
    for frame in frames:
        start = time.perf_counter()
        classifier(frame)
        seconds.append(time.perf_counter() - start)
    return 1.0 / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--run", help="a run id: also measure its model")
    parser.add_argument("--runs", type=Path, help="the runs dir holding --run")
    args = parser.parse_args()

    import torch
    import torchvision

    from vgg.inference import load_imagenet_model, load_model
    from vgg.live import LiveClassifier, frame_model
    from vgg.model import pretrained_available, weights_cache_dir, weights_file_name
    from vgg.runs import RunStore

    if not pretrained_available("A", True):
        os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="live-fps-")
        path = weights_cache_dir() / weights_file_name("A", True)
        path.parent.mkdir(parents=True)
        torch.save(torchvision.models.vgg11_bn().state_dict(), path)
    models = {"VGG11-BN, 224 px (ImageNet's)": load_imagenet_model("A", True)}
    if args.run:
        loaded = load_model(args.run, store=RunStore(args.runs or ROOT / "runs"))
        models[f"run {args.run}, {loaded.input_size} px"] = loaded
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    frames = [np.roll(base, 8 * i, axis=1) for i in range(args.frames)]  # a moving picture
    print(f"{torch.get_num_threads()} threads, {args.frames} frames of 640×480 per figure")
    results = []
    for name, loaded in models.items():
        for cam in (False, True):
            fps = frames_per_second(LiveClassifier(frame_model(loaded), grad_cam=cam), frames)
            results.append(f"{name}{' + Grad-CAM' if cam else ''}: {fps:.1f} frames/s")
    for line in results:
        print(line)


if __name__ == "__main__":
    main()
