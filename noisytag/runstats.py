"""Tables computed from a run directory (layout in :mod:`noisytag.rundir`), for the report and for users.

Pure readers: nothing is written here. Functions raise :class:`Unavailable` with a one-line reason when an
input is missing, so the report can say "not available: reason" and carry on with the other sections.
Ground truth (synthetic data sets) comes from ``data_dir/truth/{test,noisy}.csv`` when present.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.rundir import RunDir

logger = logging.getLogger(__name__)

VERSION_PACKAGES = ("noisytag", "torch", "lightning", "torchmetrics", "numpy", "pandas", "librosa",
                    "soundfile", "soxr", "onnxruntime", "matplotlib", "python")  # fmt: skip


class Unavailable(Exception):
    """An input of a table or report section is missing; the message says which and why."""


def split_labels(text) -> tuple[str, ...]:
    """``"a,b"`` → ``("a", "b")``; NaN or empty → ``()``."""
    if not isinstance(text, str) or not text.strip():
        return ()
    return tuple(s.strip() for s in text.split(",") if s.strip())


def read_csv(path: Path, what: str) -> pd.DataFrame:
    """``pd.read_csv`` that raises :class:`Unavailable` naming the file instead of crashing."""
    if not Path(path).is_file():
        raise Unavailable(f"{what} not found ({Path(path).name})")
    try:
        return pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise Unavailable(f"{path}: unreadable CSV ({err})") from None


def label_table(path: Path) -> dict[str, tuple[str, ...]]:
    """fname → labels of a competition-style CSV (``train_*.csv``, ``truth/*.csv``)."""
    df = read_csv(path, Path(path).name)
    if not {"fname", "labels"} <= set(df.columns):
        raise Unavailable(f"{path}: expected columns fname,labels")
    return dict(zip(df["fname"].astype(str), map(split_labels, df["labels"]), strict=True))


def truth(data_dir: Path | None, name: str) -> dict[str, tuple[str, ...]] | None:
    """True labels from ``data_dir/truth/{name}.csv`` (name: test | noisy), or None when not known."""
    if data_dir is None or not (Path(data_dir) / "truth" / f"{name}.csv").is_file():
        return None
    return label_table(Path(data_dir) / "truth" / f"{name}.csv")


def architectures(run: RunDir) -> list[str]:
    """Architectures with any output (not only finished folds: partial runs are reported too)."""
    root = run.root
    found = {p.parent.name for p in root.glob("*/stage*") if p.is_dir()}
    found |= {p.parent.name for p in root.glob("*/scores.csv")}
    found |= {p.parent.parent.name for p in root.glob("*/selections/stage*.csv")}
    return sorted(found)


def _numbered(directory: Path, prefix: str) -> list[int]:
    pattern = re.compile(rf"{prefix}(\d+)")
    return sorted(int(m.group(1)) for p in directory.glob(f"{prefix}*") if (m := pattern.fullmatch(p.name)))


def stages(run: RunDir, arch: str) -> list[int]:
    return _numbered(run.arch_dir(arch), "stage")


def folds(run: RunDir, arch: str, stage: int) -> list[int]:
    return _numbered(run.stage_dir(arch, stage), "fold")


def find_classes(run: RunDir, data_dir: Path | None = None) -> list[str]:
    """Class order: the submission header, else a fold model's model.json, else the data set."""
    if run.submission.is_file():
        return list(pd.read_csv(run.submission, nrows=0).columns[1:])
    for meta in sorted(run.root.glob("*/stage*/fold*/model.json")):
        try:
            classes = json.loads(meta.read_text()).get("classes")
        except (OSError, json.JSONDecodeError):
            continue
        if classes:
            return list(classes)
    if data_dir is not None and (Path(data_dir) / "sample_submission.csv").is_file():
        return list(pd.read_csv(Path(data_dir) / "sample_submission.csv", nrows=0).columns[1:])
    return []


def _as_bool(values: pd.Series) -> pd.Series:
    return values.astype(str).str.strip().str.lower().isin(["true", "1", "1.0", "yes"])


def with_correct(frame: pd.DataFrame, noisy_truth: dict | None) -> pd.DataFrame:
    """``frame`` (fname, labels, ...) with a boolean ``correct`` column — the clip's noisy labels equal its
    true labels — taken from the frame itself or, if absent, from ``noisy_truth``; unchanged if unknown."""
    if "correct" in frame.columns:
        return frame.assign(correct=_as_bool(frame["correct"]))
    if noisy_truth is None:
        return frame
    ok = [set(split_labels(lab)) == set(noisy_truth.get(str(f), ("?",)))
          for f, lab in zip(frame["fname"], frame["labels"], strict=True)]  # fmt: skip
    return frame.assign(correct=ok)


def selection_stats(run: RunDir, arch: str, classes: list[str], data_dir: Path | None = None) -> dict:
    """Stage 3 and 4 selections of one architecture.

    Returns a dict with ``summary`` (one row per selection stage: stage, path, kept, labels, precision,
    base_rate), ``counts`` (labels × "stage k" clip counts; a two-label clip counts for both labels) and
    ``precision`` (labels × "stage k" share of correct kept clips, or None without ground truth).
    """
    noisy_truth = truth(data_dir, "noisy")
    found = {k: run.selection(arch, k) for k in (3, 4) if run.selection(arch, k).is_file()}
    if not found:
        raise Unavailable(f"{arch}: no selections/stage3.csv or stage4.csv yet")
    base, n_noisy = None, None
    if run.scores(arch).is_file():
        scores = with_correct(read_csv(run.scores(arch), "scores.csv"), noisy_truth)
        n_noisy = len(scores)
        base = float(scores["correct"].mean()) if "correct" in scores and len(scores) else None
    summary, counts, prec = [], {}, {}
    for k, path in found.items():
        sel = with_correct(read_csv(path, path.name), noisy_truth)
        per_label = (
            sel.assign(label=sel["labels"].map(split_labels)).explode("label").dropna(subset=["label"])
        )
        counts[f"stage {k}"] = per_label.groupby("label").size()
        has = "correct" in sel and len(sel) > 0
        if has:
            prec[f"stage {k}"] = per_label.groupby("label")["correct"].mean()
        summary.append({"stage": k, "path": path, "kept": len(sel), "of": n_noisy,
                        "labels": int(per_label["label"].nunique()),
                        "precision": float(sel["correct"].mean()) if has else None, "base_rate": base})  # fmt: skip
    order = list(classes) or sorted(set().union(*(set(c.index) for c in counts.values())))
    count_frame = pd.DataFrame(counts).reindex(order).fillna(0).astype(int)
    prec_frame = pd.DataFrame(prec).reindex(order) if prec else None
    return {"summary": pd.DataFrame(summary), "counts": count_frame, "precision": prec_frame}


def least_trusted(run: RunDir, data_dir: Path | None = None) -> pd.DataFrame:
    """Noisy clips by ascending trust, least trusted first.

    Score = mean of the clip's available per-stage scores s1..s4 (clip lwlrap of its out-of-fold
    predictions, SPEC §6), averaged over architectures. Returns fname, fold, labels, score, s1..s4 and,
    when ground truth is known (scores.csv or data_dir/truth/noisy.csv), true_labels and correct.
    """
    frames = [pd.read_csv(run.scores(a)) for a in architectures(run) if run.scores(a).is_file()]
    if not frames:
        raise Unavailable("no {arch}/scores.csv yet (written after stage 1)")
    allf = pd.concat(frames, ignore_index=True)
    s_cols = sorted((c for c in allf.columns if re.fullmatch(r"s\d+", c)), key=lambda c: int(c[1:]))
    if not s_cols or not {"fname", "labels"} <= set(allf.columns):
        raise Unavailable("scores.csv lacks the columns fname, labels, s1..s4")
    keys = ["fname", "fold", "labels"] if "fold" in allf else ["fname", "labels"]
    table = allf.groupby(keys, sort=False, dropna=False)[s_cols].mean().reset_index()
    table["score"] = table[s_cols].mean(axis=1, skipna=True)
    noisy_truth = truth(data_dir, "noisy")
    if "true_labels" in allf:
        table["true_labels"] = table["fname"].map(
            allf.drop_duplicates("fname").set_index("fname")["true_labels"]
        )
    elif noisy_truth is not None:
        table["true_labels"] = [",".join(noisy_truth.get(str(f), ())) for f in table["fname"]]
    if "true_labels" in table:
        table["correct"] = [set(split_labels(a)) == set(split_labels(b))
                            for a, b in zip(table["labels"], table["true_labels"], strict=True)]  # fmt: skip
    table = (
        table.dropna(subset=["score"]).sort_values(["score", "fname"], kind="stable").reset_index(drop=True)
    )
    return table[[*keys, "score", *s_cols, *[c for c in ("true_labels", "correct") if c in table]]]


def oof_ensemble(run: RunDir, split: str, classes: list[str], stages_used=(2, 3, 4)):
    """Out-of-fold ensemble of one split: mean over the given stages and all architectures.

    Returns (fnames, scores (N, C)) for the clips of ``split`` (curated | noisy) that have at least one
    prediction; rows of ``oof_{split}.npy`` of fold f are the split's fold-f clips in folds.csv order.
    """
    table = read_csv(run.folds, "folds.csv")
    part = table[table["split"] == split]
    fold_of = part["fold"].to_numpy()
    total = np.zeros((len(part), len(classes)))
    count = np.zeros(len(part))
    for arch in architectures(run):
        for stage in stages_used:
            for fold in np.unique(fold_of):
                path = run.fold_oof(arch, stage, int(fold), split)
                if not path.is_file():
                    continue
                rows = np.flatnonzero(fold_of == fold)
                pred = np.load(path, allow_pickle=False)
                if pred.shape != (len(rows), len(classes)):
                    logger.warning(
                        "%s: shape %s, expected %s; skipped", path, pred.shape, (len(rows), len(classes))
                    )
                    continue
                total[rows] += pred
                count[rows] += 1
    keep = count > 0
    if not keep.any():
        raise Unavailable(f"no {split} out-of-fold predictions of stages {', '.join(map(str, stages_used))}")
    return list(part["fname"].astype(str)[keep]), total[keep] / count[keep, None]


def ensemble_predictions(
    run: RunDir, classes: list[str], data_dir: Path | None = None, stages_used=(2, 3, 4)
):
    """Predictions of the final ensemble with their truth, for per-class scores.

    The test set (submission.csv vs data_dir/truth/test.csv) when its truth is known, else the curated
    out-of-fold ensemble of ``stages_used`` vs data_dir/train_curated.csv.
    Returns (truth label sets list, scores (N, C), description of the source).
    """
    if not classes:
        raise Unavailable("class list unknown (no submission.csv, model.json or data set)")
    test_truth = truth(data_dir, "test")
    if test_truth is not None and run.submission.is_file():
        sub = read_csv(run.submission, "submission.csv")
        sub = sub[sub["fname"].astype(str).isin(test_truth.keys())]
        labels = [test_truth[str(f)] for f in sub["fname"]]
        return (
            labels,
            sub[classes].to_numpy(dtype=np.float64),
            "final ensemble (submission.csv) vs the test truth",
        )
    if data_dir is None or not (Path(data_dir) / "train_curated.csv").is_file():
        raise Unavailable("no test truth, and no data set with train_curated.csv for the OOF ensemble")
    fnames, scores = oof_ensemble(run, "curated", classes, stages_used)
    curated = label_table(Path(data_dir) / "train_curated.csv")
    source = f"curated out-of-fold ensemble of stages {', '.join(map(str, stages_used))}"
    return [curated.get(f, ()) for f in fnames], scores, source


def stage_rows(run: RunDir) -> pd.DataFrame:
    """The article's table for this run: stage_table.csv rows (arch, model "stage k", lwlrap_noisy,
    lwlrap_curated, test_lwlrap, n_train, seconds), test lwlrap filled from test_scores.csv where the
    stage table lacks it, then the ensemble rows of test_scores.csv (model not "stage k")."""
    table = read_csv(run.stage_table, "stage_table.csv")
    cols = ["arch", "model", "lwlrap_noisy", "lwlrap_curated", "test_lwlrap", "n_train", "seconds"]
    if "lwlrap_noisy_truth" in table and table["lwlrap_noisy_truth"].notna().any():
        cols.insert(4, "lwlrap_noisy_truth")  # the noisy score against the true labels (synthetic data)
    table = table.reindex(columns=[c if c != "model" else "stage" for c in cols])
    table = table.sort_values(["arch", "stage"], kind="stable")
    table.insert(1, "model", [f"stage {int(k)}" for k in table.pop("stage")])
    if run.test_scores.is_file():
        test = read_csv(run.test_scores, "test_scores.csv").astype({"model": str, "arch": str})
        is_stage = test["model"].str.fullmatch(r"\s*stage\s*\d+\s*")
        known = test[is_stage].assign(model=test["model"].str.replace(r"\s+", " ", regex=True).str.strip())
        lookup = known.set_index(["arch", "model"])["test_lwlrap"]
        fill = [lookup.get((str(a), m)) for a, m in zip(table["arch"], table["model"], strict=True)]
        table["test_lwlrap"] = pd.to_numeric(table["test_lwlrap"], errors="coerce").fillna(
            pd.Series(fill, index=table.index, dtype=float)
        )
        table = pd.concat([table, test[~is_stage].reindex(columns=cols)], ignore_index=True)
    return table.reset_index(drop=True)


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


def software_versions() -> dict[str, str]:
    """Installed versions of the packages a run depends on (and Python's)."""
    import platform
    from importlib import metadata

    out = {}
    for name in VERSION_PACKAGES:
        try:
            out[name] = platform.python_version() if name == "python" else metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


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


def example_clips(run: RunDir, data_dir: Path | None, classes: list[str], frontend, n: int = 6):
    """Log-mels of ``n`` test clips spread over submission.csv, with the ensemble's top 3 labels.

    Returns (items, skipped): items are dicts ``db`` (n_mels, T) dB, ``title`` (file name) and ``caption``
    (predicted labels, and the true ones when data_dir/truth/test.csv knows them); skipped lists the
    clips that could not be read, with the reason.
    """
    if not run.submission.is_file():
        raise Unavailable("no submission.csv (test predictions) yet")
    if data_dir is None or not (Path(data_dir) / "test").is_dir():
        raise Unavailable("test audio not found (pass data_dir or record it in run.json)")
    from noisytag.audio import AudioError, load
    from noisytag.features import log_mel

    sub = read_csv(run.submission, "submission.csv")
    known = truth(data_dir, "test") or {}
    picks = np.unique(np.linspace(0, len(sub) - 1, min(n, len(sub))).round().astype(int))
    probs = sub[classes].to_numpy(dtype=np.float64)[picks]
    top = np.argsort(-probs, axis=1, kind="stable")[:, :3]
    items, skipped = [], []
    for row, i in enumerate(picks):
        fname = str(sub["fname"].iloc[i])
        caption = "predicted: " + ", ".join(f"{classes[j]} {probs[row, j]:.2f}" for j in top[row])
        if fname in known:
            caption += f"\ntrue: {', '.join(known[fname]) or '—'}"
        try:
            db = log_mel(load(Path(data_dir) / "test" / fname, frontend), frontend)
        except (AudioError, OSError) as err:
            skipped.append(f"{fname} ({err})")
            continue
        items.append({"db": db, "title": fname, "caption": caption})
    if not items:
        raise Unavailable("no example clip could be read: " + "; ".join(skipped))
    return items, skipped
