"""Submission files: write them in sample_submission order, score them against a truth CSV (lwlrap)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.data.dataset import read_truth
from noisytag.fileio import write_csv
from noisytag.metrics import lwlrap, per_class_lwlrap


def read_sample_columns(path: str | Path) -> tuple[list[str], list[str]]:
    """(class columns, fnames) of a sample_submission.csv."""
    frame = pd.read_csv(path, dtype={"fname": str})
    if frame.columns[0] != "fname":
        raise ValueError(f"{path}: first column must be 'fname'")
    return list(frame.columns[1:]), list(frame["fname"])


def write_submission(
    path: str | Path,
    fnames: Sequence[str],
    probs: np.ndarray,
    classes: Sequence[str],
    sample_submission: str | Path | None = None,
):
    """Write ``fname`` + one probability column per class (atomic) and return the DataFrame.

    With ``sample_submission``, its column order is used (it must name the same classes) and, when it
    lists exactly the same files, its row order too; otherwise rows follow ``fnames``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape != (len(fnames), len(classes)):
        raise ValueError(
            f"{path}: probabilities {probs.shape} do not match {len(fnames)} files × {len(classes)} classes"
        )
    frame = pd.DataFrame(probs, columns=list(classes))
    frame.insert(0, "fname", list(fnames))
    if sample_submission is not None:
        columns, rows = read_sample_columns(sample_submission)
        if sorted(columns) != sorted(classes):
            extra = sorted(set(columns) ^ set(classes))[:5]
            raise ValueError(
                f"{sample_submission}: class columns differ from the models' classes (e.g. {extra})"
            )
        frame = frame[["fname", *columns]]
        if sorted(rows) == sorted(frame["fname"]):
            frame = frame.set_index("fname").loc[rows].reset_index()
    write_csv(path, frame, float_format="%.6g")
    return frame


def evaluate_submission(submission: str | Path, truth_csv: str | Path):
    """lwlrap of a submission against a truth CSV (fname,labels) → (overall, per-class DataFrame).

    Every truth file must be in the submission (extra submission rows are ignored) and every true
    label must be a submission column. The per-class frame (class, lwlrap, positives, weight) is
    sorted worst first; clips without labels count for nothing (SPEC §8).
    """
    _, classes, y, scores = submission_scores(submission, truth_csv)
    values, weights = per_class_lwlrap(y, scores)
    table = pd.DataFrame({"class": classes, "lwlrap": values, "positives": y.sum(axis=0), "weight": weights})
    table = table[table["positives"] > 0].sort_values(["lwlrap", "class"]).reset_index(drop=True)
    return float(lwlrap(y, scores)), table


def submission_scores(submission: str | Path, truth_csv: str | Path):
    """A submission's rows aligned with a truth CSV → (fnames, classes, truth (N, K) bool, scores (N, K)
    float64), rows in the truth file's order; checked as :func:`evaluate_submission` describes."""
    sub = pd.read_csv(submission, dtype={"fname": str})
    if "fname" not in sub.columns:
        raise ValueError(f"{submission}: no 'fname' column")
    classes = [c for c in sub.columns if c != "fname"]
    truth = read_truth(truth_csv)
    sub = sub.drop_duplicates("fname").set_index("fname")
    missing = sorted(set(truth["fname"]) - set(sub.index))
    if missing:
        raise ValueError(f"{submission}: {len(missing)} file(s) of {truth_csv} missing, e.g. {missing[0]}")
    unknown = sorted({lab for labels in truth["labels"] for lab in labels} - set(classes))
    if unknown:
        raise ValueError(f"{truth_csv}: label(s) not in the submission's columns: {', '.join(unknown[:5])}")
    scores = sub.loc[list(truth["fname"]), classes].to_numpy(dtype=np.float64)
    if not np.isfinite(scores).all():
        raise ValueError(f"{submission}: non-numeric or missing probabilities")
    col = {c: i for i, c in enumerate(classes)}
    y = np.zeros(scores.shape, dtype=bool)
    for row, labels in enumerate(truth["labels"]):
        y[row, [col[lab] for lab in labels]] = True
    return list(truth["fname"]), classes, y, scores
