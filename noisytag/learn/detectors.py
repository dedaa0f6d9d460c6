"""The noisy-clip detectors (SPEC §6, §6b) and their registry: which given label sets look wrong.

A detector judges every noisy clip from the out-of-fold predictions of the stages its stage selects
from (the run plan's ``StagePlan.selects_from``, the one owner of that meaning): a score (higher = more
trusted) and a flag (True = the detector does not trust the clip's given labels). :data:`DETECTORS`
holds them, chosen by ``selection.method``:

* ``oof_lwlrap`` (SPEC §6): the clip's own lwlrap under those OOF predictions, the geometric mean over
  the stages (sqrt(s1 · s2) in stage 3, s3 in stage 4), flagged below ``selection.stage3_threshold`` /
  ``selection.stage4_threshold``;
* ``cleanlab`` (SPEC §6b): confident learning on the given tags only (:func:`cleanlab_verdicts`), judged
  on the mean of those stages' OOF probabilities.

:mod:`noisytag.learn.selection` runs every detector for the audit and lets the chosen one select (its
trusted clips by descending score, under the per-(fold, label) cap of stage 3).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import pandas as pd

from noisytag.config import RunConfig, SelectionConfig
from noisytag.plan import StagePlan
from noisytag.registry import Registry, in_range

log = logging.getLogger(__name__)

TOLERANCE = 1e-9  # scores are ratios of small integers: sqrt(3/11 · 11/12) must count as 0.5


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


# ----------------------------------------------------------------------------------------------
# the registry


def check_score_table(table: pd.DataFrame, needed: tuple[str, ...]) -> pd.DataFrame:
    """``table`` with a row per clip: fname (unique), fold, labels and the ``needed`` columns, or ValueError."""
    missing = [c for c in ("fname", "fold", "labels", *needed) if c not in table.columns]
    if missing:
        raise ValueError(f"score table lacks column(s) {', '.join(missing)}")
    dupes = table["fname"][table["fname"].duplicated()]
    if len(dupes):
        raise ValueError(f"score table lists {dupes.iloc[0]} more than once")
    return table


def lwlrap_score(table: pd.DataFrame, sources: tuple[int, ...]) -> np.ndarray:
    """(N,) SPEC §6 score: the geometric mean of the clip's s_k over the stages ``sources`` it is selected
    from, i.e. sqrt(s1 · s2) in stage 3 and s3 in stage 4 (NaN where a clip has no score)."""
    if not sources:
        raise ValueError("a selecting stage needs the stages it selects from (StagePlan.selects_from)")
    columns = tuple(f"s{k}" for k in sources)
    check_score_table(table, columns)
    product = np.prod([table[c].to_numpy(dtype=float) for c in columns], axis=0)
    return product ** (1 / len(columns))  # numpy's ** 0.5 is its sqrt and ** 1.0 a copy: exact


def mean_oof(oofs: Mapping[int, np.ndarray], sources: tuple[int, ...]) -> np.ndarray:
    """(N, K) mean of the out-of-fold probabilities of the stages ``sources``, in that order."""
    missing = [k for k in sources if k not in oofs]
    if not sources or missing:
        raise ValueError(f"the OOF predictions of stages {sources} are needed, missing {missing}")
    return np.mean([oofs[k] for k in sources], axis=0)


class Detector(Protocol):
    """What a registered detector is: built from (selection config, the stage's plan); its audit column
    names. It reads the OOF predictions of the stages ``stage.selects_from`` names, no others."""

    score_column: str  # the audit's column of its score (higher = more trusted)
    flag_column: str  # the audit's column of its flag (True = not trusted)

    def judge(
        self, table: pd.DataFrame, given: np.ndarray, oofs: Mapping[int, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(score, flag), each (N,), rows as in ``table``; ``oofs``: stage → (N, K) OOF probabilities."""


DETECTORS = Registry("detector", "selection.method")
CAP = {"selection.stage3_cap": in_range(0)}  # shared by every detector; 0 admits no clip


@DETECTORS.register(
    "oof_lwlrap",
    options={
        "selection.stage3_threshold": in_range(0, 1),
        "selection.stage4_threshold": in_range(0, 1),
        **CAP,
    },
)
class OofLwlrap:
    """SPEC §6: trusted when the clip's own OOF lwlrap ≥ the stage's threshold (tolerance 1e-9)."""

    score_column, flag_column = "lwlrap_score", "lwlrap_flag"

    def __init__(self, selection: SelectionConfig, stage: StagePlan):
        self.sources = stage.selects_from
        self.threshold = selection.stage3_threshold if stage.stage == 3 else selection.stage4_threshold

    def judge(
        self, table: pd.DataFrame, given: np.ndarray, oofs: Mapping[int, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(score, flag), each (N,), from the table's s_k of the sources; a clip without a score (NaN)
        is flagged."""
        score = lwlrap_score(table, self.sources)
        return score, ~(score >= self.threshold - TOLERANCE)


@DETECTORS.register("cleanlab", options=CAP)
class Cleanlab:
    """SPEC §6b: trusted when confident learning does not flag the given label set; score = label quality."""

    score_column, flag_column = "label_quality", "cleanlab_flag"

    def __init__(self, selection: SelectionConfig, stage: StagePlan):
        self.sources = stage.selects_from

    def judge(
        self, table: pd.DataFrame, given: np.ndarray, oofs: Mapping[int, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray]:
        """(label quality, label issue), each (N,), from :func:`cleanlab_verdicts` on ``given`` and the
        mean OOF probabilities of the sources."""
        verdicts = cleanlab_verdicts(given, mean_oof(oofs, self.sources))
        return verdicts["label_quality"].to_numpy(), verdicts["label_issue"].to_numpy()


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError naming the key: an unknown ``selection.method`` or its options out of range."""
    DETECTORS.validate(cfg)


def build(name: str, selection: SelectionConfig, stage: StagePlan) -> Detector:
    """The detector ``name`` for a selecting stage of the run plan, with the thresholds of ``selection``."""
    return DETECTORS.build(name, selection, stage)
