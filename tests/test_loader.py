import numpy as np
import pytest
import torch

from noisytag.audio.cache import FeatureCache
from noisytag.audio.windows import n_windows
from noisytag.config import FrontendConfig, InferConfig
from noisytag.learn.loader import ClipSet, EpochSampler, RandomWindowDataset, ValidationBatches


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


@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_validation_batches_cover_every_window_of_every_clip_once(curated, mode):
    caches, clips = curated
    data = ValidationBatches(caches, clips, InferConfig(mode=mode), batch_size=5, normalize="minmax")
    frames = caches["curated"].index["n_frames"].to_numpy()
    counts = [n_windows(int(t), 128, 48) for t in frames]
    items = [data[k] for k in range(len(data))]
    window = np.concatenate([b["window"].numpy() for b in items])
    row = np.concatenate([b["row"].numpy() for b in items])
    assert np.array_equal(np.sort(window), np.arange(sum(counts)))
    assert np.array_equal(np.bincount(row, minlength=len(clips)), counts)
    for b in items:
        n = len(b["window"])
        assert b["target"].shape == (n, 3) and torch.equal(
            b["target"], torch.from_numpy(clips.targets[b["row"]])
        )
        if b["whole"]:  # fast mode: one clip of several windows, whole
            assert (
                mode == "fast" and n > 1 and b["x"].shape[:2] == (1, 1) and len(set(b["row"].tolist())) == 1
            )
        else:
            assert b["x"].shape == (n, 1, 128, 128) and (n == 5 or b is items[-1])
