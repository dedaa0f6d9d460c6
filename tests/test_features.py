"""Log-mel front end (SPEC §2 steps 4–5) against the librosa reference."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch

from noisytag.audio.decode import load
from noisytag.audio.features import LogMel, frame_segments, log_mel, n_frames, normalize
from noisytag.config import FrontendConfig

librosa = pytest.importorskip("librosa")
SR = 44100
TOL_DB = 0.01  # SPEC §2.7


def reference(y: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=2560, hop_length=694, n_mels=128, fmin=20, fmax=22050, pad_mode="reflect"
    )
    return librosa.power_to_db(mel)


def audio(n: int, seed: int) -> np.ndarray:
    """Real-valued test audio: tones, a chirp, decaying noise and a quiet stretch, float32 (n,)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    y = 0.3 * np.sin(2 * np.pi * rng.uniform(50, 5000) * t)
    y += 0.1 * np.sin(2 * np.pi * (200 * t + 3000 * t**2))
    y += 0.05 * rng.standard_normal(n) * np.exp(-t * rng.uniform(0.5, 5))
    y += 3e-4 * np.sin(2 * np.pi * 12_000 * t)  # a component ≈ 60 dB down, near the floor
    y[n // 3 : n // 3 + n // 10] *= 1e-3
    return y.astype(np.float32)


@pytest.mark.parametrize("n", [3000, 44_100, 88_199, 88_200, 88_201, 145_678, 441_000])
def test_matches_librosa(n):
    y = audio(n, seed=n)
    ref = reference(y)
    got = log_mel(y)
    assert got.shape == ref.shape == (128, n_frames(n))
    assert got.dtype == np.float32
    assert np.abs(got - ref).max() <= TOL_DB


@pytest.mark.parametrize("kind", ["sine", "silence_then_click", "white"])
def test_matches_librosa_on_hard_signals(kind):
    n = 2 * SR
    t = np.arange(n) / SR
    if kind == "sine":  # pure tone: Hann side lobes put many bins just above the −80 dB floor
        y = 0.5 * np.sin(2 * np.pi * 30 * t)
    elif kind == "silence_then_click":
        y = np.zeros(n)
        y[n // 2 : n // 2 + 50] = 0.9
    else:
        y = np.random.default_rng(0).standard_normal(n) * 0.2
    y = y.astype(np.float32)
    assert np.abs(log_mel(y) - reference(y)).max() <= TOL_DB


@pytest.mark.parametrize("seconds", [0.4, 2.0, 3.7])
def test_full_path_matches_librosa_path(tmp_path, seconds):
    """File → load → log_mel equals librosa load + trim + pad + melspectrogram + power_to_db."""
    n = int(seconds * 22050)
    y = audio(n, seed=5)[:, None] * np.array([1.0, 0.5], dtype=np.float32)  # stereo
    y[: n // 5] = 0  # leading silence to trim
    path = tmp_path / "clip.wav"
    sf.write(path, y, 22050)
    ref, _ = librosa.load(path, sr=SR, mono=True)
    ref, _ = librosa.effects.trim(ref, top_db=60, frame_length=2048, hop_length=512)
    missing = max(0, 88_200 - len(ref))
    ref = np.pad(ref, (missing // 2, missing - missing // 2))
    got = log_mel(load(path))
    want = reference(ref)
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= TOL_DB


def test_frame_count_formula():
    cfg = FrontendConfig()
    assert n_frames(88_200, cfg) == 128  # 2 s → 128 frames (hop 694)
    for n in [1281, 1388, 1389, 88_199, 100_000]:
        assert n_frames(n, cfg) == 1 + n // 694
        assert log_mel(np.ones(n, dtype=np.float32) * 0.1).shape == (128, 1 + n // 694)


def test_batch_and_chunking_do_not_change_values():
    ys = np.stack([audio(50_000, seed=s) for s in range(3)])
    single = np.stack([log_mel(y) for y in ys])
    for chunk in (None, 64):
        batched = LogMel(chunk_frames=chunk)(torch.from_numpy(ys)).numpy()
        assert batched.shape == (3, 128, n_frames(50_000))
        np.testing.assert_allclose(batched, single, atol=1e-4)


def test_float64_mode_is_near_exact():
    y = audio(60_000, seed=11)
    db = LogMel(dtype=torch.float64)(torch.from_numpy(y)[None])[0].numpy()
    assert np.abs(db - reference(y)).max() <= 1e-4


def test_floor_per_example_and_silence():
    loud = audio(20_000, seed=1)
    silent = np.zeros(20_000, dtype=np.float32)
    db = LogMel()(torch.from_numpy(np.stack([loud, silent]))).numpy()
    assert db[0].min() >= db[0].max() - 80 - 1e-4
    np.testing.assert_allclose(db[1], -100.0)  # 10·log10(1e-10), as librosa


def test_too_short_input_is_rejected():
    with pytest.raises(ValueError, match="more than 1280 samples"):
        log_mel(np.zeros(1000, dtype=np.float32))


def test_normalize_numpy_and_torch():
    db = np.array([[[-80.0, -40.0, 0.0]], [[-5.0, -5.0, -5.0]]], dtype=np.float32)  # (B=2, 1, 3)
    lo, hi = np.array([-80.0, -5.0]), np.array([0.0, -5.0])
    want = np.array([[[0.0, 0.5, 1.0]], [[0.0, 0.0, 0.0]]], dtype=np.float32)
    np.testing.assert_allclose(normalize(db, lo, hi), want)
    out = normalize(torch.from_numpy(db), torch.tensor(lo), torch.tensor(hi))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), want)
    np.testing.assert_allclose(normalize(db[0], -80.0, 0.0), want[0])  # one clip, scalar lo/hi


@pytest.mark.parametrize("n", [1281, 5119, 5121, 88_199, 88_200, 88_201, 70_680, 70_679])
def test_frame_segments_equal_full_reflect_padding(n):
    x = torch.randn(2, n)
    full = (
        torch.nn.functional.pad(x.unsqueeze(1), (1280, 1280), mode="reflect").squeeze(1).unfold(-1, 2560, 694)
    )
    pieces = frame_segments(x, 2560, 694)
    assert [first for first, _ in pieces] == list(np.cumsum([0] + [p.shape[1] for _, p in pieces])[:-1])
    assert torch.equal(torch.cat([p for _, p in pieces], dim=1), full)
