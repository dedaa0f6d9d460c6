import numpy as np
import pytest

from noisytag.audio.cache import FeatureCache
from noisytag.audio.windows import n_windows
from noisytag.config import FrontendConfig
from noisytag.learn.loader import AllWindowsDataset, ClipSet, EpochSampler, RandomWindowDataset


@pytest.fixture(scope="module")
def curated(tiny_cache):
    cache = FeatureCache.open(tiny_cache, FrontendConfig(), "curated")
    n = len(cache)
    clips = ClipSet(
        np.full(n, "curated", dtype=object), np.arange(n), np.eye(3, dtype=np.float32)[np.arange(n) % 3]
    )
    return {"curated": cache}, clips


def test_epoch_sampler_is_a_seeded_permutation_per_epoch():
    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert sorted(first) == list(range(10))
    sampler.set_epoch(2)
    second = list(sampler)
    assert sorted(second) == list(range(20, 30))
    assert [k - 20 for k in second] != first
    again = EpochSampler(10, seed=3)
    again.set_epoch(2)
    assert list(again) == second


def test_random_windows_depend_only_on_seed_epoch_and_clip(curated):
    caches, clips = curated
    data = RandomWindowDataset(caches, clips, width=128, seed=1)
    n = len(clips)
    x0, y0 = data[0]
    assert x0.shape == (1, 128, 128) and y0.shape == (4,)  # 3 classes + the untrusted flag
    assert y0[-1] == 0  # clips are trusted unless marked
    assert 0.0 <= float(x0.min()) and float(x0.max()) <= 1.0  # min-max normalised
    same = RandomWindowDataset(caches, clips, width=128, seed=1)
    assert np.array_equal(same[5 * n + 1][0].numpy(), data[5 * n + 1][0].numpy())
    long_clip = int(np.argmax(data.n_frames))
    assert data.n_frames[long_clip] > 160, "the tiny data set should have a clip longer than 160 frames"
    crops = {data[e * n + long_clip][0].numpy().tobytes() for e in range(6)}
    assert len(crops) > 1, "a long clip gets a new random crop in new epochs"


def test_all_windows_cover_every_clip_with_spec_window_counts(curated):
    caches, clips = curated
    data = AllWindowsDataset(caches, clips, width=128, max_stride=48)
    frames = caches["curated"].index["n_frames"].to_numpy()
    assert len(data) == sum(n_windows(int(t), 128, 48) for t in frames)
    x, y, k, row = data[len(data) - 1]
    assert x.shape == (1, 128, 128) and row == len(clips) - 1 and k == len(data) - 1
