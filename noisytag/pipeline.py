"""The four-stage warm-up pipeline (SPEC §6): stages × folds × architectures, resumable.

Each fold model is finished when its ``done`` marker exists (written after weights and out-of-fold
predictions), so a re-run skips it; a fold that was interrupted resumes from its last epoch checkpoint.
Stage-level outputs (scores, selections, the stage table) are pure functions of the fold outputs and are
recomputed on every run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.config import RunConfig
from noisytag.context import Context, atomic_csv, atomic_npy, prepare, write_run_info
from noisytag.data import format_labels, multi_hot
from noisytag.loader import ClipSet

log = logging.getLogger(__name__)

# ----------------------------------------------------------------------------------------------
# one fold


def stage_epochs_lr(cfg: RunConfig, stage: int) -> tuple[int, float]:
    p = cfg.pipeline
    epochs = p.stage_epochs[stage - 1] if len(p.stage_epochs) >= stage else cfg.train.epochs
    lr = p.stage_lr[stage - 1] if len(p.stage_lr) >= stage else cfg.train.lr
    return int(epochs), float(lr)


def _subset(clips: ClipSet, mask: np.ndarray) -> ClipSet:
    return ClipSet(clips.split[mask], clips.position[mask], clips.targets[mask])


def training_clips(ctx: Context, arch: str, stage: int, fold: int) -> ClipSet:
    """The training set of (stage, fold) per SPEC §6."""
    curated, noisy = ctx.clips["curated"], ctx.clips["noisy"]
    if stage == 1:
        return _subset(noisy, ctx.fold_of["noisy"] != fold)
    own = _subset(curated, ctx.fold_of["curated"] != fold)
    if stage == 2:
        return own
    selected = selection_for(ctx, arch, stage)
    chosen = set(selected.loc[selected["fold"] != fold, "fname"])
    mask = np.array([f in chosen for f in ctx.fnames["noisy"]], dtype=bool)
    return ClipSet.concat([own, _subset(noisy, mask)])


def run_fold(ctx: Context, arch: str, stage: int, fold: int) -> None:
    """Train (or resume) one fold model and write its weights, OOF and test predictions, done-marker."""
    import torch

    from noisytag.infer import predict_cache
    from noisytag.train import fit_fold
    from noisytag.weights import load_model, save_model

    run, cfg = ctx.run, ctx.cfg
    if run.fold_done(arch, stage, fold).is_file():
        return
    fold_dir = run.fold_dir(arch, stage, fold)
    init_state = None
    if stage > 1 and (stage - 1) in cfg.pipeline.stages:
        previous, _ = load_model(run.fold_dir(arch, stage - 1, fold))
        init_state = previous.state_dict()
    epochs, lr = stage_epochs_lr(cfg, stage)
    val = _subset(ctx.clips["curated"], ctx.fold_of["curated"] == fold)
    train = training_clips(ctx, arch, stage, fold)
    log.info("%s stage %d fold %d: %d training clips, %d epochs", arch, stage, fold, len(train), epochs)
    started = time.perf_counter()
    module = fit_fold(
        cfg,
        arch=arch,
        n_classes=len(ctx.classes),
        caches=ctx.caches,
        train=train,
        val=val,
        fold_dir=fold_dir,
        epochs=epochs,
        lr=lr,
        seed=cfg.train.seed + 1000 * stage + fold,
        init_state=init_state,
        progress=ctx.progress,
    )
    if not ctx.is_zero:
        return
    model = module.model.cpu().eval()
    with torch.no_grad():
        for split in ("curated", "noisy"):
            rows = ctx.fold_of[split] == fold
            probs = predict_cache(
                [model],
                ctx.caches[split],
                ctx.clips[split].position[rows],
                cfg.infer,
                normalize=cfg.data.normalize,
            )
            atomic_npy(run.fold_oof(arch, stage, fold, split), probs.astype(np.float32))
        test = predict_cache(
            [model], ctx.caches["test"], ctx.clips["test"].position, cfg.infer, normalize=cfg.data.normalize
        )
        atomic_npy(fold_dir / "test.npy", test.astype(np.float32))
    meta = {
        "arch": arch,
        "stage": stage,
        "fold": fold,
        "classes": ctx.classes,
        "frontend": cfg.to_dict()["frontend"],
        "normalize": cfg.data.normalize,
        "config_hash": cfg.hash(),
    }
    save_model(fold_dir, model, meta)
    seconds = round(time.perf_counter() - started, 2)
    write_run_info(ctx, {"timings": {f"{arch}/stage{stage}/fold{fold}": seconds}})
    run.fold_checkpoint(arch, stage, fold).unlink(missing_ok=True)
    run.fold_done(arch, stage, fold).write_text(f"{seconds}\n")


# ----------------------------------------------------------------------------------------------
# stage-level results (pure functions of the fold outputs)


def stage_oof(ctx: Context, arch: str, stage: int, split: str) -> np.ndarray | None:
    """(N_split, K) out-of-fold probabilities of a finished stage, rows in folds.csv order."""
    fold_of = ctx.fold_of[split]
    out = np.full((len(fold_of), len(ctx.classes)), np.nan, dtype=np.float32)
    for fold in range(ctx.cfg.train.folds):
        path = ctx.run.fold_oof(arch, stage, fold, split)
        if not ctx.run.fold_done(arch, stage, fold).is_file() or not path.is_file():
            return None
        out[fold_of == fold] = np.load(path, allow_pickle=False)
    return out


def stage_test(ctx: Context, arch: str, stage: int) -> np.ndarray | None:
    """(N_test, K) test probabilities of a finished stage: the mean over its fold models."""
    preds = []
    for fold in range(ctx.cfg.train.folds):
        path = ctx.run.fold_dir(arch, stage, fold) / "test.npy"
        if not ctx.run.fold_done(arch, stage, fold).is_file() or not path.is_file():
            return None
        preds.append(np.load(path, allow_pickle=False))
    return np.mean(preds, axis=0)


def noisy_scores(ctx: Context, arch: str) -> pd.DataFrame:
    """Per noisy clip: fold, given labels and s_k = the clip's own lwlrap under stage k's OOF."""
    from noisytag.metrics import clip_lwlrap

    table = pd.DataFrame(
        {"fname": ctx.fnames["noisy"], "fold": ctx.fold_of["noisy"], "labels": ctx.labels["noisy"]}
    )
    truth = ctx.clips["noisy"].targets > 0.5
    for stage in (1, 2, 3, 4):
        oof = stage_oof(ctx, arch, stage, "noisy")
        if oof is not None:
            table[f"s{stage}"] = clip_lwlrap(truth, oof)
    if ctx.truth_noisy is not None:
        table["true_labels"] = ctx.truth_noisy
        table["correct"] = [set(a) == set(b) for a, b in zip(table["labels"], ctx.truth_noisy, strict=True)]
    return table


def selection_for(ctx: Context, arch: str, stage: int) -> pd.DataFrame:
    """The noisy clips selected for stage 3 (from s1, s2) or stage 4 (from s3).

    Computed once per (arch, stage) and run, and saved: the scores it reads come from finished stages,
    so every fold of the stage (and the stage table) sees the same list.
    """
    if (arch, stage) in ctx.selections:
        return ctx.selections[(arch, stage)]
    from noisytag.selection import stage3_selection, stage4_selection

    table = noisy_scores(ctx, arch)
    need = ("s1", "s2") if stage == 3 else ("s3",)
    missing = [c for c in need if c not in table]
    if missing:
        raise RuntimeError(f"stage {stage} of {arch} needs the finished stages {', '.join(missing)}")
    sel = ctx.cfg.selection
    if stage == 3:
        selected = stage3_selection(table, threshold=sel.stage3_threshold, cap=sel.stage3_cap)
    else:
        selected = stage4_selection(table, threshold=sel.stage4_threshold)
    if "correct" in table:
        selected = selected.merge(table[["fname", "correct"]], on="fname", how="left")
    if ctx.is_zero:
        out = selected.copy()
        out["labels"] = out["labels"].map(format_labels)
        atomic_csv(ctx.run.selection(arch, stage), out)
    ctx.selections[(arch, stage)] = selected
    return selected


def write_scores(ctx: Context, arch: str) -> pd.DataFrame:
    table = noisy_scores(ctx, arch)
    out = table.copy()
    out["labels"] = out["labels"].map(format_labels)
    if "true_labels" in out:
        out["true_labels"] = out["true_labels"].map(format_labels)
    atomic_csv(ctx.run.scores(arch), out)
    return table


# ----------------------------------------------------------------------------------------------
# stages, table, ensemble


def run_stage(ctx: Context, arch: str, stage: int, folds: Sequence[int] | None = None) -> None:
    """Every (or the chosen) fold of one stage; then the stage's derived outputs."""
    if stage in (3, 4):
        selection_for(ctx, arch, stage)  # fails early, with the reason, if earlier stages are missing
    for fold in folds if folds is not None else range(ctx.cfg.train.folds):
        run_fold(ctx, arch, stage, fold)
    if ctx.is_zero:
        write_scores(ctx, arch)


def stage_table(ctx: Context) -> pd.DataFrame:
    """The article's table for this run: CV lwlrap on noisy and curated (and test) per stage."""
    from noisytag.metrics import lwlrap

    timings = (
        json.loads(ctx.run.run_info.read_text()).get("timings", {}) if ctx.run.run_info.is_file() else {}
    )
    rows = []
    for arch in ctx.cfg.pipeline.architectures:
        for stage in ctx.cfg.pipeline.stages:
            oof = {s: stage_oof(ctx, arch, stage, s) for s in ("noisy", "curated")}
            if oof["curated"] is None:
                continue
            test = stage_test(ctx, arch, stage)
            n_train = sum(len(training_clips(ctx, arch, stage, f)) for f in range(ctx.cfg.train.folds))
            rows.append(
                {
                    "arch": arch,
                    "stage": stage,
                    "lwlrap_noisy": lwlrap(ctx.clips["noisy"].targets > 0.5, oof["noisy"]),
                    "lwlrap_curated": lwlrap(ctx.clips["curated"].targets > 0.5, oof["curated"]),
                    # with the data set's truth: the noisy score against the clips' true labels
                    "lwlrap_noisy_truth": (
                        lwlrap(multi_hot(ctx.truth_noisy, ctx.classes) > 0.5, oof["noisy"])
                        if ctx.truth_noisy is not None
                        else np.nan
                    ),
                    "test_lwlrap": (
                        lwlrap(ctx.truth_test > 0.5, test)
                        if ctx.truth_test is not None and test is not None
                        else np.nan
                    ),
                    "n_train": n_train // ctx.cfg.train.folds,
                    "seconds": round(
                        sum(v for k, v in timings.items() if k.startswith(f"{arch}/stage{stage}/")), 1
                    ),
                }
            )
    return pd.DataFrame(rows)


def ensemble_test(ctx: Context) -> tuple[np.ndarray | None, list[str]]:
    """Mean test probabilities over the ensemble's stages × folds × architectures (SPEC §7)."""
    preds, members = [], []
    for arch in ctx.cfg.pipeline.architectures:
        for stage in ctx.cfg.infer.stages:
            test = stage_test(ctx, arch, stage)
            if test is not None:
                preds.append(test)
                members.append(f"{arch}/stage{stage}")
    return (np.mean(preds, axis=0) if preds else None), members


def selection_precision(ctx: Context) -> pd.DataFrame:
    """Share of selected noisy clips whose given labels are right, vs the noisy set's base rate."""
    if ctx.truth_noisy is None:
        return pd.DataFrame()
    base = float(
        np.mean([set(a) == set(b) for a, b in zip(ctx.labels["noisy"], ctx.truth_noisy, strict=True)])
    )
    rows = []
    for arch in ctx.cfg.pipeline.architectures:
        for stage in (3, 4):
            path = ctx.run.selection(arch, stage)
            if path.is_file():
                sel = pd.read_csv(path)
                precision = float(sel["correct"].mean()) if len(sel) else np.nan
                rows.append(
                    {
                        "arch": arch,
                        "stage": stage,
                        "selected": len(sel),
                        "precision": precision,
                        "base_rate": base,
                    }
                )
    return pd.DataFrame(rows)


def finish(ctx: Context) -> dict:
    """Stage table, selection precision, test scores, submission: written and returned."""
    from noisytag.metrics import lwlrap

    table = stage_table(ctx)
    atomic_csv(ctx.run.stage_table, table)
    precision = selection_precision(ctx)
    ensemble, members = ensemble_test(ctx)
    test_rows = []
    if ensemble is not None:
        from noisytag.infer import write_submission

        sample = ctx.data_dir / "sample_submission.csv"
        write_submission(
            ctx.run.submission,
            ctx.fnames["test"],
            ensemble,
            ctx.classes,
            sample_submission=sample if sample.is_file() else None,
        )
        if ctx.truth_test is not None:
            for _, row in table.iterrows():
                test_rows.append(
                    {
                        "model": f"stage {int(row['stage'])}",
                        "arch": row["arch"],
                        "test_lwlrap": row["test_lwlrap"],
                    }
                )
            test_rows.append(
                {
                    "model": "ensemble " + "+".join(members),
                    "arch": "all",
                    "test_lwlrap": lwlrap(ctx.truth_test > 0.5, ensemble),
                }
            )
            atomic_csv(ctx.run.test_scores, pd.DataFrame(test_rows))
    write_run_info(ctx, {"finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    return {"stage_table": table, "selection": precision, "test": pd.DataFrame(test_rows)}


def run_pipeline(
    data_dir: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    force: bool = False,
    progress: bool = True,
    report: bool = True,
) -> dict:
    """Stages 1–4 × folds × architectures; resumable; returns the tables of :func:`finish`."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    stages = tuple(cfg.pipeline.stages)
    for stage in stages:
        needs = {3: (1, 2), 4: (1, 2, 3)}.get(stage, ())
        if any(n not in stages for n in needs):
            raise ValueError(f"pipeline.stages: stage {stage} needs stages {needs} in the same run")
    ctx = prepare(data_dir, run_dir, cfg, force=force, progress=progress)
    for arch in cfg.pipeline.architectures:
        for stage in stages:
            run_stage(ctx, arch, stage)
    results = finish(ctx)
    if report and ctx.is_zero:
        from noisytag.report import write_report

        results["report"] = write_report(ctx.run.root, data_dir=ctx.data_dir)
    return results
