"""The four-stage warm-up pipeline (SPEC §6, §6b): stages × folds × architectures, resumable.

Each fold model is finished when its ``done`` marker exists (written after weights and out-of-fold
predictions), so a re-run skips it; a fold that was interrupted resumes from its last epoch checkpoint.
Stage-level outputs (scores, selections, tables, submission) are pure functions of the fold outputs
(:mod:`noisytag.runs.scoring`), written by global rank zero; under DDP every rank waits at a barrier after
each fold and each stage, so no rank reads a file before rank zero has written it.

Where the folds of a stage run is the executor's choice (:class:`FoldExecutor`): by default one after
another in this process; ``noisytag.runs.executors.RayExecutor`` runs them at once as Ray tasks.

Beyond the seed (``noisy.treatment`` ≠ drop): in the stages of ``noisy.stages`` every noisy clip of the
other folds trains; the selected ones as trusted, the rest through the treatment. ``pipeline.mode:
joint`` is the baseline to beat: one stage on curated + all noisy clips, same folds and budget.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from noisytag.config import RunConfig
from noisytag.data.dataset import SUBMISSION, format_labels
from noisytag.fileio import write_csv, write_npy, write_text
from noisytag.infer.members import as_members
from noisytag.infer.predict import predict_cache
from noisytag.infer.submission import write_submission
from noisytag.learn.loader import ClipSet
from noisytag.learn.selection import detector_audit, select_noisy
from noisytag.learn.train import fit_fold, inference_device
from noisytag.learn.treatments import treatment
from noisytag.models.record import FoldRecord
from noisytag.models.weights import load_model, save_model
from noisytag.plan import RunPlan, build_plan, joint_epochs, run_seed
from noisytag.rundir import RunDir
from noisytag.runs.context import RunContext, barrier, is_global_zero, open_run
from noisytag.runs.scoring import (
    correct_labels,
    ensemble_test,
    noisy_scores,
    per_class_table,
    stage_oof,
    stage_table,
    test_scores,
)

log = logging.getLogger(__name__)

# What selection.csv keeps of the detector audit (noisytag.learn.selection.detector_audit).
AUDIT_COLUMNS = (
    "agreement",
    "kappa",
    "lwlrap_precision",
    "lwlrap_recall",
    "cleanlab_precision",
    "cleanlab_recall",
)


def stage_key(cfg: RunConfig, arch: str, stage: int) -> str:
    """The result key of (arch, stage): the run plan's (:func:`noisytag.plan.build_plan`)."""
    return build_plan(cfg).key(arch, stage)


def _relabelled(ctx: RunContext, arch: str, stage: int) -> ClipSet:
    """Soft targets α·given + (1 − α)·(mean OOF of the earlier stages) for the noisy clips."""
    noisy = ctx.noisy.clips
    earlier = [
        o for s in ctx.plan.stage_numbers if s < stage and (o := stage_oof(ctx, arch, s, "noisy")) is not None
    ]
    if not earlier:
        return noisy.with_labels(untrusted=0.0)  # nothing to relabel from yet: given labels
    alpha = ctx.cfg.noisy.relabel_alpha
    return noisy.with_labels(alpha * noisy.targets + (1 - alpha) * np.mean(earlier, axis=0), untrusted=0.0)


@dataclass(frozen=True)
class FoldParts:
    """What a training-set part of (arch, stage, fold) reads: the run and the noisy clips' masks."""

    ctx: RunContext
    arch: str
    stage: int
    fold: int
    other_folds: np.ndarray  # (N_noisy,) bool: noisy clips of the other folds
    trusted: np.ndarray  # (N_noisy,) bool: those the stage's selection trusts (none without "selected")


def _untrusted_part(p: FoldParts) -> ClipSet:
    treatment_name = p.ctx.plan.stage(p.stage).treatment
    return untrusted_clips(p.ctx, p.arch, p.stage, treatment_name).subset(p.other_folds & ~p.trusted)


# Each part a run plan's ``trains_on`` may name (plan.PART_TEXT) → its clips (None: none this fold).
TRAINING_PARTS: dict[str, Callable[[FoldParts], ClipSet | None]] = {
    "curated": lambda p: p.ctx.curated.rows(p.ctx.curated.fold != p.fold),
    "noisy": lambda p: p.ctx.noisy.rows(p.other_folds).with_labels(untrusted=0.0),
    "selected": lambda p: p.ctx.noisy.rows(p.other_folds & p.trusted) if p.trusted.any() else None,
    "untrusted": _untrusted_part,
}


def training_clips(ctx: RunContext, arch: str, stage: int, fold: int) -> ClipSet:
    """The training set of (stage, fold): the parts the run plan names for the stage (SPEC §6, §6b)."""
    plan = ctx.plan.stage(stage)
    trusted = np.zeros(len(ctx.noisy.fnames), dtype=bool)
    if "selected" in plan.trains_on:
        chosen = set(select_for(ctx, arch, stage).query("fold != @fold")["fname"])
        trusted = np.array([f in chosen for f in ctx.noisy.fnames], dtype=bool)
    unknown = [part for part in plan.trains_on if part not in TRAINING_PARTS]
    if unknown:
        raise ValueError(f"stage {stage}: the pipeline trains on no part {', '.join(map(repr, unknown))}")
    fold_parts = FoldParts(ctx, arch, stage, fold, ctx.noisy.fold != fold, trusted)
    parts = [TRAINING_PARTS[part](fold_parts) for part in plan.trains_on]
    return ClipSet.concat([p for p in parts if p is not None])


def untrusted_clips(ctx: RunContext, arch: str, stage: int, name: str) -> ClipSet:
    """Every noisy clip as the treatment trains the ones the selection does not trust."""
    entry = treatment(name)
    if entry.relabel:
        return _relabelled(ctx, arch, stage)
    return ctx.noisy.clips.with_labels(untrusted=entry.untrusted)


# ----------------------------------------------------------------------------------------------
# one fold


def write_fold_outputs(run: RunDir, record: FoldRecord, model, started: float) -> None:
    """The end of every fold model's training (a pipeline fold or a student): weights + ``model.json``,
    then the epoch checkpoint removed, then the ``done`` marker holding the seconds since ``started``
    (run.json's timings read them), in the order a kill must see. Global rank zero writes; every rank
    returns once it has."""
    if is_global_zero():
        arch, stage, fold = record.arch, record.stage, record.fold
        save_model(run.fold_dir(arch, stage, fold), model, record.to_json())
        seconds = round(time.perf_counter() - started, 2)
        run.fold_checkpoint(arch, stage, fold).unlink(missing_ok=True)
        write_text(run.fold_done(arch, stage, fold), f"{seconds}\n")
    barrier()  # other ranks go on only once rank zero has written the fold's outputs


def run_fold(ctx: RunContext, arch: str, stage: int, fold: int) -> None:
    """Train (or resume) one fold model and write its weights, OOF and test predictions, done-marker."""
    run, cfg = ctx.run, ctx.cfg
    if run.fold_done(arch, stage, fold).is_file():
        return
    plan = ctx.plan.stage(stage)
    init_state = None
    if plan.starts_from is not None:
        previous, _ = load_model(run.fold_dir(arch, plan.starts_from, fold))
        init_state = previous.state_dict()
    epochs, lr = plan.epochs, plan.lr
    if not epochs:  # the joint baseline: the warm-up's budget for this fold's clip counts
        epochs = joint_epochs(cfg, int((ctx.curated.fold != fold).sum()), int((ctx.noisy.fold != fold).sum()))
    train = training_clips(ctx, arch, stage, fold)
    log.info("%s stage %d fold %d: %d training clips, %d epochs", arch, stage, fold, len(train), epochs)
    started = time.perf_counter()
    module = fit_fold(
        cfg,
        arch=arch,
        n_classes=len(ctx.classes),
        caches=ctx.caches,
        train=train,
        val=ctx.curated.rows(ctx.curated.fold == fold),
        fold_dir=run.fold_dir(arch, stage, fold),
        epochs=epochs,
        lr=lr,
        seed=run_seed(cfg.train.seed, ctx.plan.kind, stage, fold),
        init_state=init_state,
        progress=ctx.progress,
    )
    if is_global_zero():
        model, device = module.model.eval(), inference_device(cfg)
        members = as_members([model], device)  # one inference copy for the three predictions
        with torch.no_grad():
            for split in ("curated", "noisy"):
                rows = ctx.splits[split].fold == fold
                positions = ctx.splits[split].clips.position[rows]
                probs = predict_cache(
                    members, ctx.caches[split], positions, cfg.infer, cfg.data.normalize, device
                )
                write_npy(run.fold_oof(arch, stage, fold, split), probs.astype(np.float32))
            positions = ctx.test.clips.position
            test = predict_cache(
                members, ctx.caches["test"], positions, cfg.infer, cfg.data.normalize, device
            )
            write_npy(run.fold_test(arch, stage, fold), test.astype(np.float32))
        model.cpu()
    record = FoldRecord(
        arch=arch, stage=stage, fold=fold, classes=tuple(ctx.classes), frontend=cfg.to_dict()["frontend"],
        normalize=cfg.data.normalize, config_hash=cfg.hash(), n_train=len(train),
    )  # fmt: skip
    write_fold_outputs(run, record, module.model, started)


# ----------------------------------------------------------------------------------------------
# selections (stages 3 and 4)


def write_clip_table(path: Path, frame: pd.DataFrame) -> None:
    """A per-clip table as CSV, label tuples written as "a,b" like the data set's own CSVs."""
    out = frame.copy()
    for col in ("labels", "true_labels"):
        if col in out:
            out[col] = out[col].map(format_labels)
    write_csv(path, out)


def select_for(ctx: RunContext, arch: str, stage: int) -> pd.DataFrame:
    """The noisy clips trusted in stage 3 or 4, computed once per (arch, stage) and run, and saved.

    Both detectors (per-clip OOF lwlrap of SPEC §6 and confident learning) judge every noisy clip;
    ``selection.method`` decides which one selects. Every clip's verdicts go to the stage's audit CSV.
    """
    if (arch, stage) in ctx.selections:
        return ctx.selections[(arch, stage)]
    plan = ctx.plan.stage(stage)
    oofs = {s: stage_oof(ctx, arch, s, "noisy") for s in plan.selects_from}
    if any(o is None for o in oofs.values()):
        raise RuntimeError(
            f"stage {stage} of {arch} needs the finished stages {', '.join(map(str, plan.selects_from))}"
        )
    table = noisy_scores(ctx, arch)
    audit = select_noisy(table, ctx.noisy.clips.targets, oofs, plan, ctx.cfg.selection)
    selected = audit[audit["selected"]].drop(columns=["selected"]).reset_index(drop=True)
    if is_global_zero():
        for frame, path in ((selected, ctx.run.selection(arch, stage)), (audit, ctx.run.audit(arch, stage))):
            write_clip_table(path, frame)
    ctx.selections[(arch, stage)] = selected
    return selected


# ----------------------------------------------------------------------------------------------
# stages, tables, ensemble


def prepare_stage(ctx: RunContext, arch: str, stage: int) -> None:
    """Check that ``stage`` can run; stages 3–4 compute their selection here, once, before any fold."""
    if ctx.plan.stage(stage).selects_from:  # raises, naming the stages, if it is not in the plan
        select_for(ctx, arch, stage)  # fails early, with the reason, if earlier stages are missing


def close_stage(ctx: RunContext, arch: str, stage: int) -> None:
    """The per-clip scores and the folds' timings once a stage's folds are done; every rank waits until
    they are written. Only this one process writes run.json's timings (from the folds' done-markers),
    so folds that finish together in threads, ranks or Ray tasks never overwrite each other's."""
    if is_global_zero():
        write_clip_table(ctx.run.scores(arch), noisy_scores(ctx, arch))
        markers = {
            f"{arch}/stage{stage}/fold{f}": ctx.run.fold_done(arch, stage, f)
            for f in range(ctx.cfg.train.folds)
        }
        ctx.run.update_info(timings={k: float(p.read_text()) for k, p in markers.items() if p.is_file()})
    barrier()


def run_stage(ctx: RunContext, arch: str, stage: int, folds: Sequence[int] | None = None) -> None:
    """Every (or the chosen) fold of one stage, in this process; then the stage's per-clip scores."""
    run_batch(InProcessExecutor(), ctx, [(arch, stage)], folds)


@dataclass(frozen=True)
class FoldJob:
    """One fold model to train: what :func:`run_fold` takes besides the run context."""

    arch: str
    stage: int
    fold: int


class FoldExecutor(Protocol):
    """Runs the independent folds handed to it; the pipeline waits for all of them before going on.

    ``stage_at_once``: True — each stage's folds of every architecture are one batch (they may run at
    once, as Ray tasks); False — one (architecture, stage) after another, architectures outermost.
    The caller enters it (``with``) around the run; the registry of executors is
    :data:`noisytag.runs.executors.EXECUTORS`.
    """

    stage_at_once: bool

    def __enter__(self) -> FoldExecutor: ...

    def __exit__(self, *exc: object) -> None: ...

    def run_folds(self, ctx: RunContext, jobs: Sequence[FoldJob]) -> None:
        """Train every job (writing exactly what ``run_fold`` writes); return once all are done."""


class InProcessExecutor:
    """The default executor: each fold after the other in this process (under DDP every rank runs the
    same loop, and :func:`run_fold` waits for rank zero after each fold)."""

    stage_at_once = False

    def __enter__(self) -> InProcessExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run_folds(self, ctx: RunContext, jobs: Sequence[FoldJob]) -> None:
        for job in jobs:
            run_fold(ctx, job.arch, job.stage, job.fold)


def batches(plan: RunPlan, stage_at_once: bool) -> list[list[tuple[str, int]]]:
    """The (architecture, stage) pairs whose folds go to the executor together, in running order."""
    if stage_at_once:
        return [[(arch, stage) for arch in plan.architectures] for stage in plan.stage_numbers]
    return [[(arch, stage)] for arch in plan.architectures for stage in plan.stage_numbers]


def run_batch(
    executor: FoldExecutor,
    ctx: RunContext,
    pairs: Sequence[tuple[str, int]],
    folds: Sequence[int] | None = None,
) -> None:
    """Every (or the chosen) fold of the (architecture, stage) pairs through ``executor``: each stage
    prepared first (stages 3–4 compute their selection once, on the driver), then all the folds as one
    batch of independent jobs, then each stage closed."""
    for arch, stage in pairs:
        prepare_stage(ctx, arch, stage)
    folds = range(ctx.cfg.train.folds) if folds is None else folds
    executor.run_folds(ctx, [FoldJob(arch, stage, fold) for arch, stage in pairs for fold in folds])
    for arch, stage in pairs:
        close_stage(ctx, arch, stage)


def selection_table(ctx: RunContext) -> pd.DataFrame:
    """Per (arch, stage) selection: size, precision of the kept labels vs base rate, detector audit."""
    rows = []
    base = float(correct_labels(ctx.noisy.labels, ctx.noisy.truth).mean()) if ctx.noisy.truth else np.nan
    selecting = [s.stage for s in ctx.plan.stages if s.selects_from]
    for arch in ctx.cfg.pipeline.architectures:
        for stage in selecting:
            path = ctx.run.audit(arch, stage)
            if path.is_file():
                audit = pd.read_csv(path)
                kept = audit[audit["selected"]]
                precision = float(kept["correct"].mean()) if "correct" in audit and len(kept) else np.nan
                found = detector_audit(audit)
                rows.append(
                    {"arch": arch, "stage": stage, "method": ctx.cfg.selection.method, "selected": len(kept)}
                    | {"precision": precision, "base_rate": base}
                    | {k: v for k, v in found.items() if k in AUDIT_COLUMNS}
                )
    return pd.DataFrame(rows)


def finish(ctx: RunContext) -> dict:
    """Stage table, test scores, selection audit, per-class scores, submission: written and returned."""
    run = ctx.run
    n_train = {  # counted once, when each fold model trained (its model.json)
        (arch, stage): sum(FoldRecord.read(d).n_train for d in dirs) // len(dirs)
        for arch in ctx.plan.architectures
        for stage in ctx.plan.stage_numbers
        if stage_oof(ctx, arch, stage, "curated") is not None
        and (dirs := [run.fold_dir(arch, stage, f) for f in range(ctx.plan.folds)])
    }
    table = stage_table(ctx, n_train, run.info().get("timings", {}))
    ensemble, members = ensemble_test(ctx)
    test_rows = pd.DataFrame()
    if ensemble is not None:
        sample = ctx.data_dir / SUBMISSION
        if is_global_zero():
            write_submission(
                run.submission, ctx.test.fnames, ensemble, ctx.classes, sample if sample.is_file() else None
            )
        if ctx.truth_test is not None:
            ens = {"model": "ensemble " + "+".join(members), "arch": "all"} | test_scores(ctx, ensemble)
            columns = ["model", "arch", *[c for c in table.columns if c.startswith("test_lwlrap")]]
            test_rows = pd.concat([table[columns], pd.DataFrame([ens])], ignore_index=True)
    selection = selection_table(ctx)
    if is_global_zero():
        write_csv(run.stage_table, table)
        write_csv(run.test_scores, test_rows)
        write_csv(run.selection_table, selection)
        write_csv(run.per_class, per_class_table(ctx, ensemble))
        run.update_info(finished=time.strftime("%Y-%m-%d %H:%M:%S"), ensemble_stages=list(ctx.plan.ensemble))
    return {"stage_table": table, "selection": selection, "test": test_rows}


def run_pipeline(
    data_dir: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    force: bool = False,
    progress: bool = True,
    executor: FoldExecutor | None = None,
    plan: RunPlan | None = None,
) -> dict:
    """Stages × folds × architectures; resumable; returns the tables of :func:`finish`.

    One loop: the (architecture, stage) batches of :func:`batches`, each through ``executor`` (default
    :class:`InProcessExecutor`: the folds one after another in this process or DDP job, architecture
    by architecture; Ray: each stage's folds of every architecture together). ``plan``: the validated
    plan of ``cfg`` when the command built it (once per command); default: built by :func:`open_run`.
    """
    ctx = open_run(data_dir, run_dir, cfg, force=force, progress=progress, plan=plan)
    executor = executor if executor is not None else InProcessExecutor()
    for pairs in batches(ctx.plan, executor.stage_at_once):
        run_batch(executor, ctx, pairs)
    return finish(ctx)
