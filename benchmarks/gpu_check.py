"""Training and inference speed of the full-width models on the GPU, with the CPU's beside them.

    python3 benchmarks/gpu_check.py [--json OUT.json] [--cpu-only]

Run by ``benchmarks/gpu_check.sh``. Training: examples/s of
:class:`noisytag.learn.train.TrainingModule`'s own step (the augmentation chain on the device, BCE on soft
targets, AdamW) on random 128×128 batches, for full-width cnn1 and VGG-16-BN; 16-bit mixed precision on the GPU (autocast + GradScaler, as Lightning's
``16-mixed``), 32-bit on the CPU. Inference: × real time of one model through the window engine
(:func:`noisytag.infer.predict.iter_window_probs`, exact mode: 128-frame windows, stride ≤ 48, batches of
256, float32 as ``noisytag predict`` runs) over random log-mels of the test set's mean clip length
(7 s), features precomputed. The CPU figures come from the same run with fewer steps (all cores);
without CUDA only they are measured, in seconds.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from noisytag.config import InferConfig, load_config
from noisytag.infer.members import TorchMember
from noisytag.infer.predict import Clip, iter_window_probs
from noisytag.learn.train import build_module
from noisytag.models import build

N_CLASSES = 80  # FSDKaggle2019
ARCHS = ("cnn1", "vgg16")
CLIP_SECONDS, SAMPLE_RATE, HOP = 7.0, 44100, 694
# (batch, warm-up steps, timed steps, inference clips) per device
COUNTS = {"cuda": (128, 5, 20, 400), "cpu": (8, 1, 2, 4)}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_rate(arch: str, device: str) -> float:
    """Training examples per second (forward, backward and optimiser step of whole batches)."""
    batch, warmup, steps, _ = COUNTS[device]
    cfg = load_config(None, ["model.width=1.0"])
    torch.manual_seed(0)
    module = build_module(cfg, arch, N_CLASSES, lr=3e-3, seed=0).to(device).train()
    optimizer = torch.optim.AdamW(module.parameters(), lr=3e-3)
    amp = device == "cuda"
    scaler = torch.amp.GradScaler(device, enabled=amp)
    x = torch.rand(batch, 1, 128, 128, device=device)
    y = torch.zeros(batch, N_CLASSES + 1, device=device)  # multi-hot ‖ untrusted share
    y[torch.arange(batch), torch.randint(0, N_CLASSES, (batch,))] = 1.0

    def step() -> None:
        with torch.autocast(device_type=device, dtype=torch.float16, enabled=amp):
            loss = module.loss(*module.augment(x, y))
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    sync(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - started)


def infer_rate(arch: str, device: str) -> float:
    """Seconds of audio tagged per second of wall time by one model (features precomputed)."""
    n_clips = COUNTS[device][3]
    frames = round(CLIP_SECONDS * SAMPLE_RATE / HOP)
    rng = np.random.default_rng(0)
    clips = [
        Clip(i, rng.uniform(-80, 0, (128, frames)).astype(np.float32), -80.0, 0.0) for i in range(n_clips)
    ]
    torch.manual_seed(0)
    member = TorchMember(build(arch, N_CLASSES, 1, width=1.0), device)
    for _ in iter_window_probs([member], clips[:1], InferConfig()):  # warm-up
        pass
    sync(device)
    started = time.perf_counter()
    for _ in iter_window_probs([member], clips, InferConfig()):
        pass
    sync(device)
    return n_clips * frames * HOP / SAMPLE_RATE / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="also write the figures to this JSON file")
    parser.add_argument("--cpu-only", action="store_true", help="skip the GPU even when there is one")
    args = parser.parse_args()
    devices = ["cuda", "cpu"] if torch.cuda.is_available() and not args.cpu_only else ["cpu"]
    names = {"cuda": torch.cuda.get_device_name(0) if "cuda" in devices else None}
    names["cpu"] = f"CPU, {torch.get_num_threads()} threads"
    figures: dict[str, dict[str, float]] = {d: {} for d in devices}
    for device in devices:
        for arch in ARCHS:
            figures[device][f"{arch}_train_examples_per_s"] = train_rate(arch, device)
            figures[device][f"{arch}_infer_x_realtime"] = infer_rate(arch, device)
    if devices == ["cpu"]:
        print("no CUDA device: CPU figures only")
    header = "".join(f"{names[d]:>28}" for d in devices)
    print(f"{'full width, 80 classes':<34}{header}")
    for arch in ARCHS:
        for key, label in (
            ("train_examples_per_s", "training examples/s"),
            ("infer_x_realtime", "inference × real time"),
        ):
            cells = "".join(f"{figures[d][f'{arch}_{key}']:>28.1f}" for d in devices)
            print(f"{arch + ' ' + label:<34}{cells}")
    if "cuda" in devices:
        for arch in ARCHS:
            key = f"{arch}_train_examples_per_s"
            print(
                f"{arch}: GPU trains {figures['cuda'][key] / figures['cpu'][key]:.0f}× as many examples/s as the CPU"
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(
                {"devices": names, "counts": {d: COUNTS[d] for d in devices}, "figures": figures},
                fh,
                indent=2,
            )


if __name__ == "__main__":
    main()
