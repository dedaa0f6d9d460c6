"""Feature cache: build, read, resume after kill -9, invalidation, bad files."""

from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from noisytag.audio import extract as extract_mod
from noisytag.audio.cache import CacheError, FeatureCache, build_cache, split_dir
from noisytag.audio.decode import load
from noisytag.audio.features import log_mel
from noisytag.config import FrontendConfig

CFG = FrontendConfig()


def _write_data(root: Path, n_curated: int = 8) -> Path:
    """A small data set: curated clips of mixed lengths/rates/channels, one corrupt and one empty file."""
    rng = np.random.default_rng(0)
    cur = root / "train_curated"
    cur.mkdir(parents=True)
    for i in range(n_curated):
        sr = (44100, 22050, 48000)[i % 3]
        n = int(rng.uniform(0.3, 4.0) * sr)
        y = (rng.standard_normal((n, 1 + i % 2)) * 0.1).astype(np.float32)
        y[: n // 4] *= 1e-4  # something to trim
        sf.write(cur / f"c{i:02d}.{'flac' if i % 4 == 3 else 'wav'}", y, sr)
    (cur / "corrupt.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 20)
    (cur / "empty.wav").touch()
    (cur / "notes.txt").write_text("not audio")
    test = root / "test"
    test.mkdir()
    for i in range(2):
        sf.write(test / f"t{i}.wav", (rng.standard_normal(30_000 + i) * 0.2).astype(np.float32), 44100)
    return root


@pytest.fixture()
def data(tmp_path):
    return _write_data(tmp_path / "data")


def _files(directory: Path) -> dict[str, bytes]:
    return {n: (directory / n).read_bytes() for n in ("frames.f16", "index.csv", "cache.json", "done")}


def test_build_and_read(data, tmp_path):
    root = build_cache(data, tmp_path / "cache", CFG, workers=1, progress=False)
    assert root == tmp_path / "cache" / CFG.key()
    cache = FeatureCache.open(tmp_path / "cache", CFG, "curated")
    assert list(cache.index.columns) == ["fname", "offset", "n_frames", "lo", "hi", "duration"]
    assert len(cache) == 8 and cache.index["fname"].tolist() == sorted(cache.index["fname"])
    failed = dict(cache.failed)
    assert set(failed) == {"corrupt.wav", "empty.wav"} and "empty file" in failed["empty.wav"]
    assert cache.info["frontend"] == dataclasses.asdict(CFG)
    for i, row in cache.index.iterrows():
        path = data / "train_curated" / row.fname
        want = log_mel(load(path)).astype(np.float16).astype(np.float32)
        got = cache.clip(i)
        np.testing.assert_array_equal(got, want)
        assert row.n_frames == want.shape[1] and row.lo == want.min() and row.hi == want.max()
        assert row.duration == pytest.approx(sf.info(path).duration)
    assert cache.position("c03.flac") == 3
    with pytest.raises(KeyError, match="missing.wav"):
        cache.position("missing.wav")
    assert len(FeatureCache.open(tmp_path / "cache", CFG, "test")) == 2
    with pytest.raises(CacheError, match="no complete feature cache"):
        FeatureCache.open(tmp_path / "cache", CFG, "noisy")  # folder missing: skipped, not built


def test_windows_batched_read(data, tmp_path):
    build_cache(data, tmp_path / "cache", CFG, splits=("curated",), workers=1, progress=False)
    cache = FeatureCache.open(tmp_path / "cache", CFG, "curated", resident_mb=0.5)  # madvise often
    rng = np.random.default_rng(1)
    idx = rng.integers(0, len(cache), 50)
    n = cache.index["n_frames"].to_numpy()[idx]
    starts = rng.integers(0, n + 20)  # some windows run past the clip's end
    out = cache.windows(idx, starts, 128)
    assert out.shape == (50, 128, 128) and out.dtype == np.float32
    for b, (i, s) in enumerate(zip(idx, starts, strict=True)):
        clip = cache.clip(int(i))
        want = np.full((128, 128), cache.index["lo"].iat[i], dtype=np.float32)
        part = clip[:, s : s + 128]
        want[:, : part.shape[1]] = part
        np.testing.assert_array_equal(out[b], want)
    again = pickle.loads(pickle.dumps(cache))
    np.testing.assert_array_equal(again.windows(idx, starts, 128), out)


def test_up_to_date_cache_returns_at_once_and_changes_are_picked_up(data, tmp_path):
    build_cache(data, tmp_path / "cache", CFG, workers=1, progress=False)
    out = split_dir(tmp_path / "cache", CFG, "curated")
    before = _files(out)
    stamp = (out / "frames.f16").stat().st_mtime_ns
    start = time.perf_counter()
    build_cache(data, tmp_path / "cache", CFG, workers=1, progress=False)
    assert time.perf_counter() - start < 0.5
    assert (out / "frames.f16").stat().st_mtime_ns == stamp and _files(out) == before
    # a changed and a new file are extracted; the others keep their rows
    sf.write(data / "train_curated" / "c00.wav", np.full(50_000, 0.1, dtype=np.float32), 44100)
    sf.write(data / "train_curated" / "new.wav", np.full(60_000, 0.2, dtype=np.float32), 44100)
    old = FeatureCache.open(tmp_path / "cache", CFG, "curated").index.set_index("fname")
    build_cache(data, tmp_path / "cache", CFG, workers=1, progress=False)
    cache = FeatureCache.open(tmp_path / "cache", CFG, "curated")
    new = cache.index.set_index("fname")
    assert len(new) == 9 and new.loc["c00.wav", "n_frames"] == 128
    assert (new.drop(["c00.wav", "new.wav"]) == old.drop("c00.wav")).all().all()
    np.testing.assert_array_equal(
        cache.clip(cache.position("c00.wav")),
        log_mel(load(data / "train_curated" / "c00.wav")).astype(np.float16),
    )


def test_parameter_change_builds_a_new_cache(data, tmp_path):
    a = build_cache(data, tmp_path / "cache", CFG, splits=("test",), workers=1, progress=False)
    other = dataclasses.replace(CFG, top_db=60.0)
    b = build_cache(data, tmp_path / "cache", other, splits=("test",), workers=1, progress=False)
    assert a != b and a.parent == b.parent
    lo_a = FeatureCache.open(tmp_path / "cache", CFG, "test").index["lo"]
    lo_b = FeatureCache.open(tmp_path / "cache", other, "test").index["lo"]
    assert (lo_b > lo_a).all()  # a 60 dB floor instead of 80
    (b / "test" / "cache.json").write_text((a / "test" / "cache.json").read_text())
    with pytest.raises(CacheError, match="other front-end parameters"):
        FeatureCache.open(tmp_path / "cache", other, "test")


def test_a_cache_from_before_0_4_stays_valid_without_a_rebuild(data, tmp_path):
    """A cache whose info file is still called manifest.json (before 0.4) is read as built, and a later
    rebuild leaves one info file, cache.json."""
    build_cache(data, tmp_path / "cache", CFG, splits=("curated",), workers=1, progress=False)
    out = split_dir(tmp_path / "cache", CFG, "curated")
    assert not (out / "manifest.json").exists()
    new = FeatureCache.open(tmp_path / "cache", CFG, "curated")
    (out / "cache.json").rename(out / "manifest.json")
    stamp = (out / "frames.f16").stat().st_mtime_ns
    build_cache(data, tmp_path / "cache", CFG, splits=("curated",), workers=1, progress=False)
    assert (out / "frames.f16").stat().st_mtime_ns == stamp and not (out / "cache.json").exists()
    old = FeatureCache.open(tmp_path / "cache", CFG, "curated")
    assert old.info == new.info and old.failed == new.failed and old.index.equals(new.index)
    np.testing.assert_array_equal(old.clip(3), new.clip(3))
    sf.write(data / "train_curated" / "new.wav", np.full(60_000, 0.2, dtype=np.float32), 44100)
    build_cache(data, tmp_path / "cache", CFG, splits=("curated",), workers=1, progress=False)
    assert (out / "cache.json").is_file() and not (out / "manifest.json").exists()
    assert len(FeatureCache.open(tmp_path / "cache", CFG, "curated")) == len(new) + 1


_SLOW_BUILD = """
import sys, time
import noisytag.audio.cache as c
import noisytag.audio.extract as e
from noisytag.config import FrontendConfig
work = e.work
def slow(path, cfg=None):
    time.sleep(0.25)
    return work(path, cfg)
e.work = slow
c.build_cache(sys.argv[1], sys.argv[2], FrontendConfig(), splits=("curated",), workers=1, progress=False)
"""


@pytest.mark.slow
def test_resume_after_kill_equals_uninterrupted_build(data, tmp_path, monkeypatch):
    reference = build_cache(data, tmp_path / "ref", CFG, splits=("curated",), workers=1, progress=False)
    out = split_dir(tmp_path / "cache", CFG, "curated")
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_BUILD, str(data), str(tmp_path / "cache")])
    log = out / "progress.jsonl"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    logged = log.read_text().count("\n")
    assert 3 <= logged < 10 and not (out / "done").exists()
    with open(out / "frames.f16", "ab") as f:  # as if killed while appending the next clip
        f.write(b"\x01" * 1000)
    with open(log, "a") as f:
        f.write('{"fname": "c09.w')
    calls = []
    work = extract_mod.work
    monkeypatch.setattr(extract_mod, "work", lambda p, cfg=None: calls.append(p) or work(p, cfg))
    build_cache(data, tmp_path / "cache", CFG, splits=("curated",), workers=1, progress=False)
    assert len(calls) == 10 - logged  # finished clips (and logged failures) are not redone
    assert _files(out) == _files(reference / "train_curated")


@pytest.mark.slow
def test_process_pool_gives_the_same_cache(data, tmp_path):
    one = build_cache(data, tmp_path / "one", CFG, splits=("curated",), workers=1, progress=False)
    two = build_cache(data, tmp_path / "two", CFG, splits=("curated",), workers=2, progress=False)
    assert _files(one / "train_curated") == _files(two / "train_curated")


def test_features_command(data, tmp_path):
    from typer.testing import CliRunner

    from noisytag.cli import app

    result = CliRunner().invoke(
        app, ["features", str(data), "--cache-dir", str(tmp_path / "c"), "--workers", "1", "--split", "test"]
    )
    assert result.exit_code == 0, result.output
    assert "test" in result.output and (tmp_path / "c" / CFG.key() / "test" / "done").exists()
    result = CliRunner().invoke(app, ["features", str(tmp_path / "nope"), "--workers", "1"])
    assert result.exit_code != 0
