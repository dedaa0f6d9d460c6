"""Review page speed: the latency of the next card (its JSON, then its picture, not cached) for 30-s clips.

    .venv/bin/python benchmarks/bench_review.py [--run RUN_DIR] [--cards 30] [--seconds 30] [--screenshot PNG]

The run: ``--run`` (a finished run with selection audits; read only: the events and pictures go to a temporary
folder), else a tiny demo run trained here first (synthetic tiny set, slim cnn1, ~1 min; its models are far
lighter than a real run's, so prefer ``--run``). Each card's clip is replaced by a ``--seconds`` long
version of itself (its audio looped, written to the temporary folder), so every picture is of a 30-s clip.
A real review server (uvicorn on loopback, the app of ``noisytag review``) answers; the client asks each card
as the page does without prefetching: ``GET /api/card/{id}``, then ``GET /api/picture/{id}.png`` (the log-mel:
the card is usable from here on, "next card"), then ``GET /api/timeline/{id}.png`` (the models' timeline, drawn
lazily under the log-mel; the page asks it at once and prefetches the next card's). The first card (it loads
the models) is timed apart. Prints the median, 95th percentile and maximum; no assertions.
Run it idle and again while something trains, to see the load's effect. ``--screenshot PATH`` also opens the
page in headless Chromium (system ``chromium``) at the first card and saves it (the README's picture).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

from noisytag.review.app import create_review_app
from noisytag.review.events import EventLog
from noisytag.review.media import Pictures
from noisytag.review.queue import ReviewQueue
from noisytag.serve.app import running

ROOT = Path(__file__).resolve().parent.parent


def tiny_run(root: Path) -> Path:
    """The tests' tiny four-stage run (tests/conftest.py ``tiny_config``), trained under ``root``."""
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import tiny_config

    from noisytag.audio.cache import build_cache
    from noisytag.config import FrontendConfig
    from noisytag.data.synth import generate
    from noisytag.runs.pipeline import run_pipeline

    generate(root / "data", scale="tiny", seed=0)
    build_cache(root / "data", root / "cache", FrontendConfig(), workers=1, progress=False)
    cfg = tiny_config(**{"data.cache_dir": str(root / "cache")})
    run_pipeline(root / "data", root / "run", cfg, progress=False)
    return root / "run"


def lengthen(queue: ReviewQueue, ids: list[int], seconds: float, out: Path) -> None:
    """Point each clip of ``ids`` at a ``seconds``-long copy of its audio (looped)."""
    out.mkdir(parents=True, exist_ok=True)
    column = queue.clips.columns.get_loc("path")
    for clip_id in ids:
        y, sr = sf.read(queue.audio_path(clip_id), dtype="float32", always_2d=True)
        y = y.mean(axis=1)
        n = int(seconds * sr)
        long = np.tile(y, int(np.ceil(n / max(len(y), 1))))[:n]
        path = out / f"{clip_id}.wav"
        sf.write(path, long, sr)
        queue.clips.iloc[clip_id, column] = str(path)


def screenshot(url: str, out: Path) -> None:
    """The page at its first card, log-mel and timeline loaded, saved as a PNG."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900}, device_scale_factor=1)
            page.goto(f"{url}/")
            page.wait_for_selector("#card[data-state=ready]", timeout=60_000)
            page.locator("#timeline").wait_for(state="visible", timeout=120_000)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="a finished run (default: a tiny run trained here)")
    parser.add_argument("--data", type=Path, help="its data set (default: the one in RUN/run.json)")
    parser.add_argument("--cards", type=int, default=30)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--screenshot", type=Path, help="also save the page at its first card here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench_review_") as tmp:
        tmp = Path(tmp)
        if args.run:
            run, where = args.run, f"{args.run}"
        else:
            t0 = time.perf_counter()
            run = tiny_run(tmp / "tiny")
            where = (
                f"tiny demo run, trained here in {time.perf_counter() - t0:.0f} s (slim cnn1, width 0.125)"
            )
        t0 = time.perf_counter()
        queue = ReviewQueue.from_run(run, args.data)
        queue_s = time.perf_counter() - t0
        ids = queue.order("suspect")[: args.cards + 1]
        lengthen(queue, ids, args.seconds, tmp / "audio")
        pictures = Pictures(run, tmp / "pictures")
        app = create_review_app(
            queue, EventLog(tmp / "events.jsonl"), "bench", pictures=pictures, write_files=False
        )
        times: dict[str, list[float]] = {"card JSON": [], "log-mel": [], "JSON + log-mel": [], "timeline": []}
        with running(app) as url, httpx.Client(base_url=url, timeout=120) as client:
            t0 = time.perf_counter()
            for path in (f"/api/card/{ids[0]}", f"/api/picture/{ids[0]}.png", f"/api/timeline/{ids[0]}.png"):
                client.get(path).raise_for_status()
            first_s = time.perf_counter() - t0
            for clip_id in ids[1:]:
                t0 = time.perf_counter()
                client.get(f"/api/card/{clip_id}").raise_for_status()
                t1 = time.perf_counter()
                client.get(f"/api/picture/{clip_id}.png").raise_for_status()
                t2 = time.perf_counter()
                client.get(f"/api/timeline/{clip_id}.png").raise_for_status()
                t3 = time.perf_counter()
                for name, seconds in zip(times, (t1 - t0, t2 - t1, t2 - t0, t3 - t2), strict=True):
                    times[name].append(seconds * 1000)
            t0 = time.perf_counter()
            client.get(f"/api/picture/{ids[1]}.png").raise_for_status()
            cached_ms = (time.perf_counter() - t0) * 1000
            if args.screenshot:
                screenshot(url, args.screenshot)
        pictures.close()
    print(f"run: {where}")
    print(f"queue of {len(queue)} noisy clips built in {queue_s:.2f} s; {os.cpu_count()} CPUs")
    print(f"first card with pictures (loads the models): {first_s * 1000:.0f} ms")
    print(f"{len(times['card JSON'])} cards of {args.seconds:g}-s clips, pictures not cached:")
    for name, values in times.items():
        print(
            f"  {name:15s} median {statistics.median(values):7.1f} ms   p95 {percentile(values, 95):7.1f} ms"
            f"   max {max(values):7.1f} ms"
        )
    print(f"a cached picture: {cached_ms:.1f} ms")


if __name__ == "__main__":
    main()
