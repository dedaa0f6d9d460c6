"""The window engine: SPEC §7 windows, averaging order, batching across clips, fast mode, audio files."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import torch_calls
from torch import nn

from noisytag.audio.windows import n_windows, window_offsets
from noisytag.config import InferConfig
from noisytag.infer.predict import Clip, iter_window_probs, predict_cache, predict_files

# ---------------------------------------------------------------------------------------------
# windows (noisytag.audio.windows is the lead's; SPEC §7 edge lengths are tested here)


@pytest.mark.parametrize(
    "n_frames, count",
    [(1, 1), (60, 1), (127, 1), (128, 1), (129, 2), (176, 2), (177, 3), (500, 9), (2000, 40)],
)
def test_window_count_and_offsets(n_frames, count):
    assert n_windows(n_frames) == count == max(math.ceil((n_frames - 128) / 48), 0) + 1
    starts = window_offsets(n_frames)
    assert starts.dtype == np.int64 and len(starts) == count
    assert starts[0] == 0
    assert starts[-1] == max(n_frames - 128, 0)  # the last window ends on the last frame
    assert np.all(np.diff(starts) <= 48) and np.all(np.diff(starts) > 0)


def test_window_offsets_129_and_long():
    assert window_offsets(129).tolist() == [0, 1]
    starts = window_offsets(1000)
    spread = np.diff(starts)
    assert spread.max() - spread.min() <= 1  # evenly spread


# ---------------------------------------------------------------------------------------------
# hand-made models and a stand-in cache with FeatureCache's reading contract


class _Pool(nn.Module):
    def forward(self, fmap):
        flat = fmap.flatten(2)
        return torch.cat([flat.amax(2), flat.mean(2)], 1)


class HandModel(nn.Module):
    """Identity body, max‖avg pool, fixed linear classify: logits = W [max(x), mean(x)] + b."""

    def __init__(self, weight, bias):
        super().__init__()
        self.body = nn.Identity()
        self.head = nn.Module()
        self.head.pool = _Pool()
        self.head.classify = nn.Linear(2, len(bias))
        with torch.no_grad():
            self.head.classify.weight.copy_(torch.tensor(weight, dtype=torch.float32))
            self.head.classify.bias.copy_(torch.tensor(bias, dtype=torch.float32))
        self.spec = {"name": "hand", "n_classes": len(bias), "in_channels": 1, "options": {}}
        self.time_reduction = 1

    def features(self, x):
        return self.body(x)

    def forward(self, x):
        return self.head.classify(self.head.pool(self.features(x)))


def _hand_logits(weight, bias, window):
    feats = np.array([window.max(), window.mean()])
    return np.asarray(weight) @ feats + np.asarray(bias)


class FakeCache:
    def __init__(self, clips):
        self.clips = clips
        self.index = pd.DataFrame(
            {
                "fname": [f"c{i}.wav" for i in range(len(clips))],
                "n_frames": [c.shape[1] for c in clips],
                "lo": [float(c.min()) for c in clips],
                "hi": [float(c.max()) for c in clips],
            }
        )

    def clip(self, i):
        return self.clips[i]


def _clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    # a slow trend + noise, so every window of a clip has a different max and mean
    return [
        (np.linspace(-3, 3, t)[None, :] * rng.uniform(0.5, 1.5) + 0.1 * rng.standard_normal((4, t))).astype(
            np.float32
        )
        for t in lengths
    ]


MODELS = [
    ([[1.0, -2.0], [0.5, 0.5], [-1.0, 3.0]], [0.1, -0.2, 0.0]),
    ([[-0.5, 1.0], [2.0, 0.0], [0.3, 0.3]], [0.0, 0.4, -1.0]),
]


def _expected(clips):
    """Sigmoid per window and model → mean over models → mean over the clip's windows."""
    rows = []
    for db in clips:
        lo = db.min()
        x = np.pad(db, ((0, 0), (0, max(0, 128 - db.shape[1]))), constant_values=lo)
        per_window = []
        for s in window_offsets(db.shape[1]):
            win = x[:, s : s + 128]
            probs = [1 / (1 + np.exp(-_hand_logits(w, b, win))) for w, b in MODELS]
            per_window.append(np.mean(probs, axis=0))
        rows.append(np.mean(per_window, axis=0))
    return np.array(rows)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 1000])
def test_averaging_order_models_then_windows(batch_size):
    clips = _clips([40, 128, 129, 300, 77, 700])
    cache = FakeCache(clips)
    models = [HandModel(w, b) for w, b in MODELS]
    cfg = InferConfig(batch_size=batch_size)
    order = [5, 0, 3, 3, 1, 2, 4]  # any order, repeats allowed
    got = predict_cache(models, cache, order, cfg, normalize="none")
    want = _expected([clips[i] for i in order])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # not the same as averaging logits (the order matters)
    assert not np.allclose(got, 1 / (1 + np.exp(-np.log(want / (1 - want)).mean())), atol=1e-3)


def test_fast_mode_equals_exact_for_identity_body():
    clips = _clips([90, 128, 400, 1000])
    cache = FakeCache(clips)
    models = [HandModel(w, b) for w, b in MODELS]
    exact = predict_cache(models, cache, range(4), InferConfig(batch_size=5), normalize="none")
    fast = predict_cache(models, cache, range(4), InferConfig(batch_size=5, mode="fast"), normalize="none")
    np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-6)


def test_window_timeline_and_out_of_order_keys():
    clips = _clips([100, 500, 60])
    models = [HandModel(w, b) for w, b in MODELS]
    items = [Clip(k, c, float(c.min()), float(c.max())) for k, c in zip("abc", clips, strict=True)]
    for mode in ("exact", "fast"):
        out = {
            k: (s, p)
            for k, s, p in iter_window_probs(models, items, InferConfig(batch_size=2, mode=mode), "none")
        }
        assert sorted(out) == ["a", "b", "c"]
        assert out["b"][1].shape == (n_windows(500), 3)
        assert out["b"][0].tolist() == window_offsets(500).tolist()


def test_cnn1_fast_mode_close_and_short_clips_identical():
    from noisytag.models import build

    torch.manual_seed(0)
    model = build("cnn1", 4, 1, width=0.125).eval()
    clips = _clips([100, 128, 600], seed=1)
    clips = [np.repeat(c, 32, axis=0) for c in clips]  # 128 mel bands
    cache = FakeCache(clips)
    exact = predict_cache([model], cache, range(3), InferConfig(batch_size=8), normalize="none")
    fast = predict_cache([model], cache, range(3), InferConfig(batch_size=8, mode="fast"), normalize="none")
    np.testing.assert_allclose(fast[:2], exact[:2], atol=1e-6)
    assert np.abs(fast[2] - exact[2]).max() < 0.2


def test_files_and_cache_give_the_same_predictions(tiny_data, tiny_cache):
    """predict_files (decode → features) equals predict_cache on the cached clips of the same files."""
    from noisytag.audio.cache import FeatureCache
    from noisytag.config import FrontendConfig
    from noisytag.models import build

    torch.manual_seed(0)
    model = build("cnn1", 12, 1, width=0.125).eval()
    cache = FeatureCache.open(tiny_cache, FrontendConfig(), "test")
    names = cache.index["fname"].tolist()[:5]
    cached = predict_cache([model], cache, [cache.position(n) for n in names], InferConfig())
    files = predict_files([model], [tiny_data / "test" / n for n in names], InferConfig(), FrontendConfig())
    assert not files.failures
    np.testing.assert_allclose(files.probs, cached, atol=1e-6)


def test_files_run_torch_only_in_the_callers_thread(tiny_data, monkeypatch):
    """Several files are decoded a file ahead in another thread, but their log-mels and the models run
    in the caller's: a second thread running torch ops gets a second OpenMP pool, which stops every
    pool's spin-waiting once their threads outnumber the cores (each small op 3-4× slower)."""
    import threading

    from noisytag.audio import features
    from noisytag.config import FrontendConfig
    from noisytag.infer import members
    from noisytag.models import build

    calls = torch_calls(monkeypatch, (features.LogMel, "frames_db"), (members.TorchMember, "probs"))
    torch.manual_seed(0)
    model = build("cnn1", 12, 1, width=0.125).eval()
    paths = sorted((tiny_data / "test").iterdir())[:4]
    result = predict_files([model], paths, InferConfig(), FrontendConfig())
    assert not result.failures and result.probs.shape == (4, 12)
    assert {thread for thread, _ in calls} == {threading.get_ident()}
