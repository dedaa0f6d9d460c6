"""Selection rules of SPEC §6 and the cleanlab detector of §6b on hand-made tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from noisytag.config import ConfigError, RunConfig, SelectionConfig
from noisytag.learn import detectors
from noisytag.learn.detectors import DETECTORS, cleanlab_verdicts
from noisytag.learn.selection import (
    cleanlab_selection,
    detector_audit,
    oof_lwlrap_flags,
    select_noisy,
    stage3_selection,
    stage4_selection,
    trusted_selection,
)
from noisytag.metrics import clip_lwlrap
from noisytag.plan import build_plan

WARMUP = build_plan(RunConfig())  # the default four stages: 3 selects from the OOF of 1 and 2, 4 from 3


def oofs(stage: int, probs: np.ndarray) -> dict[int, np.ndarray]:
    """``probs`` as the OOF of every stage ``stage`` selects from (so their mean is ``probs``)."""
    return {k: probs for k in WARMUP.stage(stage).selects_from}


def table(rows):
    """rows: (fname, fold, labels, s1, s2[, s3])."""
    cols = ["fname", "fold", "labels", "s1", "s2", "s3"][: len(rows[0])]
    return pd.DataFrame(rows, columns=cols)


def test_stage3_threshold_boundary_and_nan():
    t = table(
        [
            ("a.wav", 0, ("x",), 0.5, 0.5, 0),  # sqrt(0.25) = 0.5 exactly: in
            (
                "b.wav",
                0,
                ("x",),
                3 / 11,
                11 / 12,
                0,
            ),  # exactly 0.5, 0.49999999999999994 in floating point: in
            ("c.wav", 0, ("x",), 0.5, 0.49, 0),  # 0.495: out
            ("d.wav", 0, ("x",), float("nan"), 1.0, 0),  # no score: out
            ("e.wav", 0, ("y",), 1.0, 0.25, 0),  # 0.5: in
        ]
    )
    out = stage3_selection(t, threshold=0.5, cap=5)
    assert list(out.columns) == ["fname", "fold", "labels", "score"]
    assert set(out["fname"]) == {"a.wav", "b.wav", "e.wav"}
    assert out.set_index("fname").loc["a.wav", "score"] == 0.5
    assert math.sqrt((3 / 11) * (11 / 12)) < 0.5  # the case the tolerance is for


def test_stage3_cap_per_fold_and_label_with_ties_by_name():
    rows = [(f"f{i}.wav", 0, ("x",), 1.0, 1.0) for i in (7, 3, 5, 1, 9, 2, 8)]  # all score 1: ties
    rows += [(f"g{i}.wav", 1, ("x",), 0.8, 0.8) for i in range(4)]  # fold 1 has its own places
    rows += [("h.wav", 0, ("y",), 0.6, 0.6)]
    out = stage3_selection(table(rows), threshold=0.5, cap=5)
    fold0_x = out[(out["fold"] == 0) & (out["labels"] == ("x",))]
    assert list(fold0_x["fname"]) == ["f1.wav", "f2.wav", "f3.wav", "f5.wav", "f7.wav"]  # by name
    assert (out["fold"] == 1).sum() == 4
    assert "h.wav" in set(out["fname"])
    # output order: fold, then descending score, then name
    assert list(out["fname"]) == ["f1.wav", "f2.wav", "f3.wav", "f5.wav", "f7.wav", "h.wav"] + [
        f"g{i}.wav" for i in range(4)
    ]


def test_stage3_higher_score_first_then_cap():
    rows = [(f"c{i}.wav", 0, ("x",), s, s) for i, s in enumerate([0.6, 0.9, 0.7, 1.0, 0.8, 0.95])]
    out = stage3_selection(table(rows), cap=3)
    assert list(out["fname"]) == ["c3.wav", "c5.wav", "c1.wav"]
    assert np.allclose(out["score"], [1.0, 0.95, 0.9])


def test_stage3_multi_label_clip_blocked_by_one_full_label():
    rows = [
        ("a.wav", 0, ("x",), 1.0, 1.0),
        ("b.wav", 0, ("x",), 0.9, 0.9),
        ("c.wav", 0, ("x", "y"), 0.8, 0.8),  # x already full (cap 2): skipped, y keeps its room
        ("d.wav", 0, ("y",), 0.7, 0.7),
        ("e.wav", 0, ("y",), 0.6, 0.6),
        ("f.wav", 0, ("y",), 0.55, 0.55),  # y full after d and e
        ("g.wav", 1, ("x", "y"), 0.7, 0.7),  # another fold: admitted
    ]
    out = stage3_selection(table(rows), cap=2)
    assert list(out["fname"]) == ["a.wav", "b.wav", "d.wav", "e.wav", "g.wav"]


def test_stage3_multi_label_clip_uses_room_of_every_label():
    rows = [
        ("a.wav", 0, ("x", "y"), 1.0, 1.0),
        ("b.wav", 0, ("y",), 0.9, 0.9),
        ("c.wav", 0, ("x",), 0.8, 0.8),
    ]
    out = stage3_selection(table(rows), cap=1)
    assert list(out["fname"]) == ["a.wav"]
    assert list(stage3_selection(table(rows), cap=None)["fname"]) == ["a.wav", "b.wav", "c.wav"]
    assert stage3_selection(table(rows), cap=0).empty


def test_stage4_equal_one_rule():
    rows = [
        ("a.wav", 0, ("x",), 0, 0, 1.0),
        ("b.wav", 0, ("x", "y"), 0, 0, (1 + 2 / 3) / 2),  # a label at rank 3: out
        ("c.wav", 1, ("x", "y"), 0, 0, (1.0 + 1.0) / 2),
        ("d.wav", 1, ("y",), 0, 0, 1 - 1e-12),  # rounding noise of an exact 1: in
        ("e.wav", 0, ("y",), 0, 0, 0.5),
        ("f.wav", 0, ("y",), 0, 0, float("nan")),
    ]
    out = stage4_selection(table(rows))
    assert list(out["fname"]) == ["a.wav", "c.wav", "d.wav"]
    many = [(f"m{i}.wav", 0, ("x",), 0, 0, 1.0) for i in range(20)]
    assert len(stage4_selection(table(many))) == 20  # no cap


def test_labels_as_csv_strings_and_errors():
    t = table([("a.wav", 0, "x,y", 1.0, 1.0), ("b.wav", 0, "y", 1.0, 1.0)])
    out = stage3_selection(t, cap=1)
    assert list(out["fname"]) == ["a.wav"] and out["labels"][0] == ("x", "y")
    with pytest.raises(ValueError, match="s2"):
        stage3_selection(t.drop(columns="s2"))
    with pytest.raises(ValueError, match="more than once"):
        stage3_selection(pd.concat([t, t]))
    with pytest.raises(ValueError, match="cap"):
        stage3_selection(t, cap=-1)
    empty = stage3_selection(t.iloc[:0])
    assert empty.empty and list(empty.columns) == ["fname", "fold", "labels", "score"]


# ----------------------------------------------------------------------------------------------
# cleanlab detector


def corrupted_case():
    """72 clips, 4 classes (some clips carry two), confident OOF probabilities that agree with the truth,
    and 8 given label sets corrupted: labels swapped, a true label dropped, a wrong label added."""
    rng = np.random.default_rng(1)
    n, k = 72, 4
    truth = np.zeros((n, k), dtype=bool)
    truth[np.arange(n), np.arange(n) % k] = True
    two = np.arange(0, n, 9)
    truth[two, (two + 2) % k] = True
    probs = np.where(truth, rng.uniform(0.85, 0.98, (n, k)), rng.uniform(0.01, 0.1, (n, k)))
    given = truth.copy()
    swapped, dropped, added = [5, 22, 47, 61], [9, 36], [14, 50]
    for i in swapped:
        given[i] = np.roll(truth[i], 1)
    for i in dropped:
        given[i, np.flatnonzero(truth[i])[1]] = False
    for i in added:
        given[i, (np.flatnonzero(truth[i])[0] + 1) % k] = True
    return given, probs, sorted(swapped + dropped + added)


def corrupted_table():
    """:func:`corrupted_case` as a score table (s1 = s2 = s3 = the clip's lwlrap) with the truth."""
    given, probs, corrupted = corrupted_case()
    classes = np.array(["a", "b", "c", "d"])
    s = clip_lwlrap(given, probs)
    table = pd.DataFrame(
        {
            "fname": [f"c{i:02d}.wav" for i in range(len(given))],
            "fold": np.arange(len(given)) % 3,
            "labels": [tuple(classes[row]) for row in given],
            "s1": s,
            "s2": s,
            "s3": s,
            "correct": ~np.isin(np.arange(len(given)), corrupted),
        }
    )
    return table, given, probs


def test_cleanlab_flags_exactly_the_corrupted_clips():
    given, probs, corrupted = corrupted_case()
    out = cleanlab_verdicts(given, probs)
    assert list(out.columns) == ["label_quality", "label_issue"] and len(out) == len(given)
    assert list(np.flatnonzero(out["label_issue"])) == corrupted
    assert out.attrs["fallback"] is None
    clean = np.delete(out["label_quality"].to_numpy(), corrupted)
    assert out["label_quality"].to_numpy()[corrupted].max() < clean.min()
    assert ((out["label_quality"] >= 0) & (out["label_quality"] <= 1)).all()


def test_cleanlab_small_data_falls_back_with_a_reason(caplog):
    # class 0 is given to every clip: cleanlab cannot judge it; predicted ≠ given judges it instead
    given = np.array([[1, 1, 0], [1, 0, 1], [1, 0, 0], [1, 0, 0]])
    probs = np.array([[0.9, 0.9, 0.1], [0.9, 0.1, 0.9], [0.2, 0.1, 0.1], [0.9, 0.1, 0.1]])
    with caplog.at_level("WARNING", logger="noisytag.learn.selection"):
        out = cleanlab_verdicts(given, probs)
    assert list(out["label_issue"]) == [False, False, True, False]
    assert "every clip" in out.attrs["fallback"] and "every clip" in caplog.text
    # one clip: cleanlab cannot run at all
    one = cleanlab_verdicts(np.array([[1, 0]]), np.array([[0.3, 0.2]]))
    assert list(one["label_issue"]) == [True] and "predicted" in one.attrs["fallback"]
    assert 0 < one["label_quality"][0] < 1
    # one class (cleanlab's quality refuses K = 1): both computed without it
    given1 = np.arange(20)[:, None] % 2
    probs1 = np.where(given1 == 1, 0.9, 0.1)
    probs1[3] = 0.02  # given, but confidently predicted absent
    k1 = cleanlab_verdicts(given1, probs1)
    assert list(np.flatnonzero(k1["label_issue"])) == [3]
    assert np.allclose(k1["label_quality"], np.where(np.arange(20) == 3, 0.02, 0.9))
    assert "without cleanlab" in k1.attrs["fallback"]


def test_cleanlab_fallback_quality_is_cleanlab_formula():
    """The numpy fallback gives cleanlab's own default scores where cleanlab runs."""
    from noisytag.learn.detectors import _self_confidence_quality

    given, probs, _ = corrupted_case()
    assert np.allclose(
        _self_confidence_quality(given, probs), cleanlab_verdicts(given, probs)["label_quality"]
    )


def test_cleanlab_rows_without_prediction_are_flagged_and_shapes_checked():
    given, probs, corrupted = corrupted_case()
    probs = probs.copy()
    probs[0, 1] = np.nan
    out = cleanlab_verdicts(given, probs)
    assert out["label_issue"][0] and np.isnan(out["label_quality"][0])
    assert list(np.flatnonzero(out["label_issue"][1:]) + 1) == corrupted
    with pytest.raises(ValueError, match="shape"):
        cleanlab_verdicts(given, probs[:, :3])


def test_cleanlab_selection_uses_the_stage3_cap_rule():
    rows = [
        ("a.wav", 0, ("x",), 1.0),
        ("b.wav", 0, ("x",), 0.9),
        ("c.wav", 0, ("x", "y"), 0.8),
        ("d.wav", 0, ("y",), 0.7),
        ("e.wav", 0, ("y",), 0.6),
        ("f.wav", 0, ("y",), 0.55),
        ("g.wav", 1, ("x", "y"), 0.7),
        ("h.wav", 1, ("x",), 0.7),
    ]
    t = pd.DataFrame(rows, columns=["fname", "fold", "labels", "q"])
    quality, none = t["q"].to_numpy(), np.zeros(len(t), dtype=bool)
    for cap in (None, 0, 1, 2, 5):
        expected = stage3_selection(t.assign(s1=t["q"], s2=t["q"]), threshold=0.0, cap=cap)
        pd.testing.assert_frame_equal(cleanlab_selection(t, quality, none, cap=cap), expected)
    issue = t["fname"].isin(["a.wav", "d.wav"]).to_numpy()
    out = cleanlab_selection(t, quality, issue, cap=2)
    assert list(out["fname"]) == ["b.wav", "c.wav", "e.wav", "g.wav", "h.wav"]  # flagged never enter
    assert list(out.columns) == ["fname", "fold", "labels", "score"]
    with pytest.raises(ValueError, match="one value per row"):
        cleanlab_selection(t, quality[:3], none, cap=2)


def test_detector_audit_agreement_precision_recall():
    # stage 3 rule: sqrt(s1 s2) < 0.5 flags; cleanlab flags label_issue
    t = pd.DataFrame(
        {
            "fname": [f"{c}.wav" for c in "abcdefgh"],
            "fold": 0,
            "labels": [("x",)] * 8,
            "s1": [1.0, 1.0, 0.2, 0.2, 1.0, 0.2, 1.0, float("nan")],
            "s2": [1.0, 1.0, 0.2, 0.2, 1.0, 0.2, 1.0, 1.0],
            "label_issue": [False, True, True, True, False, False, False, True],
        }
    )
    correct = np.array([True, False, False, False, True, True, True, False])
    assert list(oof_lwlrap_flags(t)) == [False, False, True, True, False, True, False, True]
    out = detector_audit(t, correct)
    assert out["n"] == 8 and out["flagged_lwlrap"] == 4 and out["flagged_cleanlab"] == 4
    assert out["agreement"] == 6 / 8
    assert math.isclose(out["kappa"], (6 / 8 - 0.5) / 0.5)
    assert out["n_wrong"] == 4
    assert out["lwlrap_precision"] == 3 / 4 and out["lwlrap_recall"] == 3 / 4
    assert out["cleanlab_precision"] == 1.0 and out["cleanlab_recall"] == 1.0
    # the table's own correct column is the default; without one, no precision / recall
    assert detector_audit(t.assign(correct=correct))["cleanlab_recall"] == 1.0
    assert "n_wrong" not in detector_audit(t)
    # stage 4: s3 below 1 flags
    s4 = detector_audit(t.assign(s3=[1.0] * 4 + [0.5] * 4), correct, stage=4)
    assert s4["flagged_lwlrap"] == 4 and s4["lwlrap_recall"] == s4["lwlrap_precision"] == 1 / 4
    with pytest.raises(ValueError, match="label_issue"):
        detector_audit(t.drop(columns="label_issue"))
    # the columns of select_noisy's audit are read as they are
    flagged = t.assign(lwlrap_flag=True, cleanlab_flag=t["label_issue"]).drop(columns=["s1", "label_issue"])
    both = detector_audit(flagged, correct)
    assert both["flagged_lwlrap"] == 8 and both["lwlrap_recall"] == 1.0 and both["lwlrap_precision"] == 0.5
    assert both["kappa"] == 0.0 and both["agreement"] == 0.5  # one rater constant: no better than chance


def test_select_noisy_both_detectors_and_the_method_switch():
    table, given, probs = corrupted_table()
    corrupted = corrupted_case()[2]
    wide = SelectionConfig(method="cleanlab", stage3_cap=1000)
    audit = select_noisy(table, given, oofs(3, probs), WARMUP.stage(3), wide)
    assert list(audit.columns) == [
        "fname", "fold", "labels", "score", "lwlrap_score", "label_quality",
        "lwlrap_flag", "cleanlab_flag", "selected", "correct",
    ]  # fmt: skip
    assert sorted(audit.loc[~audit["selected"], "fname"]) == [f"c{i:02d}.wav" for i in corrupted]
    assert np.allclose(audit["score"], audit["label_quality"])
    summary = detector_audit(audit)
    assert summary["cleanlab_precision"] == summary["cleanlab_recall"] == 1.0
    # the cap of stage 3 holds for cleanlab too; stage 4 has none
    capped = select_noisy(
        table, given, oofs(3, probs), WARMUP.stage(3), SelectionConfig(method="cleanlab", stage3_cap=2)
    )
    per_label = capped[capped["selected"]].explode("labels").groupby(["fold", "labels"]).size()
    assert per_label.max() == 2
    assert (
        select_noisy(
            table, given, oofs(4, probs), WARMUP.stage(4), SelectionConfig(method="cleanlab", stage3_cap=2)
        )["selected"].sum()
        == 64
    )
    # oof_lwlrap: the same selection as stage3_selection, in the same order
    rule = SelectionConfig(method="oof_lwlrap", stage3_cap=2)
    audit = select_noisy(table, given, oofs(3, probs), WARMUP.stage(3), rule)
    expected = stage3_selection(table, threshold=0.5, cap=2)
    assert list(audit.loc[audit["selected"], "fname"]) == list(expected["fname"])
    assert np.array_equal(
        audit["lwlrap_flag"], oof_lwlrap_flags(audit.assign(s1=audit["score"], s2=audit["score"]))
    )
    with pytest.raises(ValueError, match="selection.method"):
        select_noisy(table, given, oofs(3, probs), WARMUP.stage(3), SelectionConfig(method="vote"))


# ----------------------------------------------------------------------------------------------
# the detector registry


@pytest.mark.parametrize("stage", [3, 4])
@pytest.mark.parametrize("name", DETECTORS.names())
def test_every_detector_selects_its_trusted_clips(name, stage):
    table, given, probs = corrupted_table()
    selection = SelectionConfig(method=name, stage3_cap=4)
    judge = detectors.build(name, selection, WARMUP.stage(stage))
    score, flag = judge.judge(table, given, oofs(stage, probs))
    assert score.shape == flag.shape == (len(table),) and flag.dtype == bool
    audit = select_noisy(table, given, oofs(stage, probs), WARMUP.stage(stage), selection)
    for other in DETECTORS.names():  # every detector judges every clip for the audit
        built = detectors.build(other, selection, WARMUP.stage(stage))
        assert {built.score_column, built.flag_column} <= set(audit.columns)
    np.testing.assert_array_equal(audit["score"], audit[judge.score_column])
    kept = audit[audit["selected"]]
    expected = trusted_selection(table, score, flag, cap=4 if stage == 3 else None)
    assert list(kept["fname"]) == list(expected["fname"]) and len(kept) > 0
    assert not kept[judge.flag_column].any()
    assert kept["correct"].mean() > audit["correct"].mean()  # better than taking every clip
    if stage == 3:
        assert kept.explode("labels").groupby(["fold", "labels"]).size().max() <= 4


OPTIONS = [(name, key) for name in DETECTORS.names() for key in DETECTORS.get(name).options]


@pytest.mark.parametrize("name, key", OPTIONS, ids=[f"{n}-{k}" for n, k in OPTIONS])
def test_every_detector_option_out_of_range_names_its_key(name, key):
    bad = SelectionConfig(method=name, **{key.removeprefix("selection."): -1})
    with pytest.raises(ConfigError, match=f"config key '{key}': must be"):
        detectors.validate(RunConfig(selection=bad))
    table, given, probs = corrupted_table()
    with pytest.raises(ConfigError, match=key):
        select_noisy(table, given, oofs(3, probs), WARMUP.stage(3), bad)


def test_unknown_method_names_the_key_and_the_detectors():
    with pytest.raises(
        ConfigError, match=r"'selection.method': unknown detector 'vote' \(known: oof_lwlrap, cleanlab\)"
    ):
        detectors.validate(RunConfig(selection=SelectionConfig(method="vote")))
    assert DETECTORS.names() == ("oof_lwlrap", "cleanlab")
    detectors.validate(RunConfig(selection=SelectionConfig(stage3_cap=0)))  # 0: admit none (valid)


# ----------------------------------------------------------------------------------------------
# stage meaning comes from the run plan alone


def test_a_changed_selects_from_changes_what_both_detectors_read(monkeypatch, tmp_path):
    """The plan owns which OOF a stage selects from: when stage 3 selects from stage 2 alone, the
    OOF-lwlrap score is s2 (not sqrt(s1 · s2)) and cleanlab judges stage 2's predictions, both."""
    from types import SimpleNamespace

    from noisytag import plan as plans
    from noisytag.rundir import RunDir
    from noisytag.runs import pipeline

    monkeypatch.setitem(plans.SELECTS_FROM, 3, (2,))
    plan = plans.build_plan(RunConfig())
    assert plan.stage(3).selects_from == (2,)
    table, given, probs = corrupted_table()
    table = table.assign(s1=1.0 - table["s2"])  # stage 1's scores: not read any more
    oof = {1: 1.0 - probs, 2: probs}
    written = {}
    monkeypatch.setattr(pipeline, "stage_oof", lambda ctx, arch, stage, split: oof[stage])
    monkeypatch.setattr(pipeline, "noisy_scores", lambda ctx, arch: table)
    monkeypatch.setattr(
        pipeline, "write_clip_table", lambda path, frame: written.setdefault(path.name, frame)
    )
    for method in DETECTORS.names():
        written.clear()
        ctx = SimpleNamespace(
            selections={},
            plan=plan,
            cfg=RunConfig(selection=SelectionConfig(method=method)),
            noisy=SimpleNamespace(clips=SimpleNamespace(targets=given)),
            run=RunDir(tmp_path),
        )
        pipeline.select_for(ctx, "cnn1", 3)
        audit = written["stage3_audit.csv"].set_index("fname").loc[table["fname"]]
        np.testing.assert_array_equal(audit["lwlrap_score"], table["s2"])
        expected = cleanlab_verdicts(given, probs)
        np.testing.assert_array_equal(audit["label_quality"], expected["label_quality"])
        np.testing.assert_array_equal(audit["cleanlab_flag"], expected["label_issue"])


@pytest.mark.parametrize("name", DETECTORS.names())
def test_every_detector_reads_only_the_stages_its_plan_names(name):
    import dataclasses

    table, given, probs = corrupted_table()
    stage = dataclasses.replace(WARMUP.stage(3), selects_from=(2,))
    judge = detectors.build(name, SelectionConfig(method=name), stage)
    score, flag = judge.judge(table.assign(s1=0.0), given, {1: 1.0 - probs, 2: probs})
    alone, alone_flag = judge.judge(table.drop(columns=["s1", "s3"]), given, {2: probs})
    np.testing.assert_array_equal(score, alone)
    np.testing.assert_array_equal(flag, alone_flag)
    with pytest.raises(ValueError, match="selects no clips"):
        select_noisy(table, given, {}, WARMUP.stage(2), SelectionConfig(method=name))
