"""Selection rules of SPEC §6 on hand-made score tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from noisytag.selection import selection_summary, stage3_selection, stage4_selection


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
    summary = selection_summary(out, ["x", "y", "z"])
    assert summary.to_dict("list") == {"label": ["x", "y", "z"], "count": [3, 3, 0]}


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
    assert math.isclose(selection_summary(out, ["x"])["count"].sum(), 2)
