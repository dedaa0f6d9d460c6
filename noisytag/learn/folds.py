"""Multi-label stratified k-fold assignment (SPEC §5), made once per data set and saved.

Folds come from the iterative stratification of Sechidis et al. (the ``iterative-stratification``
package's ``MultilabelStratifiedKFold``, shuffled with a fixed seed), computed separately for the curated
and the noisy set, so every class's positives are spread evenly over the folds of each set. A clip keeps
its fold in every stage: the assignment is written to ``folds.csv`` (fname, split, fold) the first time
and read back afterwards; a saved file that does not match the data set is refused, never silently
rebuilt, because out-of-fold predictions and selections of a run depend on it.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.data.dataset import multi_hot
from noisytag.fileio import write_csv

__all__ = ["FoldsError", "make_folds", "assign_folds", "load_folds", "load_or_make_folds", "FOLD_SPLITS"]

log = logging.getLogger(__name__)

FOLD_SPLITS = ("curated", "noisy")  # the labelled splits that get folds, each stratified on its own
COLUMNS = ["fname", "split", "fold"]


class FoldsError(ValueError):
    """Folds cannot be made, or a saved folds.csv does not fit the data set; the message says why."""


def make_folds(labels, n_folds: int, seed: int) -> np.ndarray:
    """Multi-label stratified fold of every clip.

    Args:
        labels: (N, C) multi-hot matrix (entries ``> 0`` are labels); clips without labels are allowed
            and spread evenly.
        n_folds: number of folds, ≥ 2 and ≤ N.
        seed: seed of the shuffle and of the algorithm's random tie-breaks (same seed → same folds).

    Returns:
        (N,) int64 fold of each clip in [0, n_folds); every fold holds at least one clip.
    """
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    y = np.asarray(labels)
    if y.ndim != 2:
        raise FoldsError(f"labels must be a 2-D (clips, classes) matrix, got shape {y.shape}")
    n = y.shape[0]
    if int(n_folds) != n_folds or n_folds < 2:
        raise FoldsError(f"n_folds must be an integer ≥ 2, got {n_folds}")
    n_folds = int(n_folds)
    if n < n_folds:
        raise FoldsError(f"cannot split {n} clips into {n_folds} folds (need at least one clip per fold)")
    y = y > 0
    if y.shape[1] < 2:  # the package wants a multilabel-indicator matrix: pad with empty classes
        y = np.hstack([y, np.zeros((n, 2 - y.shape[1]), dtype=bool)])
    splitter = MultilabelStratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    folds = np.empty(n, dtype=np.int64)
    for k, (_, test) in enumerate(splitter.split(np.zeros((n, 1)), y.astype(np.int8))):
        folds[test] = k
    return _fill_empty_folds(folds, n_folds)


def _fill_empty_folds(folds: np.ndarray, n_folds: int) -> np.ndarray:
    """Move one clip (the last one) of the largest fold into each empty fold; rare, only for tiny N."""
    folds = folds.copy()
    for k in range(n_folds):
        sizes = np.bincount(folds, minlength=n_folds)
        if sizes[k] == 0:
            donor = int(np.argmax(sizes))
            folds[np.flatnonzero(folds == donor)[-1]] = k
    return folds


def assign_folds(dataset, n_folds: int, seed: int) -> pd.DataFrame:
    """Folds of the curated and the noisy clips, each set stratified on its own.

    Args:
        dataset: a :class:`noisytag.data.dataset.Dataset` (frames ``curated`` / ``noisy`` with columns fname and
            labels, and ``classes``). An empty split is left out. A ``fold`` column (a manifest's fixed
            folds; -1 = not fixed) overrides the generated fold of its clips.
        n_folds, seed: as for :func:`make_folds` (the same seed is used for both sets).

    Returns:
        DataFrame(fname str, split "curated"|"noisy", fold int64): curated rows first, each split in the
        data set's row order.
    """
    parts = []
    for split in FOLD_SPLITS:
        frame = getattr(dataset, split)
        if len(frame) == 0:
            continue
        fnames = frame["fname"].astype(str)
        dupes = fnames[fnames.duplicated()].unique()
        if len(dupes):
            raise FoldsError(f"{split}: file names occur more than once: {', '.join(dupes[:5])}")
        labels = multi_hot(list(frame["labels"]), list(dataset.classes))
        try:
            folds = make_folds(labels, n_folds, seed)
        except FoldsError as err:
            raise FoldsError(f"{split}: {err}") from None
        if "fold" in frame.columns:  # user-fixed folds (a manifest's fold column) win; -1 = not fixed
            fixed = frame["fold"].to_numpy(np.int64)
            if (fixed >= n_folds).any():
                bad = int(np.flatnonzero(fixed >= n_folds)[0])
                raise FoldsError(
                    f"{split}: {fnames.iat[bad]} has fold {fixed[bad]}, but there are {n_folds} folds "
                    f"(0..{n_folds - 1}; set train.folds or change the manifest)"
                )
            folds = np.where(fixed >= 0, fixed, folds)
        parts.append(pd.DataFrame({"fname": fnames.to_numpy(), "split": split, "fold": folds}))
    if not parts:
        return pd.DataFrame(
            {"fname": pd.Series(dtype=str), "split": pd.Series(dtype=str), "fold": []}
        ).astype({"fold": np.int64})
    return pd.concat(parts, ignore_index=True)


def load_or_make_folds(path: str | Path, dataset, n_folds: int, seed: int) -> pd.DataFrame:
    """The saved fold assignment at ``path`` (folds.csv), made and saved first if it does not exist.

    The file is authoritative once written: the seed only matters when it is made. A file whose clips
    differ from the data set's curated/noisy clips, or whose folds do not run over 0..n_folds-1, raises
    :class:`FoldsError` naming the file and the difference (use a new run directory, or delete the file
    to re-split — earlier out-of-fold results then no longer apply).

    Returns:
        DataFrame(fname, split, fold) in the file's row order (out-of-fold arrays follow that order).
    """
    path = Path(path)
    if not path.exists():
        folds = assign_folds(dataset, n_folds, seed)
        write_csv(path, folds)  # a killed run never leaves half a folds.csv behind
        log.info("made %d folds for %d clips: %s", n_folds, len(folds), path)
        return folds
    return load_folds(path, dataset, n_folds)


def load_folds(path: str | Path, dataset, n_folds: int) -> pd.DataFrame:
    """The saved fold assignment at ``path``, checked as :func:`load_or_make_folds` checks it; never
    written (for processes that only read a run: DDP ranks other than zero, Ray tasks).
    :class:`FoldsError` when the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise FoldsError(f"{path}: no folds table (the run's writer makes it first)")
    saved = _read_folds(path)
    _check_matches(path, saved, dataset, n_folds)
    return saved


def _read_folds(path: Path) -> pd.DataFrame:
    try:
        saved = pd.read_csv(path, dtype={"fname": str, "split": str}, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise FoldsError(f"{path}: not a readable folds table ({err})") from None
    if list(saved.columns) != COLUMNS:
        raise FoldsError(
            f"{path}: expected columns {','.join(COLUMNS)}, found {','.join(map(str, saved.columns))}"
        )
    fold = pd.to_numeric(saved["fold"], errors="coerce")
    if fold.isna().any() or (fold != fold.round()).any():
        bad = saved.loc[fold.isna() | (fold != fold.round()), "fname"].iloc[0]
        raise FoldsError(f"{path}: fold of {bad} is not an integer")
    saved["fold"] = fold.astype(np.int64)
    unknown = sorted(set(saved["split"]) - set(FOLD_SPLITS))
    if unknown:
        raise FoldsError(f"{path}: unknown split(s) {', '.join(unknown)} (expected curated or noisy)")
    return saved


def _check_matches(path: Path, saved: pd.DataFrame, dataset, n_folds: int) -> None:
    problems = []
    for split in FOLD_SPLITS:
        have = saved.loc[saved["split"] == split, "fname"]
        want = set(getattr(dataset, split)["fname"].astype(str))
        if have.duplicated().any():
            problems.append(f"{split} file {have[have.duplicated()].iloc[0]} is listed twice")
        missing, extra = sorted(want - set(have)), sorted(set(have) - want)
        if missing:
            problems.append(
                f"{len(missing)} {split} clip(s) of the data set have no fold (e.g. {missing[0]})"
            )
        if extra:
            problems.append(f"{len(extra)} {split} clip(s) are not in the data set (e.g. {extra[0]})")
    if len(saved):
        lo, hi = int(saved["fold"].min()), int(saved["fold"].max())
        if lo < 0 or hi + 1 != n_folds:
            problems.append(f"it has folds {lo}..{hi} but {n_folds} folds are asked for")
    if problems:
        raise FoldsError(
            f"{path}: made for a different data set or fold count: {'; '.join(problems)}. "
            "Use a new run directory (or delete the file to re-split)."
        )
