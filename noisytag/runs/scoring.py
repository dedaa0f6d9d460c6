"""Stage-level results of a run: pure functions of its finished fold outputs.

Out-of-fold and test predictions per stage, the per-clip scores s_k of the noisy clips, the article's
stage table, the ensemble's test predictions and per-class lwlrap. The pipeline computes them and
writes them into the run directory; the report only reads those files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from noisytag.data.dataset import multi_hot
from noisytag.metrics import clip_lwlrap, lwlrap, per_class_lwlrap
from noisytag.runs.context import RunContext

TRUTH_FROM_GIVEN = "given labels"


def stage_oof(ctx: RunContext, arch: str, stage: int, split: str) -> np.ndarray | None:
    """(N_split, K) out-of-fold probabilities of a finished stage, rows in folds.csv order."""
    for fold in range(ctx.cfg.train.folds):
        if (
            not ctx.run.fold_done(arch, stage, fold).is_file()
            or not ctx.run.fold_oof(arch, stage, fold, split).is_file()
        ):
            return None
    return ctx.run.stage_oof(arch, stage, split, ctx.splits[split].fold, len(ctx.classes))


def stage_test(ctx: RunContext, arch: str, stage: int) -> np.ndarray | None:
    """(N_test, K) test probabilities of a finished stage: the mean over its fold models."""
    preds = []
    for fold in range(ctx.plan.folds):  # a student run: one model (fold 0)
        path = ctx.run.fold_test(arch, stage, fold)
        if not ctx.run.fold_done(arch, stage, fold).is_file() or not path.is_file():
            return None
        preds.append(np.load(path, allow_pickle=False))
    return np.mean(preds, axis=0)


def noisy_scores(ctx: RunContext, arch: str) -> pd.DataFrame:
    """Per noisy clip: fold, given labels and s_k = the clip's own lwlrap under stage k's OOF."""
    noisy = ctx.noisy
    table = pd.DataFrame({"fname": noisy.fnames, "fold": noisy.fold, "labels": noisy.labels})
    given = noisy.clips.targets > 0.5
    for stage in ctx.plan.stage_numbers:
        oof = stage_oof(ctx, arch, stage, "noisy")
        if oof is not None:
            table[f"s{stage}"] = clip_lwlrap(given, oof)
    if noisy.truth is not None:
        table["true_labels"] = noisy.truth
        table["correct"] = correct_labels(noisy.labels, noisy.truth)
    return table


def correct_labels(given: list[tuple], truth: list[tuple]) -> np.ndarray:
    """(N,) bool: the given label set equals the true one."""
    return np.array([set(a) == set(b) for a, b in zip(given, truth, strict=True)], dtype=bool)


def test_scores(ctx: RunContext, probs: np.ndarray | None) -> dict[str, float]:
    """Test lwlrap against the data set's truth (NaN without one); when the truth marks each clip's
    leaderboard part (``usage``: Public / Private), also ``test_lwlrap_public`` / ``_private``, scored
    on those clips alone as the competition's two leaderboards were."""
    truth = ctx.truth_test
    if truth is None or probs is None:
        return {"test_lwlrap": np.nan}
    scores = {"test_lwlrap": lwlrap(truth > 0.5, probs)}
    usage = np.array([str(u).strip().lower() for u in ctx.test.usage or []])
    for part in ("public", "private"):
        mask = usage == part
        if mask.any() and truth[mask].any():
            scores[f"test_lwlrap_{part}"] = lwlrap(truth[mask] > 0.5, probs[mask])
    return scores


def stage_table(
    ctx: RunContext, n_train: dict[tuple[str, int], int], seconds: dict[str, float]
) -> pd.DataFrame:
    """The article's table for this run: CV lwlrap on noisy and curated (and test) per stage.

    ``n_train``: (arch, stage) → training clips per fold; ``seconds``: run.json's fold timings.
    """
    rows = []
    for arch in ctx.cfg.pipeline.architectures:
        for stage in ctx.plan.stage_numbers:
            oof = {s: stage_oof(ctx, arch, stage, s) for s in ("noisy", "curated")}
            if oof["curated"] is None:
                continue
            test = stage_test(ctx, arch, stage)
            noisy_truth = ctx.noisy.truth
            rows.append(
                {
                    "model": f"stage {stage}",
                    "arch": arch,
                    "stage": stage,
                    "lwlrap_noisy": lwlrap(ctx.noisy.clips.targets > 0.5, oof["noisy"]),
                    "lwlrap_curated": lwlrap(ctx.curated.clips.targets > 0.5, oof["curated"]),
                    # with the data set's truth: the noisy score against the clips' true labels
                    "lwlrap_noisy_truth": (
                        lwlrap(multi_hot(noisy_truth, ctx.classes) > 0.5, oof["noisy"])
                        if noisy_truth is not None
                        else np.nan
                    ),
                    **test_scores(ctx, test),
                    "n_train": n_train.get((arch, stage), 0),
                    "seconds": round(
                        sum(v for k, v in seconds.items() if k.startswith(f"{arch}/stage{stage}/")), 1
                    ),
                }
            )
    return pd.DataFrame(rows)


def ensemble_test(ctx: RunContext) -> tuple[np.ndarray | None, list[str]]:
    """Mean test probabilities over the ensemble's stages × folds × architectures (SPEC §7)."""
    preds, members = [], []
    for arch in ctx.cfg.pipeline.architectures:
        for stage in ctx.plan.ensemble:
            test = stage_test(ctx, arch, stage)
            if test is not None:
                preds.append(test)
                members.append(f"{arch}/stage{stage}")
    return (np.mean(preds, axis=0) if preds else None), members


def ensemble_oof(ctx: RunContext, split: str) -> np.ndarray | None:
    """Out-of-fold ensemble of a labelled split (same stages and architectures as the test ensemble)."""
    preds = [
        oof
        for arch in ctx.cfg.pipeline.architectures
        for stage in ctx.plan.ensemble
        if (oof := stage_oof(ctx, arch, stage, split)) is not None
    ]
    return np.mean(preds, axis=0) if preds else None


def per_class_table(ctx: RunContext, ensemble: np.ndarray | None) -> pd.DataFrame:
    """Per-class lwlrap of the final ensemble: on the test truth when known, else the curated OOF."""
    truth, probs, source = ctx.truth_test, ensemble, "test set (final ensemble vs test truth)"
    if truth is None or probs is None:
        truth, probs = ctx.curated.clips.targets, ensemble_oof(ctx, "curated")
        source = "curated out-of-fold ensemble"
    if probs is None:
        return pd.DataFrame(columns=["label", "lwlrap", "weight", "source"])
    scores, weights = per_class_lwlrap(truth > 0.5, probs)
    return pd.DataFrame({"label": ctx.classes, "lwlrap": scores, "weight": weights, "source": source})
