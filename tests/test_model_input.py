"""Clip → model input has one owner: the cache path and the file path give bit-identical inputs (for each
front-end kind: log-mel dB and PCEN), and an unknown ``data.normalize`` is refused on both with one line
naming the key."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from noisytag.audio.cache import FeatureCache, build_cache
from noisytag.audio.decode import load
from noisytag.audio.features import log_mel
from noisytag.audio.model_input import (
    NORMALIZERS,
    cache_windows,
    cached_clips,
    check_normalize,
    extract_clip,
    file_clip,
    model_input,
    normalize,
    take_windows,
)
from noisytag.config import FrontendConfig, InferConfig
from noisytag.infer.predict import iter_window_probs, predict_cache, predict_files
from noisytag.learn.loader import ClipSet, RandomWindowDataset, ValidationBatches

CFG = FrontendConfig()


@pytest.fixture(scope="module", params=["logmel", "pcen"])
def frontend(request):
    """Each front-end kind (``frontend.kind``) with the default parameters."""
    return FrontendConfig(kind=request.param)


@pytest.fixture(scope="module")
def test_split(tiny_data, tiny_cache, frontend, tmp_path_factory):
    """The tiny data set's cached test clips and their audio files (the longest first, so windows vary);
    the PCEN clips from a cache of their own (the session's ``tiny_cache`` is the log-mel one)."""
    if frontend == CFG:
        cache_dir = tiny_cache
    else:
        cache_dir = tmp_path_factory.mktemp(f"cache_{frontend.kind}")
        build_cache(tiny_data, cache_dir, frontend, splits=("test",), workers=1, progress=False)
    cache = FeatureCache.open(cache_dir, frontend, "test")
    order = np.argsort(-cache.index["n_frames"].to_numpy(), kind="stable")[:4]
    names = [cache.index["fname"].iat[i] for i in order]
    assert cache.index["n_frames"].iat[order[0]] > 128 + 48, "a clip of several windows is needed"
    return cache, names, [tiny_data / "test" / n for n in names]


class Recorder:
    """An ensemble member that keeps every batch of windows it is given (and answers zeros)."""

    name = "recorder"
    n_classes = 2

    def __init__(self):
        self.seen: list[np.ndarray] = []

    def probs(self, x: np.ndarray) -> np.ndarray:
        self.seen.append(np.array(x))
        return np.zeros((len(x), self.n_classes), np.float32)


@pytest.mark.parametrize("name", sorted(NORMALIZERS))
def test_cache_and_file_paths_give_bit_identical_model_input(test_split, frontend, name):
    cache, names, paths = test_split
    positions = [cache.position(n) for n in names]
    from_files = [file_clip(p, frontend, key=i)[0] for i, p in enumerate(paths)]
    from_cache = list(cached_clips(cache, positions))
    for f, c in zip(from_files, from_cache, strict=True):
        assert f.db.dtype == c.db.dtype == np.float32 and f.db.shape == c.db.shape
        assert np.array_equal(f.db, c.db) and (f.lo, f.hi) == (c.lo, c.hi)
    # predict: the windows its members see, for the files and for the cached clips
    model = Recorder()
    for clips in (from_files, from_cache):
        for _ in iter_window_probs([model], clips, InferConfig(batch_size=1000), name):
            pass
    file_x, cache_x = model.seen
    assert file_x.dtype == np.float32 and file_x.shape[1:] == (1, 128, 128)
    assert np.array_equal(file_x, cache_x)
    # training and validation: the loader's windows at the same offsets are the same bytes
    clips = ClipSet(
        np.full(len(names), "test", dtype=object), np.asarray(positions), np.zeros((len(names), 2))
    )
    loader = ValidationBatches({"test": cache}, clips, InferConfig(), batch_size=1000, normalize=name)
    loader_x = np.concatenate([loader[k]["x"].numpy() for k in range(len(loader))])
    assert np.array_equal(loader_x, file_x)
    randoms = RandomWindowDataset({"test": cache}, clips, width=128, seed=3, normalize=name)
    for i, clip in enumerate(from_files):
        x = model_input(clip.db, clip.lo, clip.hi, 128, name)
        start = int(np.random.default_rng([3, 0, i]).integers(0, max(clip.db.shape[1] - 128, 0) + 1))
        assert torch.equal(randoms[i][0], torch.from_numpy(x[None, :, start : start + 128]))


def test_the_one_rounding_is_the_caches_and_the_reference(test_split, frontend):
    """extract_clip (what the cache stores) is the float16 rounding of the librosa-equivalent log-mel (or PCEN)."""
    _, _, paths = test_split
    db16, lo, hi, seconds = extract_clip(paths[0], frontend)
    want = log_mel(load(paths[0], frontend), frontend).astype(np.float16)
    assert db16.dtype == np.float16 and np.array_equal(db16.T, want)
    assert (lo, hi) == (float(want.min()), float(want.max())) and seconds > 0
    clip, _, _ = file_clip(paths[0], frontend)
    assert np.array_equal(clip.db, want.astype(np.float32))


def test_cache_windows_pad_past_the_end_with_lo_like_model_input(test_split):
    cache, names, _ = test_split
    i = cache.position(names[-1])
    n = int(cache.index["n_frames"].iat[i])
    (clip,) = cached_clips(cache, [i])
    starts = np.array([0, max(n - 128, 0), n - 5])  # the last one runs past the clip's end
    got = cache_windows(cache, [i] * 3, starts, 128, "minmax")
    x = model_input(np.pad(clip.db, ((0, 0), (0, 128)), constant_values=clip.lo), clip.lo, clip.hi, 128)
    assert np.array_equal(got, take_windows(x, starts, 128))
    assert got.min() >= 0.0 and got.max() <= 1.0 and np.all(got[2][:, 5:] == 0.0)


def test_normalize_names():
    db = np.array([[-80.0, -40.0, 0.0]], dtype=np.float32)
    np.testing.assert_array_equal(normalize(db, -80.0, 0.0, "minmax"), [[0.0, 0.5, 1.0]])
    assert np.array_equal(normalize(db, -80.0, 0.0, "none"), db)
    assert check_normalize("minmax") == "minmax"


def one_line_naming_the_key(err: pytest.ExceptionInfo) -> None:
    message = str(err.value)
    assert "data.normalize" in message and "'zscore'" in message and "\n" not in message
    assert "minmax or none" in message


def test_unknown_normalize_is_refused_on_the_cache_path(test_split):
    cache, names, _ = test_split
    clips = ClipSet(np.array(["test"], dtype=object), np.array([cache.position(names[0])]), np.zeros((1, 2)))
    for make in (RandomWindowDataset, ValidationBatches):
        with pytest.raises(ValueError) as err:
            make({"test": cache}, clips, normalize="zscore")
        one_line_naming_the_key(err)
    with pytest.raises(ValueError) as err:
        predict_cache([Recorder()], cache, [0], InferConfig(), normalize="zscore")
    one_line_naming_the_key(err)
    with pytest.raises(ValueError) as err:
        cache_windows(cache, [0], [0], 128, "zscore")
    one_line_naming_the_key(err)


def test_unknown_normalize_is_refused_on_the_file_path(test_split, frontend):
    _, _, paths = test_split
    with pytest.raises(ValueError) as err:
        predict_files([Recorder()], paths[:1], InferConfig(), frontend, normalize="zscore")
    one_line_naming_the_key(err)
    clip, _, _ = file_clip(paths[0], frontend)
    with pytest.raises(ValueError) as err:
        model_input(clip.db, clip.lo, clip.hi, 128, "zscore")
    one_line_naming_the_key(err)


def test_unknown_normalize_in_a_run_is_refused_by_the_tagger(tmp_path):
    """A run whose models say ``normalize: zscore`` is refused when the Tagger (tag, serve) loads it."""
    import json

    from conftest import write_model_run

    from noisytag.infer.tag import Tagger

    run = write_model_run(tmp_path / "run", ["a", "b"], members=((2, 0),))
    meta_path = run / "cnn1" / "stage2" / "fold0" / "model.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "normalize": "zscore"}))
    with pytest.raises(ValueError) as err:
        Tagger(run, stages=[2])
    one_line_naming_the_key(err)
