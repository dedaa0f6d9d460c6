"""Tables read from a run directory (layout in :mod:`noisytag.rundir`), for the report and for users.

Pure readers of the files the pipeline wrote: nothing is computed from predictions and nothing is
written here. Functions raise :class:`Unavailable` with a one-line reason when an input is missing, so
the report can say "not available: reason" and carry on with the other sections.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from noisytag.config import RunConfig
from noisytag.data.dataset import parse_labels
from noisytag.plan import SELECTS_FROM, STAGES
from noisytag.rundir import RunDir

STAGE_COLUMNS = ["arch", "model", "lwlrap_noisy", "lwlrap_curated", "lwlrap_noisy_truth", "test_lwlrap",
                 "test_lwlrap_public", "test_lwlrap_private", "n_train", "seconds"]  # fmt: skip
DETECTOR_COLUMNS = ["agreement", "lwlrap_precision", "lwlrap_recall", "cleanlab_precision", "cleanlab_recall"]


class Unavailable(Exception):
    """An input of a table or report section is missing; the message says which and why."""


def labels_of(value) -> tuple[str, ...]:
    """A CSV labels cell ``"a,b"`` → ``("a", "b")``; an empty cell (NaN) → ``()``."""
    return parse_labels(value) if isinstance(value, str) else ()


def read_csv(path: Path, what: str = "") -> pd.DataFrame:
    """``pd.read_csv`` that raises :class:`Unavailable` naming the file (and what it holds) instead of crashing."""
    if not Path(path).is_file():
        raise Unavailable(f"{Path(path).name} not found" + (f" ({what})" if what else ""))
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise Unavailable(f"{path}: unreadable CSV ({err})") from None


def find_classes(run: RunDir) -> list[str]:
    """Class order: the submission header, else the labels of per_class.csv; [] when neither is readable."""
    try:
        return list(pd.read_csv(run.submission, nrows=0).columns[1:])
    except (OSError, ValueError, UnicodeDecodeError):
        pass
    try:
        return list(read_csv(run.per_class)["label"].astype(str))
    except (Unavailable, KeyError):
        return []


def stage_rows(run: RunDir) -> pd.DataFrame:
    """stage_table.csv (one row per arch and stage, columns :data:`STAGE_COLUMNS`) followed by the
    ensemble rows of test_scores.csv (model "ensemble ..."); columns without any value are left out."""
    table = read_csv(run.stage_table).sort_values(["arch", "stage"], kind="stable")
    try:
        test = read_csv(run.test_scores)
        table = pd.concat(
            [table, test[test["model"].astype(str).str.startswith("ensemble")]], ignore_index=True
        )
    except (Unavailable, KeyError):
        pass  # no test truth: the pipeline wrote no test scores
    table = table.reindex(columns=STAGE_COLUMNS)
    return table.dropna(axis=1, how="all").reset_index(drop=True)


def metrics_paths(run: RunDir, cfg: RunConfig | None) -> dict[tuple[str, int], dict[int, Path]]:
    """metrics.csv of every fold that has one (finished or still training), by (arch, stage) → fold.

    Architectures and folds come from the run's config (defaults without one) and its finished folds.
    """
    cfg = cfg or RunConfig()
    out: dict[tuple[str, int], dict[int, Path]] = {}
    for arch in sorted(set(cfg.pipeline.architectures) | set(run.architectures())):
        for stage in STAGES:
            for fold in range(cfg.train.folds):
                if (path := run.fold_metrics(arch, stage, fold)).is_file():
                    out.setdefault((arch, stage), {})[fold] = path
    return out


def per_class(run: RunDir) -> pd.DataFrame:
    """per_class.csv: label, lwlrap, weight (share of true labels), source (which predictions vs which truth)."""
    table = read_csv(run.per_class)
    if not {"label", "lwlrap", "weight", "source"} <= set(table.columns):
        raise Unavailable("per_class.csv lacks the columns label, lwlrap, weight, source")
    if table.empty:
        raise Unavailable("per_class.csv is empty (no ensemble predictions yet)")
    return table


def selection_summary(run: RunDir) -> pd.DataFrame:
    """selection.csv: arch, stage, selected, precision, base_rate and the detector audit columns."""
    table = read_csv(run.selection_table)
    if not {"arch", "stage", "selected"} <= set(table.columns):
        raise Unavailable("selection.csv lacks the columns arch, stage, selected")
    return table


def selection_counts(run: RunDir, arch: str, classes: list[str]) -> dict:
    """Stage 3 and 4 selections of one architecture, per label.

    Returns ``paths`` (stage → selections CSV), ``kept`` (stage → clips), ``counts`` (labels × "stage k" kept clips; a two-label
    clip counts for both labels), ``covered`` (stage → labels with a kept clip) and ``precision``
    (labels × "stage k" share of kept clips whose labels are right; None without ground truth).
    """
    selecting = sorted(SELECTS_FROM)  # the stages that select noisy clips (the run plan's meaning)
    paths = {k: run.selection(arch, k) for k in selecting if run.selection(arch, k).is_file()}
    if not paths:
        raise Unavailable(f"{arch}: no selections/stage3.csv or stage4.csv yet")
    counts, prec, covered, kept = {}, {}, {}, {}
    for k, path in paths.items():
        sel = read_csv(path)
        per_label = sel.assign(label=sel["labels"].map(labels_of)).explode("label").dropna(subset=["label"])
        counts[f"stage {k}"] = per_label.groupby("label").size()
        covered[k], kept[k] = int(per_label["label"].nunique()), len(sel)
        if "correct" in sel and len(sel):
            prec[f"stage {k}"] = per_label.groupby("label")["correct"].mean()
    order = list(classes) or sorted(set().union(*(set(c.index) for c in counts.values())))
    return {
        "paths": paths,
        "kept": kept,
        "counts": pd.DataFrame(counts).reindex(order).fillna(0).astype(int),
        "covered": covered,
        "precision": pd.DataFrame(prec).reindex(order) if prec else None,
    }


def least_trusted(run: RunDir) -> pd.DataFrame:
    """Noisy clips by ascending trust, least trusted first.

    Score = mean of the clip's per-stage scores s1..s4 of {arch}/scores.csv (clip lwlrap of its
    out-of-fold predictions, SPEC §6), averaged over architectures. Returns fname, fold, labels, score,
    s1..s4 and, when scores.csv has them (data sets with truth), true_labels and correct.
    """
    frames = [read_csv(run.scores(a)) for a in run.architectures() if run.scores(a).is_file()]
    if not frames:
        raise Unavailable("no {arch}/scores.csv yet (written after stage 1)")
    scores = pd.concat(frames, ignore_index=True)
    s_cols = sorted((c for c in scores.columns if re.fullmatch(r"s\d+", c)), key=lambda c: int(c[1:]))
    if not s_cols or not {"fname", "fold", "labels"} <= set(scores.columns):
        raise Unavailable("scores.csv lacks the columns fname, fold, labels, s1..s4")
    extra = [c for c in ("true_labels", "correct") if c in scores]
    agg = {c: "first" for c in ("fold", "labels", *extra)} | {c: "mean" for c in s_cols}
    table = scores.groupby("fname", sort=False).agg(agg).reset_index()
    table["score"] = table[s_cols].mean(axis=1, skipna=True)
    table = (
        table.dropna(subset=["score"]).sort_values(["score", "fname"], kind="stable").reset_index(drop=True)
    )
    return table[["fname", "fold", "labels", "score", *s_cols, *extra]]


def flatten(obj, prefix: str = "") -> dict[str, object]:
    """Nested dicts → {"a.b.c": value}; long lists are summarised as "[n items]"."""
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for key, value in obj.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(obj, list) and len(obj) > 8:
        return {prefix: f"[{len(obj)} items]"}
    return {prefix: obj}


def fold_timings(info: dict) -> pd.DataFrame:
    """run.json ``timings`` {"arch/stageK/foldF": seconds} → seconds, index (arch, stage), one column per
    fold; empty when nothing is recorded."""
    recs = []
    timings = info.get("timings") if isinstance(info.get("timings"), dict) else {}
    for key, seconds in timings.items():
        m = re.fullmatch(r"(.+)/stage(\d+)/fold(\d+)", str(key))
        if m and isinstance(seconds, int | float):
            recs.append((m.group(1), int(m.group(2)), int(m.group(3)), float(seconds)))
    if not recs:
        return pd.DataFrame()
    frame = pd.DataFrame(recs, columns=["arch", "stage", "fold", "seconds"])
    return frame.pivot_table(index=["arch", "stage"], columns="fold", values="seconds", aggfunc="sum")
