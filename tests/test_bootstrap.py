"""Paired bootstrap of lwlrap differences: hand-checked values, the vectorised path against a plain loop."""

from __future__ import annotations

import numpy as np
import pytest

from noisytag.bootstrap import (
    ClassMean,
    Score,
    class_mean,
    compare_runs,
    paired_bootstrap,
    resample_indices,
    score_runs,
)
from noisytag.metrics import lwlrap

# The hand-made case of test_metrics: per-class lwlrap [1, 1, 1/2, 0 (no positive)].
TRUTH = np.array([[0, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.1],  # single label at rank 3 -> 1/3
        [0.9, 0.1, 0.2, 0.8],  # ranks 1 and 3 -> 1 and 2/3
        [0.1, 0.2, 0.3, 0.4],  # no label: counts for nothing
        [0.5, 0.6, 0.1, 0.2],  # both labels on top -> 1, 1
    ]
)
CLASSES = ["a", "b", "c", "d"]


def random_case(seed: int, n: int = 60, c: int = 7, levels: int | None = None):
    rng = np.random.default_rng(seed)
    truth = rng.random((n, c)) < 0.15
    truth[np.arange(n), rng.integers(0, c, n)] = True
    truth[rng.random(n) < 0.1] = False  # clips without a label
    a, b = rng.random((n, c)), rng.random((n, c))
    if levels:  # many ties
        a, b = np.floor(a * levels), np.floor(b * levels)
    return truth, a, b


def loop_metric(metric):
    """The same metric without its vectorised form: paired_bootstrap recomputes it on each resample."""
    return lambda t, s: metric(t, s)


def test_identical_predictions_give_zero():
    truth, a, _ = random_case(0)
    for metric in (lwlrap, ClassMean((0, 3)), loop_metric(lwlrap)):
        assert paired_bootstrap(truth, a, a.copy(), n_boot=200, metric=metric) == (0.0, 0.0, 0.0)


def test_clearly_better_run_has_interval_above_zero():
    truth, a, _ = random_case(1, n=200)
    b = a + 2.0 * truth  # true labels pushed to the top: every clip perfect
    delta, lo, hi = paired_bootstrap(truth, a, b)
    assert delta == pytest.approx(1.0 - lwlrap(truth, a))
    assert 0 < lo <= delta <= hi
    delta, lo, hi = paired_bootstrap(truth, b, a)  # and below zero the other way round
    assert lo <= delta <= hi < 0


def test_deterministic_for_a_seed():
    truth, a, b = random_case(2)
    assert paired_bootstrap(truth, a, b, seed=3) == paired_bootstrap(truth, a, b, seed=3)
    assert paired_bootstrap(truth, a, b, seed=3)[1:] != paired_bootstrap(truth, a, b, seed=4)[1:]
    assert paired_bootstrap(truth, a, b, seed=3)[0] == paired_bootstrap(truth, a, b, seed=4)[0]


def test_hand_checked_small_case():
    # lwlrap of SCORES: pairs 1/3, 1, 2/3, 1, 1 (clips 0, 1, 1, 3, 3); a perfect b scores 1.
    perfect = SCORES + 2.0 * TRUTH
    delta, lo, hi = paired_bootstrap(TRUTH, SCORES, perfect, n_boot=1, seed=5)
    assert delta == pytest.approx(1 - (1 / 3 + 1 + 2 / 3 + 1 + 1) / 5, abs=1e-15)
    # one resample: lo = hi = its delta, with each drawn copy of a clip counted as its own clip
    counts = np.bincount(resample_indices(4, 1, 5)[0], minlength=4)
    sums, positives = np.array([1 / 3, 1 + 2 / 3, 0, 2]), np.array([1, 2, 0, 2])
    expected = 1 - counts @ sums / (counts @ positives)
    assert lo == hi == pytest.approx(expected, abs=1e-15)
    # the interval of many resamples lies within the deltas a resample can give
    _, lo, hi = paired_bootstrap(TRUTH, SCORES, perfect, n_boot=500)
    assert 0 <= lo <= hi <= 2 / 3 + 1e-12


@pytest.mark.parametrize("levels", [None, 2])
@pytest.mark.parametrize("metric", [lwlrap, ClassMean((0, 2, 5))], ids=["lwlrap", "class_mean"])
def test_vectorised_equals_a_loop_over_resampled_rows(metric, levels):
    truth, a, b = random_case(4, n=25, levels=levels)  # few clips: some resamples miss a class
    fast = paired_bootstrap(truth, a, b, n_boot=300, seed=9, metric=metric)
    slow = paired_bootstrap(truth, a, b, n_boot=300, seed=9, metric=loop_metric(metric))
    np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12)


def test_class_mean_over_named_classes():
    assert class_mean(TRUTH, SCORES, CLASSES, ["a", "c"]) == pytest.approx(0.75)
    assert class_mean(TRUTH, SCORES, CLASSES, ["c"]) == pytest.approx(0.5)
    assert class_mean(TRUTH, SCORES, CLASSES, ["c", "d"]) == pytest.approx(0.5)  # d has no positive
    assert np.isnan(class_mean(TRUTH, SCORES, CLASSES, ["d"]))
    with pytest.raises(ValueError, match="zebra"):
        class_mean(TRUTH, SCORES, CLASSES, ["a", "zebra"])


def test_score_and_compare_runs():
    truth, a, b = random_case(6, n=80)
    half = np.arange(80) < 40
    scores = [Score("overall"), Score("first half", rows=half), Score("a+c", ClassMean((0, 2)))]
    probs = {"ref": a, "new": b}
    table = score_runs(truth, probs, scores)
    assert table[1]["run"] == "new"
    assert table[1]["overall"] == lwlrap(truth, b)
    assert table[1]["first half"] == lwlrap(truth[half], b[half])
    rows = compare_runs(truth, probs, [("ref", "new")], scores, n_boot=100, seed=1)
    assert [r["score"] for r in rows] == ["overall", "first half", "a+c"]
    for r, s in zip(rows, scores, strict=True):
        t, ra, rb = (truth, a, b) if s.rows is None else (truth[half], a[half], b[half])
        assert (r["delta"], r["lo"], r["hi"]) == paired_bootstrap(t, ra, rb, 100, 1, s.metric)
        assert r["delta"] == pytest.approx(r["value"] - r["reference_value"], abs=1e-12)
