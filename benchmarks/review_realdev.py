"""Label review on real recordings (issue 28): cleaning curves and retrains after a simulated review, realdev.

    .venv/bin/python benchmarks/review_realdev.py [--seeds 0,1] [--budget 100] [--policies top,random,ceiling]
        [--data data/realdev-seed7-scale0.5] [--config configs/demo.yaml] [--runs runs/review-realdev]
        [--score-only]

For each training seed k (every step resumes; a finished one is skipped):

1. the base run: ``noisytag pipeline DATA -o RUNS/seed{k} -c CONFIG --set train.seed=k`` (the data set is made
   first if missing: ``make_realdev.py DATA --seed 7 --scale 0.5``, truth beside it in ``DATA_truth/``);
2. its cleaning curves: ``noisytag review RUNS/seed{k} --simulate DATA_truth/noisy_true_labels.csv --curve
   --budget 200`` (every policy, in a scratch log: no retraining);
3. for each policy p (``top`` and ``random`` review N clips; ``ceiling`` fixes every wrong label set: the
   oracle reviewer with an unlimited budget): a copy of the base run, ``RUNS/seed{k}-{p}`` (the events of
   one simulated review per run directory), reviewed by ``noisytag review COPY --simulate … --budget N --policy p --retrain
   --test-truth DATA_truth/test_labels.csv``: stages 1-2 kept, stages 3-4 trained on the corrected manifest
   into ``COPY/review/retrain-1``, compared with the base run (paired bootstrap over the test clips).

Each finished piece is archived at once into ``benchmarks/results/review-realdev/`` (submissions with the
test clips named by file, curves, comparisons), so a later session scores without training. The summary
(``--score-only`` prints just that) tabulates the curves per seed and the retrains per seed and on the
seeds' mean probabilities (paired bootstrap 95 % intervals: after vs before, top vs random, the ceiling vs
top), and writes ``benchmarks/results/review-realdev.{json,md}``. Run the seeds in parallel as two
processes with ``OMP_NUM_THREADS=1`` each: on 2 cores that trains faster than one process after the other.
Not part of ``make test`` or CI.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from noisytag.bootstrap import paired_bootstrap
from noisytag.infer.submission import submission_scores
from noisytag.metrics import lwlrap
from noisytag.review import retrain

ROOT = Path(__file__).resolve().parent.parent
ARCHIVE = ROOT / "benchmarks" / "results" / "review-realdev"
POINTS = (25, 50, 100, 200)
# "ceiling": every wrong label set fixed (the oracle reviewer, who reviews exactly the wrong clips, with a
# budget larger than any noisy set), retrained by the same rule
CEILING = ("oracle", 10**6)


def noisytag(*args: str) -> None:
    """Run the CLI as its own process (as a user would), failing loudly."""
    cmd = [sys.executable, "-m", "noisytag", *args]
    print("$", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def finished(run: Path) -> bool:
    return (run / "submission.csv").is_file()


def archive_submission(run: Path, dest: Path) -> None:
    """The run's submission with test clips named by file (a manifest run names them by path)."""
    sub = pd.read_csv(run / "submission.csv", dtype={"fname": str})
    sub["fname"] = [Path(f).name for f in sub["fname"]]
    dest.mkdir(parents=True, exist_ok=True)
    sub.to_csv(dest / "submission.csv", index=False)


def policy_copy(base: Path, out: Path, cache: Path) -> None:
    """A copy of the finished base run for one policy's review, its features read from one shared cache."""
    if out.exists():
        return
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base, tmp, ignore=shutil.ignore_patterns("review"))
    config = yaml.safe_load((tmp / "config.yaml").read_text()) or {}
    config.setdefault("data", {})["cache_dir"] = str(cache.resolve())
    (tmp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tmp.rename(out)


def run_seed(args, k: int) -> None:
    base = args.runs / f"seed{k}"
    if not finished(base):
        noisytag("pipeline", str(args.data), "-o", str(base), "-c", str(args.config), "--no-progress",
                 "--set", f"train.seed={k}")  # fmt: skip
    dest = ARCHIVE / f"seed{k}"
    if not (dest / "submission.csv").is_file():
        archive_submission(base, dest)
        shutil.copyfile(base / "stage_table.csv", dest / "stage_table.csv")
    if not (dest / "curve.csv").is_file():
        noisytag("review", str(base), "--simulate", str(args.truth / "noisy_true_labels.csv"), "--curve",
                 "--budget", str(max(POINTS)), "--seed", str(k))  # fmt: skip
        shutil.copyfile(base / "review" / "curve.csv", dest / "curve.csv")
    for policy in args.policies:
        dest = ARCHIVE / f"seed{k}-{policy}"
        if (dest / "comparison.json").is_file():
            continue
        copy = args.runs / f"seed{k}-{policy}"
        policy_copy(base, copy, args.runs / f".review-cache-seed{k}")  # one per seed: seeds run in parallel
        test_truth = args.truth / "test_labels.csv"
        review = ["review", str(copy), "--retrain", "--test-truth", str(test_truth)]
        if not (copy / "review" / "events.jsonl").is_file():  # resumed: the decisions are made, retrain only
            simulated, budget = CEILING if policy == "ceiling" else (policy, args.budget)
            review += ["--simulate", str(args.truth / "noisy_true_labels.csv"), "--budget", str(budget),
                       "--policy", simulated, "--seed", str(k)]  # fmt: skip
        noisytag(*review)
        after = copy / "review" / "retrain-1"
        while retrain.retrain_status(after)["state"] == "running":  # started by an earlier, killed call
            time.sleep(30)
        info = json.loads((after / "retrain.json").read_text())
        if info.get("ended_s") is None and finished(after):  # its waiter was killed: ended = its submission
            info["ended_s"] = (after / "submission.csv").stat().st_mtime
            (after / "retrain.json").write_text(json.dumps(info, indent=1))
        if not (after / "comparison.json").is_file():
            retrain.write_comparison(retrain.compare(copy, after, truth_csv=test_truth))
        archive_submission(after, dest)
        for name in ("comparison.json", "per_class_change.csv"):
            shutil.copyfile(after / name, dest / name)
        shutil.copyfile(copy / "review" / "corrections.csv", dest / "corrections.csv")


# ----------------------------------------------------------------------------------------------
# summary


def curves_table(seeds: list[int]) -> tuple[pd.DataFrame, list[str]]:
    """The curves at ``POINTS`` per seed and their mean. ``random`` is its exact expectation (the queue's
    wrong share at every N: ``noisytag.review.simulate.random_curve``)."""
    frames = [
        pd.read_csv(p).assign(seed=k) for k in seeds if (p := ARCHIVE / f"seed{k}" / "curve.csv").is_file()
    ]
    if not frames:
        return pd.DataFrame(), []
    curves = pd.concat(frames)
    rows = curves[curves["n_reviewed"].isin(POINTS)]
    wide = rows.pivot_table(
        index=["seed", "n_reviewed"], columns="policy", values="found_per_clip"
    ).reset_index()
    mean = wide.groupby("n_reviewed", as_index=False).mean(numeric_only=True).assign(seed="mean")
    wide = pd.concat([wide, mean], ignore_index=True)
    wide["top/random"] = wide["top"] / wide["random"]
    lines = [
        "| seed | clips reviewed | top | random (its expectation: the wrong share) | top ÷ random | disagree | oracle |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in wide.to_dict(orient="records"):
        lines.append(f"| {r['seed']} | {r['n_reviewed']:.0f} | {r['top']:.3f} | {r['random']:.3f} | "
                     f"{r['top/random']:.2f}× | {r['disagree']:.3f} | {r['oracle']:.3f} |")  # fmt: skip
    return wide, lines


def scores(kind: str, seeds: list[int], truth: Path):
    """{seed: (y, probs)} of the archived runs of ``kind`` ("" = the base run, else a policy)."""
    out = {}
    for k in seeds:
        sub = ARCHIVE / (f"seed{k}" + (f"-{kind}" if kind else "")) / "submission.csv"
        if sub.is_file():
            _, _, y, p = submission_scores(sub, truth)
            out[k] = (y, p)
    return out


def summary(args) -> dict:
    seeds, truth = args.seeds, args.truth / "test_labels.csv"
    report: dict = {"data": str(args.data), "config": str(args.config), "budget": args.budget, "seeds": seeds}
    noisy = pd.read_csv(args.truth / "noisy_true_labels.csv", dtype=str, keep_default_na=False)
    wrong_share = float((noisy["corruption"] != "none").mean())
    report["wrong_share"] = wrong_share
    wide, curve_lines = curves_table(seeds)
    report["curves"] = wide.to_dict(orient="records")
    runs = {"before": scores("", seeds, truth), **{p: scores(p, seeds, truth) for p in args.policies}}
    rows, lines = [], ["| seed | policy | wrong sets fixed | test lwlrap before → after | Δ [95 %] | retrain wall |",
                       "|---|---|---|---|---|---|"]  # fmt: skip
    for k in seeds:
        for policy in args.policies:
            path = ARCHIVE / f"seed{k}-{policy}" / "comparison.json"
            if not path.is_file():
                continue
            c = json.loads(path.read_text())
            corr = pd.read_csv(
                ARCHIVE / f"seed{k}-{policy}" / "corrections.csv", dtype=str, keep_default_na=False
            )
            changed = int((corr["given"] != corr["reviewed"]).sum() + (corr["action"] == "drop").sum())
            rows.append({"seed": k, "policy": policy, "changed": changed, **{x: c.get(x) for x in
                         ("before", "after", "delta", "lo", "hi", "n_test", "wall_seconds", "train_seconds")}})  # fmt: skip
            lines.append(f"| {k} | {policy} | {changed} | {c['before']:.4f} → {c['after']:.4f} | "
                         f"{c['delta']:+.4f} [{c['lo']:+.4f}, {c['hi']:+.4f}] | {c['wall_seconds'] or 0:.0f} s |")  # fmt: skip
    report["retrains"] = rows
    pooled = []
    complete = [n for n in runs if all(k in runs[n] for k in seeds)]  # a seed mean needs every seed
    if "before" in complete and len(complete) > 1:
        y = runs["before"][seeds[0]][0]
        mean = {n: np.mean([runs[n][k][1] for k in seeds], axis=0) for n in complete}
        pairs = [("before", p) for p in args.policies if p in mean]
        pairs += [(a, b) for a, b in (("random", "top"), ("top", "ceiling")) if a in mean and b in mean]
        for a, b in pairs:
            delta, lo, hi = paired_bootstrap(y, mean[a], mean[b], n_boot=2000)
            pooled.append({"reference": a, "run": b, "reference_value": lwlrap(y, mean[a]),
                           "value": lwlrap(y, mean[b]), "delta": delta, "lo": lo, "hi": hi})  # fmt: skip
        lines += ["", f"Seed-mean probabilities (seeds {', '.join(map(str, seeds))}), {len(y)} test clips:", "",
                  "| run vs reference | reference → run | Δ [95 %] |", "|---|---|---|"]  # fmt: skip
        for r in pooled:
            lines.append(f"| {r['run']} vs {r['reference']} | {r['reference_value']:.4f} → {r['value']:.4f} | "
                         f"{r['delta']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}] |")  # fmt: skip
    report["pooled"] = pooled
    text = "\n".join(["# Label review on realdev (issue 28)", "",
                      f"Data `{args.data.name}`, config `{args.config.name}`, budget {args.budget}; "
                      "wrong label sets found per clip reviewed:", "", *curve_lines, "",
                      "Retrain after a simulated review (stages 1-2 kept, 3-4 trained again):", "", *lines, ""])  # fmt: skip
    (ROOT / "benchmarks" / "results" / "review-realdev.md").write_text(text)
    (ROOT / "benchmarks" / "results" / "review-realdev.json").write_text(
        json.dumps(report, indent=1, default=float)
    )
    print(text)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "realdev-seed7-scale0.5")
    parser.add_argument("--truth", type=Path, help="default: DATA_truth")
    parser.add_argument(
        "--make-script", type=Path, default=ROOT.parent / "shared" / "realdev" / "make_realdev.py"
    )
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "review-realdev")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--budget", type=int, default=100)
    parser.add_argument(
        "--policies",
        default="top,random,ceiling",
        help="top, random, disagree, oracle (N clips), ceiling (all wrong)",
    )
    parser.add_argument("--score-only", action="store_true")
    args = parser.parse_args()
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.policies = args.policies.split(",")
    args.truth = args.truth or args.data.with_name(args.data.name + "_truth")
    if not args.score_only:
        if not args.data.is_dir():
            subprocess.run([sys.executable, str(args.make_script), str(args.data), "--seed", "7", "--scale", "0.5"],
                           check=True)  # fmt: skip
        for k in args.seeds:
            start = time.time()
            run_seed(args, k)
            print(f"seed {k}: {time.time() - start:.0f} s", flush=True)
    summary(args)


if __name__ == "__main__":
    main()
