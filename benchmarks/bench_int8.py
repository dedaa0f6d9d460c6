"""int8 vs float ONNX members: onnxruntime speed per 128 × 128 window and held-out parity, on this CPU.

    .venv/bin/python benchmarks/bench_int8.py [RUN_DIR] [--calibration DIR] [--stages 3,4] [--batch 64]

RUN_DIR (default ``runs/demo``, which ``make demo`` trains; nothing is trained here) is exported into a
temporary folder (the run is only read): float graphs, then int8 ones (``noisytag export --int8``: static
QDQ, int8 weights per channel, uint8 activations), calibrated on the run's data set (or ``--calibration``)
and checked on held-out clips. Then one member's ``model.onnx`` and ``model.int8.onnx`` score a batch of
real 128 × 128 windows with 1 and 2 intra-op threads, interleaved and repeated (medians): ms per window
and the float / int8 ratio. onnxruntime runs the QDQ graph with integer kernels (AVX-512 VNNI when the CPU
has it, as this one does). Runs in well under 2 minutes for the demo run (6 slim cnn1 members).

Other workers may load the machine; the contenders run interleaved in one process, so the ratios are more
trustworthy than the absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def cpu_flags() -> str:
    """The CPU's model name and whether it has the VNNI int8 dot-product instructions."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    name = next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?")
    vnni = [f for f in ("avx512_vnni", "avx_vnni", "amx_int8") if f" {f}" in text]
    return f"{name}; int8 dot products: {', '.join(vnni) or 'no VNNI'}"


def per_window_ms(sessions: dict, x: np.ndarray, seconds: float) -> dict[str, float]:
    """Median ms per window of each session on batch ``x``, run interleaved for about ``seconds``."""
    for sess in sessions.values():
        sess.run(None, {"x": x})  # warm up
    times: dict[str, list[float]] = {name: [] for name in sessions}
    stop = time.perf_counter() + seconds
    while time.perf_counter() < stop or min(len(t) for t in times.values()) < 3:
        for name, sess in sessions.items():
            t = time.perf_counter()
            sess.run(None, {"x": x})
            times[name].append(time.perf_counter() - t)
    return {name: 1e3 * statistics.median(t) / len(x) for name, t in times.items()}


def parity_lines(index: dict) -> list[str]:
    lines = []
    for m in index["members"]:
        p = m["int8"]["parity"]
        line = (
            f"  {m['name']:22s} max |int8 - float| {p['max_abs_diff']:.4f} windows "
            f"(mean {p['mean_abs_diff']:.4f}), {p['clip_max_abs_diff']:.4f} clips, "
            f"{p['fast_max_abs_diff']:.4f} fast"
        )
        if "lwlrap_float" in p:
            line += f"; lwlrap {p['lwlrap_float']:.4f} -> {p['lwlrap_int8']:.4f}"
        lines.append(line)
    ens = index["int8"]["ensemble"]
    line = f"  ensemble of {ens['members']}: max |int8 - float| {ens['clip_max_abs_diff']:.4f} clips"
    if "lwlrap_float" in ens:
        line += f"; lwlrap {ens['lwlrap_float']:.4f} -> {ens['lwlrap_int8']:.4f}"
    return [*lines, line]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run_dir", nargs="?", type=Path, default=Path("runs/demo"))
    ap.add_argument("--calibration", type=Path, default=None, help="a data set or a folder of audio files")
    ap.add_argument("--stages", default=None, help="e.g. 3,4 (default: the run's infer.stages)")
    ap.add_argument("--batch", type=int, default=64, help="windows per timed forward pass")
    ap.add_argument("--seconds", type=float, default=6.0, help="timing budget per thread count")
    ap.add_argument("--activations", choices=("uint8", "int8"), default="uint8")
    args = ap.parse_args(argv)
    if not args.run_dir.is_dir():
        print(
            f"{args.run_dir}: no run directory (`make demo` trains runs/demo); pass RUN_DIR. "
            "Nothing measured."
        )
        return 0

    from noisytag.config import FrontendConfig
    from noisytag.infer.calibration import calibration_set
    from noisytag.infer.ensemble import read_export_index
    from noisytag.infer.export import export_run
    from noisytag.infer.members import session
    from noisytag.infer.quantize import quantize_members, window_feeds

    stages = [int(s) for s in args.stages.split(",")] if args.stages else None
    print(f"run {args.run_dir}; {cpu_flags()}")
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        out = Path(tmp)
        t = time.perf_counter()
        index = export_run(args.run_dir, out, stages)
        t_float = time.perf_counter() - t
        t = time.perf_counter()
        frontend = FrontendConfig(**(index.get("frontend") or {}))
        calib = calibration_set(args.run_dir, frontend, index["classes"], args.calibration)
        index = quantize_members(out, calib, activation=args.activations)
        t_int8 = time.perf_counter() - t
        assert index == read_export_index(out)
        member = index["members"][0]
        spec = member["spec"]
        print(
            f"exported {len(index['members'])} member(s) in {t_float:.1f} s, quantised (calibration, "
            f"parity) in {t_int8:.1f} s; timing {member['name']} ({spec['name']}, width "
            f"{spec.get('options', {}).get('width', 1.0)}, {member['n_classes']} classes)"
        )
        info = index["int8"]
        print(f"int8: {info['format']}")
        print(f"calibration: {info['calibration']['source']}, {info['calibration']['windows']} windows")
        print(f"parity on {info['heldout']['source']}:")
        print("\n".join(parity_lines(index)))

        width, stride, norm = index["window"], index["max_stride"], index["normalize"]
        feeds = window_feeds(calib.heldout + calib.calibrate, width, stride, norm, max_windows=args.batch)
        x = np.concatenate([f["x"] for f in feeds])
        x = np.concatenate([x] * -(-args.batch // len(x)))[: args.batch]
        print(f"\nms per window, batch of {len(x)} windows {tuple(x.shape[1:])} (median):")
        print(f"  {'threads':>7}  {'float':>8}  {'int8':>8}  float/int8")
        for threads in (1, 2):
            sessions = {
                "float": session(out / member["model"], threads),
                "int8": session(out / member["int8"]["model"], threads),
            }
            ms = per_window_ms(sessions, x, args.seconds)
            print(f"  {threads:>7}  {ms['float']:8.3f}  {ms['int8']:8.3f}  {ms['float'] / ms['int8']:9.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
