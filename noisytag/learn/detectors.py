"""The second noisy-clip detector (SPEC §6b): confident learning with cleanlab, on the given tags only.

:func:`cleanlab_verdicts` judges every clip's given label set against out-of-fold probabilities;
:mod:`noisytag.learn.selection` turns the verdicts into a selection (same per-label cap as stage 3) and
compares them with the per-clip OOF lwlrap rule of SPEC §6.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)


_EMA_ALPHA = 0.8  # cleanlab's default aggregation of the per-class label qualities


def cleanlab_verdicts(given: np.ndarray, probs: np.ndarray) -> pd.DataFrame:
    """Confident-learning verdicts on the given label sets: which clips look mislabelled.

    Only the GIVEN (noisy) labels and out-of-fold probabilities are used, never the truth, so the detector
    is one a real data set can run.

    Args:
        given: (N, K) multi-hot matrix of the given labels (values > 0.5 count as given).
        probs: (N, K) out-of-fold probabilities (sigmoid outputs; clipped to [0, 1]).

    Returns:
        DataFrame(label_quality: float in [0, 1], label_issue: bool), one row per clip in input order.
        ``label_quality`` is :func:`cleanlab.multilabel_classification.get_label_quality_scores` (per class
        the self-confidence p or 1 − p, aggregated by an exponential moving average that weighs the worst
        classes most); ``label_issue`` is
        :func:`cleanlab.multilabel_classification.filter.find_label_issues` (prune by noise rate, one-vs-rest
        per class; a clip is flagged when any class looks wrongly given or wrongly missing).
        ``attrs["fallback"]`` holds the reason when a fallback below was used (else None).

    Small data: cleanlab estimates each class's noise rates from the clips that are given the class and
    those that are not, so it cannot judge a class given to none or to all clips (it raises), and it cannot
    run on fewer than two clips. Such classes are judged by "predicted ≠ given" instead (probability ≥ 0.5
    versus given, cleanlab's own simplest filter); if cleanlab fails on the rest as well, every class is
    judged that way. If the quality score fails, the same formula is computed here with numpy. Each
    fallback is logged as a warning with the reason. Clips with a non-finite probability get quality NaN
    and are flagged (no prediction, no trust).
    """
    given = np.asarray(given, dtype=float) > 0.5
    probs = np.asarray(probs, dtype=float)
    if given.ndim != 2 or given.shape != probs.shape:
        raise ValueError(f"given {given.shape} and probs {probs.shape} must be the same (N, K) shape")
    n, _ = given.shape
    valid = np.isfinite(probs).all(axis=1)
    probs = np.clip(np.nan_to_num(probs, nan=0.5), 0.0, 1.0)
    quality = np.full(n, np.nan)
    issue = np.ones(n, dtype=bool)
    reasons: list[str] = []
    if valid.any():
        g, p = given[valid], probs[valid]
        quality[valid] = _cleanlab_quality(g, p, reasons)
        issue[valid] = _cleanlab_issues(g, p, reasons)
    out = pd.DataFrame({"label_quality": quality, "label_issue": issue})
    out.attrs["fallback"] = "; ".join(reasons) or None
    return out


def _label_lists(given: np.ndarray) -> list[list[int]]:
    return [np.flatnonzero(row).tolist() for row in given]


def _self_confidence_quality(given: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """cleanlab's default multi-label quality by hand: EMA (α 0.8) of p / 1 − p, sorted descending."""
    per_class = np.sort(np.where(given, probs, 1.0 - probs), axis=1)[:, ::-1]
    ema = per_class[:, 0]
    for column in per_class[:, 1:].T:
        ema = _EMA_ALPHA * column + (1 - _EMA_ALPHA) * ema
    return ema


def _cleanlab_quality(given: np.ndarray, probs: np.ndarray, reasons: list[str]) -> np.ndarray:
    from cleanlab.multilabel_classification import get_label_quality_scores

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(get_label_quality_scores(_label_lists(given), probs), dtype=float)
    except Exception as err:  # cleanlab's checks reject e.g. K = 1 or every clip given every class
        reason = f"label quality computed without cleanlab ({type(err).__name__}: {err})"
        log.warning("cleanlab: %s", reason)
        reasons.append(reason)
        return _self_confidence_quality(given, probs)


def _cleanlab_issues(given: np.ndarray, probs: np.ndarray, reasons: list[str]) -> np.ndarray:
    from cleanlab.multilabel_classification.filter import find_label_issues

    predicted_neq_given = (probs >= 0.5) != given  # (N, K): the fallback rule, per class
    judged = given.any(axis=0) & ~given.all(axis=0)  # classes whose noise rates can be estimated
    if len(given) < 2 or judged.sum() < 1:
        reason = f"{len(given)} clip(s), {int(judged.sum())} class(es) with both given and missing labels"
        log.warning(
            "cleanlab cannot run (%s): flagging clips whose predictions differ from the given labels", reason
        )
        reasons.append(f"predicted ≠ given for every class ({reason})")
        return predicted_neq_given.any(axis=1)
    issue = predicted_neq_given[:, ~judged].any(axis=1)
    if not judged.all():
        reason = f"predicted ≠ given for {int((~judged).sum())} class(es) given to no clip or to every clip"
        log.warning("cleanlab: %s", reason)
        reasons.append(reason)
    # The judged classes alone; a clip left with no label is a valid multi-label row for cleanlab.
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            flagged = find_label_issues(_label_lists(given[:, judged]), probs[:, judged], n_jobs=1)
        few = sorted({str(w.message).split(",")[0] for w in caught if "too few examples" in str(w.message)})
        if few:
            log.info("cleanlab: %d class(es) have few examples and may be under-flagged", len(few))
        return issue | np.asarray(flagged, dtype=bool)
    except Exception as err:
        reason = f"predicted ≠ given for every class (cleanlab failed: {type(err).__name__}: {err})"
        log.warning("cleanlab: %s", reason)
        reasons.append(reason)
        return predicted_neq_given.any(axis=1)
