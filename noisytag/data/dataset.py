"""The competition layout (SPEC §1): label CSVs, class vocabulary, clip tables, multi-hot targets, validation.

A data set root holds ``train_curated/``, ``train_noisy/``, ``test/`` (audio files), ``train_curated.csv`` and
``train_noisy.csv`` (``fname,labels``; several labels joined by commas in one quoted field) and
``sample_submission.csv`` (``fname`` + one column per class; its header is the class list). :func:`load_dataset`
reads it into one table per split and validates every row; each problem becomes ONE line naming the file and
the CSV line, e.g. ``train_curated.csv line 7 ('0a1b2c3d.wav'): unknown label 'Dog' (not in the 80 classes)``.
By default any problem raises :class:`DataError` listing all of them; with ``skip_invalid`` the bad rows are
dropped and the lines are kept in ``Dataset.problems``.
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.data.files import audio_files

log = logging.getLogger(__name__)

SPLITS = {"curated": "train_curated", "noisy": "train_noisy", "test": "test"}
SUBMISSION = "sample_submission.csv"
LABELLED = ("curated", "noisy")


class DataError(ValueError):
    """The data set is invalid; ``problems`` holds one line per problem (the message joins them)."""

    def __init__(self, problems: str | Sequence[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@dataclass
class Dataset:
    """One data set in the competition layout.

    Each split table has columns ``fname`` (str, the clip's name in submissions and run files), ``path``
    (str, the audio file), ``key`` (str, the clip's key in the feature cache: the file name in the
    competition layout, the resolved path in a manifest) and ``labels`` (tuple of class names in
    class-list order; ``()`` for test clips); with ``probe_audio`` also ``duration`` (seconds). Optional:
    ``truth`` (true label sets, when the data set has them), ``usage`` (test: Public/Private) and
    ``fold`` (user-fixed folds of a manifest; -1 = not fixed). ``problems`` lists the rows skipped by
    ``skip_invalid`` (one line each). ``manifest`` is the manifest CSV a data set came from (else None).
    """

    root: Path
    classes: list[str]
    curated: pd.DataFrame
    noisy: pd.DataFrame
    test: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    manifest: Path | None = None

    def split(self, name: str) -> pd.DataFrame:
        """The table of split ``name`` ("curated", "noisy" or "test")."""
        if name not in SPLITS:
            raise KeyError(f"unknown split {name!r}; choose from {', '.join(SPLITS)}")
        return getattr(self, name)

    def targets(self, name: str) -> np.ndarray:
        """Multi-hot label matrix of a split, float32 (N, C) in class order."""
        return multi_hot(self.split(name)["labels"], self.classes)


# ---------------------------------------------------------------- labels


def parse_labels(value: str) -> tuple[str, ...]:
    """``"a,b"`` → ``("a", "b")``: split on commas, strip spaces, drop empty pieces and repeats."""
    return tuple(dict.fromkeys(p.strip() for p in str(value).split(",") if p.strip()))


def format_labels(labels: Iterable[str]) -> str:
    """``("a", "b")`` → ``"a,b"`` (pandas quotes the field when writing a CSV)."""
    return ",".join(labels)


def multi_hot(label_sets: Iterable[Sequence[str] | str], classes: Sequence[str]) -> np.ndarray:
    """Multi-hot matrix float32 (N, C): entry (i, j) = 1 when clip i carries class j.

    ``label_sets`` holds tuples of class names (or ``"a,b"`` strings); an unknown name raises DataError.
    """
    index = {c: j for j, c in enumerate(classes)}
    rows, cols = [], []
    n = 0
    for i, labels in enumerate(label_sets):
        n = i + 1
        for label in parse_labels(labels) if isinstance(labels, str) else labels:
            if label not in index:
                raise DataError(f"clip {i}: unknown label {label!r} (not in the {len(classes)} classes)")
            rows.append(i)
            cols.append(index[label])
    out = np.zeros((n, len(classes)), np.float32)
    out[rows, cols] = 1.0
    return out


# ---------------------------------------------------------------- CSV reading


def read_csv_rows(path: Path) -> tuple[pd.DataFrame | None, list[int], list[str]]:
    """Read a CSV as strings. Returns (frame or None when unreadable, line numbers of rows, problems).

    Lines with too many fields (an unquoted multi-label field) are skipped and reported with their line
    number; the line number of every kept row is recovered from them (blank lines are kept as empty rows).
    """
    name = path.name
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame = pd.read_csv(
                path,
                dtype=str,
                keep_default_na=False,
                on_bad_lines="warn",
                index_col=False,
                skip_blank_lines=False,
            )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
        reason = reason.replace("Error tokenizing data. C error: ", "")
        return None, [], [f"{name}: unreadable CSV ({reason})"]
    problems, bad = [], []
    for warning in caught:
        message = str(warning.message)
        skipped = re.findall(r"Skipping line (\d+): (.*)", message)
        if skipped:
            for line, why in skipped:
                bad.append(int(line))
                problems.append(f"{name} line {line}: {why.strip()} (quote a field holding several labels)")
        elif issubclass(warning.category, pd.errors.ParserWarning):
            return None, [], [f"{name}: malformed CSV ({message.strip()})"]
    lines, line, bad_set = [], 2, set(bad)
    for _ in range(len(frame)):
        while line in bad_set:
            line += 1
        lines.append(line)
        line += 1
    return frame.fillna(""), lines, problems


def read_classes(root: str | Path) -> list[str]:
    """The class list: the header of sample_submission.csv after ``fname``, in its order.

    Without sample_submission.csv: the sorted union of the labels in train_curated.csv and train_noisy.csv.
    """
    root = Path(root)
    path = root / SUBMISSION
    if path.exists():
        try:  # header=None: pandas would rename a repeated column ("Dog" → "Dog.1")
            header = (
                pd.read_csv(path, header=None, nrows=1, dtype=str, keep_default_na=False).iloc[0].tolist()
            )
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
            raise DataError(
                f"{SUBMISSION}: unreadable CSV ({str(err).strip() or type(err).__name__})"
            ) from err
        header = [str(c).strip() for c in header]
        if len(header) < 2 or header[0] != "fname" or not all(header[1:]):
            raise DataError(
                f"{SUBMISSION}: header must be 'fname' followed by the class names (got {','.join(header)!r})"
            )
        classes = header[1:]
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            raise DataError(f"{SUBMISSION}: class names repeated in the header: {', '.join(repeated)}")
        return classes
    labels: set[str] = set()
    for split in LABELLED:
        csv = root / f"{SPLITS[split]}.csv"
        if csv.exists():
            frame, _, _ = read_csv_rows(csv)
            if frame is not None and "labels" in frame.columns:
                for value in frame["labels"]:
                    labels.update(parse_labels(value))
    if not labels:
        raise DataError(
            f"{root}: no {SUBMISSION} and no labels in the training CSVs to take the class list from"
        )
    log.info("no %s: %d classes taken from the labels of the training CSVs", SUBMISSION, len(labels))
    return sorted(labels)


def read_truth(path: str | Path) -> pd.DataFrame:
    """A truth file (``fname,labels[,usage]``, e.g. truth/test.csv) → DataFrame(fname, labels tuple; ()
    when empty[, usage]). ``usage`` (``Public``/``Private``) marks the leaderboard part of a test clip."""
    path = Path(path)
    frame, _, problems = read_csv_rows(path)
    if frame is None or problems:
        raise DataError(problems)
    if not {"fname", "labels"} <= set(frame.columns):
        raise DataError(f"{path.name}: header must be 'fname,labels' (got {','.join(frame.columns)!r})")
    out = pd.DataFrame({"fname": frame["fname"].astype(str), "labels": frame["labels"].map(parse_labels)})
    if "usage" in frame.columns:
        out["usage"] = frame["usage"].astype(str).str.strip()
    return out


def with_truth(table: pd.DataFrame, truth: pd.DataFrame | None) -> pd.DataFrame:
    """Add ``truth`` (true label set; () for a clip the truth file does not list) and, when the truth
    has it, ``usage`` to a split table; ``truth=None`` leaves the table as it is."""
    if truth is None:
        return table
    known = truth.drop_duplicates("fname").set_index("fname")
    out = table.assign(truth=[tuple(known["labels"].get(f, ())) for f in table["fname"]])
    if "usage" in known.columns:
        out["usage"] = [str(known["usage"].get(f, "")) for f in table["fname"]]
    return out


# ---------------------------------------------------------------- validation and loading


def _load_labelled(
    root: Path, split: str, classes: list[str], class_source: str
) -> tuple[pd.DataFrame, list[str]]:
    """Read and validate one labelled split. Returns (valid rows, one problem line per bad row/file)."""
    folder, csv = root / SPLITS[split], root / f"{SPLITS[split]}.csv"
    empty = pd.DataFrame(
        {"fname": pd.Series(dtype=str), "path": pd.Series(dtype=str), "labels": pd.Series(dtype=object)}
    )
    if not csv.exists():
        return empty, [f"{csv.name}: file missing"]
    frame, lines, problems = read_csv_rows(csv)
    if frame is None:
        return empty, problems
    if not {"fname", "labels"} <= set(frame.columns):
        return empty, [
            f"{csv.name}: header must be 'fname,labels' (got {','.join(map(str, frame.columns))!r})"
        ]
    if not folder.is_dir():
        return empty, [
            *problems,
            f"{folder.name}/: audio folder missing ({len(frame)} rows of {csv.name} point into it)",
        ]
    with os.scandir(folder) as entries:
        present = {e.name for e in entries if e.is_file()}
    order = {c: j for j, c in enumerate(classes)}
    first_line: dict[str, int] = {}
    keep = []
    for fname, value, line in zip(frame["fname"].str.strip(), frame["labels"], lines, strict=True):
        where = f"{csv.name} line {line}" + (f" ({fname!r})" if fname else "")
        labels = parse_labels(value)
        row_problems = []
        if not fname and not value.strip():
            continue  # blank line
        if not fname:
            row_problems.append("empty file name")
        elif "/" in fname or "\\" in fname or fname in (".", ".."):
            row_problems.append("file name must not contain a folder")
        elif fname in first_line:
            row_problems.append(f"duplicate file name (first at line {first_line[fname]})")
        elif fname not in present:
            row_problems.append(f"audio file missing: {folder.name}/{fname}")
        if not labels:
            row_problems.append("empty label field")
        unknown = [x for x in labels if x not in order]
        if unknown:
            row_problems.append(
                f"unknown label{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} (not in {class_source})"
            )
        if fname:
            first_line.setdefault(fname, line)
        if row_problems:
            problems.append(f"{where}: {'; '.join(row_problems)}")
            continue
        keep.append((fname, str(folder / fname), tuple(sorted(labels, key=order.__getitem__))))
    table = pd.DataFrame(keep, columns=["fname", "path", "labels"]) if keep else empty
    problems.sort(key=lambda p: int(m.group(1)) if (m := re.search(r" line (\d+)", p)) else 0)  # file order
    return table, problems


def _load_test(root: Path, submission_names: list[str] | None) -> tuple[pd.DataFrame, list[str]]:
    folder = root / SPLITS["test"]
    if not folder.is_dir():
        return pd.DataFrame(columns=["fname", "path", "labels"]), [f"{folder.name}/: audio folder missing"]
    names = [p.name for p in audio_files(folder)]
    if submission_names is not None and set(submission_names) != set(names):
        only_sub = len(set(submission_names) - set(names))
        only_dir = len(set(names) - set(submission_names))
        log.warning(
            "%s lists %d clips not in test/ and test/ holds %d clips not in it; the clips of test/ are used",
            SUBMISSION,
            only_sub,
            only_dir,
        )
    table = pd.DataFrame(
        {"fname": names, "path": [str(folder / n) for n in names], "labels": [()] * len(names)}
    )
    return table, []


def probe(table: pd.DataFrame, where: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    """Add ``duration`` (seconds, from the file header); unreadable files become problems.

    ``where``: how each row is named in its problem line (e.g. ``train_noisy/ab12.wav``).
    """
    import soundfile as sf

    durations, problems = [], []
    for name, path in zip(where, table["path"], strict=True):
        try:
            info = sf.info(path)
            durations.append(info.frames / info.samplerate)
        except (RuntimeError, OSError, ValueError) as err:
            durations.append(np.nan)
            problems.append(f"{name}: unreadable audio ({str(err).strip().splitlines()[-1]})")
    table = table.assign(duration=np.asarray(durations, dtype=np.float64))
    return table, problems


def load_dataset(
    root: str | Path,
    skip_invalid: bool = False,
    splits: Sequence[str] = ("curated", "noisy", "test"),
    probe_audio: bool = False,
) -> Dataset:
    """Read and validate a data set in the competition layout.

    Problems (one line each): a missing or malformed CSV (wrong header, unreadable, too many fields on a
    line), an empty file name or label field, an unknown label, a duplicate file name, a missing audio file,
    and with ``probe_audio`` an unreadable audio file (``probe_audio`` also adds a ``duration`` column).
    Without ``skip_invalid`` any problem raises :class:`DataError` listing them all; with it, bad rows (or the
    rows of an unusable file) are dropped and listed in ``Dataset.problems``. Splits not asked for are empty.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: data folder not found")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise DataError(f"unknown split(s) {', '.join(unknown)}; choose from {', '.join(SPLITS)}")
    classes = read_classes(root)
    has_submission = (root / SUBMISSION).exists()
    class_source = SUBMISSION if has_submission else "the labels of the training CSVs"
    tables: dict[str, pd.DataFrame] = {}
    problems: list[str] = []
    for split in SPLITS:
        if split not in splits:
            tables[split] = pd.DataFrame(columns=["fname", "path", "labels"])
            continue
        if split == "test":
            names = (
                pd.read_csv(root / SUBMISSION, usecols=[0], dtype=str)["fname"].tolist()
                if has_submission
                else None
            )
            table, found = _load_test(root, names)
        else:
            table, found = _load_labelled(root, split, classes, class_source)
        if probe_audio and len(table):
            table, unreadable = probe(table, [f"{SPLITS[split]}/{f}" for f in table["fname"]])
            found += unreadable
            table = table[table["duration"].notna()].reset_index(drop=True)
        truth_csv = root / "truth" / f"{split}.csv"
        table.insert(2, "key", table["fname"])  # the cache knows a split folder's clips by file name
        table = with_truth(table, read_truth(truth_csv) if truth_csv.is_file() else None)
        tables[split] = table.reset_index(drop=True)
        problems += found
    if problems and not skip_invalid:
        raise DataError(problems)
    if problems:
        log.warning("%s: skipped %d invalid rows or files (see Dataset.problems)", root, len(problems))
    return Dataset(root, classes, tables["curated"], tables["noisy"], tables["test"], problems)


def describe(dataset: Dataset) -> dict:
    """Counts for the ``check`` command: per split clips, labels per clip, multi-label share, hours
    (when durations were probed); per class the number of curated and noisy clips carrying it."""
    splits = {}
    for name in SPLITS:
        table = dataset.split(name)
        n_labels = np.array([len(x) for x in table["labels"]], dtype=np.float64)
        splits[name] = {
            "clips": len(table),
            "labels_per_clip": float(n_labels.mean()) if len(table) and name != "test" else None,
            "multi_label_share": float((n_labels > 1).mean()) if len(table) and name != "test" else None,
            "hours": float(table["duration"].sum() / 3600) if "duration" in table.columns else None,
        }
    per_class = {c: {"curated": 0, "noisy": 0} for c in dataset.classes}
    for name in LABELLED:
        table = dataset.split(name)
        if len(table):
            counts = multi_hot(table["labels"], dataset.classes).sum(axis=0)
            for c, k in zip(dataset.classes, counts, strict=True):
                per_class[c][name] = int(k)
    return {
        "root": str(dataset.root),
        "classes": len(dataset.classes),
        "splits": splits,
        "per_class": per_class,
        "problems": list(dataset.problems),
    }
