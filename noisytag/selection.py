"""Which noisy clips join training in stages 3 and 4 (SPEC §6): pure functions on score tables.

A noisy clip's score s_k is its own lwlrap under the out-of-fold prediction of stage k
(:func:`noisytag.metrics.clip_lwlrap`): 1 when all its given labels are ranked above every other class.

* Stage 3: score = sqrt(s1 · s2) ≥ threshold (0.5), and at most ``cap`` (5) clips per (fold, label):
  within each fold, clips are visited by descending score, ties by file name ascending; a clip is
  admitted while EVERY one of its labels still has room, and then uses one place of each of its labels.
  A clip with a full label is skipped and uses no room, so a later clip can still take the other labels'
  places.
* Stage 4: score = s3 ≥ threshold (1.0, i.e. all given labels ranked first); no cap.

Comparisons allow a tolerance of 1e-9 (``score ≥ threshold − 1e-9``): scores are ratios of small
integers, so e.g. sqrt(3/11 · 11/12) must count as 0.5 although floating point gives 0.49999999999999994.
Clips without a score (NaN: no label) are never selected.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["TOLERANCE", "stage3_selection", "stage4_selection", "selection_summary"]

TOLERANCE = 1e-9
OUT_COLUMNS = ["fname", "fold", "labels", "score"]


def _check_table(table: pd.DataFrame, needed: tuple[str, ...]) -> pd.DataFrame:
    missing = [c for c in ("fname", "fold", "labels", *needed) if c not in table.columns]
    if missing:
        raise ValueError(f"score table lacks column(s) {', '.join(missing)}")
    dupes = table["fname"][table["fname"].duplicated()]
    if len(dupes):
        raise ValueError(f"score table lists {dupes.iloc[0]} more than once")
    return table


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
    _check_table(table, ("s1", "s2"))
    if cap is not None and cap < 0:
        raise ValueError(f"cap must be ≥ 0 or None, got {cap}")
    score = np.sqrt(table["s1"].to_numpy(dtype=float) * table["s2"].to_numpy(dtype=float))
    keep = score >= threshold - TOLERANCE  # NaN compares False
    candidates = _ordered(table.loc[keep].assign(score=score[keep]))
    if cap is None or candidates.empty:
        return candidates
    admitted = np.zeros(len(candidates), dtype=bool)
    used: dict[tuple[int, str], int] = {}
    # Greedy by rank within each fold: inherently sequential, but only over the candidates.
    for i, (fold, labels) in enumerate(zip(candidates["fold"], candidates["labels"], strict=True)):
        keys = [(fold, label) for label in set(labels)]
        if keys and all(used.get(key, 0) < cap for key in keys):
            admitted[i] = True
            for key in keys:
                used[key] = used.get(key, 0) + 1
    return candidates.loc[admitted].reset_index(drop=True)


def stage4_selection(table: pd.DataFrame, threshold: float = 1.0) -> pd.DataFrame:
    """Noisy clips for stage 4: s3 ≥ threshold (1e-9 tolerance), no cap.

    Args:
        table: columns fname, fold, labels, s3 (other columns ignored).

    Returns:
        DataFrame(fname, fold, labels, score = s3), sorted by fold, descending score, fname.
    """
    _check_table(table, ("s3",))
    score = table["s3"].to_numpy(dtype=float)
    keep = score >= threshold - TOLERANCE
    return _ordered(table.loc[keep].assign(score=score[keep]))


def selection_summary(selected: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """How many selected clips carry each label: DataFrame(label, count), one row per class in order.

    Labels that are not in ``classes`` are appended at the end (they indicate a data problem upstream).
    """
    counts: dict[str, int] = dict.fromkeys(classes, 0)
    for labels in selected["labels"]:
        for label in _as_tuple(labels):
            counts[label] = counts.get(label, 0) + 1
    return pd.DataFrame({"label": list(counts), "count": list(counts.values())}).astype({"count": np.int64})
