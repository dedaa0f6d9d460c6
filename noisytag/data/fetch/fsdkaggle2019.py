"""The FSDKaggle2019 recipe: which files of Zenodo record 3612637 to fetch, and the layout they make.

``fetch(root)`` reads the record's file list (:mod:`.zenodo`), downloads every archive into
``root/.downloads/`` (:mod:`.download`: resumable, md5-verified), unpacks each archive group flat into its
folder (:mod:`.archive`; the noisy audio's split ``.z01 … .zip`` archive is read in place) and writes the
label CSVs, ``sample_submission.csv`` and ``truth/test.csv`` from the record's metadata, in the
competition layout of :mod:`noisytag.data.dataset`. Every step leaves a finished state a re-run recognises
(verified marker, unpacked marker, folder renamed into place), so a killed fetch continues where it stopped.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from noisytag.data.dataset import SPLITS, SUBMISSION, format_labels, parse_labels
from noisytag.data.fetch.archive import unpack
from noisytag.data.fetch.download import (
    FetchError,
    Http,
    Progress,
    RemoteFile,
    RetryPolicy,
    download_file,
    reason,
    verified_marker,
)
from noisytag.data.fetch.zenodo import API_URL, record_files
from noisytag.data.files import AUDIO_SUFFIXES
from noisytag.fileio import write_csv, write_json

log = logging.getLogger(__name__)

DOWNLOADS = ".downloads"


@dataclass(frozen=True)
class Group:
    """One archive (possibly split into parts) and the folder its chosen files go to, flat by file name."""

    archive: str  # file name without .zip / .zNN
    target: str  # folder under the data set root
    kind: str  # "audio", "csv" or "any": which members to extract
    required: bool = True


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    record: int
    groups: tuple[Group, ...]
    meta: dict[str, str]  # our CSV → the record's metadata CSV (in the "meta" group's folder)
    vocabulary: str


FSDKAGGLE2019 = DatasetSpec(
    name="fsdkaggle2019",
    record=3612637,
    groups=(
        Group("FSDKaggle2019.meta", "meta", "csv"),
        Group("FSDKaggle2019.doc", "doc", "any", required=False),
        Group("FSDKaggle2019.audio_train_curated", SPLITS["curated"], "audio"),
        Group("FSDKaggle2019.audio_test", SPLITS["test"], "audio"),
        Group("FSDKaggle2019.audio_train_noisy", SPLITS["noisy"], "audio"),
    ),
    meta={
        "train_curated.csv": "train_curated_post_competition.csv",
        "train_noisy.csv": "train_noisy_post_competition.csv",
        "test.csv": "test_post_competition.csv",
    },
    vocabulary="vocabulary.csv",
)
DATASETS = {FSDKAGGLE2019.name: FSDKAGGLE2019}


def dataset_spec(name: str) -> DatasetSpec:
    if name.lower() not in DATASETS:
        raise FetchError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    return DATASETS[name.lower()]


@dataclass(frozen=True)
class PlannedFile:
    """A record file and what a fetch would do with it: state is unpacked, downloaded, partial or missing."""

    file: RemoteFile
    group: str
    state: str
    have: int  # bytes already on disk


@dataclass
class FetchSummary:
    root: Path
    classes: int
    clips: dict[str, int]
    downloaded: int = 0  # bytes transferred by this run
    notes: list[str] = field(default_factory=list)  # mismatches between the metadata and the audio


def group_files(spec: DatasetSpec, files: Sequence[RemoteFile]) -> dict[str, list[RemoteFile]]:
    """Each group's record files in disk order (``.z01`` … ``.zNN``, then ``.zip``); a missing one fails."""
    out, missing = {}, []
    for group in spec.groups:
        pattern = re.compile(re.escape(group.archive) + r"\.(zip|z(\d+))$", re.IGNORECASE)
        found = [(m, f) for f in files if (m := pattern.fullmatch(f.name))]
        found.sort(key=lambda mf: int(mf[0].group(2)) if mf[0].group(2) else 1 << 30)
        if found and found[-1][0].group(1).lower() == "zip":
            out[group.archive] = [f for _, f in found]
        elif group.required:
            missing.append(f"{group.archive}.zip")
    if missing:
        raise FetchError(f"the record lacks {', '.join(missing)}; is it the {spec.name} record?")
    return out


def _unpacked_marker(root: Path, group: Group) -> Path:
    return root / DOWNLOADS / f"{group.archive}.unpacked"


def is_unpacked(root: Path, group: Group, files: Sequence[RemoteFile] | None = None) -> bool:
    """Whether ``group`` was unpacked into ``root`` (from these very files, when they are given)."""
    try:
        done = json.loads(_unpacked_marker(root, group).read_text())
    except (OSError, ValueError):
        return False
    same = files is None or done.get("checksums") == {f.name: f.checksum for f in files}
    return same and (root / group.target).is_dir()


# ---------------------------------------------------------------- the layout


def parse_vocabulary(text: str, name: str = "vocabulary.csv") -> list[str]:
    """Class names from a vocabulary CSV, with or without header: in each row the one cell that is neither an
    integer index nor an AudioSet id (``/m/05tny_``)."""
    rows = [
        (n, [c.strip() for c in row if c.strip()]) for n, row in enumerate(csv.reader(io.StringIO(text)), 1)
    ]
    rows = [(n, cells) for n, cells in rows if cells]

    def has_int(cells: list[str]) -> bool:
        return any(re.fullmatch(r"[+-]?\d+", c) for c in cells)

    if rows and not has_int(rows[0][1]):
        first = rows[0][1]
        below_int = len(rows) > 1 and has_int(rows[1][1])
        if len(first) > 1 or below_int or first[0].lower() in {"label", "labels", "name", "class", "mid"}:
            rows = rows[1:]  # a header
    classes = []
    for n, cells in rows:
        words = [c for c in cells if not re.fullmatch(r"[+-]?\d+|/[a-z]/\w+", c)]  # not an index or a mid
        if len(words) != 1:
            raise FetchError(f"{name} line {n}: expected one class name, got {','.join(cells)!r}")
        classes.append(words[0])
    repeated = sorted({c for c in classes if classes.count(c) > 1})
    if not classes or repeated:
        raise FetchError(f"{name}: {'repeated classes ' + ', '.join(repeated) if repeated else 'no classes'}")
    return classes


def _read_meta(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise FetchError(f"{path.name}: unreadable metadata ({reason(err)})") from err
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise FetchError(
            f"{path.name}: column(s) {', '.join(missing)} missing (has {','.join(frame.columns)})"
        )
    frame = frame.assign(fname=frame["fname"].str.strip())
    return frame.assign(labels=frame["labels"].map(lambda v: format_labels(parse_labels(v))))


def write_layout(root: Path, spec: DatasetSpec = FSDKAGGLE2019) -> FetchSummary:
    """Write the label CSVs, sample_submission.csv and truth/test.csv from the metadata in ``root/meta``.

    Every row of the metadata is kept; rows without audio and audio without rows become notes (``check``
    reports them), so nothing is dropped silently.
    """
    meta = root / next(g.target for g in spec.groups if g.kind == "csv")
    try:
        classes = parse_vocabulary((meta / spec.vocabulary).read_text(encoding="utf-8"), spec.vocabulary)
    except OSError as err:
        raise FetchError(f"{spec.vocabulary}: missing from {meta} ({reason(err)})") from err
    tables = {
        split: _read_meta(
            meta / spec.meta[f"{folder}.csv"], ("fname", "labels") + (("usage",) if split == "test" else ())
        )
        for split, folder in SPLITS.items()
    }
    known, notes = set(classes), []
    for split, table in tables.items():
        unknown = sorted({x for v in table["labels"] for x in parse_labels(v)} - known)
        if unknown:
            raise FetchError(
                f"{spec.meta[SPLITS[split] + '.csv']}: labels not in {spec.vocabulary}: "
                f"{', '.join(unknown[:5])}"
            )
        folder = root / SPLITS[split]
        present = (
            {p.name for p in folder.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES}
            if folder.is_dir()
            else set()
        )
        listed = set(table["fname"])
        for names, what in (
            (listed - present, "metadata row(s) without an audio file"),
            (present - listed, "audio file(s) not in the metadata"),
        ):
            if names:
                notes.append(f"{folder.name}: {len(names)} {what} (e.g. {sorted(names)[0]})")
    for split in ("curated", "noisy"):
        write_csv(root / f"{SPLITS[split]}.csv", tables[split][["fname", "labels"]])
    test = tables["test"]
    submission = pd.DataFrame(0, index=range(len(test)), columns=classes)
    submission.insert(0, "fname", test["fname"].to_numpy())
    write_csv(root / SUBMISSION, submission)
    write_csv(root / "truth" / "test.csv", test[["fname", "labels", "usage"]])
    clips = {split: len(table) for split, table in tables.items()}
    return FetchSummary(root, len(classes), clips, notes=notes)


# ---------------------------------------------------------------- the whole fetch


def plan(
    root: str | Path, files: Sequence[RemoteFile], spec: DatasetSpec = FSDKAGGLE2019
) -> list[PlannedFile]:
    """What a fetch into ``root`` would do with each file of the record (for ``--dry-run``)."""
    root, out = Path(root), []
    groups = group_files(spec, files)
    for group in spec.groups:
        for f in groups.get(group.archive, []):
            path, part = root / DOWNLOADS / f.name, root / DOWNLOADS / f"{f.name}.part"
            if is_unpacked(root, group, groups[group.archive]):
                out.append(PlannedFile(f, group.archive, "unpacked", f.size))
            elif path.is_file():
                out.append(PlannedFile(f, group.archive, "downloaded", f.size))
            elif part.is_file():
                out.append(PlannedFile(f, group.archive, "partial", min(part.stat().st_size, f.size)))
            else:
                out.append(PlannedFile(f, group.archive, "missing", 0))
    return out


class _Bar(Progress):
    """One file's bar, moving the overall bar with it; a note goes into its description."""

    def __init__(self, bars: _Bars, name: str, size: int, held: int):
        self.bars, self.name = bars, name
        self.task = bars.progress.add_task(name, total=size, completed=held)

    def _move(self, n: float) -> None:
        self.bars.progress.update(self.task, advance=n)
        if self.bars.total is not None:
            self.bars.progress.update(self.bars.total, advance=n)

    def advance(self, n: int) -> None:
        self._move(n)

    def restart(self) -> None:
        self._move(-self.bars.progress.tasks[self.task].completed)

    def note(self, text: str) -> None:
        self.bars.progress.update(self.task, description=f"{self.name} [yellow]({text})[/]")


class _Bars:
    """The rich progress display of a fetch: all downloads, the current file, the current unpacking."""

    def __init__(self, enabled: bool):
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
        self.progress = Progress(*columns, TimeRemainingColumn(), disable=not enabled)
        self.total = None

    def unpack(self, name: str) -> Callable[[int, int], None]:
        """``report(done, total)`` for :func:`unpack`."""
        task = self.progress.add_task(f"unpack {name}", total=None)
        return lambda done, total: self.progress.update(task, completed=done, total=total)


def fetch(
    root: str | Path,
    dataset: str = "fsdkaggle2019",
    record: int | None = None,
    api_url: str = API_URL,
    keep_archives: bool = True,
    progress: bool = True,
    policy: RetryPolicy | None = None,
    timeout: float = 60.0,
) -> FetchSummary:
    """Download, verify and unpack a data set into ``root`` and write its layout; a re-run resumes.

    Groups are done one at a time (meta, doc, curated, test, noisy): download its files, unpack, mark it
    unpacked, then (``keep_archives=False``) delete its archives. When every group is already unpacked the
    API is not asked at all, so a finished fetch re-writes the layout offline. ``policy`` governs the
    retries of the API call and of every file; ``timeout`` is per connect and per read, in seconds.
    """
    spec, root = dataset_spec(dataset), Path(root)
    policy, http = policy or RetryPolicy(), Http(timeout=timeout)
    downloads = root / DOWNLOADS
    done = all(is_unpacked(root, g) for g in spec.groups if g.required)
    files = [] if done else record_files(api_url, record or spec.record, http, policy)
    groups = group_files(spec, files) if files else {}
    todo = [g for g in spec.groups if g.archive in groups and not is_unpacked(root, g, groups[g.archive])]
    held = {f.name: _held(downloads, f) for g in todo for f in groups[g.archive]}
    wanted = [f for g in todo for f in groups[g.archive] if held[f.name] < f.size]
    need = sum(f.size - held[f.name] for f in wanted) + sum(f.size for g in todo for f in groups[g.archive])
    where = next(p for p in (root, *root.resolve().parents) if p.exists())
    if shutil.disk_usage(where).free < need:
        log.warning("%s: less free space than the ~%.1f GB the downloads and audio need", where, need / 1e9)
    bars, moved = _Bars(progress), 0
    with bars.progress:
        if wanted:
            total, done = sum(f.size for f in wanted), sum(held[f.name] for f in wanted)
            bars.total = bars.progress.add_task(f"all {len(wanted)} downloads", total=total, completed=done)
        for group in todo:
            files, paths = groups[group.archive], []
            for f in files:
                bar = _Bar(bars, f.name, f.size, held[f.name]) if f in wanted else None
                paths.append(download_file(f, downloads, bar, policy, http))
                moved += f.size - held[f.name]
            log.info("unpacking %s into %s/", group.archive, group.target)
            n = unpack(paths, root / group.target, group.kind, bars.unpack(group.archive))
            checksums = {f.name: f.checksum for f in files}
            write_json(_unpacked_marker(root, group), {"files": n, "checksums": checksums})
            if not keep_archives:
                for path in paths:
                    path.unlink(missing_ok=True)
                    verified_marker(path).unlink(missing_ok=True)
    summary = write_layout(root, spec)
    summary.downloaded = moved
    return summary


def _held(folder: Path, file: RemoteFile) -> int:
    """Bytes of ``file`` already in ``folder``: all of it when finished, else what its ``.part`` holds."""
    if (folder / file.name).is_file():
        return file.size
    part = folder / f"{file.name}.part"
    return min(part.stat().st_size, file.size) if part.is_file() else 0
