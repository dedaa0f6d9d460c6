"""HTTP serving speed: requests/s and latency of POST /api/tag for a 10-s clip, on loopback.

    .venv/bin/python benchmarks/bench_serve.py [--run RUN_DIR] [--requests 40] [--screenshot docs/serve.png]

For each backend (torch, onnx) a real ``noisytag serve`` process is started on a free port, warmed up,
then sent a fixed number of requests by 1 and by 8 concurrent clients (httpx, one connection per client).
Prints requests/s and the median and 95th-percentile latency; no assertions.

The run: ``--run``, else ``runs/demo``, else ``runs/demo_seed``, else tiny untrained models (the output
says which). It is copied to a temporary folder first, so the onnx backend's export does not write into
it. The clip is synthetic (``noisytag.data.sounds``): 4 s of siren, 3 s of drum, 3 s of bell, over light rain.
``--screenshot PATH`` also tags the clip in headless Chromium (system ``chromium``) and saves the page.
"""

from __future__ import annotations

import argparse
import io
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import soundfile as sf

SR = 44100
ROOT = Path(__file__).resolve().parent.parent


def choose_run(arg: str | None, tmp: Path) -> tuple[Path, str]:
    """(a private copy of the run, a description of where it came from)."""
    for candidate in [Path(arg)] if arg else [ROOT / "runs" / "demo", ROOT / "runs" / "demo_seed"]:
        if any(candidate.glob("*/stage*/fold*/done")):
            name = candidate.name  # an ablation's runs/VARIANT/seedN is named VARIANT_seedN
            copy = tmp / (f"{candidate.parent.name}_{name}" if name.startswith("seed") else name)
            shutil.copytree(candidate, copy, ignore=shutil.ignore_patterns("*.npy", "report.html", "onnx"))
            return copy, f"{candidate} (trained)"
        if arg:
            sys.exit(f"{candidate}: no finished fold models")
    return tiny_run(tmp / "tiny"), "tiny untrained cnn1 models (2 members, width 0.125: no demo run found)"


def tiny_run(root: Path) -> Path:
    """Two untrained slim cnn1 fold models: enough to measure the serving path when no run exists."""
    import dataclasses

    from noisytag.config import FrontendConfig
    from noisytag.data.synth import CLASSES
    from noisytag.models import build
    from noisytag.models.weights import save_model

    for stage in (2, 3):
        model = build("cnn1", len(CLASSES), 1, width=0.125).eval()
        d = root / "cnn1" / f"stage{stage}" / "fold0"
        meta = {"arch": "cnn1", "stage": stage, "fold": 0, "classes": CLASSES}
        meta |= {"frontend": dataclasses.asdict(FrontendConfig()), "normalize": "minmax"}
        save_model(d, model, meta)
        (d / "done").write_text("1\n")
    return root


def demo_clip() -> bytes:
    """10 s WAV: siren, then drum, then bell, over light rain (the demo data set's sound classes)."""
    from noisytag.data.sounds import SOUNDS

    rng = np.random.default_rng(3)
    y = np.zeros(10 * SR)
    for label, start, seconds, gain in (("Siren", 0, 4, 1.0), ("Drum", 4, 3, 1.0), ("Bell", 7, 3, 0.8)):
        part = SOUNDS[label](rng, seconds * SR, SR)
        y[start * SR : (start + seconds) * SR] += gain * part / np.abs(part).max()
    rain = SOUNDS["Rain"](rng, 10 * SR, SR)
    y += 0.15 * rain / np.abs(rain).max()
    buf = io.BytesIO()
    sf.write(buf, (0.5 * y / np.abs(y).max()).astype(np.float32), SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class Server:
    """``noisytag serve RUN --port 0 ...`` in a subprocess; the address is read from uvicorn's log."""

    def __init__(self, run: Path, *options: str):
        self.log = tempfile.NamedTemporaryFile(prefix="bench-serve-", suffix=".log")
        cmd = [sys.executable, "-m", "noisytag", "serve", str(run), "--port", "0", *options]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and self.proc.poll() is None:
            found = re.search(r"running on (http://[\d.]+:\d+)", Path(self.log.name).read_text(), re.I)
            if found:
                self.url = found.group(1)
                return
            time.sleep(0.1)
        raise RuntimeError(f"the server did not start:\n{Path(self.log.name).read_text()[-2000:]}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        self.log.close()


def load(url: str, clip: bytes, requests: int, clients: int) -> tuple[float, list[float]]:
    """``requests`` POSTs spread over ``clients`` threads → (wall seconds, per-request latencies)."""
    latencies: list[float] = []
    failures: list[str] = []
    share = [requests // clients + (i < requests % clients) for i in range(clients)]

    def client(n: int) -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            for _ in range(n):
                t = time.perf_counter()
                r = c.post("/api/tag", files={"file": ("clip.wav", clip, "audio/wav")})
                latencies.append(time.perf_counter() - t)
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text[:100]}")

    threads = [threading.Thread(target=client, args=(n,)) for n in share]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    if failures:
        print(f"  {len(failures)} failed requests, e.g. {failures[0]}")
    return wall, latencies


def load_for(url: str, clip: bytes, seconds: float, clients: int) -> tuple[float, list[float], list[str]]:
    """``clients`` threads POST one request after another until ``seconds`` have passed (the request under
    way then completes) → (wall seconds, latencies of the answered requests, failures)."""
    latencies: list[float] = []
    failures: list[str] = []
    stop = time.perf_counter() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=300) as c:
            while time.perf_counter() < stop:
                t = time.perf_counter()
                r = c.post("/api/tag", files={"file": ("clip.wav", clip, "audio/wav")})
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - t)
                else:
                    failures.append(f"{r.status_code} {r.text[:100]}")

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - start, latencies, failures


def screenshot(url: str, clip: bytes, out: Path) -> None:
    """Tag the clip through the page in headless Chromium; save the page as a small PNG."""
    from playwright.sync_api import sync_playwright

    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        path = Path(tmp) / "siren-drum-bell.wav"
        path.write_bytes(clip)
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1000, "height": 560}, device_scale_factor=1)
        page.goto(f"{url}/")
        page.locator("#model-info", has_text="classes").wait_for()
        page.set_input_files("#file-input", str(path))
        page.wait_for_selector(".card[data-state=done]", timeout=60_000)
        page.mouse.move(*timeline_point(page, 0.55))  # show the hover readout
        out.parent.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    from PIL import Image

    Image.open(out).convert("RGB").quantize(colors=128).save(out, optimize=True)  # keeps it small
    print(f"screenshot: {out} ({out.stat().st_size / 1024:.0f} KB)")


def timeline_point(page, fraction: float) -> tuple[float, float]:
    box = page.locator(".card canvas.timeline").bounding_box()
    return box["x"] + 118 + fraction * (box["width"] - 128), box["y"] + 15


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="run directory (default: runs/demo, else runs/demo_seed)")
    ap.add_argument("--requests", type=int, default=40, help="requests per measurement")
    ap.add_argument("--backends", default="torch,onnx")
    ap.add_argument("--modes", default="exact", help="exact and/or fast, comma-separated")
    ap.add_argument("--screenshot", type=Path, help="also save a screenshot of the page here")
    args = ap.parse_args()

    clip = demo_clip()
    with tempfile.TemporaryDirectory() as tmp:
        run, source = choose_run(args.run, Path(tmp))
        print(f"run: {source}; clip: 10.0 s WAV ({len(clip) / 1e6:.2f} MB); {args.requests} requests each")
        print("| backend | mode | clients | requests/s | median latency (ms) | p95 latency (ms) |")
        print("|---|---|---|---|---|---|")
        combos = [(b, m) for m in args.modes.split(",") for b in args.backends.split(",")]
        for backend, mode in combos:
            server = Server(run, "--backend", backend, "--mode", mode)  # the CLI defaults: 4 in flight
            try:
                info = httpx.get(f"{server.url}/api/health").json()["model"]
                load(server.url, clip, 3, 1)  # warm-up
                for clients in (1, 8):
                    wall, lat = load(server.url, clip, args.requests, clients)
                    p95 = float(np.percentile(lat, 95))
                    print(
                        f"| {backend} | {mode} | {clients} | {len(lat) / wall:.1f} | "
                        f"{1000 * statistics.median(lat):.0f} | {1000 * p95:.0f} |",
                        flush=True,
                    )
                if args.screenshot and (backend, mode) == combos[0]:
                    screenshot(server.url, clip, args.screenshot)
            finally:
                server.close()
        print(f"ensemble: {info['members']} members ({', '.join(info['architectures'])})")


if __name__ == "__main__":
    main()
