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
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import pandas as pd
import torch

from noisytag.config import RunConfig
from noisytag.data.dataset import format_labels
from noisytag.fileio import write_csv, write_npy, write_text
from noisytag.infer.members import as_members
from noisytag.infer.predict import predict_cache
from noisytag.infer.submission import write_submission
from noisytag.learn.loader import ClipSet
from noisytag.learn.selection import detector_audit, select_noisy
from noisytag.learn.train import fit_fold, inference_device
from noisytag.learn.treatments import treatment
from noisytag.models.weights import load_model, read_meta, save_model
from noisytag.plan import build_plan, joint_epochs
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


def training_clips(ctx: RunContext, arch: str, stage: int, fold: int) -> ClipSet:
    """The training set of (stage, fold): the parts the run plan names for the stage (SPEC §6, §6b)."""
    plan = ctx.plan.stage(stage)
    other_folds = ctx.noisy.fold != fold
    trusted = np.zeros(len(ctx.noisy.fnames), dtype=bool)
    if "selected" in plan.trains_on:
        chosen = set(select_for(ctx, arch, stage).query("fold != @fold")["fname"])
        trusted = np.array([f in chosen for f in ctx.noisy.fnames], dtype=bool)
    parts = []
    for part in plan.trains_on:
        if part == "curated":
            parts.append(ctx.curated.rows(ctx.curated.fold != fold))
        elif part == "noisy":
            parts.append(ctx.noisy.rows(other_folds).with_labels(untrusted=0.0))
        elif part == "selected" and trusted.any():
            parts.append(ctx.noisy.rows(other_folds & trusted))
        elif part == "untrusted":
            parts.append(untrusted_clips(ctx, arch, stage, plan.treatment).subset(other_folds & ~trusted))
    return ClipSet.concat(parts)


def untrusted_clips(ctx: RunContext, arch: str, stage: int, name: str) -> ClipSet:
    """Every noisy clip as the treatment trains the ones the selection does not trust."""
    entry = treatment(name)
    if entry.relabel:
        return _relabelled(ctx, arch, stage)
    return ctx.noisy.clips.with_labels(untrusted=entry.untrusted)


def fold_seed(cfg: RunConfig, stage: int, fold: int) -> int:
    return cfg.train.seed + 1000 * stage + fold


# ----------------------------------------------------------------------------------------------
# one fold


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
        seed=fold_seed(cfg, stage, fold),
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
        meta = {
            "arch": arch,
            "stage": stage,
            "fold": fold,
            "classes": ctx.classes,
            "frontend": cfg.to_dict()["frontend"],
            "normalize": cfg.data.normalize,
            "config_hash": cfg.hash(),
            "n_train": len(train),
        }
        save_model(run.fold_dir(arch, stage, fold), model, meta)
        seconds = round(time.perf_counter() - started, 2)  # run.json gets it from here at close_stage
        run.fold_checkpoint(arch, stage, fold).unlink(missing_ok=True)
        write_text(run.fold_done(arch, stage, fold), f"{seconds}\n")
    barrier()  # other ranks go on only once rank zero has written the fold's outputs


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
    sources = ctx.plan.stage(stage).selects_from
    oofs = [stage_oof(ctx, arch, s, "noisy") for s in sources]
    if any(o is None for o in oofs):
        raise RuntimeError(
            f"stage {stage} of {arch} needs the finished stages {', '.join(map(str, sources))}"
        )
    table = noisy_scores(ctx, arch)
    audit = select_noisy(table, ctx.noisy.clips.targets, np.mean(oofs, axis=0), stage, ctx.cfg.selection)
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
    """Every (or the chosen) fold of one stage; then the stage's per-clip scores."""
    prepare_stage(ctx, arch, stage)
    for fold in folds if folds is not None else range(ctx.cfg.train.folds):
        run_fold(ctx, arch, stage, fold)
    close_stage(ctx, arch, stage)


@dataclass(frozen=True)
class FoldJob:
    """One fold model to train: what :func:`run_fold` takes besides the run context."""

    arch: str
    stage: int
    fold: int


class FoldExecutor(Protocol):
    """Runs the independent folds of one stage; the pipeline waits for all of them before the next."""

    def run_folds(self, ctx: RunContext, jobs: Sequence[FoldJob]) -> None:
        """Train every job (writing exactly what ``run_fold`` writes); return once all are done."""


def run_stage_with(executor: FoldExecutor, ctx: RunContext, stage: int) -> None:
    """Every (architecture, fold) of one stage through ``executor``, as one batch of independent jobs."""
    archs = ctx.cfg.pipeline.architectures
    for arch in archs:
        prepare_stage(ctx, arch, stage)
    executor.run_folds(
        ctx, [FoldJob(arch, stage, fold) for arch in archs for fold in range(ctx.cfg.train.folds)]
    )
    for arch in archs:
        close_stage(ctx, arch, stage)


def selection_table(ctx: RunContext) -> pd.DataFrame:
    """Per (arch, stage) selection: size, precision of the kept labels vs base rate, detector audit."""
    rows = []
    base = float(correct_labels(ctx.noisy.labels, ctx.noisy.truth).mean()) if ctx.noisy.truth else np.nan
    for arch in ctx.cfg.pipeline.architectures:
        for stage in (3, 4):
            path = ctx.run.audit(arch, stage)
            if stage in ctx.plan.stage_numbers and path.is_file():
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
        (arch, stage): sum(read_meta(d)["n_train"] for d in dirs) // len(dirs)
        for arch in ctx.plan.architectures
        for stage in ctx.plan.stage_numbers
        if stage_oof(ctx, arch, stage, "curated") is not None
        and (dirs := [run.fold_dir(arch, stage, f) for f in range(ctx.plan.folds)])
    }
    table = stage_table(ctx, n_train, run.info().get("timings", {}))
    ensemble, members = ensemble_test(ctx)
    test_rows = pd.DataFrame()
    if ensemble is not None:
        sample = ctx.data_dir / "sample_submission.csv"
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
) -> dict:
    """Stages × folds × architectures; resumable; returns the tables of :func:`finish`.

    Without ``executor`` the folds train one after another in this process (or in this DDP job);
    with one, each stage's folds of every architecture go to it together.
    """
    ctx = open_run(data_dir, run_dir, cfg, force=force, progress=progress)
    if executor is None:
        for arch in ctx.plan.architectures:
            for stage in ctx.plan.stage_numbers:
                run_stage(ctx, arch, stage)
    else:
        for stage in ctx.plan.stage_numbers:
            run_stage_with(executor, ctx, stage)
    return finish(ctx)
