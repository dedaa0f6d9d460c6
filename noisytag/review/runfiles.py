"""What the review reads from a run and its data set, in one place: the fold record, the noisy clips'
out-of-fold probabilities, the detectors' verdicts (from the selection audits, never their truth columns, or
the same detectors run again on the run's last trained stage), and the data set with its truth dropped as it is
loaded."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.config import RunConfig
from noisytag.data.dataset import DataError, Dataset
from noisytag.data.manifest import load_data
from noisytag.learn import detectors
from noisytag.metrics import clip_lwlrap
from noisytag.plan import RunPlan, StagePlan
from noisytag.rundir import RunDir

# Each detector's audit columns: (score, higher = more trusted; flag, True = does not trust the given labels).
DETECTOR_COLUMNS = {"lwlrap": ("lwlrap_score", "lwlrap_flag"), "cleanlab": ("label_quality", "cleanlab_flag")}
REGISTERED = {"lwlrap": "oof_lwlrap", "cleanlab": "cleanlab"}  # the review's detector → its selection.method
TRUTH_COLUMNS = frozenset({"true_labels", "correct", "truth"})  # never read by the queue


class ReviewError(ValueError):
    """A run or data set the review cannot use; the message is one line naming the file or key."""


def suspicion_ranks(score: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: 1 for the lowest score (least trusted), 0 for the highest; ties share their mean
    rank; NaN (no score, no trust) counts as 1."""
    score = np.asarray(score, dtype=float)
    ranks = pd.Series(score).rank(ascending=False, method="average").to_numpy()
    valid = np.isfinite(score)
    out = np.ones(len(score))
    n = int(valid.sum())
    out[valid] = (ranks[valid] - 1) / (n - 1) if n > 1 else 0.0
    return out


def _without_truth(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop(columns=[c for c in table.columns if c in TRUTH_COLUMNS])


def _read_audit(path: Path) -> pd.DataFrame:
    """An audit without its truth columns (they are not even parsed)."""
    try:
        audit = pd.read_csv(path, usecols=lambda c: c not in TRUTH_COLUMNS, dtype={"fname": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise ReviewError(f"{path}: unreadable audit ({err})") from None
    if "fname" not in audit.columns:
        raise ReviewError(f"{path}: audit has no fname column")
    return audit.drop_duplicates("fname").set_index("fname")


def _flags(values: pd.Series) -> np.ndarray:
    """Flag column → float (1 = flagged, NaN = no verdict), from bools or their CSV text."""
    text = values.astype(str).str.strip().str.lower()
    return np.where(
        text.isin(["true", "1", "1.0"]), 1.0, np.where(text.isin(["false", "0", "0.0"]), 0.0, np.nan)
    )


def read_folds(run: RunDir) -> pd.DataFrame:
    if not run.folds.is_file():
        raise ReviewError(f"{run.folds}: not found (the run has no fold record)")
    folds = pd.read_csv(run.folds, dtype={"fname": str, "split": str})
    missing = [c for c in ("fname", "split", "fold") if c not in folds.columns]
    if missing:
        raise ReviewError(f"{run.folds}: column(s) {', '.join(missing)} missing")
    return folds


def noisy_oof(run: RunDir, folds: pd.DataFrame, arch: str, stage: int, k: int) -> np.ndarray:
    """(N_noisy, K) out-of-fold probabilities of the noisy clips in folds.csv order, or ReviewError."""
    fold_of = folds.loc[folds["split"] == "noisy", "fold"].to_numpy(dtype=int)
    try:
        return run.stage_oof(arch, stage, "noisy", fold_of, k)
    except (FileNotFoundError, ValueError) as err:
        raise ReviewError(str(err)) from None


def read_audits(
    run: RunDir, archs: tuple[str, ...], stage: int, fnames: pd.Series
) -> dict[str, pd.DataFrame]:
    """Each architecture's stage-``stage`` audit without its truth columns, rows as ``fnames``."""
    return {
        arch: _read_audit(run.audit(arch, stage)).reindex(fnames).reset_index(drop=True) for arch in archs
    }


def judging_stage(run: RunDir, plan: RunPlan, selecting: StagePlan, archs: tuple[str, ...],
                  folds: pd.DataFrame) -> int | None:  # fmt: skip
    """The last stage of the plan after the ones ``selecting`` read whose noisy out-of-fold predictions exist
    for every architecture and fold (stage 4 once it has trained), or None.

    Its fold models trained on the trusted clips the selection chose, so their out-of-fold predictions judge
    a noisy clip better than the predictions the selection itself read: on realdev and the demo set the
    queue's first 200 cards held 3-6 % more wrong label sets (benchmarks/README.md "Label review")."""
    noisy_folds = np.unique(folds.loc[folds["split"] == "noisy", "fold"].to_numpy(dtype=int))
    after = max(selecting.selects_from)
    for stage in sorted((s for s in plan.stage_numbers if s > after), reverse=True):
        if all(run.fold_oof(a, stage, int(f), "noisy").is_file() for a in archs for f in noisy_folds):
            return stage
    return None


def rejudged_audits(config: RunConfig, selecting: StagePlan, stage: int, oofs: Mapping[str, np.ndarray],
                    clips: pd.DataFrame, given: np.ndarray) -> dict[str, pd.DataFrame]:  # fmt: skip
    """The selection's detectors (``noisytag.learn.detectors``, with the run's thresholds) run again on the
    stage-``stage`` out-of-fold predictions ``oofs`` (architecture → (N, K), rows as ``clips``: fname, fold,
    given; ``given`` their (N, K) multi-hot), as audit-like frames with rows as ``clips``; ``config``: the
    run's saved config (its selection thresholds)."""
    judge = dataclasses.replace(selecting, selects_from=(stage,))
    out = {}
    for arch, oof in oofs.items():
        table = pd.DataFrame(
            {"fname": clips["fname"].to_numpy(), "fold": clips["fold"].to_numpy(),
             "labels": list(clips["given"]), f"s{stage}": clip_lwlrap(given, oof)}
        )  # fmt: skip
        frame = {}
        for name, (score_column, flag_column) in DETECTOR_COLUMNS.items():
            detector = detectors.build(REGISTERED[name], config.selection, judge)
            score, flag = detector.judge(table, given, {stage: oof})
            frame[score_column], frame[flag_column] = score, flag
        out[arch] = pd.DataFrame(frame)
    return out


def detector_columns(clips: pd.DataFrame, audits: Mapping[str, pd.DataFrame], where: str) -> pd.DataFrame:
    """Add score_{d}, flag_{d} (mean over architectures) and suspicion (rank average) to ``clips``.

    ``audits``: architecture → detector columns, rows as ``clips``; ``where`` names them in errors
    (``{arch}`` is filled in)."""
    suspicion, scores, flags = [], {d: [] for d in DETECTOR_COLUMNS}, {d: [] for d in DETECTOR_COLUMNS}
    for arch, audit in audits.items():
        present = [d for d, (s, _) in DETECTOR_COLUMNS.items() if s in audit.columns]
        if not present:
            raise ReviewError(
                f"{where.format(arch=arch)}: no detector score column "
                f"({', '.join(s for s, _ in DETECTOR_COLUMNS.values())})"
            )
        per_detector = []
        for d in present:
            score_col, flag_col = DETECTOR_COLUMNS[d]
            score = pd.to_numeric(audit[score_col], errors="coerce").to_numpy(dtype=float)
            scores[d].append(score)
            per_detector.append(suspicion_ranks(score))
            if flag_col in audit.columns:
                flags[d].append(_flags(audit[flag_col]))
        suspicion.append(np.mean(per_detector, axis=0))
    out = clips.copy()
    out["suspicion"] = np.mean(suspicion, axis=0)
    with np.errstate(all="ignore"), pd.option_context("mode.chained_assignment", None):
        for d in DETECTOR_COLUMNS:
            if scores[d]:
                out[f"score_{d}"] = (
                    np.nanmean(np.vstack(scores[d]), axis=0) if len(scores[d]) > 1 else scores[d][0]
                )
            if flags[d]:
                out[f"flag_{d}"] = (
                    np.nanmean(np.vstack(flags[d]), axis=0) if len(flags[d]) > 1 else flags[d][0]
                )
    return out


def load_reviewable(data: Path | str) -> Dataset:
    """The data set with its truth columns dropped (the review never sees them), or ReviewError."""
    try:
        dataset = load_data(data, skip_invalid=True)
    except DataError as err:
        first = err.problems[0] if err.problems else str(err)
        more = f" (and {len(err.problems) - 1} more problems)" if len(err.problems) > 1 else ""
        raise ReviewError(f"{data}: {first}{more}") from None
    for split in ("curated", "noisy", "test"):
        setattr(dataset, split, _without_truth(dataset.split(split)))
    return dataset
