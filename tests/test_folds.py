"""Fold assignment: stratified, stable, saved once, refused when it no longer fits the data."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from noisytag.learn.folds import FoldsError, assign_folds, load_or_make_folds, make_folds


def single_label(n, c, seed=0):
    rng = np.random.default_rng(seed)
    y = np.zeros((n, c), dtype=np.float32)
    y[np.arange(n), rng.integers(0, c, n)] = 1
    return y


def spread(y, folds, k):
    counts = np.stack([y[folds == f].sum(axis=0) for f in range(k)])
    return counts.max(axis=0) - counts.min(axis=0)


def fake_dataset(n_curated=40, n_noisy=60, classes=("a", "b", "c", "d"), seed=0):
    """Stand-in with the attributes of noisytag.data.dataset.Dataset that folds use."""
    rng = np.random.default_rng(seed)

    def frame(prefix, n):
        labels = []
        for _ in range(n):
            first = classes[rng.integers(len(classes))]
            extra = classes[rng.integers(len(classes))] if rng.random() < 0.2 else first
            labels.append(tuple(sorted({first, extra})))
        fnames = [f"{prefix}{i:03d}.wav" for i in range(n)]
        return pd.DataFrame({"fname": fnames, "path": fnames, "labels": labels})

    empty = pd.DataFrame({"fname": [], "path": [], "labels": []})
    return SimpleNamespace(
        classes=list(classes), curated=frame("c", n_curated), noisy=frame("n", n_noisy), test=empty
    )


def test_single_label_classes_spread_within_one_and_every_clip_once():
    y = single_label(203, 7)
    folds = make_folds(y, 5, seed=1)
    assert folds.shape == (203,) and folds.dtype == np.int64
    assert set(folds) == set(range(5))
    assert spread(y, folds, 5).max() <= 1
    assert np.bincount(folds).max() - np.bincount(folds).min() <= 2


def test_multi_label_like_the_competition_is_stratified():
    rng = np.random.default_rng(0)
    y = single_label(400, 20, seed=0)
    y[rng.random(y.shape) < 0.2 / 20] = 1  # ≈ 1.2 labels per clip
    folds = make_folds(y, 5, seed=0)
    assert spread(y, folds, 5).max() <= 1
    random_folds = rng.permutation(np.arange(400) % 5)
    assert spread(y, random_folds, 5).mean() > spread(y, folds, 5).mean() + 1  # far better than chance


def test_same_seed_same_folds_other_seed_other_folds():
    y = single_label(120, 6)
    assert np.array_equal(make_folds(y, 4, 3), make_folds(y, 4, 3))
    assert not np.array_equal(make_folds(y, 4, 3), make_folds(y, 4, 4))


def test_small_and_degenerate_inputs():
    # as many clips as folds, rare classes, clips without labels, one class or none
    y = np.array([[1, 0], [0, 0], [1, 1], [0, 0]])
    folds = make_folds(y, 4, seed=0)
    assert sorted(folds) == [0, 1, 2, 3]
    assert set(make_folds(np.ones((6, 1)), 3, seed=0)) == {0, 1, 2}
    assert set(make_folds(np.zeros((6, 0)), 3, seed=0)) == {0, 1, 2}
    with pytest.raises(FoldsError, match="cannot split 3 clips into 5 folds"):
        make_folds(np.ones((3, 2)), 5, seed=0)
    with pytest.raises(FoldsError, match="≥ 2"):
        make_folds(np.ones((3, 2)), 1, seed=0)
    with pytest.raises(FoldsError, match="2-D"):
        make_folds(np.ones(3), 2, seed=0)


def test_assign_folds_each_split_on_its_own():
    data = fake_dataset()
    folds = assign_folds(data, 4, seed=0)
    assert list(folds.columns) == ["fname", "split", "fold"]
    assert list(folds["fname"]) == list(data.curated["fname"]) + list(data.noisy["fname"])
    assert list(folds["split"]) == ["curated"] * 40 + ["noisy"] * 60
    for split in ("curated", "noisy"):
        part = folds[folds["split"] == split]
        assert set(part["fold"]) == set(range(4))
        assert np.bincount(part["fold"]).max() - np.bincount(part["fold"]).min() <= 2
    with pytest.raises(FoldsError, match="curated: cannot split 40 clips into 50 folds"):
        assign_folds(data, 50, seed=0)
    data.noisy = data.noisy.iloc[:0]
    assert set(assign_folds(data, 4, seed=0)["split"]) == {"curated"}


def test_load_or_make_saves_once_and_reloads_identically(tmp_path):
    data = fake_dataset()
    path = tmp_path / "run" / "folds.csv"
    made = load_or_make_folds(path, data, 5, seed=0)
    assert path.is_file() and not path.with_name("folds.csv.tmp").exists()
    assert pd.read_csv(path).columns.tolist() == ["fname", "split", "fold"]
    again = load_or_make_folds(path, data, 5, seed=123)  # the file wins over a new seed
    pd.testing.assert_frame_equal(made, again, check_dtype=False)
    assert again["fold"].dtype == np.int64


def test_saved_folds_that_do_not_fit_are_refused(tmp_path):
    data = fake_dataset()
    path = tmp_path / "folds.csv"
    load_or_make_folds(path, data, 5, seed=0)
    with pytest.raises(FoldsError, match=r"folds 0\.\.4 but 10 folds"):
        load_or_make_folds(path, data, 10, seed=0)
    other = fake_dataset()
    other.noisy = other.noisy.iloc[1:]
    with pytest.raises(FoldsError, match="noisy clip.*not in the data set.*n000.wav"):
        load_or_make_folds(path, other, 5, seed=0)
    other = fake_dataset(n_curated=41)
    with pytest.raises(FoldsError, match="curated clip.*have no fold.*c040.wav"):
        load_or_make_folds(path, other, 5, seed=0)
    path.write_text("fname,fold\na.wav,0\n")
    with pytest.raises(FoldsError, match="expected columns fname,split,fold"):
        load_or_make_folds(path, data, 5, seed=0)
    path.write_text("fname,split,fold\nc000.wav,curated,x\n")
    with pytest.raises(FoldsError, match="not an integer"):
        load_or_make_folds(path, data, 5, seed=0)


def test_duplicate_file_names_are_refused():
    data = fake_dataset()
    data.curated.loc[1, "fname"] = data.curated.loc[0, "fname"]
    with pytest.raises(FoldsError, match="more than once"):
        assign_folds(data, 4, seed=0)


def test_folds_of_the_tiny_data_set(tiny_data, tmp_path):
    from noisytag.data.dataset import load_dataset

    data = load_dataset(tiny_data)
    folds = load_or_make_folds(tmp_path / "folds.csv", data, 2, seed=0)
    for split in ("curated", "noisy"):
        part = folds[folds["split"] == split]
        assert sorted(part["fname"]) == sorted(getattr(data, split)["fname"])  # every clip exactly once
        assert set(part["fold"]) == {0, 1}
    pd.testing.assert_frame_equal(folds, load_or_make_folds(tmp_path / "folds.csv", data, 2, seed=0))
