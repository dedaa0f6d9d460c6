"""Validation lwlrap of fixed weights under Lightning's DDP on the CPU (gloo); run by test_ddp.py.

A script file, not ``python -c``: Lightning's ddp launcher re-runs the launching script per process.
usage: python ddp_validate.py CACHE_DIR DEVICES OUT_JSON
"""

import json
import sys

import lightning as L
import numpy as np
import torch

from noisytag.audio.cache import FeatureCache
from noisytag.config import FrontendConfig, load_config
from noisytag.learn.loader import ClipSet
from noisytag.learn.train import build_module, val_loader


def main(cache_dir: str, devices: int, out: str) -> None:
    cfg = load_config(None, ["model.width=0.125", "train.val_batch_size=4", f"train.devices={devices}"])
    cache = FeatureCache.open(cache_dir, FrontendConfig(), "curated")
    n = len(cache) - (1 - len(cache) % 2)  # an odd number of clips: the distributed sampler must pad
    rng = np.random.default_rng(0)
    targets = (rng.random((n, 5)) < 0.3).astype(np.float32)
    targets[np.arange(n), rng.integers(0, 5, n)] = 1.0
    clips = ClipSet(np.full(n, "curated", dtype=object), np.arange(n), targets)
    torch.manual_seed(0)
    module = build_module(cfg, "cnn1", 5, lr=1e-3, seed=0)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    metrics = trainer.validate(module, dataloaders=val_loader(cfg, {"curated": cache}, clips), verbose=False)
    if trainer.is_global_zero:
        with open(out, "w") as fh:
            json.dump({"val_lwlrap": module.last_val["val_lwlrap"], "logged": metrics[0]}, fh)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
