"""Teacher ensemble vs distilled student (float and int8): test lwlrap, speed, size and serving, in one run.

    .venv/bin/python benchmarks/bench_distill.py TEACHER_RUN STUDENT_RUN [STUDENT_RUN ...]
        [--out JSON] [--repeats 5] [--clips 6] [--serve-seconds 10] [--serve-mode exact]

Rows: the teacher's ensemble (its plan's stages × folds, PyTorch), the student (``noisytag distill``) in
float (PyTorch and onnxruntime) and int8 (onnxruntime, static QDQ). The teacher run is only read; the
student's ONNX and int8 graphs are made on first use in STUDENT/onnx (int8 calibrated on its data set).

1. Test lwlrap against the data set's truth, overall and per recording domain (the clean and shifted
   halves of a ``--test-domain mixed`` synth set, as benchmarks/domain_split.py; "—" for other data):
   teacher = mean of its ensemble's test.npy (the pipeline's ``ensemble_test``); student float (torch) =
   its test.npy; student onnx / int8 = ``Tagger(STUDENT, backend=…)``'s ensemble predicting the test
   files (``predict_files``, the submission path). Several student runs (seeds): mean ± std over them.
2. Real-time factor = wall seconds of ``Tagger.tag`` per second of audio (lower is better; model loading
   excluded), exact and fast mode, on ``--clips`` 10-s clips made by concatenating the test clips
   (trimmed as the front end trims them): decode + features + models, every contender once per round,
   interleaved (bench_infer.py's ``interleaved``), median over ``--repeats`` rounds after one warm-up;
   also the front end alone (decode + features, in the benchmark's one torch thread): every row's floor,
   and the models alone (the clips' log-mels prepared once, then windows → members → mean through
   ``iter_window_probs``): what int8 kernels and a smaller model change.
3. Parameters (sum of numel over members), multiply-accumulates of the exact-mode windows of a 10-s clip
   (Conv2d and Linear, counted with forward hooks, summed over members), bytes of the weight files
   (safetensors; the exact-mode ``model.onnx`` / ``model.int8.onnx`` for the onnxruntime rows).
4. ``noisytag serve`` requests/s (POST /api/tag of the first 10-s clip; answer with timeline and log-mel)
   with 1 and 8 clients on loopback, each for ``--serve-seconds`` (bench_serve.py's ``Server``); the
   teacher also with ``--backend onnx``, and the ratios against both of its backends.
5. The wall time the real 4,481-clip FSDKaggle2019 test set would take on this CPU: RTF × 12.9 h of audio
   (issue 20's figures: 4,481 clips × ≈ 10.4 s). Goal: under 1 hour.

Prints a Markdown table and the ratios; writes every figure to ``--out`` (default
benchmarks/results/distill.json). Other workers may load the machine: ratios from the interleaved rounds
are more trustworthy than absolute figures (the load average is recorded).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from bench_infer import interleaved
from bench_int8 import cpu_flags
from bench_serve import Server, load, load_for
from domain_split import domain_scores, test_domains

ROOT = Path(__file__).resolve().parent.parent
REAL_CLIPS, REAL_HOURS, GOAL_HOURS = 4481, 12.9, 1.0
ROWS = {  # key → (label, run: teacher or student, backend)
    "teacher": ("teacher ensemble", "teacher", "torch"),
    "student_torch": ("student float (torch)", "student", "torch"),
    "student_onnx": ("student float (onnx)", "student", "onnx"),
    "student_int8": ("student int8 (onnx-int8)", "student", "onnx-int8"),
}
MODES = ("exact", "fast")


def test_set(run_dir: Path) -> dict:
    """The run's test clips in its test.npy row order (the data set's order, clips with cached features),
    their truth (N, K) bool, paths, and which are in the shifted recording domain (None: not known)."""
    from noisytag.audio.cache import FeatureCache, cache_folder, default_cache_dir
    from noisytag.data.dataset import multi_hot
    from noisytag.data.manifest import load_data
    from noisytag.rundir import RunDir

    run = RunDir(run_dir)
    cfg, data_dir = run.saved_config(), Path(run.info()["data_dir"])
    data = load_data(data_dir, skip_invalid=cfg.data.skip_invalid, splits=("test",))
    cache_dir = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(data_dir)
    cache = FeatureCache.open(cache_dir, cfg.frontend, cache_folder(data_dir, "test"))
    test = data.test[data.test["key"].isin(set(cache.index["fname"]))].reset_index(drop=True)
    if "truth" not in test.columns:
        raise SystemExit(f"{data_dir}: no truth/test.csv, nothing to score")
    domains = test_domains(data_dir)
    shifted = None if domains is None else np.array([domains[f] == "noisy" for f in test["fname"]])
    return {
        "data_dir": data_dir,
        "classes": list(data.classes),
        "paths": [Path(p) for p in test["path"]],
        "truth": multi_hot(test["truth"], data.classes) > 0.5,
        "shifted": shifted,
    }


def scores(test: dict, probs: np.ndarray) -> dict[str, float]:
    """Test lwlrap overall and on the clean / shifted halves (NaN when the domains are not known)."""
    from noisytag.metrics import lwlrap

    out = {"test": lwlrap(test["truth"], probs), "clean": math.nan, "shifted": math.nan}
    if test["shifted"] is not None:
        out["clean"], out["shifted"] = domain_scores(test["truth"], probs, test["shifted"])
    return out


def teacher_probs(run_dir: Path) -> tuple[np.ndarray, list[str]]:
    """The pipeline's ensemble of the teacher's test predictions (``ensemble_test``; reads test.npy only)."""
    from noisytag.rundir import RunDir
    from noisytag.runs.context import RunContext
    from noisytag.runs.scoring import ensemble_test

    run = RunDir(run_dir)
    ctx = RunContext(run.saved_config(), run.plan(), run, Path(), [], {}, {})  # what ensemble_test reads
    probs, members = ensemble_test(ctx)
    return probs, members


def recorded_score(run_dir: Path, prefix: str) -> float:
    """The run's own test_scores.csv figure for the row whose model starts with ``prefix`` (NaN if none)."""
    import pandas as pd

    path = Path(run_dir) / "test_scores.csv"
    table = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=["model", "test_lwlrap"])
    rows = table[table["model"].astype(str).str.startswith(prefix)]
    return float(rows["test_lwlrap"].iloc[-1]) if len(rows) else math.nan


def student_probs(run_dir: Path) -> np.ndarray:
    from noisytag.rundir import RunDir

    run = RunDir(run_dir)
    (model_dir,) = run.model_dirs()
    return np.load(model_dir / "test.npy", allow_pickle=False)


def tagger_probs(tagger, paths: list[Path]) -> np.ndarray:
    """(N, K) clip probabilities of a Tagger's ensemble for files, with its inference settings."""
    from noisytag.infer.predict import predict_files

    ens = tagger.ensemble
    result = predict_files(ens.members, paths, tagger.cfg, ens.frontend, ens.normalize)
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} test files failed, e.g. {result.failures[0]}")
    return result.probs


def ten_second_clips(paths: list[Path], n: int, out: Path, frontend) -> list[Path]:
    """``n`` 10-s WAV files (PCM 16, the front end's rate): the test clips, trimmed and padded as the front
    end reads them, end to end in test order (cycling when they run out)."""
    from noisytag.audio.decode import load

    sr, need = frontend.sample_rate, 10 * frontend.sample_rate
    parts, total, i = [], 0, 0
    while total < n * need:
        parts.append(load(paths[i % len(paths)], frontend))
        total += len(parts[-1])
        i += 1
    y = np.clip(np.concatenate(parts), -1, 1)
    files = []
    for k in range(n):
        files.append(out / f"test10s_{k:02d}.wav")
        sf.write(files[-1], y[k * need : (k + 1) * need], sr, subtype="PCM_16")
    return files


def model_facts(run_dir: Path, seconds: float = 10.0) -> dict:
    """Parameters, multiply-accumulates of the exact-mode windows of a ``seconds`` clip (Conv2d and Linear,
    forward hooks) and weight bytes, summed over the run's ensemble members."""
    import torch

    from noisytag.audio.windows import n_windows
    from noisytag.infer.ensemble import run_infer_config, select_model_dirs
    from noisytag.models.weights import load_model, read_meta

    cfg, dirs = run_infer_config(run_dir), select_model_dirs(run_dir)
    fe = read_meta(dirs[0])["frontend"]
    frames = 1 + int(seconds * fe["sample_rate"]) // fe["hop_length"]
    windows = n_windows(frames, cfg.window, cfg.max_stride)
    macs = [0]

    def count(module, inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            macs[0] += output.numel() * module.in_channels // module.groups * kh * kw
        else:
            macs[0] += output.numel() * module.in_features

    params = 0
    for d in dirs:
        model = load_model(d)[0].eval()
        params += sum(p.numel() for p in model.parameters())
        hooks = [
            m.register_forward_hook(count)
            for m in model.modules()
            if isinstance(m, torch.nn.Conv2d | torch.nn.Linear)
        ]
        with torch.no_grad():
            model(torch.zeros(windows, 1, fe["n_mels"], cfg.window))
        for h in hooks:
            h.remove()
    files = {str(d / "weights.safetensors"): (d / "weights.safetensors").stat().st_size for d in dirs}
    return {
        "members": len(dirs),
        "params": params,
        "macs_10s": macs[0],
        "windows_10s": windows,
        "bytes": sum(files.values()),
        "files": files,
    }


def onnx_facts(run_dir: Path, precision: str) -> dict:
    """Bytes of the exported graphs in RUN/onnx: ``model`` (exact windows) and ``fast`` per member."""
    from noisytag.infer.ensemble import read_export_index
    from noisytag.infer.members import OnnxMember
    from noisytag.rundir import RunDir

    out = RunDir(run_dir).onnx_dir
    files = {}
    for m in read_export_index(out)["members"]:
        graphs = OnnxMember.graphs(m, precision)
        files |= {str(out / graphs[k]): (out / graphs[k]).stat().st_size for k in ("model", "fast")}
    exact = sum(size for f, size in files.items() if Path(f).name.startswith("model."))
    return {"bytes": exact, "files": files}


def serve_rates(run_dir: Path, backend: str, mode: str, clip: bytes, seconds: float) -> dict:
    """requests/s, median and p95 latency of ``noisytag serve`` with 1 and 8 clients, ``seconds`` each."""
    server = Server(run_dir, "--backend", backend, "--mode", mode)  # the CLI's defaults: 4 in flight
    try:
        load(server.url, clip, 3, 1)  # warm-up, as bench_serve.py
        out = {}
        for clients in (1, 8):
            wall, lat, failures = load_for(server.url, clip, seconds, clients)
            out[str(clients)] = {
                "requests_per_s": len(lat) / wall,
                "requests": len(lat),
                "failures": len(failures),
                "median_ms": 1e3 * statistics.median(lat) if lat else math.nan,
                "p95_ms": 1e3 * float(np.percentile(lat, 95)) if lat else math.nan,
            }
            if failures:
                print(f"  {backend}: {len(failures)} failed requests, e.g. {failures[0]}")
        return out
    finally:
        server.close()


def mean_std(values: list[float]) -> tuple[float, float]:
    """(mean, sample std; NaN for one value)."""
    return float(np.mean(values)), (float(np.std(values, ddof=1)) if len(values) > 1 else math.nan)


def plain(obj):
    """JSON-ready: NaN → null, numpy scalars → Python numbers."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def si(x: float, unit: str = "") -> str:
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.2f} {prefix}{unit}"
    return f"{x:.0f} {unit}".strip()


def cell(entry: dict | None, key: str) -> str:
    if entry is None or math.isnan(entry[key]):
        return "—"
    std = entry.get(f"{key}_std", math.nan)
    return f"{entry[key]:.3f}" + ("" if math.isnan(std) else f" ± {std:.3f}")


def table(models: dict) -> str:
    head = ["model", "test lwlrap", "clean half", "shifted half", "RTF exact", "RTF fast", "params"]
    head += ["MACs/10 s", "bytes", "req/s 1 client", "req/s 8 clients"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in models.values():
        rtf = [f"{m['rtf'][mode]['wall']:.4f}" for mode in MODES]
        size = [si(m["params"]), si(m["macs_10s"]), si(m["bytes"], "B")]
        serve = [f"{m['serve'][c]['requests_per_s']:.1f}" if m.get("serve") else "—" for c in ("1", "8")]
        lw = [cell(m["lwlrap"], k) for k in ("test", "clean", "shifted")]
        lines.append("| " + " | ".join([m["label"], *lw, *rtf, *size, *serve]) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher", type=Path, help="the distilled (teacher) run directory")
    ap.add_argument("students", type=Path, nargs="+", help="student run(s); speed is measured on the first")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "distill.json")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds (median)")
    ap.add_argument("--clips", type=int, default=6, help="10-s clips timed per round")
    ap.add_argument("--serve-seconds", type=float, default=10.0, help="per measurement; 0 skips serving")
    ap.add_argument("--serve-mode", choices=MODES, default="exact")
    args = ap.parse_args(argv)
    import torch

    from noisytag.audio.model_input import file_clip
    from noisytag.infer.ensemble import run_infer_config
    from noisytag.infer.predict import iter_window_probs
    from noisytag.infer.tag import Tagger

    started, load = time.perf_counter(), os.getloadavg()[0]
    teacher, student = args.teacher, args.students[0]
    test = test_set(student)
    if test_set(teacher)["paths"] != test["paths"]:
        raise SystemExit(f"{teacher} and {student}: not the same test clips")
    print(f"{cpu_flags()}; torch {torch.__version__}, {torch.get_num_threads()} threads; load {load:.1f}")
    print(f"test set: {len(test['paths'])} clips of {test['data_dir']}")

    # 1. lwlrap, and the taggers (exporting and quantising the student on first use)
    probs, members = teacher_probs(teacher)
    lw = {"teacher": scores(test, probs)}
    per_student: dict[str, list[dict]] = {k: [] for k in ROWS if k != "teacher"}
    taggers, prepare_s = {}, {}
    for run in args.students:
        per_student["student_torch"].append(scores(test, student_probs(run)))
        for key in ("student_onnx", "student_int8"):
            t = time.perf_counter()
            tagger = Tagger(run, backend=ROWS[key][2], mode=run_infer_config(run).mode)  # as its test.npy
            prepare_s.setdefault(key, time.perf_counter() - t)
            per_student[key].append(scores(test, tagger_probs(tagger, test["paths"])))
            print(f"  {run}: {key} lwlrap {per_student[key][-1]['test']:.4f}", flush=True)
    check = scores(test, tagger_probs(Tagger(student, backend="torch"), test["paths"]))
    for key, runs in per_student.items():
        lw[key] = {}
        for k in ("test", "clean", "shifted"):
            lw[key][k], lw[key][f"{k}_std"] = mean_std([r[k] for r in runs])
        lw[key]["runs"] = runs

    # 2. real-time factor
    runs = {"teacher": teacher, "student": student}
    for key, (_, which, backend) in ROWS.items():
        for mode in MODES:
            t = time.perf_counter()
            taggers[key, mode] = Tagger(runs[which], backend=backend, mode=mode)
            prepare_s.setdefault(f"{key} load", time.perf_counter() - t)
    with tempfile.TemporaryDirectory(prefix="bench-distill-") as tmp:
        clips = ten_second_clips(
            test["paths"], args.clips, Path(tmp), taggers["teacher", "exact"].ensemble.frontend
        )
        audio = 10.0 * len(clips)
        print(
            f"timing {len(taggers)} contenders on {len(clips)} × 10 s clips, {args.repeats} rounds",
            flush=True,
        )
        frontend = taggers["teacher", "exact"].ensemble.frontend
        contenders = {name: (lambda t=t: t.tag(clips)) for name, t in taggers.items()}
        # the models alone: the same clips' log-mels prepared once, through the window engine
        prepared = [file_clip(p, frontend, i)[0] for i, p in enumerate(clips)]
        for (key, mode), t in taggers.items():
            ens = t.ensemble
            contenders["models", key, mode] = lambda e=ens, c=t.cfg: list(
                iter_window_probs(e.members, prepared, c, e.normalize)
            )
        # the floor of every row: decode + features alone, in this thread (torch stays in one thread:
        # a second one's OpenMP pool would slow every contender's small ops, see iter_files)
        contenders["front end"] = lambda: [file_clip(p, frontend) for p in clips]
        for fn in contenders.values():
            fn()  # warm-up
        times = interleaved(contenders, args.repeats)
        clip_bytes = clips[0].read_bytes()
    rtf = {
        name: {
            "wall": statistics.median(w for w, _ in ts) / audio,
            "best": min(w for w, _ in ts) / audio,
            "cpu": statistics.median(c for _, c in ts) / audio,
            "wall_all": [w / audio for w, _ in ts],
        }
        for name, ts in times.items()
    }

    # 3. size; 4. serving
    facts = {"teacher": model_facts(teacher), "student": model_facts(student)}
    models = {}
    for key, (label, which, backend) in ROWS.items():
        f = dict(facts[which])
        if backend != "torch":
            f |= onnx_facts(student, "int8" if backend == "onnx-int8" else "float32")
        if key == "teacher":
            label = f"teacher ({f['members']} models: {' + '.join(members)})"
        models[key] = {"label": label, "run": str(runs[which]), "backend": backend, "lwlrap": lw[key]}
        models[key] |= {"rtf": {mode: rtf[key, mode] for mode in MODES}, **f}
        models[key]["rtf_models"] = {mode: rtf["models", key, mode] for mode in MODES}
    if args.serve_seconds > 0:
        for m in models.values():
            print(f"serving {m['label']} ({args.serve_mode}), {args.serve_seconds:g} s per load", flush=True)
            m["serve"] = serve_rates(
                Path(m["run"]), m["backend"], args.serve_mode, clip_bytes, args.serve_seconds
            )
        # the teacher's other serving backend, float onnx (exported by the server into a temporary
        # folder): the students are compared with the teacher's faster backend too
        print(f"serving the teacher with onnx ({args.serve_mode})", flush=True)
        models["teacher"]["serve_onnx"] = serve_rates(
            teacher, "onnx", args.serve_mode, clip_bytes, args.serve_seconds
        )

    # ratios and the estimate
    def speedup(a: str, b: str) -> dict[str, float]:
        return {mode: rtf[a, mode]["wall"] / rtf[b, mode]["wall"] for mode in MODES}

    def model_speedup(a: str, b: str) -> dict[str, float]:
        return {mode: rtf["models", a, mode]["wall"] / rtf["models", b, mode]["wall"] for mode in MODES}

    ratios = {
        "speedup student torch vs teacher": speedup("teacher", "student_torch"),
        "speedup student onnx vs teacher": speedup("teacher", "student_onnx"),
        "speedup int8 vs float onnx": speedup("student_onnx", "student_int8"),
        "speedup int8 vs teacher": speedup("teacher", "student_int8"),
        "speedup int8 vs float torch": speedup("student_torch", "student_int8"),
        "models alone: student torch vs teacher": model_speedup("teacher", "student_torch"),
        "models alone: int8 vs float onnx": model_speedup("student_onnx", "student_int8"),
        "models alone: int8 vs float torch": model_speedup("student_torch", "student_int8"),
        "params teacher / student": facts["teacher"]["params"] / facts["student"]["params"],
        "MACs teacher / student": facts["teacher"]["macs_10s"] / facts["student"]["macs_10s"],
        "bytes teacher / student float": facts["teacher"]["bytes"] / facts["student"]["bytes"],
        "bytes float onnx / int8 onnx": models["student_onnx"]["bytes"] / models["student_int8"]["bytes"],
        "lwlrap student - teacher": lw["student_torch"]["test"] - lw["teacher"]["test"],
        "lwlrap int8 - float onnx": lw["student_int8"]["test"] - lw["student_onnx"]["test"],
    }
    if args.serve_seconds > 0:
        teacher_serve = models["teacher"]["serve"], models["teacher"]["serve_onnx"]
        for key in ("student_torch", "student_onnx", "student_int8"):
            for clients in ("1", "8"):
                rate = models[key]["serve"][clients]["requests_per_s"]
                torch_rate, onnx_rate = (t[clients]["requests_per_s"] for t in teacher_serve)
                ratios[f"serve {clients} client(s): {key} vs teacher"] = {
                    "torch": rate / torch_rate,
                    "onnx": rate / onnx_rate,
                    "faster": rate / max(torch_rate, onnx_rate),
                }
    hours = {f"{k} {mode}": rtf[k, mode]["wall"] * REAL_HOURS for k in ROWS for mode in MODES}
    best = min((h, k) for k, h in hours.items() if k.startswith("student"))
    estimate = {
        "clips": REAL_CLIPS,
        "audio_hours": REAL_HOURS,
        "mean_clip_s": REAL_HOURS * 3600 / REAL_CLIPS,
        "hours": hours,
        "best_student": best[1],
        "best_student_hours": best[0],
        "goal_hours": GOAL_HOURS,
        "met": best[0] < GOAL_HOURS,
    }

    print()
    print(table(models))
    print(
        f"\nRTF = wall s of Tagger.tag per s of audio ({len(clips)} × 10 s clips, median of {args.repeats}); "
        f"serving: {args.serve_mode} mode, 10-s clip."
    )
    print(
        f"  front end alone (decode + trim + log-mel): RTF {rtf['front end']['wall']:.4f}; "
        "best round: "
        + " · ".join(f"{ROWS[k][0]} {mode} {rtf[k, mode]['best']:.4f}" for k in ROWS for mode in MODES)
    )
    print(
        "  models alone (log-mels prepared once; windows, members, mean): RTF "
        + " · ".join(
            f"{ROWS[k][0]} {mode} {rtf['models', k, mode]['wall']:.4f}" for k in ROWS for mode in MODES
        )
    )
    for name, value in ratios.items():
        text = " · ".join(f"{m} {v:.2f}×" for m, v in value.items()) if isinstance(value, dict) else None
        print(f"  {name}: {text or (f'{value:+.4f}' if 'lwlrap' in name else f'{value:.2f}×')}")
    if args.serve_seconds > 0:
        t1, t8 = (models["teacher"]["serve_onnx"][c]["requests_per_s"] for c in ("1", "8"))
        print(f"  teacher served with onnx: {t1:.1f} req/s with 1 client, {t8:.1f} with 8")
    print(
        f"  student torch via Tagger on the test files: lwlrap {check['test']:.4f} "
        f"(its test.npy: {per_student['student_torch'][0]['test']:.4f})"
    )
    print(
        f"\nreal test set: {REAL_CLIPS} clips ≈ {REAL_HOURS} h of audio ({estimate['mean_clip_s']:.2f} s mean) "
        f"on this CPU: teacher exact {hours['teacher exact']:.2f} h, fast {hours['teacher fast']:.2f} h; best "
        f"student: {ROWS[best[1].split()[0]][0]} {best[1].split()[1]} {best[0]:.2f} h ({best[0] * 60:.0f} min) — goal < {GOAL_HOURS:g} h: "
        f"{'met' if estimate['met'] else 'not met'}"
    )
    record = {
        "teacher": {"run": str(teacher), "ensemble": members},
        "students": [str(s) for s in args.students],
        "test_clips": len(test["paths"]),
        "timing": {
            "clips": len(clips),
            "audio_s": audio,
            "repeats": args.repeats,
            "clip": "test clips end to end",
        },
        "serve": {"seconds": args.serve_seconds, "mode": args.serve_mode},
        "models": models,
        "student_torch_via_tagger": check,
        "test_scores_csv": {
            "teacher": recorded_score(teacher, "ensemble"),
            "students": [recorded_score(s, "student") for s in args.students],
        },
        "front_end_rtf": rtf["front end"],
        "prepare_s": prepare_s,
        "ratios": ratios,
        "estimate": estimate,
        "environment": {
            "cpu": cpu_flags(),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_before": load,
            "load_after": os.getloadavg()[0],
        },
        "wall_s": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(plain(record), indent=2) + "\n")
    print(f"\nwrote {args.out} ({record['wall_s']:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
