"""Download a public data set from Zenodo and arrange it in the competition layout (see :mod:`noisytag.data.dataset`).

``fetch(root)`` reads the record's file list from the records API, downloads every archive into
``root/.downloads/`` (resuming ``<name>.part`` files with HTTP range requests, md5-verified), unpacks each
archive group flat into its folder (a split ``.z01 … .zip`` archive is read in place through
:func:`open_zip`) and writes the label CSVs, ``sample_submission.csv`` and ``truth/test.csv`` from the
record's metadata. Every step leaves a finished state a re-run recognises (verified marker, unpacked
marker, folder renamed into place), so a killed fetch continues where it stopped.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path

import pandas as pd

from noisytag.data.files import AUDIO_SUFFIXES
from noisytag.data.dataset import SPLITS, SUBMISSION, format_labels, parse_labels
from noisytag.fileio import write_csv, write_json
from noisytag.data.splitzip import open_zip

log = logging.getLogger(__name__)

API_URL = "https://zenodo.org/api/records"
DOWNLOADS = ".downloads"
CHUNK = 1 << 20
USER_AGENT = "noisytag-fetch"


class FetchError(RuntimeError):
    """A fetch step failed; the message is one line naming the file and what went wrong."""


# ---------------------------------------------------------------- what a data set is made of


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
class RemoteFile:
    name: str
    size: int
    checksum: str | None  # "md5:<hex>" (any hashlib algorithm), None when the record gives none
    url: str


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


# ---------------------------------------------------------------- the record's file list


def parse_record(payload: dict, files_url: str) -> list[RemoteFile]:
    """The files of a Zenodo records-API answer (old and new shapes); ``files_url`` builds missing links."""
    entries = payload.get("files") if isinstance(payload, dict) else None
    if isinstance(entries, dict):
        entries = entries.get("entries", entries)
        entries = list(entries.values()) if isinstance(entries, dict) else entries
    if not isinstance(entries, list) or not entries:
        raise FetchError(f"{files_url}: the record lists no files")
    files = []
    for entry in entries:
        name = str(entry.get("key") or entry.get("filename") or "")
        if not name or "/" in name or "\\" in name or name.startswith("."):
            raise FetchError(f"{files_url}: unusable file name {name!r} in the record")
        checksum = str(entry.get("checksum") or "") or None
        if checksum and ":" not in checksum:
            checksum = f"md5:{checksum}"
        links = entry.get("links") or {}
        url = links.get("content") or links.get("download") or links.get("self")
        url = url or f"{files_url}/{urllib.parse.quote(name)}/content"
        files.append(RemoteFile(name, int(entry.get("size", entry.get("filesize", -1))), checksum, url))
    return files


def record_files(api_url: str, record: int, timeout: float = 60.0) -> list[RemoteFile]:
    """Ask the records API for the files of ``record``."""
    url = f"{api_url.rstrip('/')}/{record}"
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read().decode("utf-8"))
    except (OSError, HTTPException) as err:
        raise FetchError(
            f"record {record}: could not read its file list from {url} ({_reason(err)})"
        ) from err
    except ValueError as err:
        raise FetchError(f"record {record}: {url} did not answer JSON ({err})") from err
    return parse_record(payload, f"{url}/files")


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


# ---------------------------------------------------------------- downloading


def _reason(err: BaseException) -> str:
    """One line for a network error."""
    if isinstance(err, urllib.error.HTTPError):
        return f"HTTP {err.code} {err.reason}"
    if isinstance(err, urllib.error.URLError):
        return str(err.reason)
    return " ".join(f"{type(err).__name__}: {err}".split()).rstrip(": ")


def _hasher(path: Path, algorithm: str):
    """A hashlib object fed with the bytes of ``path``."""
    hasher = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            hasher.update(block)
    return hasher


class _Part:
    """A ``.part`` file being appended to, and the running hash of its bytes (one read of an old part)."""

    def __init__(self, path: Path, algorithm: str):
        self.algorithm, self.fh = algorithm, open(path, "ab")  # noqa: SIM115 - closed by close()
        self.hasher, self.have = _hasher(path, algorithm), path.stat().st_size

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.hasher.update(data)
        self.have += len(data)

    def reset(self) -> None:
        self.fh.truncate(0)
        self.hasher, self.have = hashlib.new(self.algorithm), 0

    def close(self) -> None:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()


def _transfer(file: RemoteFile, part: _Part, timeout: float, advance: Callable[[int], None]) -> None:
    """One HTTP request for the bytes ``part`` lacks; a server ignoring the range starts the file over."""
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={part.have}-"} if part.have else {})}
    try:
        response = urllib.request.urlopen(urllib.request.Request(file.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and part.have:  # the range does not fit the file: start over
            part.reset()
            advance(-1)
            return
        raise
    with response:
        start = 0
        if response.status == 206:
            found = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
            start = int(found.group(1)) if found else -1
        if start != part.have:
            log.info(
                "%s: the server did not resume at byte %d; downloading it from the start",
                file.name,
                part.have,
            )
            part.reset()
            advance(-1)
            if response.status == 206:
                return
        remaining = file.size - part.have
        while remaining > 0:
            data = response.read(min(CHUNK, remaining))
            if not data:
                raise ConnectionError("the server closed the connection")
            part.write(data)
            remaining -= len(data)
            advance(len(data))


def _marker(path: Path) -> Path:
    return path.with_name(f"{path.name}.verified")


def _refuse(file: RemoteFile, path: Path, digest: str) -> FetchError:
    """Move a file whose checksum does not match aside (kept as ``.bad``) and say so in one line."""
    bad = path.with_name(f"{file.name}.bad")
    os.replace(path, bad)
    return FetchError(
        f"{file.name}: bad checksum ({file.checksum.split(':')[0]} {digest}, the record says "
        f"{file.checksum.split(':', 1)[1]}); the download is kept as {bad}, run again to download it anew"
    )


def download(
    file: RemoteFile,
    folder: Path,
    advance: Callable[[int], None] = lambda n: None,
    retries: int = 0,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
) -> Path:
    """Download ``file`` into ``folder`` (resuming its ``.part``) and verify it; a verified file is kept.

    ``advance(n)`` reports n more bytes received (``-1``: the file starts over). A network error (after
    ``retries`` resumed attempts) or a bad checksum raises :class:`FetchError`; received bytes stay.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path, part_path = folder / file.name, folder / f"{file.name}.part"
    algorithm, _, expected = (file.checksum or "md5:").partition(":")
    if algorithm not in hashlib.algorithms_available:
        raise FetchError(f"{file.name}: unknown checksum algorithm {algorithm!r}")
    if not expected:
        log.warning("%s: the record gives no checksum; the download is not verified", file.name)
    if path.is_file():
        stat = path.stat()
        stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "checksum": file.checksum}
        with contextlib.suppress(OSError, ValueError):
            if json.loads(_marker(path).read_text()) == stamp:
                return path
        digest = _hasher(path, algorithm).hexdigest()
        if expected and digest != expected:
            raise _refuse(file, path, digest)
        write_json(_marker(path), stamp)
        return path
    part = _Part(part_path, algorithm)
    if part.have > file.size:
        part.reset()
    failures = 0
    try:
        while part.have < file.size:
            try:
                _transfer(file, part, timeout, advance)
            except (OSError, HTTPException) as err:
                final = (
                    isinstance(err, urllib.error.HTTPError) and err.code < 500 and err.code not in (408, 429)
                )
                if failures >= retries or final:
                    raise FetchError(
                        f"{file.name}: network error after {part.have:,} of {file.size:,} bytes "
                        f"({_reason(err)}); kept {part_path.name}, run again to resume"
                    ) from err
                failures += 1
                log.warning("%s: %s; resuming at byte %d", file.name, _reason(err), part.have)
                time.sleep(retry_wait * 2 ** (failures - 1))
    finally:
        part.close()
    digest = part.hasher.hexdigest()
    if expected and digest != expected:
        raise _refuse(file, part_path, digest)
    os.replace(part_path, path)
    stat = path.stat()
    write_json(_marker(path), {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "checksum": file.checksum})
    return path


# ---------------------------------------------------------------- unpacking


def _wanted(kind: str, member: str) -> bool:
    """Whether an archive member goes to its group's folder (junk such as __MACOSX/ and dot files never)."""
    parts = member.replace("\\", "/").split("/")
    if member.endswith("/") or "__MACOSX" in parts or parts[-1].startswith("."):
        return False
    suffix = Path(parts[-1]).suffix.lower()
    return (
        kind == "any"
        or (kind == "audio" and suffix in AUDIO_SUFFIXES)
        or (kind == "csv" and suffix == ".csv")
    )


def unpack(
    parts: Sequence[Path],
    target: Path,
    kind: str,
    report: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """Extract the chosen members of an archive flat (by file name, any nesting) into ``target``; resumable.

    Files go to a hidden ``.<target>.partial`` folder (one file at a time, by temporary name + rename), which
    is renamed to ``target`` when complete; files already there with the right size are not extracted again.
    ``report(done, total)`` follows the bytes written. Returns the number of files; an unreadable archive
    raises :class:`FetchError` naming it.
    """
    name, partial = parts[-1].name, target.with_name(f".{target.name}.partial")
    if target.exists():
        if partial.exists():
            raise FetchError(f"{target} and {partial} both exist; remove one and run again")
        target.rename(partial)  # an unmarked folder: check it against the archive like a partial one
    partial.mkdir(parents=True, exist_ok=True)
    try:
        with open_zip(parts) as zf:
            chosen: dict[str, zipfile.ZipInfo] = {}
            for info in zf.infolist():
                if _wanted(kind, info.filename):
                    base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
                    if base in chosen:
                        raise FetchError(
                            f"{name}: two files named {base} ({chosen[base].filename}, {info.filename})"
                        )
                    chosen[base] = info
            if not chosen:
                raise FetchError(f"{name}: no {'audio ' if kind == 'audio' else ''}files in the archive")
            done, total = 0, sum(info.file_size for info in chosen.values())
            for base, info in sorted(chosen.items(), key=lambda kv: kv[1].header_offset):
                dest = partial / base
                if not (dest.is_file() and dest.stat().st_size == info.file_size):
                    tmp = partial / f".{base}.tmp"
                    with zf.open(info) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                    os.replace(tmp, dest)
                done += info.file_size
                report(done, total)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, struct.error, IndexError) as err:
        raise FetchError(f"{name}: unreadable zip archive ({_reason(err)})") from err
    except OSError as err:
        raise FetchError(f"{name}: could not unpack into {partial} ({_reason(err)})") from err
    for stale in partial.glob(".*.tmp"):  # left by a killed run
        stale.unlink()
    os.replace(partial, target)
    return len(chosen)


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
        raise FetchError(f"{path.name}: unreadable metadata ({_reason(err)})") from err
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
        raise FetchError(f"{spec.vocabulary}: missing from {meta} ({_reason(err)})") from err
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

    def download(self, name: str, size: int, held: int) -> Callable[[int], None]:
        """``advance(n)`` for :func:`download`: moves the file's bar and the overall one; -1 starts over."""
        task = self.progress.add_task(name, total=size, completed=held)

        def advance(n: int) -> None:
            undo = -self.progress.tasks[task].completed if n < 0 else n
            self.progress.update(task, advance=undo)
            if self.total is not None:
                self.progress.update(self.total, advance=undo)

        return advance

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
    retries: int = 3,
    retry_wait: float = 2.0,
    timeout: float = 60.0,
) -> FetchSummary:
    """Download, verify and unpack a data set into ``root`` and write its layout; a re-run resumes.

    Groups are done one at a time (meta, doc, curated, test, noisy): download its files, unpack, mark it
    unpacked, then (``keep_archives=False``) delete its archives. When every group is already unpacked the
    API is not asked at all, so a finished fetch re-writes the layout offline.
    """
    spec, root = dataset_spec(dataset), Path(root)
    downloads = root / DOWNLOADS
    done = all(is_unpacked(root, g) for g in spec.groups if g.required)
    groups = {} if done else group_files(spec, record_files(api_url, record or spec.record, timeout))
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
                bar = bars.download(f.name, f.size, held[f.name]) if f in wanted else (lambda n: None)
                paths.append(download(f, downloads, bar, retries, retry_wait, timeout))
                moved += f.size - held[f.name]
            log.info("unpacking %s into %s/", group.archive, group.target)
            n = unpack(paths, root / group.target, group.kind, bars.unpack(group.archive))
            checksums = {f.name: f.checksum for f in files}
            write_json(_unpacked_marker(root, group), {"files": n, "checksums": checksums})
            if not keep_archives:
                for path in paths:
                    path.unlink(missing_ok=True)
                    _marker(path).unlink(missing_ok=True)
    summary = write_layout(root, spec)
    summary.downloaded = moved
    return summary


def _held(folder: Path, file: RemoteFile) -> int:
    """Bytes of ``file`` already in ``folder``: all of it when finished, else what its ``.part`` holds."""
    if (folder / file.name).is_file():
        return file.size
    part = folder / f"{file.name}.part"
    return min(part.stat().st_size, file.size) if part.is_file() else 0
