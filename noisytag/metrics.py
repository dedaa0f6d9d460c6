"""Label-weighted label-ranking average precision (lwlrap, SPEC §8) per clip, per class and overall.

For each clip and each of its true labels, precision = (number of the clip's true labels ranked at or
above that label) / (rank of that label), ranking the clip's scores in descending order. Per-class lwlrap
is the mean of those precisions over the class's (clip, label) pairs; overall lwlrap is the mean over all
pairs (= per-class values weighted by each class's share of the positive labels). Clips without a true
label count for nothing.

Tie rule (the official Kaggle scorer's): tied scores get distinct ranks, and among tied scores the class
with the HIGHER column index ranks first. The official code reverses an ascending argsort; with a stable
sort that is exactly this rule, so our values equal the official scorer's whenever its sort keeps tied
classes in column order. (scikit-learn's ``label_ranking_average_precision_score`` differs: it gives
tied scores their worst rank.) Ranks depend only on the order of the scores, so logits and sigmoid
probabilities give the same values — except that float32 sigmoids of large logits can collapse to the
same value and create ties, so prefer logits.

Speed: instead of sorting each clip, each positive (clip i, class j) is compared with the row of its
clip: rank = 1 + #{k beating j}, hits = 1 + #{positive k beating j}, where k beats j when s_k > s_j, or
s_k == s_j and k > j. That costs O(P·C) for P positive pairs (≈ 1.2 per clip here) with no Python loop
over clips; when labels are dense (many positives per clip) a vectorised per-row sort is used instead.
"""

from __future__ import annotations

import numpy as np

__all__ = ["lwlrap", "per_class_lwlrap", "clip_lwlrap", "positive_precisions"]

# Mean positives per clip above which sorting each row beats comparing every positive with its row.
_DENSE_POSITIVES_PER_CLIP = 8.0
# Elements of the (positives, classes) comparison block processed at once (bounds memory to a few MB).
_CHUNK_ELEMENTS = 1 << 21


def _check(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert: truth (N, C) with ``> 0`` meaning positive, scores (N, C) finite or ±inf."""
    truth = np.asarray(truth)
    scores = np.asarray(scores)
    if truth.ndim != 2 or scores.ndim != 2:
        raise ValueError(
            f"truth and scores must be 2-D (clips, classes); got {truth.shape} and {scores.shape}"
        )
    if truth.shape != scores.shape:
        raise ValueError(f"truth {truth.shape} and scores {scores.shape} have different shapes")
    if not np.issubdtype(scores.dtype, np.number) or np.issubdtype(scores.dtype, np.complexfloating):
        raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}")
    if np.issubdtype(scores.dtype, np.floating) and np.isnan(scores).any():
        raise ValueError("scores contain NaN: a NaN has no rank")
    return truth > 0, scores


def positive_precisions(truth, scores, method: str = "auto") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision of every (clip, true label) pair.

    Args:
        truth: (N, C) array; entries ``> 0`` are true labels.
        scores: (N, C) real scores (logits or probabilities; only their order per clip matters).
        method: "compare" (positives against their row), "sort" (one argsort of every row) or "auto".

    Returns:
        rows (P,), cols (P,) int64 positions of the positives in row-major order, and precisions (P,)
        float64 = hits / rank under the tie rule of the module docstring.
    """
    pos, scores = _check(truth, scores)
    n, c = pos.shape
    rows, cols = np.divmod(np.flatnonzero(pos), c)  # much faster than a 2-D np.nonzero
    if method == "auto":
        method = "sort" if rows.size > _DENSE_POSITIVES_PER_CLIP * max(n, 1) else "compare"
    if rows.size == 0:
        return rows, cols, np.zeros(0)
    if method == "compare":
        prec = _precisions_compare(pos, scores, rows, cols)
    elif method == "sort":
        prec = _precisions_sort(pos, scores, rows, cols)
    else:
        raise ValueError(f"method must be 'auto', 'compare' or 'sort', got {method!r}")
    return rows, cols, prec


def _precisions_compare(pos, scores, rows, cols) -> np.ndarray:
    """O(P·C): compare each positive's score with its clip's row, in chunks of positives."""
    c = scores.shape[1]
    classes = np.arange(c)
    out = np.empty(rows.size)
    step = max(1, _CHUNK_ELEMENTS // max(c, 1))
    for a in range(0, rows.size, step):  # loop over memory-sized chunks, not clips
        r, j = rows[a : a + step], cols[a : a + step]
        row_scores = scores[r]  # (p, C)
        own = scores[r, j][:, None]  # (p, 1)
        beats = (row_scores > own) | ((row_scores == own) & (classes > j[:, None]))
        rank = 1 + np.count_nonzero(beats, axis=1)
        hits = 1 + np.count_nonzero(beats & pos[r], axis=1)
        out[a : a + step] = hits / rank
    return out


def _precisions_sort(pos, scores, rows, cols) -> np.ndarray:
    """O(N·C·log C): one stable argsort of every row, reversed (the official rule), cumulative hits."""
    n, c = scores.shape
    order = np.argsort(scores, axis=1, kind="stable")[:, ::-1]  # best first; ties: higher index first
    ranks = np.empty((n, c), dtype=np.int64)
    np.put_along_axis(ranks, order, np.arange(c)[None, :], axis=1)  # 0-based rank of each class
    hits_sorted = np.cumsum(np.take_along_axis(pos, order, axis=1), axis=1)
    rank = ranks[rows, cols]
    return hits_sorted[rows, rank] / (rank + 1.0)


def per_class_lwlrap(truth, scores) -> tuple[np.ndarray, np.ndarray]:
    """Per-class lwlrap and class weights.

    Args:
        truth: (N, C), ``> 0`` = true label.  scores: (N, C) real scores.

    Returns:
        values (C,) float64: mean precision over the class's positives (0 for a class without any);
        weights (C,) float64: the class's share of all positive labels (all 0 when there are none).
        ``sum(values * weights)`` is the overall lwlrap.
    """
    rows, cols, prec = positive_precisions(truth, scores)
    c = np.shape(scores)[1]
    counts = np.bincount(cols, minlength=c).astype(np.float64)
    sums = np.bincount(cols, weights=prec, minlength=c)
    values = sums / np.maximum(counts, 1.0)
    total = counts.sum()
    weights = counts / total if total > 0 else np.zeros(c)
    return values, weights


def lwlrap(truth, scores) -> float:
    """Overall lwlrap: mean precision over all (clip, true label) pairs; NaN if there is no true label.

    truth: (N, C), ``> 0`` = true label; scores: (N, C) real scores (see the module docstring for ties).
    """
    _, _, prec = positive_precisions(truth, scores)
    return float(prec.mean()) if prec.size else float("nan")


def clip_lwlrap(truth, scores) -> np.ndarray:
    """Each clip's own label-ranking average precision, (N,) float64.

    Mean precision over the clip's true labels: 1 when all of them are ranked above every other class,
    1/rank for a single-label clip, NaN for a clip without a true label (it cannot be scored).
    """
    rows, _, prec = positive_precisions(truth, scores)
    n = np.shape(scores)[0]
    counts = np.bincount(rows, minlength=n)
    sums = np.bincount(rows, weights=prec, minlength=n)
    out = np.full(n, np.nan)
    has = counts > 0
    out[has] = sums[has] / counts[has]
    return out
