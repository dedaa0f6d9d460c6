"""The shared start of every stage: validated data, saved config, feature caches, folds, truth.

``prepare`` returns a :class:`Context` that the pipeline's stages read from; it also owns the small
kill-safe writers (temporary file + rename) used for every run-directory output.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.config import RunConfig, config_from_dict, save_config
from noisytag.data import Dataset, load_dataset, multi_hot, read_truth
from noisytag.loader import ClipSet
from noisytag.rundir import RunDir

log = logging.getLogger(__name__)

# Config keys that do not change results: a run may be resumed with other values.
_VOLATILE = {
    "infer": None,
    "data": {"workers", "cache_dir"},
    "train": {"num_workers", "devices", "accelerator", "num_nodes", "strategy", "val_batch_size"},
}


class RunConfigMismatch(RuntimeError):
    """The run directory was made with a config that changes results."""


@dataclass
class Context:
    """Everything a stage needs: config, run directory, data set, caches, folds, targets, truth."""

    cfg: RunConfig
    run: RunDir
    data_dir: Path
    data: Dataset
    classes: list[str]
    caches: dict
    folds: pd.DataFrame  # fname, split, fold (curated rows, then noisy rows)
    clips: dict[str, ClipSet] = field(default_factory=dict)  # curated / noisy / test, folds.csv order
    selections: dict[tuple[str, int], pd.DataFrame] = field(default_factory=dict)  # (arch, stage) → clips
    fold_of: dict[str, np.ndarray] = field(default_factory=dict)  # curated / noisy → (N,) folds
    fnames: dict[str, list[str]] = field(default_factory=dict)
    labels: dict[str, list[tuple]] = field(default_factory=dict)
    truth_noisy: list[tuple] | None = None  # true labels of the noisy clips (demo data)
    truth_test: np.ndarray | None = None  # (N_test, K) multi-hot, when data_dir/truth/test.csv exists
    progress: bool = True

    @property
    def is_zero(self) -> bool:
        return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def _comparable(cfg_dict: dict) -> dict:
    out = {}
    for section, values in cfg_dict.items():
        drop = _VOLATILE.get(section, set())
        if drop is None:
            continue
        out[section] = {k: v for k, v in values.items() if k not in drop}
    return out


def check_run_config(run: RunDir, cfg: RunConfig, force: bool) -> None:
    """Refuse to continue a run directory with a config that changes results (unless force)."""
    if run.config.is_file() and not force:
        import yaml

        saved = config_from_dict(yaml.safe_load(run.config.read_text()))
        a, b = _comparable(saved.to_dict()), _comparable(cfg.to_dict())
        if a != b:
            diffs = [
                f"{s}.{k}: {a[s].get(k)!r} → {b[s].get(k)!r}"
                for s in sorted(set(a) | set(b))
                for k in sorted(set(a.get(s, {})) | set(b.get(s, {})))
                if a.get(s, {}).get(k) != b.get(s, {}).get(k)
            ]
            raise RunConfigMismatch(
                f"{run.root} was made with another config ({'; '.join(diffs)}); "
                "use --force to continue it anyway, or another output directory"
            )
    run.root.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run.config)


def open_caches(data_dir: Path, cfg: RunConfig, splits: Sequence[str], progress: bool) -> dict:
    """Build (or reuse) the feature cache of each split and open it."""
    from noisytag.cache import FeatureCache, build_cache, default_cache_dir

    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(data_dir)
    build_cache(
        data_dir, cache_dir, cfg.frontend, splits=tuple(splits), workers=cfg.data.workers, progress=progress
    )
    caches = {s: FeatureCache.open(cache_dir, cfg.frontend, s) for s in splits}
    for split, cache in caches.items():
        for fname, reason in cache.failed:
            log.warning("%s/%s left out: %s", split, fname, reason)
    return caches


def _clipset(split: str, frame: pd.DataFrame, cache, classes: list[str]) -> tuple[ClipSet, pd.DataFrame]:
    """Clips of a split that the cache holds, with targets; files that failed extraction are left out."""
    known = set(cache.index["fname"])
    held = frame["fname"].isin(known)
    if not held.all():
        log.warning("%s: %d clip(s) without features are left out", split, int((~held).sum()))
    kept = frame[held].reset_index(drop=True)
    positions = np.array([cache.position(f) for f in kept["fname"]], dtype=np.int64)
    targets = multi_hot(list(kept["labels"]), classes)
    return ClipSet(np.full(len(kept), split, dtype=object), positions, targets), kept


def prepare(
    data_dir: str | Path, run_dir: str | Path, cfg: RunConfig, force: bool = False, progress: bool = True
) -> Context:
    """Validate data, check/save the config, build caches and folds: the shared start of every stage."""
    from noisytag.folds import load_or_make_folds

    data_dir, run = Path(data_dir), RunDir(run_dir)
    data = load_dataset(data_dir, skip_invalid=cfg.data.skip_invalid)
    for problem in data.problems:
        log.warning("skipped: %s", problem)
    check_run_config(run, cfg, force)
    caches = open_caches(data_dir, cfg, ("curated", "noisy", "test"), progress)
    frames = {}
    for split, frame in (("curated", data.curated), ("noisy", data.noisy), ("test", data.test)):
        frames[split] = _clipset(split, frame, caches[split], data.classes)
    kept_data = Dataset(
        data.root, data.classes, frames["curated"][1], frames["noisy"][1], frames["test"][1], data.problems
    )
    folds = load_or_make_folds(run.folds, kept_data, cfg.train.folds, cfg.train.seed)
    ctx = Context(cfg, run, data_dir, kept_data, list(data.classes), caches, folds, progress=progress)
    for split in ("curated", "noisy", "test"):
        clipset, kept = frames[split]
        ctx.clips[split] = clipset
        ctx.fnames[split] = list(kept["fname"])
        ctx.labels[split] = [tuple(x) for x in kept["labels"]]
        if split != "test":
            fold_table = folds[folds["split"] == split].set_index("fname")["fold"]
            ctx.fold_of[split] = fold_table.loc[ctx.fnames[split]].to_numpy(dtype=np.int64)
    truth_dir = data_dir / "truth"
    if (truth_dir / "noisy.csv").is_file():
        truth = read_truth(truth_dir / "noisy.csv").set_index("fname")["labels"]
        ctx.truth_noisy = [tuple(truth.get(f, ())) for f in ctx.fnames["noisy"]]
    if (truth_dir / "test.csv").is_file():
        truth = read_truth(truth_dir / "test.csv").set_index("fname")["labels"]
        ctx.truth_test = multi_hot([tuple(truth.get(f, ())) for f in ctx.fnames["test"]], ctx.classes)
    write_run_info(ctx, {"started": time.strftime("%Y-%m-%d %H:%M:%S")})
    return ctx


def write_run_info(ctx: Context, update: dict) -> None:
    if not ctx.is_zero:
        return
    info = json.loads(ctx.run.run_info.read_text()) if ctx.run.run_info.is_file() else {}
    info.setdefault("data_dir", str(ctx.data_dir.resolve()))
    info.setdefault("versions", _versions())
    info.setdefault("timings", {})
    for key, value in update.items():
        if key == "timings":
            info["timings"].update(value)
        elif key == "started":  # the run's first start; later resumes are listed apart
            if "started" in info:
                info.setdefault("resumed", []).append(value)
            else:
                info["started"] = value
        else:
            info[key] = value
    atomic_text(ctx.run.run_info, json.dumps(info, indent=2))


def _versions() -> dict:
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in ("noisytag", "torch", "lightning", "numpy", "librosa", "pandas", "onnxruntime"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def atomic_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def atomic_npy(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def atomic_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_text(path, frame.to_csv(index=False))
