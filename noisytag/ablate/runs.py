"""``noisytag ablate``: the pipeline once per (variant, seed), resumable, with a table of means and spreads.

An ablation directory::

    ablation.yaml                         data set, base config, variants (name → overrides), seeds
    ablation.csv / ablation.md / .html    one row per variant (see :mod:`noisytag.ablate.tables`)
    ablation_runs.csv                     one row per run
    runs/<variant>/seed<i>/               an ordinary run directory, plus
        stage_keys.json                   {arch: {stage: noisytag.plan.RunPlan.key}} (written before it runs)
        ablate.json                       the run's summary (written when it ends; status ok / failed)

A variant is a list of ``--set``-style overrides of the base config; seed i sets ``train.seed`` to the
variant's seed + i. Runs go seed-major (seed 0 of every variant first), so a cut-short ablation already
compares every variant. A run whose ablate.json says ok is never redone; a failed or interrupted one is
run again by the next call, and the pipeline itself resumes its finished folds and checkpoints.

Variants often differ only in late stages (say, the stage-3 selection), so before a run its stages are
taken from another run of the ablation whose :func:`~noisytag.plan.RunPlan.key` matches and whose
folds are all done: stage by stage and per architecture, stopping at the first stage that cannot be
reused. Files are hard-linked (a done fold is never written again, so sharing is safe), else copied.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from noisytag.ablate.tables import run_summary, write_outputs
from noisytag.config import RunConfig, config_from_dict, with_overrides
from noisytag.fileio import write_json, write_text
from noisytag.plan import build_plan
from noisytag.rundir import RunDir
from noisytag.runs import pipeline

log = logging.getLogger(__name__)

__all__ = ["PlannedRun", "parse_variant", "plan_ablation", "describe_plan", "run_ablation"]

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]*$")
# Overrides are split on ';' or on a comma that starts the next dotted key ("...,train.lr=..."), so list
# values such as pipeline.stage_epochs=[10,10] keep their commas.
_SPLIT = re.compile(r"\s*;\s*|,(?=\s*[A-Za-z_]\w*(?:\.\w+)+\s*=)")


@dataclass(frozen=True)
class PlannedRun:
    variant: str
    seed: int  # 0..N-1
    overrides: tuple[str, ...]
    cfg: RunConfig
    run_dir: Path

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``"NAME=KEY=VALUE[,KEY=VALUE...]"`` (or ``;`` between pairs) → (NAME, overrides); ``"NAME"`` = base.

    >>> parse_variant("short=pipeline.stage_epochs=[10,10],train.lr=0.003")
    ('short', ['pipeline.stage_epochs=[10,10]', 'train.lr=0.003'])
    """
    name, _, rest = text.strip().partition("=")
    name = name.strip()
    if not _NAME.match(name):
        raise ValueError(f"variant '{text}': the name must be letters, digits, _ . + - (a directory name)")
    overrides = [part.strip() for part in _SPLIT.split(rest) if part.strip()] if rest.strip() else []
    for part in overrides:
        if "=" not in part:
            raise ValueError(f"variant '{name}': override '{part}' is not KEY=VALUE")
    return name, overrides


def plan_ablation(
    out_dir: str | Path, base_cfg: RunConfig, variants: Mapping[str, Sequence[str]], seeds: int
) -> list[PlannedRun]:
    """Every (variant, seed) with its resolved config and run directory, seed-major; configs are checked."""
    if seeds < 1:
        raise ValueError(f"seeds must be ≥ 1, got {seeds}")
    runs = []
    for seed in range(seeds):
        for variant, overrides in variants.items():
            cfg = with_overrides(base_cfg, list(overrides))
            cfg = with_overrides(cfg, [f"train.seed={cfg.train.seed + seed}"])
            run_dir = Path(out_dir) / "runs" / variant / f"seed{seed}"
            runs.append(PlannedRun(variant, seed, tuple(overrides), cfg, run_dir))
    return runs


# ----------------------------------------------------------------------------------------------
# the ablation file: what was asked, so a later call continues or adds to the same ablation


def _fingerprint(cfg: RunConfig) -> dict:
    """What decides a run's results: every stage key per architecture and the ensemble's stages."""
    plan = build_plan(cfg)
    keys = {a: [plan.key(a, s) for s in plan.stage_numbers] for a in plan.architectures}
    return {"stages": keys, "ensemble": list(plan.ensemble)}


def _merge_ablation_file(
    out_dir: Path, data_dir: Path, base_cfg: RunConfig, variants: Mapping[str, Sequence[str]], seeds: int
) -> dict[str, list[str]]:
    """Check the request against DIR/ablation.yaml, add its variants there; returns all variants.

    The base config may change only in ways that leave results alone (devices, workers); a variant name
    keeps its overrides for good (its finished runs were made with them).
    """
    path = out_dir / "ablation.yaml"
    saved = yaml.safe_load(path.read_text()) if path.is_file() else {}
    known: dict[str, list[str]] = dict(saved.get("variants") or {})
    if saved.get("base") is not None:
        old = config_from_dict(saved["base"])
        if _fingerprint(old) != _fingerprint(base_cfg):
            a, b = old.to_dict(), base_cfg.to_dict()
            diffs = [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b.get(s, {}).get(k)]
            raise ValueError(
                f"{out_dir} holds an ablation of another base config (differs in {', '.join(diffs)}); "
                "use another output directory"
            )
    for name, overrides in variants.items():
        if name in known and list(known[name]) != list(overrides):
            raise ValueError(
                f"variant '{name}' already exists in {out_dir} with overrides {known[name]}; use another name"
            )
        known[name] = list(overrides)
    record = {
        "data_dir": str(Path(data_dir).resolve()),
        "seeds": max(int(saved.get("seeds", 0)), seeds),
        "variants": known,
        "base": base_cfg.to_dict(),
    }
    write_text(path, yaml.safe_dump(record, sort_keys=False))
    return known


# ----------------------------------------------------------------------------------------------
# reusing finished stages of other runs


def _stage_keys(cfg: RunConfig) -> dict[str, dict[str, str]]:
    """Each stage's result key per architecture, from the run plan (the inputs that stage reads)."""
    plan = build_plan(cfg)
    return {a: {str(s): plan.key(a, s) for s in plan.stage_numbers} for a in plan.architectures}


def _stage_done(run: RunDir, arch: str, stage: int, folds: int) -> bool:
    return all(run.fold_done(arch, stage, f).is_file() for f in range(folds))


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _find_source(
    sources: Sequence[Path], arch: str, stage: int, key: str, folds: int, planned: Mapping[Path, dict]
) -> tuple[Path, bool] | None:
    """A run holding this stage (done now → (dir, True)) or a planned run that will (→ (dir, False))."""
    for source in sources:
        keys = _read_json(source / "stage_keys.json")
        if keys.get(arch, {}).get(str(stage)) == key and _stage_done(RunDir(source), arch, stage, folds):
            return source, True
    for source, keys in planned.items():
        if keys.get(arch, {}).get(str(stage)) == key:
            return source, False
    return None


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _copy_stage(source: RunDir, target: RunDir, arch: str, stage: int) -> None:
    """Put the source's stage directory (and folds.csv, and the stage's timings) into the target."""
    dst = target.stage_dir(arch, stage)
    tmp = dst.with_name(dst.name + ".reuse-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(
        source.stage_dir(arch, stage),
        tmp,
        copy_function=_link_or_copy,
        ignore=shutil.ignore_patterns("last.ckpt", ".*tmp*"),
    )
    shutil.rmtree(dst, ignore_errors=True)  # a partial stage of the target: the copy replaces it
    os.replace(tmp, dst)
    if not target.folds.is_file():
        shutil.copy2(source.folds, target.folds)
    # Training seconds follow the stage, so the table's training cost is that of the config.
    prefix = f"{arch}/stage{stage}/"
    timings = {
        k: v for k, v in _read_json(source.run_info).get("timings", {}).items() if k.startswith(prefix)
    }
    if timings:
        info = _read_json(target.run_info)
        info.setdefault("timings", {}).update(timings)
        write_json(target.run_info, info)


def reuse_stages(
    run: PlannedRun,
    sources: Sequence[Path],
    planned: Mapping[Path, dict] | None = None,
    dry_run: bool = False,
) -> list[str]:
    """Copy (or, with ``dry_run``, only name) the stages of ``run`` that another run has finished.

    ``planned``: stage keys of runs that will run earlier in this call (dry run only: "after it runs").
    Returns one "arch/stage<k> ← source" line per stage reused.
    """
    cfg, target = run.cfg, RunDir(run.run_dir)
    keys, folds, lines = _stage_keys(cfg), cfg.train.folds, []
    for arch in cfg.pipeline.architectures:
        for stage in map(int, keys[arch]):
            if _stage_done(target, arch, stage, folds):
                continue
            found = _find_source(sources, arch, stage, keys[arch][str(stage)], folds, planned or {})
            if found is None:
                break
            source, ready = found
            if not dry_run:
                _copy_stage(RunDir(source), target, arch, stage)
            lines.append(f"{arch}/stage{stage} ← {source}" + ("" if ready else " (after it runs)"))
    return lines


def _other_runs(out_dir: Path, exclude: Path) -> list[Path]:
    return [
        p.parent for p in sorted((out_dir / "runs").glob("*/seed*/stage_keys.json")) if p.parent != exclude
    ]


# ----------------------------------------------------------------------------------------------
# running


def _finished(run_dir: Path) -> bool:
    return _read_json(run_dir / "ablate.json").get("status") == "ok"


def describe_plan(
    out_dir: str | Path, base_cfg: RunConfig, variants: Mapping[str, Sequence[str]], seeds: int
) -> pd.DataFrame:
    """The dry run: DataFrame(variant, seed, run_dir, state, reuse) without running or writing anything."""
    out_dir, rows, planned = Path(out_dir), [], {}
    for run in plan_ablation(out_dir, base_cfg, variants, seeds):
        if _finished(run.run_dir):
            state, reuse = "done", []
        else:
            state = "failed before" if (run.run_dir / "ablate.json").is_file() else "to run"
            reuse = reuse_stages(run, _other_runs(out_dir, run.run_dir), planned, dry_run=True)
            planned[run.run_dir] = _stage_keys(run.cfg)
        rows.append(
            {"variant": run.variant, "seed": run.seed, "run_dir": str(run.run_dir), "state": state,
             "reuse": "; ".join(reuse)}
        )  # fmt: skip
    return pd.DataFrame(rows, columns=["variant", "seed", "run_dir", "state", "reuse"])


def _execute(
    run: PlannedRun, data_dir: Path, out_dir: Path, progress: bool, runner
) -> tuple[dict, list[str]]:
    """One (variant, seed): reuse what it can, run the pipeline, write ablate.json; (summary, log lines)."""
    lines = []
    run.run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run.run_dir / "stage_keys.json", _stage_keys(run.cfg))
    started = time.perf_counter()
    summary = {"variant": run.variant, "seed": run.seed, "train_seed": run.cfg.train.seed,
               "overrides": list(run.overrides)}  # fmt: skip
    try:
        reused = reuse_stages(run, _other_runs(out_dir, run.run_dir))
        lines += [f"{run.name}: reused {line}" for line in reused]
        results = runner(data_dir, run.run_dir, run.cfg, force=False, progress=progress)
        summary.update(run_summary(results, time.perf_counter() - started), reused=reused)
    except Exception as err:  # a failed run is recorded; KeyboardInterrupt is not an Exception
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        log.debug("%s failed", run.name, exc_info=True)
        summary.update(status="failed", error=reason, metrics={"wall_seconds": time.perf_counter() - started})
    write_json(run.run_dir / "ablate.json", summary)
    if summary["status"] == "ok":
        test = summary["metrics"].get("test_ensemble")
        lines.append(f"{run.name}: ok in {summary['metrics']['wall_seconds']:.0f} s"
                     + (f", ensemble test lwlrap {test:.4f}" if test is not None else ""))  # fmt: skip
    else:
        lines.append(f"{run.name}: FAILED: {summary['error']}")
    return summary, lines


def _worker_init(threads: int) -> None:
    """A pool worker: a share of the cores for torch, quiet logging."""
    import torch  # in the worker process only, before any work

    torch.set_num_threads(threads)


def _execute_in_worker(run: PlannedRun, data_dir: Path, out_dir: Path) -> tuple[dict, list[str]]:
    return _execute(run, data_dir, out_dir, False, pipeline.run_pipeline)


def run_ablation(
    data_dir: str | Path,
    out_dir: str | Path,
    base_cfg: RunConfig,
    variants: Mapping[str, Sequence[str]],
    seeds: int,
    progress: bool = False,
    runner: Callable[..., dict] | None = None,
    echo: Callable[[str], None] | None = None,
    jobs: int = 1,
) -> pd.DataFrame:
    """Run every (variant, seed) not finished yet, then write and return the per-variant table.

    Args:
        data_dir: the data set (its feature cache is shared by all runs).
        out_dir: the ablation directory (created or continued).
        base_cfg: the base config; ``variants`` maps a name to its ``--set`` overrides ([] = the base).
        seeds: runs per variant; seed i sets train.seed = the variant's seed + i.
        progress: progress bars inside each pipeline run (one job only).
        runner: ``noisytag.runs.pipeline.run_pipeline`` or a stand-in with its signature (tests; one job only).
        echo: called with one line per run started / reused / finished / failed (default: logging).
        jobs: runs at once, each in its own process with an equal share of the CPU cores (a machine
            with many cores or a GPU trains several small models at a time; they share the GPU).
            Reuse then comes only from runs finished before a run starts.

    Returns:
        The per-variant table (:func:`noisytag.ablate.tables.summarise`), also written as ablation.csv,
        ablation.md and ablation.html. A run that raises an Exception is recorded as failed and the others
        go on; KeyboardInterrupt stops the ablation (the next call continues it).
    """
    runner = runner or pipeline.run_pipeline  # looked up per call, so a test may patch it
    echo = echo or log.info
    out_dir, data_dir = Path(out_dir), Path(data_dir)
    plan = plan_ablation(out_dir, base_cfg, variants, seeds)  # checks every override before anything runs
    out_dir.mkdir(parents=True, exist_ok=True)
    _merge_ablation_file(out_dir, data_dir, base_cfg, variants, seeds)
    todo = []
    for run in plan:
        if _finished(run.run_dir):
            echo(f"{run.name}: done before, skipped")
        else:
            todo.append(run)
    if jobs <= 1:
        for run in todo:
            echo(f"{run.name}: started")
            for line in _execute(run, data_dir, out_dir, progress, runner)[1]:
                echo(line)
        return write_outputs(out_dir)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    spawn = multiprocessing.get_context("spawn")  # no forked torch / CUDA state in the workers
    with ProcessPoolExecutor(jobs, mp_context=spawn, initializer=_worker_init, initargs=(threads,)) as pool:
        futures = {pool.submit(_execute_in_worker, run, data_dir, out_dir): run for run in todo}
        for run in todo:
            echo(f"{run.name}: queued")
        for future in as_completed(futures):
            for line in future.result()[1]:
                echo(line)
    return write_outputs(out_dir)
