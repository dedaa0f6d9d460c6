"""Paired bootstrap intervals of lwlrap differences between runs scored on the same test clips.

Two recipes that differ by 0.01 on a few hundred test clips may differ only by which clips they drew,
so every difference is reported with a 95 % percentile interval: the test clips (rows) are resampled
with replacement, the same resample for both runs, and the difference is recomputed on each resample.

Speed: a clip's label precisions depend only on its own row, so lwlrap over a resample (a duplicated
row counts as two clips) is a ratio of per-class sums weighted by how often each clip was drawn:
``sums = counts @ precisions`` and ``positives = counts @ truth``, (B, C) from one matrix product for
all B resamples. Metrics that know this form (:func:`~noisytag.metrics.lwlrap`, :class:`ClassMean`)
use it; any other ``metric(truth, scores) -> float`` is recomputed on each resample's rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from noisytag.metrics import lwlrap, per_class_lwlrap, positive_precisions

__all__ = ["ClassMean", "Score", "class_mean", "compare_runs", "paired_bootstrap", "score_runs"]

Metric = Callable[[np.ndarray, np.ndarray], float]


@dataclass(frozen=True)
class ClassMean:
    """Mean per-class lwlrap over fixed columns, a metric ``(truth, scores) -> float``.

    A class without a positive clip (possible in a resample) is left out of the mean; NaN if none has one.
    """

    columns: tuple[int, ...]

    @classmethod
    def of(cls, classes: Sequence[str], names: Sequence[str]) -> ClassMean:
        """The metric over ``names``, given the column order ``classes``; an unknown name is an error."""
        col = {c: i for i, c in enumerate(classes)}
        unknown = [n for n in names if n not in col]
        if unknown:
            raise ValueError(f"class(es) not among the {len(col)} columns: {', '.join(unknown)}")
        return cls(tuple(col[n] for n in names))

    def __call__(self, truth, scores) -> float:
        values, _ = per_class_lwlrap(truth, scores)
        has = (np.asarray(truth) > 0).any(axis=0)[list(self.columns)]
        picked = values[list(self.columns)][has]
        return float(picked.mean()) if picked.size else float("nan")

    def from_sums(self, sums: np.ndarray, positives: np.ndarray) -> np.ndarray:
        """(B,) values from per-class precision sums and positive counts, each (B, C)."""
        s, p = sums[:, list(self.columns)], positives[:, list(self.columns)]
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class = np.where(p > 0, s / np.where(p > 0, p, 1), np.nan)
            n = np.sum(p > 0, axis=1)
            return np.where(n > 0, np.nansum(per_class, axis=1) / np.maximum(n, 1), np.nan)


def class_mean(truth, scores, classes: Sequence[str], names: Sequence[str]) -> float:
    """Mean per-class lwlrap over the classes ``names`` (column order ``classes``): a fixed list of the
    weakest classes, so a recipe that helps them is seen apart from the overall score."""
    return ClassMean.of(classes, names)(truth, scores)


def _overall_from_sums(sums: np.ndarray, positives: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums.sum(axis=1) / positives.sum(axis=1)


def _from_sums(metric: Metric) -> Callable[[np.ndarray, np.ndarray], np.ndarray] | None:
    """The vectorised form of ``metric`` when it has one (see the module docstring), else None."""
    if metric is lwlrap:
        return _overall_from_sums
    return getattr(metric, "from_sums", None)


def _precision_matrix(truth, scores) -> np.ndarray:
    """(N, C) precision of every positive (clip, class) pair, 0 elsewhere."""
    rows, cols, prec = positive_precisions(truth, scores)
    out = np.zeros(np.shape(scores))
    out[rows, cols] = prec
    return out


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) row indices drawn with replacement; the same seed gives the same resamples."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def paired_bootstrap(
    truth, probs_a, probs_b, n_boot: int = 1000, seed: int = 0, metric: Metric = lwlrap, level: float = 0.95
) -> tuple[float, float, float]:
    """``(delta, lo, hi)``: ``metric(b) - metric(a)`` on all clips and its percentile interval.

    Args:
        truth: (N, C), ``> 0`` = true label; probs_a, probs_b: (N, C) scores of two runs, same rows.
        n_boot: resamples of the N clips (rows, with replacement; the same rows for both runs).
        metric: ``(truth, scores) -> float``; lwlrap and :class:`ClassMean` are vectorised.
        level: central share of the bootstrap deltas inside ``[lo, hi]``.
    """
    truth = np.asarray(truth) > 0
    probs_a, probs_b = np.asarray(probs_a), np.asarray(probs_b)
    delta = float(metric(truth, probs_b) - metric(truth, probs_a))
    n = truth.shape[0]
    idx = resample_indices(n, n_boot, seed)
    reduce = _from_sums(metric)
    if reduce is not None:
        flat = (idx + n * np.arange(n_boot)[:, None]).ravel()
        counts = np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(np.float64)
        positives = counts @ truth.astype(np.float64)
        deltas = reduce(counts @ _precision_matrix(truth, probs_b), positives) - reduce(
            counts @ _precision_matrix(truth, probs_a), positives
        )
    else:
        deltas = np.array([metric(truth[i], probs_b[i]) - metric(truth[i], probs_a[i]) for i in idx])
    tail = 100 * (1 - level) / 2
    lo, hi = np.nanpercentile(deltas, [tail, 100 - tail]) if np.isfinite(deltas).any() else (np.nan,) * 2
    return delta, float(lo), float(hi)


@dataclass(frozen=True)
class Score:
    """One number of a benchmark row: ``metric`` over the test clips ``rows`` ((N,) bool; None = all)."""

    name: str
    metric: Metric = lwlrap
    rows: np.ndarray | None = None


def _rows(score: Score, truth: np.ndarray, *probs: np.ndarray) -> tuple[np.ndarray, ...]:
    if score.rows is None:
        return (truth, *probs)
    keep = np.asarray(score.rows, dtype=bool)
    return (truth[keep], *(p[keep] for p in probs))


def score_runs(truth, probs: dict[str, np.ndarray], scores: Sequence[Score]) -> list[dict]:
    """One record per run: ``{"run": name, <score name>: value, ...}``; ``probs`` (N, C) per run."""
    truth = np.asarray(truth) > 0
    out = []
    for name, p in probs.items():
        record: dict = {"run": name}
        for score in scores:
            t, q = _rows(score, truth, np.asarray(p))
            record[score.name] = float(score.metric(t, q))
        out.append(record)
    return out


def compare_runs(
    truth,
    probs: dict[str, np.ndarray],
    pairs: Sequence[tuple[str, str]],
    scores: Sequence[Score],
    n_boot: int = 1000,
    seed: int = 0,
) -> list[dict]:
    """Paired bootstrap of every ``(reference, run)`` pair of ``probs``' keys on every score.

    Returns records ``{"run", "reference", "score", "value", "reference_value", "delta", "lo", "hi"}``
    (delta = run - reference; ``lo``/``hi``: its 95 % interval). Every pair and score draws the same
    resamples (``seed``), so the intervals of one table are computed on the same clip draws.
    """
    truth = np.asarray(truth) > 0
    out = []
    for ref, run in pairs:
        for score in scores:
            t, a, b = _rows(score, truth, np.asarray(probs[ref]), np.asarray(probs[run]))
            delta, lo, hi = paired_bootstrap(t, a, b, n_boot=n_boot, seed=seed, metric=score.metric)
            out.append(
                {
                    "run": run,
                    "reference": ref,
                    "score": score.name,
                    "value": float(score.metric(t, b)),
                    "reference_value": float(score.metric(t, a)),
                    "delta": delta,
                    "lo": lo,
                    "hi": hi,
                }
            )
    return out
