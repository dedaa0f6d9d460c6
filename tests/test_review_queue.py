"""The review queue: order by the detectors' suspicion, modes, cards, and no truth read anywhere."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from noisytag.learn.detectors import cleanlab_verdicts
from noisytag.metrics import clip_lwlrap
from noisytag.review.queue import MODES, ReviewError, ReviewQueue, suspicion_ranks
from noisytag.rundir import RunDir


@pytest.fixture(scope="module")
def queue(tiny_run, tiny_data):
    return ReviewQueue.from_run(tiny_run, tiny_data)


def test_queue_is_judged_on_the_last_trained_stage(queue, tiny_run):
    run = RunDir(tiny_run)
    plan = run.plan()
    last = max(s.stage for s in plan.stages if s.selects_from)
    assert queue.stage == last and queue.sources == (max(plan.stage_numbers),)  # stage 4 has trained
    folds = pd.read_csv(run.folds)
    assert len(queue) == int((folds["split"] == "noisy").sum())
    assert queue.clips["fname"].tolist() == folds.loc[folds["split"] == "noisy", "fname"].tolist()
    assert "on the stage-4 out-of-fold predictions" in queue.card(queue.order()[0]).reasons[0]


def _noisy_given(queue) -> np.ndarray:
    return np.array([[c in g for c in queue.classes] for g in queue.clips["given"]], dtype=float)


def test_suspicion_is_the_rank_average_of_the_detectors_on_the_last_stage(queue, tiny_run):
    """The selection's own detectors, run again on the stage-4 out-of-fold predictions."""
    run = RunDir(tiny_run)
    fold_of = queue.clips["fold"].to_numpy()
    oof = run.stage_oof("cnn1", 4, "noisy", fold_of, len(queue.classes))
    given = _noisy_given(queue)
    lwlrap_score = clip_lwlrap(given, oof)
    quality = cleanlab_verdicts(given, oof)["label_quality"].to_numpy()
    expected = (suspicion_ranks(lwlrap_score) + suspicion_ranks(quality)) / 2
    np.testing.assert_allclose(queue.clips["suspicion"], expected)
    np.testing.assert_allclose(queue.clips["score_lwlrap"], lwlrap_score)
    threshold = run.saved_config().selection.stage4_threshold  # the run's own rule flags the clip
    np.testing.assert_array_equal(queue.clips["flag_lwlrap"] >= 0.5, ~(lwlrap_score >= threshold - 1e-9))
    order = queue.order("suspect")
    assert sorted(order) == list(range(len(queue)))
    s = queue.clips["suspicion"].to_numpy()[order]
    assert np.all(np.diff(s) <= 1e-12)


def test_before_the_last_stage_trains_the_audit_ranks(run_copy, tiny_data):
    """Stage 4 not trained yet (its out-of-fold files missing): the stage-4 audit's verdicts rank."""
    run = RunDir(run_copy)
    for path in (run.root / "cnn1" / "stage4").glob("fold*/oof_noisy.npy"):
        path.unlink()
    queue = ReviewQueue.from_run(run_copy, tiny_data)
    assert queue.sources == run.plan().stage(4).selects_from
    audit = pd.read_csv(run.audit("cnn1", 4)).set_index("fname").loc[queue.clips["fname"]]
    expected = (suspicion_ranks(audit["lwlrap_score"]) + suspicion_ranks(audit["label_quality"])) / 2
    np.testing.assert_allclose(queue.clips["suspicion"], expected)
    assert "in the stage-4 audit" in queue.card(queue.order()[0]).reasons[0]


def test_suspicion_ranks():
    np.testing.assert_allclose(suspicion_ranks(np.array([0.9, 0.1, np.nan, 0.5])), [0.0, 1.0, 1.0, 0.5])
    np.testing.assert_allclose(suspicion_ranks(np.array([0.3, 0.3, 0.8])), [0.75, 0.75, 0.0])


def test_probs_are_the_out_of_fold_rows_of_the_judging_stage(queue, tiny_run):
    run = RunDir(tiny_run)
    folds = pd.read_csv(run.folds)
    noisy = folds[folds["split"] == "noisy"].reset_index(drop=True)
    clip = queue.order()[0]
    fold = int(noisy.loc[clip, "fold"])
    row = int((noisy.loc[: clip - 1, "fold"] == fold).sum()) if clip else 0
    expected = np.mean([np.load(run.fold_oof("cnn1", s, fold, "noisy"))[row] for s in queue.sources], axis=0)
    card = queue.card(clip)
    np.testing.assert_allclose([card.probs[c] for c in queue.classes], expected, atol=1e-4)


def test_order_is_unchanged_without_truth(queue, run_copy, tiny_data, tmp_path):
    data = shutil.copytree(tiny_data, tmp_path / "data")
    shutil.rmtree(data / "truth")
    run = RunDir(run_copy)
    for audit in run_copy.glob("*/selections/*.csv"):
        frame = pd.read_csv(audit)
        frame.drop(columns=[c for c in ("true_labels", "correct") if c in frame], errors="ignore").to_csv(
            audit, index=False
        )
    for scores in run_copy.glob("*/scores.csv"):
        pd.read_csv(scores).drop(columns=["true_labels", "correct"], errors="ignore").to_csv(
            scores, index=False
        )
    assert "correct" not in pd.read_csv(run.audit("cnn1", queue.stage)).columns
    blind = ReviewQueue.from_run(run_copy, data)
    assert "truth" not in queue.dataset.noisy.columns and "truth" not in blind.dataset.noisy.columns
    label, pair = queue.classes[0], (queue.pairs() or [(queue.classes[0], queue.classes[1], 0)])[0][:2]
    for mode in MODES:
        args = {"label": label} if mode == "class" else {"pair": pair} if mode == "pair" else {}
        assert blind.order(mode, **args) == queue.order(mode, **args), mode
    for clip in queue.order()[:10]:
        assert blind.card(clip) == queue.card(clip)


def test_modes(queue):
    base = queue.order("suspect")
    differ = queue.disagreeing()
    disagree = queue.order("disagree")
    assert sorted(disagree) == sorted(base)
    n = int(differ.sum())
    assert all(differ[i] for i in disagree[:n]) and not any(differ[i] for i in disagree[n:])
    assert [i for i in disagree if differ[i]] == [i for i in base if differ[i]]
    label = queue.classes[0]
    in_class = queue.order("class", label=label)
    for i in range(len(queue)):
        card = queue.card(i)
        assert (i in in_class) == (label in card.given or label in card.suggested)
    assert in_class == [i for i in base if i in set(in_class)]
    pairs = queue.pairs()
    assert pairs and pairs == sorted(pairs, key=lambda t: (-t[2], t[0], t[1]))
    x, y, count = pairs[0]
    in_pair = queue.order("pair", pair=(x, y))
    assert len(in_pair) == count
    for i in in_pair:
        card = queue.card(i)
        assert x in card.likely_wrong and y in card.likely_missing
    r0, r1 = queue.order("random", seed=0), queue.order("random", seed=1)
    assert sorted(r0) == list(range(len(queue))) and r0 == queue.order("random", seed=0) and r0 != r1


def test_mode_errors(queue):
    with pytest.raises(ValueError, match="unknown queue mode"):
        queue.order("best")
    with pytest.raises(ValueError, match="needs a label"):
        queue.order("class")
    with pytest.raises(ValueError, match="unknown label"):
        queue.order("class", label="Nope")
    with pytest.raises(ValueError, match="needs a pair"):
        queue.order("pair")


def test_card(queue):
    card = queue.card(queue.order()[0])
    assert set(card.probs) == set(queue.classes)
    assert list(card.candidates) == sorted(queue.classes, key=lambda c: -card.probs[c])
    assert card.suggested and set(card.suggested) <= set(queue.classes)
    assert set(card.likely_wrong) == set(card.given) - set(card.suggested)
    assert set(card.likely_missing) == set(card.suggested) - set(card.given)
    assert 0.0 <= card.suspicion <= 1.0 and {"lwlrap", "cleanlab"} <= set(card.scores)
    assert card.reasons and all(r.endswith(".") for r in card.reasons)
    assert queue.clip_id(card.fname) == card.clip_id
    assert queue.audio_path(card.clip_id).is_file()


def test_unknown_clip(queue):
    for bad in (len(queue), -1, "3", None):
        with pytest.raises(KeyError):
            queue.card(bad)
    with pytest.raises(KeyError):
        queue.clip_id("nope.wav")
    with pytest.raises(KeyError):
        queue.audio_path(len(queue))


def test_example_is_a_curated_clip(queue):
    curated = queue.dataset.curated
    for label in queue.classes:
        row, path = queue.example(label), queue.example_path(label)
        if row is None:
            assert path is None and not any(label in ls for ls in curated["labels"])
        else:
            assert label in curated["labels"].iat[row] and path.is_file()
            assert str(path) not in set(queue.clips["path"])
    with pytest.raises(ValueError):
        queue.example_path("Nope")


def test_run_without_audits(run_copy, tiny_data):
    for audit in run_copy.glob("*/selections/*_audit.csv"):
        audit.unlink()
    with pytest.raises(ReviewError, match="no selection audits"):
        ReviewQueue.from_run(run_copy, tiny_data)


def test_not_a_run(tmp_path, tiny_data):
    with pytest.raises(ReviewError, match="run directory not found"):
        ReviewQueue.from_run(tmp_path / "nope", tiny_data)


def test_data_defaults_to_the_runs(queue, tiny_run):
    assert ReviewQueue.from_run(tiny_run).order() == queue.order()
