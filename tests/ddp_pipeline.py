"""A tiny pipeline (stages 1-3) under Lightning's DDP on the CPU (gloo); run by test_executors.py.

A script file, not ``python -c``: Lightning's ddp launcher re-runs the launching script per process, so
every rank runs the whole pipeline and must meet the others at the same barriers. Ranks other than
zero record every file they create, replace or delete inside the run directory (an audit hook); every
rank records the noisy clips it trained stages 3-4 on. Rank zero writes OUT_JSON, the others
OUT_JSON.rank<r>.json: {"writes": [...], "selections": {"ARCH/STAGE": [fname, ...]}}.
usage: python ddp_pipeline.py DATA_DIR CACHE_DIR RUN_DIR DEVICES OUT_JSON
"""

import json
import os
import sys
from pathlib import Path

from audit_writes import watch_writes

import noisytag.runs.pipeline as pipeline
from noisytag.config import load_config
from noisytag.runs.context import is_global_zero


def record_selections() -> dict[str, list[str]]:
    """The clips each call of ``pipeline.select_for`` in this process returns, per (arch, stage)."""
    seen: dict[str, list[str]] = {}
    select_for = pipeline.select_for

    def recording(ctx, arch: str, stage: int):
        selected = select_for(ctx, arch, stage)
        seen[f"{arch}/{stage}"] = list(selected["fname"])
        return selected

    pipeline.select_for = recording
    return seen


def main(data_dir: str, cache_dir: str, run_dir: str, devices: int, out: str) -> None:
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning's launcher in the other ranks
    # every rank makes its fold directories (mkdir exist_ok: idempotent); only rank zero writes files
    writes = watch_writes(Path(run_dir), dirs=False) if rank else []
    selections = record_selections()

    sets = {
        "model.width": 0.125,
        "train.folds": 2,
        "train.epochs": 1,
        "train.batch_size": 4,  # 12 clips per rank in stage 1, 6 in stage 2: every rank takes steps
        "train.val_batch_size": 64,
        "infer.batch_size": 64,
        "data.cache_dir": cache_dir,
        "pipeline.stages": "[1, 2, 3]",
        "infer.stages": "[2, 3]",
        "train.accelerator": "cpu",
        "train.devices": devices,
        "train.strategy": "ddp" if devices > 1 else "auto",
    }
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    pipeline.run_pipeline(data_dir, run_dir, cfg, progress=False)
    path = Path(out) if is_global_zero() else Path(f"{out}.rank{rank}.json")
    path.write_text(json.dumps({"writes": writes, "selections": selections}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
