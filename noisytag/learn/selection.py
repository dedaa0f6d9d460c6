"""Which noisy clips join training in stages 3 and 4 (SPEC §6): pure functions on score tables.

A noisy clip's score s_k is its own lwlrap under the out-of-fold prediction of stage k
(:func:`noisytag.metrics.clip_lwlrap`): 1 when all its given labels are ranked above every other class.

* Stage 3: score = sqrt(s1 · s2) ≥ threshold (0.5), and at most ``cap`` (5) clips per (fold, label):
  within each fold, clips are visited by descending score, ties by file name ascending; a clip is
  admitted while EVERY one of its labels still has room, and then uses one place of each of its labels.
  A clip with a full label is skipped and uses no room, so a later clip can still take the other labels'
  places.
* Stage 4: score = s3 ≥ threshold (1.0, i.e. all given labels ranked first); no cap.

* ``selection.method: cleanlab`` (SPEC §6b): the second detector, confident learning
  (:func:`cleanlab_verdicts`): a clip is trusted when cleanlab does not flag its given label set; trusted
  clips are admitted by descending cleanlab label quality under the same per-(fold, label) cap.

The detectors themselves (score and flag per clip) are the registry of :mod:`noisytag.learn.detectors`;
:func:`select_noisy` runs each of them for the audit and lets ``selection.method`` choose. Which stages'
out-of-fold predictions a stage selects from is the run plan's (``StagePlan.selects_from``); every
detector reads those and no others.

Comparisons allow a tolerance of 1e-9 (``score ≥ threshold − 1e-9``): scores are ratios of small
integers, so e.g. sqrt(3/11 · 11/12) must count as 0.5 although floating point gives 0.49999999999999994.
Clips without a score (NaN: no label) are never selected.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from noisytag.config import RunConfig, SelectionConfig
from noisytag.learn import detectors
from noisytag.learn.detectors import TOLERANCE, check_score_table, lwlrap_score
from noisytag.plan import SELECTS_FROM, StagePlan

__all__ = [
    "TOLERANCE",
    "stage3_selection",
    "stage4_selection",
    "cleanlab_selection",
    "trusted_selection",
    "oof_lwlrap_flags",
    "select_noisy",
    "detector_audit",
]

log = logging.getLogger(__name__)

OUT_COLUMNS = ["fname", "fold", "labels", "score"]


def _ordered(candidates: pd.DataFrame) -> pd.DataFrame:
    """Rows sorted by fold, then descending score, then file name; the output columns only."""
    out = candidates.assign(_neg=-candidates["score"]).sort_values(["fold", "_neg", "fname"], kind="stable")
    out = out[OUT_COLUMNS].reset_index(drop=True)
    out["labels"] = [_as_tuple(x) for x in out["labels"]]
    return out


def _as_tuple(labels) -> tuple[str, ...]:
    """A tuple of labels; a CSV-style "a,b" string is split on commas."""
    if isinstance(labels, str):
        return tuple(part for part in labels.split(",") if part)
    return tuple(labels)


def _check_cap(cap: int | None) -> None:
    if cap is not None and cap < 0:
        raise ValueError(f"cap must be ≥ 0 or None, got {cap}")


def _capped(candidates: pd.DataFrame, cap: int | None) -> pd.DataFrame:
    """The per-(fold, label) cap of SPEC §6, shared by every selection method.

    ``candidates`` must already be in admission order (:func:`_ordered`). A clip is admitted while every
    one of its labels still has room in its fold, and then uses one place of each; a skipped clip uses
    none. Greedy by rank within each fold: inherently sequential, but only over the candidates.
    """
    if cap is None or candidates.empty:
        return candidates
    admitted = np.zeros(len(candidates), dtype=bool)
    used: dict[tuple[int, str], int] = {}
    for i, (fold, labels) in enumerate(zip(candidates["fold"], candidates["labels"], strict=True)):
        keys = [(fold, label) for label in set(labels)]
        if keys and all(used.get(key, 0) < cap for key in keys):
            admitted[i] = True
            for key in keys:
                used[key] = used.get(key, 0) + 1
    return candidates.loc[admitted].reset_index(drop=True)


def stage3_selection(table: pd.DataFrame, threshold: float = 0.5, cap: int | None = 5) -> pd.DataFrame:
    """Noisy clips for stage 3.

    Args:
        table: one row per noisy clip with columns fname, fold, labels (tuple of str; the given, noisy
            labels), s1, s2 (the clip's lwlrap under stages 1 and 2; NaN allowed). Other columns are
            ignored.
        threshold: minimum sqrt(s1 · s2) (with the module's 1e-9 tolerance).
        cap: at most this many clips per (fold, label); None = no cap.

    Returns:
        DataFrame(fname, fold, labels, score = sqrt(s1 · s2)), sorted by fold, descending score, fname.
    """
    check_score_table(table, ("s1", "s2"))
    _check_cap(cap)
    score = np.sqrt(table["s1"].to_numpy(dtype=float) * table["s2"].to_numpy(dtype=float))
    keep = score >= threshold - TOLERANCE  # NaN compares False
    return _capped(_ordered(table.loc[keep].assign(score=score[keep])), cap)


def stage4_selection(table: pd.DataFrame, threshold: float = 1.0) -> pd.DataFrame:
    """Noisy clips for stage 4: s3 ≥ threshold (1e-9 tolerance), no cap.

    Args:
        table: columns fname, fold, labels, s3 (other columns ignored).

    Returns:
        DataFrame(fname, fold, labels, score = s3), sorted by fold, descending score, fname.
    """
    check_score_table(table, ("s3",))
    score = table["s3"].to_numpy(dtype=float)
    keep = score >= threshold - TOLERANCE
    return _ordered(table.loc[keep].assign(score=score[keep]))


def trusted_selection(
    table: pd.DataFrame, score: np.ndarray, flag: np.ndarray, cap: int | None = None
) -> pd.DataFrame:
    """The clips a detector trusts, admitted by descending score under the cap (any detector's selection).

    Args:
        table: one row per noisy clip with columns fname, fold, labels (other columns ignored).
        score: (N,) the detector's score of each row (higher = more trusted; NaN never selected).
        flag: (N,) bool, True = the detector does not trust the row's label set (never selected).
        cap: at most this many clips per (fold, label), the same rule as :func:`stage3_selection`;
            None = no cap.

    Returns:
        DataFrame(fname, fold, labels, score), sorted by fold, descending score, fname.
    """
    check_score_table(table, ())
    _check_cap(cap)
    score = np.asarray(score, dtype=float)
    flag = np.asarray(flag, dtype=bool)
    if score.shape != (len(table),) or flag.shape != (len(table),):
        raise ValueError(f"score {score.shape} and flag {flag.shape} must have one value per row")
    keep = ~flag & np.isfinite(score)
    return _capped(_ordered(table.loc[keep].assign(score=score[keep])), cap)


def cleanlab_selection(
    table: pd.DataFrame, quality: np.ndarray, issue: np.ndarray, cap: int | None = None
) -> pd.DataFrame:
    """:func:`trusted_selection` by cleanlab's label quality (score) and label issue (flag)."""
    return trusted_selection(table, quality, issue, cap)


# ----------------------------------------------------------------------------------------------
# how the two detectors compare


def oof_lwlrap_flags(table: pd.DataFrame, stage: int = 3, threshold: float | None = None) -> np.ndarray:
    """(N,) bool: the clips the per-clip-lwlrap detector does NOT trust, before any cap.

    The score of the stages warm-up ``stage`` selects from (:data:`noisytag.plan.SELECTS_FROM`; stage 3:
    sqrt(s1 · s2), stage 4: s3) below ``threshold`` (default: the stage's ``selection`` default, 0.5 /
    1.0), with the module's 1e-9 tolerance. A clip without a score (NaN) is flagged.
    """
    defaults = SelectionConfig()
    default = defaults.stage3_threshold if stage == 3 else defaults.stage4_threshold
    score = lwlrap_score(table, SELECTS_FROM[stage])
    return ~(score >= (default if threshold is None else threshold) - TOLERANCE)


def _kappa(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's kappa of two boolean raters; NaN when chance agreement is already 1 (both constant)."""
    observed = float(np.mean(a == b))
    chance = float(a.mean() * b.mean() + (1 - a.mean()) * (1 - b.mean()))
    return float("nan") if chance >= 1.0 else (observed - chance) / (1.0 - chance)


def _precision_recall(flagged: np.ndarray, wrong: np.ndarray) -> tuple[float, float]:
    hits = float(np.sum(flagged & wrong))
    precision = hits / flagged.sum() if flagged.any() else float("nan")
    recall = hits / wrong.sum() if wrong.any() else float("nan")
    return precision, recall


def select_noisy(
    table: pd.DataFrame,
    given: np.ndarray,
    oofs: Mapping[int, np.ndarray],
    stage: StagePlan,
    selection: SelectionConfig,
) -> pd.DataFrame:
    """Every registered detector judges every noisy clip; ``selection.method`` picks the one that selects.

    Dispatch is by :data:`noisytag.learn.detectors.DETECTORS`: an unknown method or a threshold or cap out
    of range raises :class:`~noisytag.config.ConfigError` naming the key. The chosen detector's trusted
    clips (unflagged, finite score) are admitted by :func:`trusted_selection`, under the cap in stage 3.

    Args:
        table: one row per noisy clip: fname, fold, labels and s_k of every stage k the stage selects
            from (stage 3: s1, s2; stage 4: s3); true_labels and correct are passed through when present.
        given: (N, K) multi-hot given labels, rows as in ``table``.
        oofs: stage k → (N, K) out-of-fold probabilities of stage k (at least those the stage selects
            from; cleanlab judges their mean).
        stage: the run plan's selecting stage: its ``selects_from`` names what every detector reads;
            stage 3 has the threshold and cap of SPEC §6, stage 4 the threshold, no cap.
        selection: thresholds, cap and method (a name of ``DETECTORS``: ``oof_lwlrap`` or ``cleanlab``).

    Returns:
        The audit, one row per clip: fname, fold, labels, score (the selecting method's: sqrt(s1 · s2) / s3,
        or cleanlab's label quality), lwlrap_score, label_quality, lwlrap_flag, cleanlab_flag (True = the
        detector does not trust the clip; see :func:`detector_audit`), selected, [true_labels, correct];
        sorted by fold, descending score (NaN last), fname, so the selected rows keep the order of
        :func:`stage3_selection`.
    """
    if not stage.selects_from:
        raise ValueError(f"stage {stage.stage} selects no clips (its plan names no stages to select from)")
    detectors.validate(RunConfig(selection=selection))  # ConfigError naming the key
    judges = {name: detectors.build(name, selection, stage) for name in detectors.DETECTORS.names()}
    verdicts = {name: judge.judge(table, given, oofs) for name, judge in judges.items()}
    score, flag = verdicts[selection.method]
    chosen = trusted_selection(table, score, flag, cap=selection.stage3_cap if stage.stage == 3 else None)
    extra = [c for c in ("true_labels", "correct") if c in table]
    audit = table[["fname", "fold", "labels", *extra]].copy()
    audit["labels"] = [_as_tuple(x) for x in audit["labels"]]
    audit.insert(3, "score", score)
    columns = [(j.score_column, verdicts[n][0]) for n, j in judges.items()]
    columns += [(j.flag_column, verdicts[n][1]) for n, j in judges.items()]
    for at, (column, values) in enumerate(columns, start=4):
        audit.insert(at, column, values)
    audit.insert(4 + len(columns), "selected", audit["fname"].isin(set(chosen["fname"])).to_numpy())
    audit = audit.assign(_neg=-audit["score"]).sort_values(["fold", "_neg", "fname"], kind="stable")
    return audit.drop(columns="_neg").reset_index(drop=True)


def detector_audit(
    table: pd.DataFrame,
    correct: np.ndarray | None = None,
    *,
    stage: int = 3,
    threshold: float | None = None,
) -> dict:
    """Agreement of the two noisy-clip detectors and, with the truth, how well each finds wrong labels.

    "Flagged" = the detector does not trust the clip's given label set:

    * lwlrap (the per-clip OOF lwlrap rule of SPEC §6): :func:`oof_lwlrap_flags` — sqrt(s1 · s2) below the
      stage-3 threshold (stage 3), s3 below the stage-4 threshold (stage 4), judged before the per-label
      cap (the cap limits how many trusted clips train; it says nothing about their labels). Read from
      the table's ``lwlrap_flag`` column (:func:`select_noisy`) or computed from s1, s2 / s3 with
      ``stage`` and ``threshold`` (default 0.5 / 1.0);
    * cleanlab: the ``cleanlab_flag`` column (:func:`select_noisy`) or ``label_issue``
      (:func:`cleanlab_verdicts` on the same stage's probabilities).

    Args:
        table: one row per noisy clip, e.g. the audit of :func:`select_noisy`.
        correct: (N,) bool, True when the given label set equals the true one; default: the table's
            ``correct`` column if it has one, else no precision / recall.

    Returns:
        dict with n, flagged_lwlrap, flagged_cleanlab (counts), agreement (share of clips on which the
        detectors agree), kappa (Cohen's, NaN when undefined) and, when ``correct`` is known, n_wrong and
        {lwlrap,cleanlab}_{precision,recall}: precision = share of flagged clips whose labels are wrong,
        recall = share of wrong clips that are flagged (NaN when nothing is flagged / nothing is wrong).
    """
    if "cleanlab_flag" in table:
        cleanlab = table["cleanlab_flag"].to_numpy(dtype=bool)
    elif "label_issue" in table:
        cleanlab = table["label_issue"].to_numpy(dtype=bool)
    else:
        raise ValueError("detector_audit needs the table's cleanlab_flag or label_issue column")
    if "lwlrap_flag" in table:
        lwlrap = table["lwlrap_flag"].to_numpy(dtype=bool)
    else:
        lwlrap = oof_lwlrap_flags(table, stage, threshold)
    flags = {"lwlrap": lwlrap, "cleanlab": cleanlab}
    n = len(table)
    out: dict = {
        "n": n,
        "flagged_lwlrap": int(lwlrap.sum()),
        "flagged_cleanlab": int(cleanlab.sum()),
        "agreement": float(np.mean(lwlrap == cleanlab)) if n else float("nan"),
        "kappa": _kappa(lwlrap, cleanlab) if n else float("nan"),
    }
    if correct is None and "correct" in table:
        correct = table["correct"].to_numpy()
    if correct is not None:
        wrong = ~np.asarray(correct, dtype=bool)
        if wrong.shape != (n,):
            raise ValueError(f"correct has shape {wrong.shape}, expected ({n},)")
        out["n_wrong"] = int(wrong.sum())
        for name, flagged in flags.items():
            out[f"{name}_precision"], out[f"{name}_recall"] = _precision_recall(flagged, wrong)
    return out
