"""Start a run from another run's first stages: the cheap retrain after a label review.

A review (``noisytag review``) writes a corrected manifest of the same audio: a reviewed noisy clip becomes
curated with the reviewer's labels and KEEPS its fold, a dropped clip leaves, every other clip keeps its
split and fold. :func:`seed_from_run` puts the source run's stages 1-2 into a new run directory for that
manifest, so ``noisytag pipeline MANIFEST --keep-stages-from RUN`` trains only stages 3-4 (warm-started
from the kept stage 2, as the plan says) and writes the usual tables and submission.

Why the kept stages stay valid (and honest):

- **Out-of-fold.** Fold model f of stages 1-2 trained on clips of folds ≠ f only (stage 1 on noisy clips,
  stage 2 on curated ones). Every clip of the corrected manifest keeps its fold, so fold model f has still
  never seen a clip of fold f: its predictions for those clips are out-of-fold whatever their labels are
  now. The new run's per-fold OOF arrays are the source's rows re-indexed by clip (a reviewed clip's row
  comes from the source's ``oof_noisy``, now in ``oof_curated``); a dropped clip's row leaves; test
  predictions are the source's, re-indexed by test clip.
- **Result keys.** A stage's result key (:mod:`noisytag.plan`) hashes the config inputs it reads, never
  the data set, so the kept stages have the same keys in both runs and the resume check accepts them.
  That is only true of the config: the kept fold models were trained on the source's data set (the labels
  before the review). It is recorded, not hidden: ``kept_stages.json`` (and ``run.json``'s
  ``kept_stages``) names the source run, its data set, the stages and their keys, and the report says
  "stages 1-2 kept from RUN". Seeding refuses a config whose keys for the kept stages differ from the
  source's.

Clips are matched by resolved audio file path, never by name: a run on the competition layout names clips
by file name, a manifest by ``path`` as written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.audio.cache import FeatureCache, cache_folder
from noisytag.config import RunConfig
from noisytag.data.dataset import Dataset
from noisytag.data.manifest import load_data
from noisytag.fileio import write_csv, write_json, write_npy
from noisytag.learn.folds import FOLD_SPLITS
from noisytag.plan import build_plan, resume_conflicts
from noisytag.rundir import RunDir
from noisytag.runs.context import feature_cache_dir

log = logging.getLogger(__name__)

__all__ = ["KEPT_FILE", "WarmStartError", "kept_stages", "seed_from_run"]

KEPT_FILE = "kept_stages.json"  # in the target run: what came from where
COPIED = ("weights.safetensors", "model.json", "metrics.csv")  # a kept fold model's own files, byte-identical


class WarmStartError(ValueError):
    """The source run's stages cannot be kept for this data set or config; the message says why."""


@dataclass(frozen=True)
class ClipRow:
    """Where a clip's out-of-fold row lives in the source run: its split, fold and row in that fold's array."""

    split: str
    fold: int
    row: int


def kept_stages(run: str | Path) -> dict | None:
    """The record of the stages a run kept from another (``kept_stages.json``), or None."""
    path = RunDir(run).root / KEPT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _resolved(path: str) -> str:
    return str(Path(path).resolve())


def _paths(data: Dataset, split: str) -> dict[str, str]:
    """fname → resolved audio path of one split."""
    frame = data.split(split)
    return {str(f): _resolved(p) for f, p in zip(frame["fname"], frame["path"], strict=True)}


def _source_rows(source: RunDir, data: Dataset, n_folds: int) -> dict[str, ClipRow]:
    """Resolved path → its row in the source run's per-fold OOF arrays (folds.csv order per split)."""
    folds = pd.read_csv(source.folds, dtype={"fname": str, "split": str}, keep_default_na=False)
    rows: dict[str, ClipRow] = {}
    for split in FOLD_SPLITS:
        part = folds[folds["split"] == split]
        paths = _paths(data, split)
        counters = dict.fromkeys(range(n_folds), 0)
        for fname, fold in zip(part["fname"], part["fold"], strict=True):
            if fname not in paths:
                raise WarmStartError(f"{source.folds}: {split} clip {fname} is not in the run's data set")
            rows[paths[fname]] = ClipRow(split, int(fold), counters[int(fold)])
            counters[int(fold)] += 1
    return rows


def _held(cfg: RunConfig, data_dir: Path, data: Dataset, split: str) -> set[str] | None:
    """Cache keys of ``split`` that have features in the run's feature cache (None: cache not found)."""
    try:
        cache = FeatureCache.open(
            feature_cache_dir(data_dir, cfg), cfg.frontend, cache_folder(data_dir, split)
        )
    except Exception:  # noqa: BLE001 - a missing or moved cache only means "cannot tell"
        return None
    return set(cache.index["fname"])


def _source_test(source: RunDir, cfg: RunConfig, data_dir: Path, data: Dataset, n_rows: int) -> list[str]:
    """Resolved paths of the source's test clips in its ``test.npy`` row order (the data set's order, less
    the clips without features)."""
    frame = data.test
    if len(frame) != n_rows:
        held = _held(cfg, data_dir, data, "test")
        if held is not None:
            frame = frame[frame["key"].isin(held)]
    if len(frame) != n_rows:
        raise WarmStartError(
            f"{source.root}: its test.npy has {n_rows} rows but its data set {data_dir} has {len(frame)} "
            "test clips with features (the data set changed?)"
        )
    return [_resolved(p) for p in frame["path"]]


def _check_keys(source: RunDir, cfg: RunConfig, stages: Sequence[int]) -> dict[str, dict[str, str]]:
    """The kept stages' result keys per architecture: the same in the source's plan and ``cfg``'s."""
    new, old = build_plan(cfg), source.plan()
    for stage in stages:
        if stage not in new.stage_numbers or stage not in old.stage_numbers:
            raise WarmStartError(
                f"stage {stage} is not in both plans (source {old.stage_numbers}, new {new.stage_numbers})"
            )
    wanted = [s for s in new.stage_numbers if s <= max(stages)]
    if sorted(stages) != wanted:
        raise WarmStartError(f"kept stages must be the plan's first ones ({wanted}), got {sorted(stages)}")
    keys: dict[str, dict[str, str]] = {}
    for arch in new.architectures:
        if arch not in old.architectures:
            raise WarmStartError(f"{source.root} has no architecture {arch}")
        for stage in stages:
            if old.key(arch, stage) != new.key(arch, stage):
                saved = source.saved_config()
                diffs = resume_conflicts(saved, cfg) if saved is not None else []
                why = (
                    "; ".join(diffs)
                    or "same config, but its plan.json has other result keys: another version"
                )
                raise WarmStartError(
                    f"stage {stage} of {arch} in {source.root} was made with another config ({why})"
                )
            if not all(source.fold_done(arch, stage, f).is_file() for f in range(new.folds)):
                raise WarmStartError(f"{source.root}: stage {stage} of {arch} is not finished")
            keys.setdefault(arch, {})[str(stage)] = new.key(arch, stage)
    return keys


def _target_folds(target: Dataset, rows: dict[str, ClipRow]) -> tuple[pd.DataFrame, list[str]]:
    """The new folds.csv (curated rows, then noisy, in the data set's order; each clip's source fold) and
    the resolved path of each of its rows. A clip the source never had features for is left out."""
    parts, paths, missing = [], [], []
    for split in FOLD_SPLITS:
        frame = target.split(split)
        fixed = frame["fold"].to_numpy(np.int64) if "fold" in frame.columns else np.full(len(frame), -1)
        for fname, path, fold in zip(frame["fname"], frame["path"], fixed, strict=True):
            found = rows.get(_resolved(path))
            if found is None:
                missing.append(str(fname))
                continue
            if fold >= 0 and fold != found.fold:
                raise WarmStartError(
                    f"{fname}: fold {fold} in the data set but fold {found.fold} in the source run "
                    "(a kept stage is out-of-fold only when every clip keeps its fold)"
                )
            parts.append({"fname": str(fname), "split": split, "fold": found.fold})
            paths.append(_resolved(path))
    if missing:
        log.warning(
            "%d clip(s) are not in the source run's folds (no features there), left out: %s",
            len(missing), ", ".join(missing[:5]),
        )  # fmt: skip
    folds = pd.DataFrame(parts, columns=["fname", "split", "fold"]).astype({"fold": np.int64})
    return folds, paths


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _seed_fold(
    source: RunDir, target: RunDir, arch: str, stage: int, fold: int,
    new_rows: dict[str, list[ClipRow]], test_order: np.ndarray | None,
) -> None:  # fmt: skip
    """One kept fold model: its files linked (byte-identical), OOF and test rows re-indexed, done last."""
    src, dst = source.fold_dir(arch, stage, fold), target.fold_dir(arch, stage, fold)
    tmp = dst.with_name(dst.name + ".seed-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name in COPIED:
        if (src / name).is_file():
            _link_or_copy(src / name, tmp / name)
    arrays = {s: np.load(source.fold_oof(arch, stage, fold, s), allow_pickle=False) for s in FOLD_SPLITS}
    width = arrays["curated"].shape[1]
    for split, wanted in new_rows.items():
        out = np.empty((len(wanted), width), dtype=np.float32)
        for i, r in enumerate(wanted):
            out[i] = arrays[r.split][r.row]
        write_npy(tmp / f"oof_{split}.npy", out)
    if test_order is None:
        _link_or_copy(source.fold_test(arch, stage, fold), tmp / "test.npy")
    else:
        write_npy(
            tmp / "test.npy", np.load(source.fold_test(arch, stage, fold), allow_pickle=False)[test_order]
        )
    shutil.copy2(source.fold_done(arch, stage, fold), tmp / "done")
    shutil.rmtree(dst, ignore_errors=True)  # a partial fold of the target: the seed replaces it
    os.replace(tmp, dst)


def seed_from_run(
    source_run: str | Path,
    target_run: str | Path,
    data: str | Path,
    cfg: RunConfig,
    stages: Sequence[int] = (1, 2),
) -> list[str]:
    """Put ``stages`` of ``source_run`` into ``target_run`` (a run of ``cfg`` on the data set ``data``).

    Writes the target's folds.csv (each clip's fold in the source), each kept fold model (weights,
    model.json and metrics.csv linked or copied, byte-identical; OOF rows re-indexed to the new folds.csv;
    test rows re-indexed by test clip; its ``done`` marker last) and ``kept_stages.json``. Folds already
    seeded are left alone, so a resumed retrain seeds nothing twice. The pipeline then skips the kept
    folds (their done markers) and trains the rest.

    Returns one line per kept stage ("cnn1/stage1 ← RUN (2 folds)"). :class:`WarmStartError` when the
    stages cannot be kept: another config for them, an unfinished source stage, a clip whose fold changed,
    a test clip the source never predicted, or a target that kept stages from another run.
    """
    source, target = RunDir(source_run), RunDir(target_run)
    stages = tuple(sorted(int(s) for s in stages))
    if not source.folds.is_file():
        raise WarmStartError(f"{source.root}: not a finished run (no folds.csv)")
    keys = _check_keys(source, cfg, stages)
    record = {
        "source": str(source.root.resolve()),
        "source_data": source.info().get("data_dir"),
        "data": str(Path(data).resolve()),
        "stages": list(stages),
        "keys": keys,
    }
    earlier = kept_stages(target.root)
    if earlier is not None and (earlier.get("source"), earlier.get("stages")) != (
        record["source"],
        record["stages"],
    ):
        raise WarmStartError(
            f"{target.root} kept stages {earlier.get('stages')} from {earlier.get('source')}; "
            "use another output directory"
        )
    source_cfg = source.saved_config() or cfg
    source_dir = Path(record["source_data"] or "")
    if not record["source_data"] or not source_dir.exists():
        raise WarmStartError(f"{source.run_info}: the run's data set {source_dir} is not there (data_dir)")
    old = load_data(source_dir, skip_invalid=source_cfg.data.skip_invalid)
    new = load_data(data, skip_invalid=cfg.data.skip_invalid)
    if list(new.classes) != list(old.classes):
        raise WarmStartError(
            f"{data}: its classes differ from those of {source_dir} (order included; a manifest takes them "
            "from classes.txt beside it): the kept fold models predict the source's classes"
        )
    rows = _source_rows(source, old, cfg.train.folds)
    folds, paths = _target_folds(new, rows)
    if target.folds.is_file():
        saved = pd.read_csv(target.folds, dtype={"fname": str, "split": str}, keep_default_na=False)
        if not saved.equals(folds):
            raise WarmStartError(f"{target.folds}: made for another data set; use another output directory")
    target.root.mkdir(parents=True, exist_ok=True)
    write_csv(target.folds, folds)
    new_rows = {
        (split, fold): [rows[p] for p, s, f in zip(paths, folds["split"], folds["fold"], strict=True)
                        if s == split and f == fold]
        for split in FOLD_SPLITS
        for fold in range(cfg.train.folds)
    }  # fmt: skip
    arch0 = next(iter(keys))
    n_test = np.load(source.fold_test(arch0, stages[0], 0), allow_pickle=False, mmap_mode="r").shape[0]
    old_test = _source_test(source, source_cfg, source_dir, old, n_test)
    where = {p: i for i, p in enumerate(old_test)}
    featureless = {_resolved(p) for p in old.test["path"]} - set(where)  # no features there: none here either
    new_test = [p for p in map(_resolved, new.test["path"]) if p not in featureless]
    unknown = [p for p in new_test if p not in where]
    if unknown:
        raise WarmStartError(
            f"test clip {unknown[0]} was not predicted by {source.root}: its stages cannot be kept"
        )
    order = np.array([where[p] for p in new_test], dtype=np.int64)
    test_order = None if np.array_equal(order, np.arange(len(old_test))) else order
    lines = []
    for arch in keys:
        for stage in stages:
            seeded = 0
            for fold in range(cfg.train.folds):
                if target.fold_done(arch, stage, fold).is_file():
                    continue
                fold_rows = {s: new_rows[(s, fold)] for s in FOLD_SPLITS}
                _seed_fold(source, target, arch, stage, fold, fold_rows, test_order)
                seeded += 1
            lines.append(
                f"{arch}/stage{stage} ← {source.root} ({seeded} of {cfg.train.folds} folds seeded now)"
            )
    record["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    record["clips"] = {s: int((folds["split"] == s).sum()) for s in FOLD_SPLITS}
    if earlier is None:
        write_json(target.root / KEPT_FILE, record)
        target.update_info(kept_stages={k: record[k] for k in ("source", "stages", "keys")})
    return lines
