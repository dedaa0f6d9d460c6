"""Inference speed: seconds of audio tagged per second of wall time (× real time), on this CPU.

    .venv/bin/python benchmarks/bench_infer.py [--quick] [--run RUN_DIR --data DATA_DIR]

Measures, on a set of synthetic clips whose lengths mimic the FSDKaggle2019 test set (0.8–15 s,
mean 7 s):

(a) the front end alone (decode + trim + pad + log-mel);
(b) one full-width cnn1 (80 classes, random weights: speed does not depend on them), models only, on
    precomputed log-mels: PyTorch vs onnxruntime, batched windows (several batch sizes) vs one window
    at a time, exact (SPEC §7) vs fast mode — interleaved and repeated, medians;
(c) end to end (decode + features + model) for the main configurations;
(d) a stages × folds ensemble of slim cnn1 (3 × 3, width 0.25, the demo model), models only;
(e) with ``--run`` (finished fold models) and ``--data`` (a data set with truth/test.csv): lwlrap of
    the exact and fast modes on its test set and their difference;
(f) an estimate for the 4,481-clip real test set (≈ 4,481 × 7 s) with a 60-model full-width ensemble.

Other workers may load the machine; every comparison runs its contenders interleaved in one process,
so ratios are more trustworthy than absolute figures.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))

DURATIONS = (0.8, 1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 8.0, 10.0, 12.0, 15.0, 14.2)  # mean 7.0 s
REAL_TEST_CLIPS, REAL_MEAN_SECONDS, REAL_MODELS = 4481, 7.0, 60


def make_clips(root: Path, durations=DURATIONS, sr: int = 44100, seed: int = 0) -> list[Path]:
    """WAV files of tones, chirps and noise bursts with the given durations."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    paths = []
    for i, seconds in enumerate(durations):
        t = np.arange(int(seconds * sr)) / sr
        f0 = rng.uniform(200, 3000)
        y = 0.2 * np.sin(2 * np.pi * f0 * t) * (0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(0.2, 2) * t))
        y += 0.1 * np.sin(2 * np.pi * (f0 / 2 + 500 * t) * t) + 0.03 * rng.standard_normal(t.size)
        path = root / f"clip{i:02d}.wav"
        sf.write(path, y.astype(np.float32), sr)
        paths.append(path)
    return paths


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def interleaved(contenders: dict, repeats: int) -> dict[str, list[tuple[float, float]]]:
    """Run every contender once per round, ``repeats`` rounds; → (wall, cpu) seconds per run."""
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    return times


def wall(ts) -> float:
    return statistics.median(t[0] for t in ts)


def row(name: str, ts, audio: float, ref: float | None = None) -> str:
    """Median wall time, × real time, and the CPU-bound figure: audio / (CPU seconds / cores)."""
    med = wall(ts)
    cpu = statistics.median(t[1] for t in ts)
    cores = os.cpu_count() or 1
    ratio = f" {ref / med:6.2f}×" if ref else ""
    return (
        f"  {name:<36} {med:7.2f} s {audio / med:7.1f}× real time"
        f"  (CPU {cpu:6.1f} s → {audio * cores / cpu:5.1f}× if unloaded){ratio}"
    )


def precompute(paths, frontend):
    from noisytag.audio.model_input import file_clip

    return [file_clip(p, frontend, i)[0] for i, p in enumerate(paths)]


def run_models(members, clips, cfg):
    from noisytag.infer.predict import iter_window_probs

    for _ in iter_window_probs(members, clips, cfg):
        pass


def onnx_members_of(models, out_dir: Path, width: int = 128):
    """Export random-weight models (traced once per architecture) → OnnxMember list."""
    import json

    import onnx

    from noisytag.infer.export import trace_templates, with_weights
    from noisytag.infer.members import OnnxMember

    templates = {}
    members = []
    for i, model in enumerate(models):
        key = json.dumps(model.spec, sort_keys=True)
        if key not in templates:
            templates[key] = trace_templates(model, width)
        state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        d = out_dir / f"m{i}"
        d.mkdir(parents=True, exist_ok=True)
        for proto, name in zip(templates[key], ("model.onnx", "fast.onnx"), strict=True):
            onnx.save(with_weights(proto, state), str(d / name))
        entry = {
            "name": f"m{i}",
            "n_classes": model.spec["n_classes"],
            "model": f"m{i}/model.onnx",
            "fast": f"m{i}/fast.onnx",
        }
        members.append(OnnxMember(out_dir, entry, width))
    return members


def main() -> None:
    import dataclasses

    import torch

    from noisytag.audio.windows import n_windows
    from noisytag.config import FrontendConfig, InferConfig
    from noisytag.infer.members import TorchMember
    from noisytag.infer.predict import iter_files
    from noisytag.models import build

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--stages", default=None, help="stages of the run for (e), e.g. 2,3,4 (default: its config)"
    )
    parser.add_argument("--quick", action="store_true", help="fewer clips and repeats")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="run directory for (e)")
    parser.add_argument("--data", type=Path, default=Path("data/demo"), help="data set with truth/ for (e)")
    parser.add_argument("--accuracy-only", action="store_true", help="only (e)")
    args = parser.parse_args()
    if args.accuracy_only:
        print("(e) exact vs fast mode on a trained run")
        accuracy(args.run, args.data, args.stages)
        return
    repeats = 1 if args.quick else args.repeats
    durations = DURATIONS[::3] if args.quick else DURATIONS
    fe = FrontendConfig()
    tmp = Path(tempfile.mkdtemp(prefix="bench_infer_"))
    (tmp / "audio").mkdir()
    paths = make_clips(tmp / "audio", durations)
    audio = float(sum(durations))
    load = os.getloadavg()[0]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, load {load:.1f}"
    )
    print(f"{len(paths)} clips, {audio:.1f} s of audio (mean {audio / len(paths):.1f} s)")

    # (a) front end alone
    from noisytag.audio.model_input import file_clip

    file_clip(paths[0], fe)  # warm-up: imports, mel filter bank
    fe_times = interleaved({"fe": lambda: [file_clip(p, fe) for p in paths]}, repeats)["fe"]
    fe_med = wall(fe_times)
    print("\n(a) front end (decode + trim + pad + log-mel)")
    print(row("decode + features", fe_times, audio))
    clips = precompute(paths, fe)
    n_exact = sum(n_windows(c.db.shape[1]) for c in clips)
    print(f"    exact windows: {n_exact} ({n_exact / audio:.2f} per second of audio)")

    # (b) one full-width cnn1, models only
    torch.manual_seed(0)
    full = build("cnn1", 80, 1, width=1.0).eval()
    tm = [TorchMember(full)]
    om = onnx_members_of([full], tmp / "onnx_full")
    base = InferConfig()
    contenders = {
        "torch exact, batch 16": lambda: run_models(tm, clips, dataclasses.replace(base, batch_size=16)),
        "torch exact, batch 64": lambda: run_models(tm, clips, dataclasses.replace(base, batch_size=64)),
        "torch exact, batch 256": lambda: run_models(tm, clips, dataclasses.replace(base, batch_size=256)),
        "torch exact, 1 window at a time": lambda: run_models(
            tm, clips, dataclasses.replace(base, batch_size=1)
        ),
        "torch fast": lambda: run_models(tm, clips, dataclasses.replace(base, mode="fast", batch_size=16)),
        "onnx exact, batch 16": lambda: run_models(om, clips, dataclasses.replace(base, batch_size=16)),
        "onnx exact, 1 window at a time": lambda: run_models(
            om, clips, dataclasses.replace(base, batch_size=1)
        ),
        "onnx fast": lambda: run_models(om, clips, dataclasses.replace(base, mode="fast", batch_size=16)),
    }
    run_models(tm, clips[:2], base)  # warm-up
    run_models(om, clips[:2], base)
    times = interleaved(contenders, repeats)
    ref = wall(times["torch exact, 1 window at a time"])
    print("\n(b) one full-width cnn1 (5.26 M params), models only; ratio = vs torch one window at a time")
    for name, ts in times.items():
        print(row(name, ts, audio, ref))
    model_rate = {name: audio / wall(ts) for name, ts in times.items()}

    # (c) end to end
    def end_to_end(members, cfg):
        return lambda: [r for r in iter_files(members, paths, cfg, fe)]

    best_exact = max((n for n in model_rate if n.startswith("torch exact, batch")), key=model_rate.get)
    bs = int(best_exact.rsplit(" ", 1)[1])
    e2e = interleaved(
        {
            f"torch exact (batch {bs})": end_to_end(tm, dataclasses.replace(base, batch_size=bs)),
            "torch fast": end_to_end(tm, dataclasses.replace(base, mode="fast", batch_size=bs)),
            "onnx exact (batch 16)": end_to_end(om, dataclasses.replace(base, batch_size=16)),
            "onnx fast": end_to_end(om, dataclasses.replace(base, mode="fast", batch_size=16)),
        },
        repeats,
    )
    print("\n(c) one full-width cnn1, end to end (decode + features + model)")
    for name, ts in e2e.items():
        print(row(name, ts, audio))

    # (d) ensemble of 3 stages × 3 folds of slim cnn1
    slim = []
    for i in range(9):
        torch.manual_seed(100 + i)
        slim.append(build("cnn1", 80, 1, width=0.25).eval())
    ts_members = [TorchMember(m) for m in slim]
    os_members = onnx_members_of(slim, tmp / "onnx_slim")
    ens = interleaved(
        {
            "torch exact, batch 64": lambda: run_models(
                ts_members, clips, dataclasses.replace(base, batch_size=64)
            ),
            "torch fast": lambda: run_models(ts_members, clips, dataclasses.replace(base, mode="fast")),
            "onnx exact, batch 16": lambda: run_models(
                os_members, clips, dataclasses.replace(base, batch_size=16)
            ),
            "onnx fast": lambda: run_models(os_members, clips, dataclasses.replace(base, mode="fast")),
        },
        repeats,
    )
    print("\n(d) 3 stages × 3 folds of slim cnn1 (width 0.25), models only")
    for name, ts in ens.items():
        print(row(name, ts, audio))

    # (e) exact vs fast lwlrap on a real run
    print("\n(e) exact vs fast mode on a trained run")
    accuracy(args.run, args.data, args.stages)

    # (f) estimate for the real test set
    real_audio = REAL_TEST_CLIPS * REAL_MEAN_SECONDS
    print(
        f"\n(f) estimate: real test set ≈ {REAL_TEST_CLIPS} clips × {REAL_MEAN_SECONDS} s = {real_audio / 3600:.1f} h "
        f"of audio, {REAL_MODELS} full-width cnn1 models, this CPU (front end {audio / fe_med:.0f}× real time)"
    )
    for name in (best_exact, "torch fast", "onnx exact, batch 16", "onnx fast"):
        per_model = 1 / model_rate[name]  # wall seconds per audio second per model
        total = real_audio * (fe_med / audio + REAL_MODELS * per_model)
        print(f"  {name:<44} {total / 3600:6.1f} h  ({total / REAL_TEST_CLIPS:.2f} s per clip)")


def accuracy(run_dir: Path, data_dir: Path, stages: str | None = None) -> None:
    import dataclasses

    import soundfile as sf

    from noisytag.audio.decode import audio_files
    from noisytag.data.dataset import read_truth
    from noisytag.infer.ensemble import load_ensemble, run_infer_config
    from noisytag.infer.predict import predict_files
    from noisytag.metrics import lwlrap

    truth_csv = data_dir / "truth" / "test.csv"
    if not run_dir.is_dir() or not truth_csv.is_file():
        print(f"  skipped: needs a finished run ({run_dir}) and {truth_csv}")
        return
    try:
        ens = load_ensemble(run_dir, [int(s) for s in stages.split(",")] if stages else None)
    except (FileNotFoundError, ValueError) as err:
        print(f"  skipped: {err}")
        return
    paths = audio_files(data_dir / "test", recursive=True)
    truth = read_truth(truth_csv).set_index("fname")
    col = {c: i for i, c in enumerate(ens.classes)}
    y = np.zeros((len(paths), len(ens.classes)), dtype=bool)
    for r, p in enumerate(paths):
        for lab in truth.loc[p.name, "labels"]:
            y[r, col[lab]] = True
    cfg = run_infer_config(run_dir)
    out = {}
    for mode in ("exact", "fast"):
        start = time.perf_counter()
        res = predict_files(
            ens.members, paths, dataclasses.replace(cfg, mode=mode), ens.frontend, ens.normalize
        )
        out[mode] = (res.probs, time.perf_counter() - start)
    seconds = sum(sf.info(str(p)).duration for p in paths)
    diff = np.abs(out["exact"][0] - out["fast"][0])
    le, lf = lwlrap(y, out["exact"][0]), lwlrap(y, out["fast"][0])
    print(f"  {run_dir}: {len(ens.members)} models, {len(paths)} test clips of {data_dir}")
    print(f"  lwlrap exact {le:.5f}  fast {lf:.5f}  difference {lf - le:+.5f}")
    print(f"  |p_fast − p_exact|: mean {diff.mean():.4f}, max {diff.max():.4f}")
    te, tf = out["exact"][1], out["fast"][1]
    print(
        f"  end to end on {seconds:.0f} s of audio: exact {te:.1f} s ({seconds / te:.1f}× real time), "
        f"fast {tf:.1f} s ({seconds / tf:.1f}×), speed-up {te / tf:.2f}×"
    )


if __name__ == "__main__":
    sys.exit(main())
