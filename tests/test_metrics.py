"""lwlrap against a straightforward loop over clips modelled on the official Kaggle scorer."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noisytag.metrics import clip_lwlrap, lwlrap, per_class_lwlrap, positive_precisions


def reference_precisions(scores_row: np.ndarray, truth_row: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One clip, as the official code: ranks from a reversed ascending (here: stable) argsort."""
    c = scores_row.shape[0]
    pos = np.flatnonzero(truth_row > 0)
    if not len(pos):
        return pos, np.zeros(0)
    retrieved = np.argsort(scores_row, kind="stable")[::-1]
    rank_of = np.zeros(c, dtype=int)
    rank_of[retrieved] = range(c)
    hit = np.zeros(c, dtype=bool)
    hit[rank_of[pos]] = True
    cum = np.cumsum(hit)
    return pos, cum[rank_of[pos]] / (1 + rank_of[pos].astype(float))


def reference_per_class(truth: np.ndarray, scores: np.ndarray):
    n, c = scores.shape
    prec = np.zeros((n, c))
    for i in range(n):
        pos, p = reference_precisions(scores[i], truth[i])
        prec[i, pos] = p
    counts = np.sum(truth > 0, axis=0)
    weights = counts / max(1, counts.sum())
    return prec.sum(axis=0) / np.maximum(1, counts), weights, prec


def reference_clip(truth: np.ndarray, scores: np.ndarray) -> np.ndarray:
    out = np.full(len(scores), np.nan)
    for i in range(len(scores)):
        pos, p = reference_precisions(scores[i], truth[i])
        if len(pos):
            out[i] = p.mean()
    return out


def random_case(rng, n, c, density=0.02, levels=None):
    truth = (rng.random((n, c)) < density).astype(np.float32)
    truth[np.arange(n), rng.integers(0, c, n)] = 1
    truth[rng.random(n) < 0.1] = 0  # some clips without labels
    scores = rng.random((n, c))
    if levels:  # coarse scores: many ties
        scores = np.floor(scores * levels) / levels
    return truth, scores


@pytest.mark.parametrize("method", ["compare", "sort", "auto"])
@pytest.mark.parametrize("levels", [None, 3, 1])
@pytest.mark.parametrize("density", [0.02, 0.5])
def test_matches_loop_reference(method, levels, density):
    rng = np.random.default_rng(7)
    truth, scores = random_case(rng, 300, 17, density, levels)
    values_ref, weights_ref, prec_ref = reference_per_class(truth, scores)
    rows, cols, prec = positive_precisions(truth, scores, method=method)
    np.testing.assert_allclose(prec, prec_ref[rows, cols], rtol=0, atol=1e-12)
    values, weights = per_class_lwlrap(truth, scores)
    np.testing.assert_allclose(values, values_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weights, weights_ref, rtol=0, atol=1e-12)
    assert abs(lwlrap(truth, scores) - float(np.sum(values_ref * weights_ref))) < 1e-12
    np.testing.assert_allclose(clip_lwlrap(truth, scores), reference_clip(truth, scores), rtol=0, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 12), st.integers(1, 9), st.integers(0, 2**31 - 1), st.sampled_from([None, 2, 4]))
def test_property_matches_reference(n, c, seed, levels):
    rng = np.random.default_rng(seed)
    truth = (rng.random((n, c)) < 0.3).astype(int)
    scores = rng.random((n, c)) if levels is None else rng.integers(0, levels, (n, c)).astype(float)
    values_ref, weights_ref, _ = reference_per_class(truth, scores)
    values, weights = per_class_lwlrap(truth, scores)
    np.testing.assert_allclose(values, values_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(weights, weights_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(clip_lwlrap(truth, scores), reference_clip(truth, scores), rtol=0, atol=1e-12)


def test_hand_made_values():
    truth = np.array([[0, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 0, 0]])
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.1],  # single label at rank 3 -> 1/3
            [0.9, 0.1, 0.2, 0.8],  # ranks 1 and 3 -> (1/1 + 2/3) / 2
            [0.1, 0.2, 0.3, 0.4],  # no label -> NaN, counts for nothing
            [0.5, 0.6, 0.1, 0.2],  # both labels on top -> 1
        ]
    )
    expected = np.array([1 / 3, (1 + 2 / 3) / 2, np.nan, 1.0])
    np.testing.assert_allclose(clip_lwlrap(truth, scores), expected, rtol=0, atol=1e-15)
    pairs = [1 / 3, 1.0, 2 / 3, 1.0, 1.0]
    assert lwlrap(truth, scores) == pytest.approx(np.mean(pairs), abs=1e-15)
    values, weights = per_class_lwlrap(truth, scores)
    np.testing.assert_allclose(values, [1.0, 1.0, (1 / 3 + 2 / 3) / 2, 0.0], atol=1e-15)
    np.testing.assert_allclose(weights, [2 / 5, 1 / 5, 2 / 5, 0.0], atol=1e-15)
    assert np.sum(values * weights) == pytest.approx(lwlrap(truth, scores), abs=1e-15)


def test_tie_rule_higher_class_index_ranks_first():
    scores = np.array([[0.5, 0.5, 0.5]])
    # among tied scores the HIGHER column index ranks first: order 2, 1, 0
    assert clip_lwlrap(np.array([[0, 0, 1]]), scores)[0] == 1.0
    assert clip_lwlrap(np.array([[0, 1, 0]]), scores)[0] == 0.5
    assert clip_lwlrap(np.array([[1, 0, 0]]), scores)[0] == pytest.approx(1 / 3)
    # two positives tied with a negative in between in index order
    assert clip_lwlrap(np.array([[1, 0, 1]]), scores)[0] == pytest.approx((1 + 2 / 3) / 2)
    # a strictly higher score always wins over the index rule
    assert clip_lwlrap(np.array([[1, 0, 0]]), np.array([[0.6, 0.5, 0.5]]))[0] == 1.0


def test_agrees_with_sklearn_without_ties():
    from sklearn.metrics import label_ranking_average_precision_score

    rng = np.random.default_rng(3)
    truth, scores = random_case(rng, 200, 11, 0.2)
    keep = truth.sum(axis=1) > 0
    expected = label_ranking_average_precision_score(
        truth[keep] > 0, scores[keep], sample_weight=truth[keep].sum(axis=1)
    )
    assert lwlrap(truth, scores) == pytest.approx(expected, abs=1e-12)


def test_edge_cases_and_errors():
    assert np.isnan(lwlrap(np.zeros((3, 4)), np.ones((3, 4))))
    values, weights = per_class_lwlrap(np.zeros((3, 4)), np.ones((3, 4)))
    assert not values.any() and not weights.any()
    assert np.isnan(clip_lwlrap(np.zeros((2, 3)), np.zeros((2, 3)))).all()
    assert clip_lwlrap(np.zeros((0, 3)), np.zeros((0, 3))).shape == (0,)
    assert lwlrap(np.ones((2, 3)), np.zeros((2, 3))) == 1.0  # all labels true: perfect whatever the scores
    with pytest.raises(ValueError, match="different shapes"):
        lwlrap(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(ValueError, match="2-D"):
        lwlrap(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="NaN"):
        lwlrap(np.ones((1, 2)), np.array([[0.1, np.nan]]))
    with pytest.raises(ValueError, match="method"):
        positive_precisions(np.ones((1, 2)), np.ones((1, 2)), method="fast")


def test_logits_and_probabilities_agree():
    rng = np.random.default_rng(0)
    truth, _ = random_case(rng, 100, 10, 0.1)
    logits = rng.normal(size=truth.shape) * 3
    assert lwlrap(truth, logits) == lwlrap(truth, 1 / (1 + np.exp(-logits)))
