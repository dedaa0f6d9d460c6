"""Audio front end (SPEC §2 steps 1–3) against librosa's reference functions."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from noisytag.audio.decode import (
    AudioError,
    decode,
    load,
    load_clip,
    pad_to_min,
    resample,
    trim_bounds,
    trim_silence,
)
from noisytag.config import FrontendConfig

librosa = pytest.importorskip("librosa")
CFG = FrontendConfig()


def _signal(n: int, seed: int, silent_ends: bool = True) -> np.ndarray:
    """Noise burst with silent or very quiet margins, float32 (n,)."""
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.float32)
    a, b = sorted(rng.integers(0, n, 2))
    y[a : b + 1] = rng.standard_normal(b + 1 - a) * 10 ** rng.uniform(-3, 0)
    if not silent_ends:
        y += (rng.standard_normal(n) * 10 ** rng.uniform(-8, -4)).astype(np.float32)
    return y


@pytest.mark.parametrize("n", [1, 100, 511, 512, 2047, 2048, 5000, 88_200, 150_001])
@pytest.mark.parametrize("seed", [0, 1])
def test_trim_matches_librosa(n, seed):
    y = _signal(n, seed, silent_ends=seed == 0)
    ref, _ = librosa.effects.trim(y, top_db=60, frame_length=2048, hop_length=512)
    np.testing.assert_array_equal(trim_silence(y, CFG), ref)


def test_trim_many_random_clips():
    rng = np.random.default_rng(7)
    for seed in range(40):
        y = _signal(int(rng.integers(1, 60_000)), seed + 100, silent_ends=bool(seed % 2))
        ref, _ = librosa.effects.trim(y, top_db=60, frame_length=2048, hop_length=512)
        assert np.array_equal(trim_silence(y, CFG), ref), seed


def test_all_silent_clip_keeps_its_samples(tmp_path):
    y = np.zeros(30_000, dtype=np.float32)
    assert len(trim_silence(y, CFG)) == 30_000
    path = tmp_path / "silent.wav"
    sf.write(path, y, 44100)
    out = load(path)
    assert out.shape == (88_200,) and not out.any()


def test_clip_shorter_than_one_frame():
    y = (np.random.default_rng(0).standard_normal(100) * 0.1).astype(np.float32)
    trimmed = trim_silence(y, CFG)
    np.testing.assert_array_equal(trimmed, y)
    padded = pad_to_min(trimmed, CFG)
    left = (88_200 - 100) // 2
    assert padded.shape == (88_200,) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[left : left + 100], y)
    assert not padded[:left].any() and not padded[left + 100 :].any()


def test_padding_rules():
    odd = np.ones(88_199, dtype=np.float32)
    out = pad_to_min(odd, CFG)
    assert out.shape == (88_200,) and out[0] == 1 and out[-1] == 0  # odd zero goes to the end
    exact = np.ones(88_200, dtype=np.float32)
    assert pad_to_min(exact, CFG) is exact
    longer = np.ones(100_000, dtype=np.float32)
    assert pad_to_min(longer, CFG) is longer
    short = pad_to_min(np.ones(1000, dtype=np.float32), CFG)
    assert short[:43_600].sum() == 0 and short[43_600:44_600].all() and short[44_600:].sum() == 0


@pytest.mark.parametrize(
    "sr, channels, fmt", [(44100, 1, "WAV"), (22050, 1, "FLAC"), (48000, 2, "WAV"), (16000, 2, "OGG")]
)
def test_decode_and_resample_match_librosa_load(tmp_path, sr, channels, fmt):
    rng = np.random.default_rng(sr)
    data = (rng.standard_normal((int(1.3 * sr) + 7, channels)) * 0.1).astype(np.float32)
    path = tmp_path / f"clip.{fmt.lower()}"
    sf.write(path, data, sr, format=fmt)
    y, got_sr = decode(path)
    assert got_sr == sr and y.dtype == np.float32 and y.ndim == 1
    ref, _ = librosa.load(path, sr=44100, mono=True)
    np.testing.assert_array_equal(resample(y, sr, 44100), ref)


def test_load_matches_librosa_path(tmp_path):
    """decode → trim → pad equals librosa.load + librosa.effects.trim + centred zero padding."""
    rng = np.random.default_rng(3)
    data = np.zeros((30_000, 2), dtype=np.float32)
    data[5000:20_000] = rng.standard_normal((15_000, 2)) * 0.2
    path = tmp_path / "stereo48k.wav"
    sf.write(path, data, 48000)
    ref, _ = librosa.load(path, sr=44100, mono=True)
    ref, _ = librosa.effects.trim(ref, top_db=60, frame_length=2048, hop_length=512)
    missing = 88_200 - len(ref)
    ref = np.pad(ref, (missing // 2, missing - missing // 2))
    np.testing.assert_array_equal(load(path), ref)


def test_mp3_decodes(tmp_path):
    path = tmp_path / "clip.mp3"
    sf.write(path, (np.random.default_rng(0).standard_normal(44100) * 0.1).astype(np.float32), 44100)
    y, sr = decode(path)
    assert sr == 44100 and len(y) > 40_000


def test_bad_files_raise_one_line_error(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.touch()
    garbage = tmp_path / "garbage.wav"
    garbage.write_bytes(b"RIFF not really a wave file" * 10)
    header_only = tmp_path / "header.wav"
    sf.write(header_only, np.zeros(0, dtype=np.float32), 44100)
    nan = tmp_path / "nan.wav"
    sf.write(nan, np.full(100, np.nan, dtype=np.float32), 44100, subtype="FLOAT")
    cases = {
        empty: "empty file",
        garbage: "cannot decode",
        header_only: "no audio samples",
        nan: "non-finite",
        tmp_path / "missing.wav": "not found",
        tmp_path: "not a regular file",
    }
    for path, reason in cases.items():
        with pytest.raises(AudioError) as info:
            load(path)
        message = str(info.value)
        assert message.startswith(f"{path}: ") and reason in message and "\n" not in message


def test_load_clip_places_the_clip_in_its_file(tmp_path):
    """load_clip = load + the file's duration and the trimmed, padded clip's offset in it."""
    sr = 22050
    t = np.arange(int(1.5 * sr)) / sr
    y = (0.3 * np.sin(2 * np.pi * 440 * t) * (t > 0.5)).astype(np.float32)  # 0.5 s of silence first
    path = tmp_path / "late.wav"
    sf.write(path, y, sr)
    clip = load_clip(path, CFG)
    np.testing.assert_array_equal(clip.samples, load(path, CFG))
    assert clip.duration == pytest.approx(1.5)
    resampled = resample(y, sr, CFG.sample_rate)
    start, end = trim_bounds(resampled, CFG)
    np.testing.assert_array_equal(resampled[start:end], trim_silence(resampled, CFG))
    left = (88_200 - (end - start)) // 2  # 1 s of sound padded to 2 s, half on the left
    assert clip.offset == pytest.approx((start - left) / CFG.sample_rate) and clip.offset < 0.5
    assert 0.4 < start / CFG.sample_rate < 0.5
