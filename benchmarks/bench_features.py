"""Front-end benchmark: noisytag's extraction vs the librosa reference path, and cache memory.

    .venv/bin/python benchmarks/bench_features.py [--quick] [--clips 200] [--workers 2] [--repeats 3]

1. Writes ``--clips`` WAV files (16-bit, 44.1 kHz, 10 % stereo) of 1–30 s: tones with vibrato, chirps,
   coloured noise and bursts, with quiet margins so that trimming matters.
2. Speed: the same files through (a) the librosa reference path — soundfile decode, mono, librosa
   trim, centred zero padding, ``librosa.feature.melspectrogram`` + ``power_to_db`` — and (b)
   ``noisytag.audio.cache._work`` (what ``build_cache`` runs per file: decode, trim, pad, log-mel, float16).
   Both run in the same kind of process pool with one thread per process; passes are interleaved
   and repeated; the ratio uses the best pass of each.
3. Accuracy: max |dB difference| of ``log_mel(load(path))`` (float32) vs the reference on every file,
   and the extra error of the float16 storage.
4. Memory: peak resident memory (/proc VmHWM) of ``build_cache`` (parent and largest worker) and of
   random 128-frame window reads, each in a fresh process, for the data set and for the same set
   with every file linked 4× (4× the clips and frames).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"  # one thread per process for both contenders (before numpy/torch load)

import numpy as np  # noqa: E402

SR = 44100


# ----------------------------------------------------------------------------------------------
# data


def make_clips(folder: Path, n: int, seed: int = 0) -> float:
    """Write n WAV clips of 1–30 s into folder → total seconds."""
    import soundfile as sf

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    total = 0.0
    for i in range(n):
        seconds = rng.uniform(1.0, 30.0)
        length = int(seconds * SR)
        t = np.arange(length, dtype=np.float32) / SR
        y = np.zeros(length, dtype=np.float32)
        for _ in range(rng.integers(1, 4)):  # tones with vibrato
            f0 = rng.uniform(60, 6000)
            phase = 2 * np.pi * f0 * t + rng.uniform(0, 3) * np.sin(2 * np.pi * rng.uniform(2, 7) * t)
            y += rng.uniform(0.02, 0.3) * np.sin(phase)
        if rng.random() < 0.5:  # chirp
            f1 = rng.uniform(100, 15000)
            y += 0.1 * np.sin(2 * np.pi * (200 * t + (f1 - 200) / (2 * seconds) * t**2)).astype(np.float32)
        noise = rng.standard_normal(length).astype(np.float32)
        if rng.random() < 0.5:  # brown-ish noise
            noise = np.cumsum(noise) / 300
            noise -= noise.mean()
        y += rng.uniform(0.001, 0.1) * noise
        bursts = np.zeros(length, dtype=np.float32)
        for _ in range(rng.integers(0, 6)):
            s = rng.integers(0, length)
            e = min(length, s + int(rng.uniform(0.05, 1.0) * SR))
            bursts[s:e] = rng.standard_normal(e - s) * np.exp(-np.arange(e - s) / (0.1 * SR))
        y += 0.3 * bursts
        lead, tail = (int(rng.uniform(0, 0.2) * length) for _ in range(2))
        y[:lead] *= 1e-4  # quiet margins (trimmed)
        y[length - tail :] = 0
        y *= rng.uniform(0.2, 0.9) / max(1e-6, np.abs(y).max())
        data = np.stack([y, 0.8 * y], axis=1) if rng.random() < 0.1 else y
        sf.write(folder / f"clip{i:04d}.wav", data, SR, subtype="PCM_16")
        total += seconds
    return total


def link_copies(src: Path, dst: Path, times: int) -> None:
    """dst holds every file of src ``times`` times (hard links, or copies across file systems)."""
    import shutil

    dst.mkdir(parents=True, exist_ok=True)
    for k in range(times):
        for f in sorted(src.iterdir()):
            target = dst / f"{k}_{f.name}"
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)


# ----------------------------------------------------------------------------------------------
# the two contenders (module-level so that spawned workers can import them)


def reference(path: str) -> np.ndarray:
    """The librosa path: decode, mono, (resample), trim, pad to 2 s, melspectrogram, power_to_db."""
    import librosa
    import soundfile as sf

    y, sr = sf.read(path, dtype="float32", always_2d=True)
    y = librosa.to_mono(y.T)
    if sr != SR:
        y = librosa.resample(y, orig_sr=sr, target_sr=SR, res_type="soxr_hq")
    y, _ = librosa.effects.trim(y, top_db=60, frame_length=2048, hop_length=512)
    if len(y) < 2 * SR:
        missing = 2 * SR - len(y)
        y = np.pad(y, (missing // 2, missing - missing // 2))
    mel = librosa.feature.melspectrogram(
        y=y, sr=SR, n_fft=2560, hop_length=694, n_mels=128, fmin=20, fmax=22050, pad_mode="reflect"
    )
    return librosa.power_to_db(mel)


def ours(path: str):
    from noisytag.audio import cache

    return cache._work(path)


def timed_reference(path: str) -> float:
    """CPU seconds of this process spent on the reference path for one file."""
    start = time.process_time()
    reference(path)
    return time.process_time() - start


def timed_ours(path: str) -> float:
    start = time.process_time()
    ours(path)
    return time.process_time() - start


def _init_reference() -> None:
    reference.__globals__["np"].zeros(1)  # numpy is loaded; librosa is imported on first use


def _init_ours() -> None:
    from noisytag.audio import cache
    from noisytag.audio.features import mel_filters
    from noisytag.config import FrontendConfig

    cfg = FrontendConfig()
    cache._init_worker({k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, mel_filters(cfg))


def timed_passes(paths: list[str], workers: int, repeats: int) -> tuple[dict, dict]:
    """Per pass over ``paths``: wall seconds and summed per-file CPU seconds, contenders interleaved.

    CPU seconds (process_time inside the workers, one thread each) hardly depend on other load on the
    machine; wall seconds do.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    wall: dict[str, list[float]] = {"librosa": [], "noisytag": []}
    cpu: dict[str, list[float]] = {"librosa": [], "noisytag": []}
    with ctx.Pool(workers, _init_reference) as ref_pool, ctx.Pool(workers, _init_ours) as our_pool:
        warm = paths[: 2 * workers]
        ref_pool.map(timed_reference, warm, chunksize=1)
        our_pool.map(timed_ours, warm, chunksize=1)
        for r in range(repeats):
            order = [("librosa", ref_pool, timed_reference), ("noisytag", our_pool, timed_ours)]
            for name, pool, fn in order if r % 2 == 0 else order[::-1]:
                start = time.perf_counter()
                cpu[name].append(sum(pool.imap(fn, paths, chunksize=1)))
                wall[name].append(time.perf_counter() - start)
    return wall, cpu


def accuracy(paths: list[str]) -> tuple[float, float]:
    """(max |dB diff| float32 front end vs librosa, max |dB diff| of the float16 stored values)."""
    from noisytag.audio.decode import load
    from noisytag.audio.features import log_mel

    worst = worst16 = 0.0
    for p in paths:
        ref = reference(p)
        db = log_mel(load(p))
        worst = max(worst, float(np.abs(db - ref).max()))
        worst16 = max(worst16, float(np.abs(db.astype(np.float16).astype(np.float32) - ref).max()))
    return worst, worst16


# ----------------------------------------------------------------------------------------------
# memory (each measurement in a fresh process). ru_maxrss is not used: Linux carries it over from the
# forking parent across exec, so a small child would report its big parent's size. /proc VmHWM is the
# peak of this process image only.


def _vm(pid: int | str, key: str = "VmHWM") -> float:
    """A memory figure of /proc/PID/status in MB: VmHWM (peak), VmRSS, RssAnon, RssFile (0 if gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def _rss_build(data: str, cache_dir: str, workers: int) -> None:
    import threading

    from noisytag.audio.cache import build_cache

    peaks: dict[int, float] = {}
    stop = threading.Event()

    def watch() -> None:  # VmHWM only grows, so the last reading of each worker is its peak
        while not stop.is_set():
            for child in _children(os.getpid()):
                peaks[child] = max(peaks.get(child, 0.0), _vm(child))
            stop.wait(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    start = time.perf_counter()
    build_cache(data, cache_dir, splits=("curated",), workers=workers, progress=False)
    elapsed = time.perf_counter() - start
    stop.set()
    watcher.join()
    print(
        json.dumps(
            {"seconds": elapsed, "self_mb": _vm("self"), "worker_mb": max(peaks.values(), default=0.0)}
        )
    )


def _rss_read(cache_dir: str, batches: int) -> None:
    import torch  # noqa: F401  (loaded by the first read anyway; part of the baseline)

    from noisytag.audio.cache import FeatureCache
    from noisytag.config import FrontendConfig

    cache = FeatureCache.open(cache_dir, FrontendConfig(), "curated")
    cache.windows([0], [0], 128)
    base = {k: _vm("self", k) for k in ("VmRSS", "RssAnon", "RssFile")}
    peak = dict(base)
    rng = np.random.default_rng(0)
    n = cache.index["n_frames"].to_numpy()
    elapsed = 0.0
    for _ in range(batches):
        idx = rng.integers(0, len(cache), 128)
        starts = (rng.random(128) * np.maximum(n[idx] - 128 + 1, 1)).astype(np.int64)
        start = time.perf_counter()
        cache.windows(idx, starts, 128)
        elapsed += time.perf_counter() - start
        for k in peak:
            peak[k] = max(peak[k], _vm("self", k))
    print(
        json.dumps(
            {
                "base": base,
                "peak": peak,
                "hwm_mb": _vm("self"),
                "frames_mb": cache.frames.nbytes / 2**20,
                "clips": len(cache),
                "touched_mb": batches * 128 * 128 * cache.n_mels * 2 / 2**20,
                "ms_per_batch": 1000 * elapsed / batches,
            }
        )
    )


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="40 clips, 1 repeat, fewer reads")
    parser.add_argument("--clips", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rss-build", nargs=3, metavar=("DATA", "CACHE", "WORKERS"), help=argparse.SUPPRESS)
    parser.add_argument("--rss-read", nargs=2, metavar=("CACHE", "BATCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_build:
        return _rss_build(args.rss_build[0], args.rss_build[1], int(args.rss_build[2]))
    if args.rss_read:
        return _rss_read(args.rss_read[0], int(args.rss_read[1]))
    clips, repeats, batches = (40, 1, 100) if args.quick else (args.clips, args.repeats, 400)

    with tempfile.TemporaryDirectory(prefix="bench_features_") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        seconds = make_clips(tmp / "small" / "train_curated", clips)
        print(f"{clips} clips, {seconds / 60:.1f} min of audio written in {time.perf_counter() - t0:.0f} s")
        paths = sorted(str(p) for p in (tmp / "small" / "train_curated").iterdir())

        wall, cpu = timed_passes(paths, args.workers, repeats)
        print(f"\nextraction, {args.workers} processes × 1 thread, best of {repeats} interleaved passes:")
        for name in wall:
            t, c = min(wall[name]), min(cpu[name])
            print(
                f"  {name:9s} wall {t:6.2f} s: {clips / t:5.1f} clips/s, {seconds / t:5.0f} s audio/s | "
                f"CPU {c:6.2f} s: {clips / c:5.1f} clips/s per core  (wall passes: "
                + ", ".join(f"{x:.2f}" for x in wall[name])
                + ")"
            )
        ratio_wall = min(wall["librosa"]) / min(wall["noisytag"])
        ratio_cpu = min(cpu["librosa"]) / min(cpu["noisytag"])
        print(f"  ratio     wall {ratio_wall:.2f}×, CPU time {ratio_cpu:.2f}×")

        worst, worst16 = accuracy(paths)
        print(
            f"\nmax |dB diff| vs librosa: {worst:.2e} dB (front end, float32); {worst16:.3f} dB as stored (float16)"
        )

        link_copies(tmp / "small" / "train_curated", tmp / "large" / "train_curated", 4)
        print(
            f"\npeak resident memory (fresh process each; {args.workers} workers; "
            f"{batches} batches of 128 windows × 128 frames):"
        )
        for name in ("small", "large"):
            build = _child("--rss-build", str(tmp / name), str(tmp / f"cache_{name}"), str(args.workers))
            read = _child("--rss-read", str(tmp / f"cache_{name}"), str(batches))
            base, peak = read["base"], read["peak"]
            print(
                f"  {read['clips']:4d} clips, frames file {read['frames_mb']:4.0f} MB | build {build['seconds']:5.1f} s: "
                f"parent {build['self_mb']:4.0f} MB, worker {build['worker_mb']:4.0f} MB | reads "
                f"({read['touched_mb']:.0f} MB, {read['ms_per_batch']:.1f} ms/batch): VmHWM {read['hwm_mb']:4.0f} MB, "
                f"file-backed {base['RssFile']:.0f} → {peak['RssFile']:.0f} MB, "
                f"anonymous {base['RssAnon']:.0f} → {peak['RssAnon']:.0f} MB"
            )


if __name__ == "__main__":
    main()
