"""Manifest data sets: one CSV row per clip, audio files anywhere, for data not in the competition layout.

A manifest is a CSV with the columns

- ``path``: the audio file, relative to the manifest's folder or absolute;
- ``labels``: class names joined by commas (quote the field); may be empty for unlabelled test clips;
- ``subset``: ``curated`` (trusted labels), ``noisy`` (labels that may be wrong) or ``test``;
- ``fold`` (optional): a fixed fold for a curated/noisy clip; it wins over the generated one (empty = generated);
- ``true_labels`` (optional): the true label set where it is known (audits of the noisy labels, test scoring);
  a test clip's ``labels``, when given, count as its true labels;
- ``usage`` (optional): ``Public``/``Private`` part of a test clip (scored separately, like the leaderboard).

Other columns are ignored. The class list is ``classes.txt`` beside the manifest (one name per line; ``#``
starts a comment) when present, else the sorted labels of the curated and noisy rows. A clip's name in run
files and submissions is its ``path`` as written; its key in the feature cache is its resolved path, so two
manifests over the same files share one cache.

:func:`load_data` reads either kind of data set (a folder in the competition layout, or a manifest CSV);
every command that takes a data set goes through it. Validation follows the competition layout (one line per
problem, ``skip_invalid`` drops bad rows), plus: the same file listed twice, a clip in two subsets, a path that
does not exist or cannot be read.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.data.dataset import (
    SPLITS,
    DataError,
    Dataset,
    load_dataset,
    parse_labels,
    probe,
    read_csv_rows,
)
from noisytag.fileio import write_csv, write_text

CLASSES_FILE = "classes.txt"
COLUMNS = ("path", "labels", "subset")
OPTIONAL = ("fold", "true_labels", "usage")


def is_manifest(source: str | Path) -> bool:
    """A manifest is a file (a data set in the competition layout is a folder)."""
    return Path(source).is_file()


def load_data(
    source: str | Path,
    skip_invalid: bool = False,
    splits: Sequence[str] = ("curated", "noisy", "test"),
    probe_audio: bool = False,
) -> Dataset:
    """A data set from a folder in the competition layout or from a manifest CSV (same rules and result)."""
    if is_manifest(source):
        return load_manifest(source, skip_invalid, splits, probe_audio)
    return load_dataset(source, skip_invalid, splits, probe_audio)


def read_class_file(path: Path) -> list[str]:
    """Class names, one per line (blank lines and ``#`` comments skipped); a repeated name is an error."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path.name}: unreadable ({err})") from None
    classes = [s for line in lines if (s := line.split("#", 1)[0].strip())]
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if repeated:
        raise DataError(f"{path.name}: class names repeated: {', '.join(repeated)}")
    if not classes:
        raise DataError(f"{path.name}: no class names")
    return classes


def _empty_table() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=object) for c in ("fname", "path", "key", "labels")})


def _row_problems(
    path_text: str, resolved: Path | None, subset: str, labels: tuple, fold_text: str
) -> list[str]:
    """The problems of one row that need no other row."""
    problems = []
    if not path_text:
        problems.append("empty path")
    elif resolved is None or not resolved.exists():
        problems.append(f"audio file missing: {path_text}")
    elif not resolved.is_file():
        problems.append(f"not a file: {path_text}")
    elif not os.access(resolved, os.R_OK):
        problems.append(f"audio file cannot be read (permission denied): {path_text}")
    if subset not in SPLITS:
        problems.append(f"unknown subset {subset!r} (expected curated, noisy or test)")
    elif subset != "test" and not labels:
        problems.append("empty label field")
    if fold_text:
        if subset == "test":
            problems.append("a test clip has no fold")
        elif not fold_text.isdigit():
            problems.append(f"fold must be a whole number ≥ 0 (got {fold_text!r})")
    return problems


def load_manifest(
    manifest: str | Path,
    skip_invalid: bool = False,
    splits: Sequence[str] = ("curated", "noisy", "test"),
    probe_audio: bool = False,
) -> Dataset:
    """Read and validate a manifest (format in the module docstring) → :class:`Dataset`.

    Problems are one line each, ``manifest.csv line 7 ('rec/a.wav'): unknown label 'Dog' (not in
    classes.txt)``; without ``skip_invalid`` any problem raises :class:`DataError` listing them all, with it
    the bad rows are dropped and listed in ``Dataset.problems``. Splits not asked for are empty.
    """
    manifest = Path(manifest)
    if not manifest.is_file():
        raise DataError(f"{manifest}: manifest not found")
    frame, lines, problems = read_csv_rows(manifest)
    if frame is None:
        raise DataError(problems)
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"{manifest.name}: column(s) {', '.join(missing)} missing "
            f"(a manifest needs {','.join(COLUMNS)}; optional {','.join(OPTIONAL)})"
        )
    classes_path = manifest.parent / CLASSES_FILE
    given_classes = classes_path.is_file()
    texts = {
        c: frame[c].astype(str).str.strip() if c in frame.columns else None for c in (*COLUMNS, *OPTIONAL)
    }
    label_sets = [parse_labels(v) for v in texts["labels"]]
    subsets = list(texts["subset"].str.lower())
    if given_classes:
        classes, class_source = read_class_file(classes_path), CLASSES_FILE
    else:
        classes = sorted({x for s, ls in zip(subsets, label_sets, strict=True) if s != "test" for x in ls})
        class_source = "the labels of the curated and noisy rows"
        if not classes:
            raise DataError(f"{manifest.name}: no labels on curated or noisy rows (and no {CLASSES_FILE})")
    order = {c: j for j, c in enumerate(classes)}

    rows: dict[str, list] = {s: [] for s in SPLITS}
    first: dict[Path, tuple[int, str]] = {}  # resolved path → (line, subset) of its first row
    for i, line in enumerate(lines):
        path_text, subset, labels = texts["path"].iat[i], subsets[i], label_sets[i]
        fold_text = texts["fold"].iat[i] if texts["fold"] is not None else ""
        if not path_text and not texts["labels"].iat[i] and not subset:
            continue  # blank line
        resolved = None
        if path_text:
            candidate = Path(path_text)
            resolved = (candidate if candidate.is_absolute() else manifest.parent / candidate).resolve()
        where = f"{manifest.name} line {line}" + (f" ({path_text!r})" if path_text else "")
        found = _row_problems(path_text, resolved, subset, labels, fold_text)
        truth = parse_labels(texts["true_labels"].iat[i]) if texts["true_labels"] is not None else ()
        for name, values in (("label", labels), ("true label", truth)):
            unknown = [x for x in values if x not in order]
            if unknown:
                s = "s" if len(unknown) > 1 else ""
                found.append(f"unknown {name}{s} {', '.join(map(repr, unknown))} (not in {class_source})")
        if resolved is not None and resolved in first:
            line0, subset0 = first[resolved]
            found.append(
                f"same file as line {line0}"
                if subset0 == subset
                else f"clip in two subsets ({subset0} at line {line0}, {subset} here)"
            )
        elif resolved is not None:
            first[resolved] = (line, subset)
        if found:
            problems.append(f"{where}: {'; '.join(found)}")
            continue
        if subset not in splits:
            continue
        usage = texts["usage"].iat[i] if texts["usage"] is not None else ""
        ordered = tuple(sorted(labels, key=order.__getitem__))
        rows[subset].append(
            {
                "fname": path_text.replace("\\", "/"),
                "path": str(resolved),
                "key": str(resolved),
                "labels": () if subset == "test" else ordered,
                "truth": tuple(sorted(truth or (ordered if subset == "test" else ()), key=order.__getitem__)),
                "usage": usage,
                "fold": int(fold_text) if fold_text else -1,
                "line": line,
            }
        )
    tables = {s: _split_table(rows[s]) for s in SPLITS}
    if probe_audio:
        for s, table in tables.items():
            if len(table):
                table, unreadable = probe(table, [f"{manifest.name} line {n}" for n in table["line"]])
                problems += unreadable
                tables[s] = table[table["duration"].notna()].reset_index(drop=True)
    if problems and not skip_invalid:
        raise DataError(problems)
    tables = {s: t.drop(columns=["line"], errors="ignore") for s, t in tables.items()}
    return Dataset(
        manifest.parent, classes, tables["curated"], tables["noisy"], tables["test"], problems, manifest
    )


def _split_table(rows: list[dict]) -> pd.DataFrame:
    """One split's rows; ``truth``/``usage``/``fold`` only where some row of the split has one."""
    if not rows:
        return _empty_table()
    table = pd.DataFrame(rows)
    if not any(table["truth"].map(len)):
        table = table.drop(columns="truth")
    if not table["usage"].astype(bool).any():
        table = table.drop(columns="usage")
    if (table["fold"] < 0).all():
        table = table.drop(columns="fold")
    else:
        table["fold"] = table["fold"].astype(np.int64)
    return table


def write_manifest(
    path: str | Path, rows: pd.DataFrame, classes: Sequence[str] | None = None, root: str | Path | None = None
) -> Path:
    """Write a manifest (columns ``path,labels,subset`` + any optional ones present in ``rows``).

    ``rows``: DataFrame with ``path`` (str or Path; made relative to the manifest's folder when under it),
    ``labels`` and optionally ``true_labels`` (tuples or comma-joined strings), ``subset``, ``fold``,
    ``usage``. ``classes``: also write ``classes.txt`` beside it. Written atomically.
    """
    path = Path(path)
    base = Path(root) if root is not None else path.parent
    out = pd.DataFrame({"path": [_relative(p, base.resolve()) for p in rows["path"]]})
    for column in ("labels", "subset", *OPTIONAL):
        if column in rows.columns:
            values = rows[column]
            if column in ("labels", "true_labels"):
                values = [v if isinstance(v, str) else ",".join(v) for v in values]
            out[column] = list(values)
    write_csv(path, out)
    if classes is not None:
        write_text(path.parent / CLASSES_FILE, "".join(f"{c}\n" for c in classes))
    return path


def _relative(path: str | Path, base: Path) -> str:
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(base).as_posix()
    except ValueError:
        return str(resolved)
