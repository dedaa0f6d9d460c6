"""The shared start of every stage: validated data, adopted config, feature caches, folds, truth.

:func:`open_run` returns a :class:`RunContext` that the pipeline's stages read from. Paths and the
config / run.json rules belong to :class:`noisytag.rundir.RunDir`; kill-safe writing to
:mod:`noisytag.fileio`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_zero_only

from noisytag.audio.cache import FeatureCache, build_cache, cache_folder, default_cache_dir
from noisytag.config import RunConfig
from noisytag.data.dataset import Dataset, multi_hot
from noisytag.data.manifest import load_data
from noisytag.learn.folds import load_or_make_folds
from noisytag.learn.loader import ClipSet
from noisytag.plan import RunPlan
from noisytag.rundir import RunDir
from noisytag.runs.validate import checked_plan

log = logging.getLogger(__name__)

LABELLED = ("curated", "noisy")


def is_global_zero() -> bool:
    """True in the process that writes run-level files: global rank 0 of the distributed runtime.

    Inside a distributed job that rank comes from ``torch.distributed``; before the process group
    exists, from Lightning's launcher (``rank_zero_only.rank``, which knows the node rank), so a
    second node's local rank 0 is never taken for the global one.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return getattr(rank_zero_only, "rank", 0) == 0


def barrier() -> None:
    """Wait for every process of a distributed job (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class Split:
    """The clips of one split that have features, in folds.csv order (test: data-set order)."""

    clips: ClipSet  # cache positions and given-label targets
    fnames: list[str]
    labels: list[tuple[str, ...]]
    fold: np.ndarray | None  # (N,) fold of each clip; None for the test split
    truth: list[tuple[str, ...]] | None = None  # true label sets (truth/<split>.csv or a manifest's)
    usage: list[str] | None = None  # test: the leaderboard part of each clip (Public / Private)

    def rows(self, mask: np.ndarray) -> ClipSet:
        return self.clips.subset(mask)


@dataclass
class RunContext:
    """Everything a stage needs: config, run directory, data set, caches, folds and the three splits."""

    cfg: RunConfig
    plan: RunPlan  # what the config means: stages, training sets, ensemble (noisytag.plan)
    run: RunDir
    data_dir: Path
    classes: list[str]
    caches: dict[str, FeatureCache]
    splits: dict[str, Split]  # curated, noisy, test
    progress: bool = True
    selections: dict[tuple[str, int], pd.DataFrame] = field(default_factory=dict)  # (arch, stage) → clips

    @property
    def curated(self) -> Split:
        return self.splits["curated"]

    @property
    def noisy(self) -> Split:
        return self.splits["noisy"]

    @property
    def test(self) -> Split:
        return self.splits["test"]

    @property
    def truth_test(self) -> np.ndarray | None:
        """(N_test, K) multi-hot true labels of the test clips, when the data set has them."""
        truth = self.test.truth
        return None if truth is None else multi_hot(truth, self.classes)


def open_caches(
    data_dir: Path, cfg: RunConfig, progress: bool, data: Dataset | None = None
) -> dict[str, FeatureCache]:
    """Build (or reuse) the feature cache of each split and open it (a manifest's splits share one;
    ``data``: the data set already loaded, so a manifest is not read twice)."""
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(data_dir)
    splits = (*LABELLED, "test")
    build_cache(
        data_dir,
        cache_dir,
        cfg.frontend,
        splits=splits,
        workers=cfg.data.workers,
        progress=progress,
        data=data,
    )
    opened: dict[str, FeatureCache] = {}
    for split in splits:
        folder = cache_folder(data_dir, split)
        if folder not in opened:
            opened[folder] = FeatureCache.open(cache_dir, cfg.frontend, folder)
            for fname, reason in opened[folder].failed:
                log.warning("%s/%s left out: %s", folder, fname, reason)
    return {s: opened[cache_folder(data_dir, s)] for s in splits}


def _with_features(split: str, frame: pd.DataFrame, cache: FeatureCache) -> pd.DataFrame:
    """The rows of a split table whose clip the cache holds (files that failed extraction drop out)."""
    held = frame["key"].isin(set(cache.index["fname"]))
    if not held.all():
        log.warning("%s: %d clip(s) without features are left out", split, int((~held).sum()))
    return frame[held].reset_index(drop=True)


def _column(frame: pd.DataFrame, name: str) -> list | None:
    return list(frame[name]) if name in frame.columns else None


def open_run(
    data_dir: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    force: bool = False,
    progress: bool = True,
    writer: bool | None = None,
) -> RunContext:
    """Validate data, adopt the config, build caches and folds: the shared start of every stage.

    ``writer``: whether this process records the run (saves config.yaml, marks run.json started);
    default: global rank zero. Other DDP ranks and Ray tasks only check the config against the saved one.
    """
    data_dir, run = Path(data_dir), RunDir(run_dir)
    writer = is_global_zero() if writer is None else writer
    plan = checked_plan(cfg)  # validates the whole config before any data is read
    data = load_data(data_dir, skip_invalid=cfg.data.skip_invalid)
    for problem in data.problems:
        log.warning("skipped: %s", problem)
    if writer:
        run.adopt_config(cfg, force)
    else:
        run.check_config(cfg, force)
    caches = open_caches(data_dir, cfg, progress, data)
    frames = {s: _with_features(s, data.split(s), caches[s]) for s in (*LABELLED, "test")}
    kept = Dataset(data.root, data.classes, frames["curated"], frames["noisy"], frames["test"])
    folds = load_or_make_folds(run.folds, kept, cfg.train.folds, cfg.train.seed)
    splits = {}
    for split, frame in frames.items():
        fnames = list(frame["fname"])
        labels = [tuple(x) for x in frame["labels"]]
        positions = np.array([caches[split].position(k) for k in frame["key"]], dtype=np.int64)
        fold = None
        if split in LABELLED:
            table = folds[folds["split"] == split].set_index("fname")["fold"]
            fold = table.loc[fnames].to_numpy(dtype=np.int64)
        clips = ClipSet(np.full(len(fnames), split, dtype=object), positions, multi_hot(labels, data.classes))
        truth = _column(frame, "truth")
        splits[split] = Split(clips, fnames, labels, fold, truth, _column(frame, "usage"))
    if writer:
        run.mark_started(data_dir)
    return RunContext(cfg, plan, run, data_dir, list(data.classes), caches, splits, progress=progress)
