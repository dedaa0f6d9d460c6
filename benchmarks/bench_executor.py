"""Wall time of a small pipeline: folds one after another in-process vs ``--executor ray``.

    .venv/bin/python benchmarks/bench_executor.py [--data data/demo] [--config configs/demo.yaml]
        [--set KEY=VALUE ...] [--tasks 2] [--out DIR] [--json OUT.json]

Both runs are the same CLI command, each in a fresh process (``python -m noisytag pipeline ...
--no-report --no-progress``), on the same data set and feature cache (built first, not timed), into
fresh run directories. The in-process run uses every core for torch; the Ray run starts its own local
Ray instance (counted) and runs ``--tasks`` fold tasks of 1 CPU (1 torch thread) each. The default
reduction of ``configs/demo.yaml`` is 2 folds (a stage is exactly 2 tasks) and 2 epochs per stage.
Prints both wall times and their ratio. A third run, in-process with one torch thread (as each task),
checks the results: its submission must equal the Ray run's exactly, while the all-core run's differs
(another thread count rounds differently, and training amplifies that).
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

import pandas as pd

DEFAULT_SETS = ("train.folds=2", "pipeline.stage_epochs=[2,2,2,2]")


def pipeline(
    data: Path, out: Path, config: Path, sets: list[str], extra: list[str], threads: int = 0
) -> float:
    """Seconds of wall time of one ``noisytag pipeline`` command (fails loudly); ``threads`` 0 = all cores."""
    cmd = [sys.executable, "-m", "noisytag", "pipeline", str(data), "-o", str(out), "-c", str(config)]
    cmd += [a for s in sets for a in ("--set", s)] + ["--no-report", "--no-progress", *extra]
    started = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads or os.cpu_count() or 1)}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return seconds


def submission_difference(a: Path, b: Path) -> float:
    """Largest absolute difference between the two runs' submission probabilities."""
    x, y = (pd.read_csv(r / "submission.csv").set_index("fname") for r in (a, b))
    return float((x - y.loc[x.index]).abs().to_numpy().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    parser.add_argument("--config", type=Path, default=Path("configs/demo.yaml"))
    parser.add_argument("--set", dest="sets", action="append", help=f"default: {' '.join(DEFAULT_SETS)}")
    parser.add_argument("--tasks", type=int, default=2, help="Ray fold tasks at once, 1 CPU each")
    parser.add_argument("--out", type=Path, help="where the two run directories go (default: a temp dir)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    sets = args.sets or list(DEFAULT_SETS)
    if not (args.data / "sample_submission.csv").is_file():
        subprocess.run(
            [sys.executable, "-m", "noisytag", "synth", str(args.data), "--scale", "demo"], check=True
        )
    subprocess.run(
        [sys.executable, "-m", "noisytag", "features", str(args.data)], check=True, capture_output=True
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_executor_"))
    local, ray, single = out / "local", out / "ray", out / "local_1thread"
    for run in (local, ray, single):
        if run.exists():
            sys.exit(f"{run} exists: give another --out (the benchmark times fresh runs)")
    load = os.getloadavg()[0]
    local_s = pipeline(args.data, local, args.config, sets, [])
    ray_extra = ["--executor", "ray", "--cpus-per-task", "1", "--max-tasks", str(args.tasks)]
    ray_s = pipeline(args.data, ray, args.config, sets, ray_extra)
    single_s = pipeline(args.data, single, args.config, sets, [], threads=1)
    diff, exact = (submission_difference(ray, other) for other in (local, single))
    print(f"pipeline: {args.data} with {args.config} --set {' --set '.join(sets)}")
    print(f"  cores: {os.cpu_count()}, load average before: {load:.2f}")
    print(f"  in-process (all cores for torch)          {local_s:8.1f} s")
    print(f"  --executor ray, {args.tasks} tasks x 1 CPU        {ray_s:8.1f} s")
    print(f"  ratio in-process / ray                    {local_s / ray_s:8.2f}x")
    print(f"  in-process, 1 torch thread                {single_s:8.1f} s")
    print(f"  largest submission difference, ray vs in-process: 1 thread {exact:.1e}, all cores {diff:.1e}")
    record = json.loads((ray / "executor.json").read_text())  # written by the Ray run's driver
    tasks = pd.DataFrame(record["tasks"])
    overhead = tasks["wall_s"] - tasks["train_s"]
    print(f"  Ray start-up (local instance)             {record['ray_start_s']:8.1f} s")
    print(
        f"  overhead per task, median of {len(tasks)} tasks      {overhead.median():8.1f} s of {tasks['wall_s'].median():.1f} s"
    )
    print(f"    start-up in the task (open_run: data, caches, folds) {tasks['startup_s'].median():6.2f} s")
    print(
        f"    scheduling + worker start (wall - task)    {(tasks['wall_s'] - tasks['task_s']).median():6.2f} s"
    )
    if args.json:
        figures = {"local_s": local_s, "ray_s": ray_s, "ratio": local_s / ray_s, "local_1thread_s": single_s}
        figures |= {"max_diff_all_cores": diff, "max_diff_1thread": exact, "load": load}
        figures |= {"ray_start_s": record["ray_start_s"], "task_overhead_s": float(overhead.median())}
        figures |= {"task_startup_s": float(tasks["startup_s"].median())}
        args.json.write_text(
            json.dumps({"sets": sets, "config": str(args.config), **figures}, indent=2) + "\n"
        )


if __name__ == "__main__":
    main()
