"""Feature cache: every clip's log-mel (or PCEN: ``frontend.kind``) extracted once, stored as one flat
float16 array + an index.

Layout of ``CACHE_DIR/<FrontendConfig.key()>/<split folder>/`` (changing any front-end parameter
changes the key, so a new cache is built beside the old one instead of silently reusing it):

- ``frames.f16``   raw float16, row-major (total_frames, n_mels): a clip is the contiguous row range
  ``[offset, offset + n_frames)``; append-only while building.
- ``progress.jsonl`` one JSON line per finished file (its size/mtime, offset, n_frames, lo, hi,
  duration — or the error), appended only after the clip's rows are written to ``frames.f16``.
- ``index.csv``    fname, offset, n_frames, lo, hi, duration of the current files, sorted by fname.
- ``cache.json``   front-end parameters, sizes, and the failed files [(fname, reason)] (the cache info;
  caches built before 0.4 name it ``manifest.json``, still read).
- ``done``         signature of the extracted file list (names, sizes, mtimes), written last.

Kill safety (kill -9 at any moment): on restart the progress log is cut after its last complete line,
``frames.f16`` is truncated to the end of the last logged clip (dropping a half-written one) and only
unlogged files are extracted. ``index.csv``, ``cache.json`` and ``done`` are written atomically
(temporary file + rename). When ``done`` matches the files on disk, a build returns at once; files
added or changed later are appended (their old rows stay in ``frames.f16`` but leave the index).

``lo``/``hi`` are the min/max of the STORED (float16-rounded) dB values of the clip, so min-max
normalisation maps every stored value into [0, 1] exactly. float16 keeps ≥ 0.03 dB resolution over
−100…+128 dB — ten times finer than the original 8-bit images (SPEC §2.6).

What a clip's rows hold is :func:`noisytag.audio.model_input.extract_clip`'s (the one owner of clip →
model input); :mod:`noisytag.audio.extract` runs it over many files in a crash-isolating process pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import mmap
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from noisytag.audio.decode import audio_files
from noisytag.audio.extract import init_worker as _init_worker  # noqa: F401  (benchmarks/bench_features.py)
from noisytag.audio.extract import ordered_results
from noisytag.audio.extract import work as _work  # noqa: F401  (benchmarks/bench_features.py)
from noisytag.audio.model_input import widen
from noisytag.config import FrontendConfig
from noisytag.data.dataset import SPLITS, Dataset
from noisytag.data.manifest import is_manifest, load_manifest
from noisytag.fileio import write_text

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
FRAMES, PROGRESS, INDEX = "frames.f16", "progress.jsonl", "index.csv"
CACHE_INFO, DONE, LOCK = "cache.json", "done", ".lock"
OLD_CACHE_INFO = "manifest.json"  # the cache info's name before 0.4: read when cache.json is absent
INDEX_COLUMNS = ["fname", "offset", "n_frames", "lo", "hi", "duration"]
_DTYPE = np.dtype("<f2")
# Reading a page of a mapping also maps its cached neighbours (the kernel's fault-around, 64 KB),
# so each read range is counted as up to this much more towards the resident budget.
_FAULT_AROUND = 128 * 1024
POOL = "files"  # the cache folder of manifest clips, keyed by resolved path and shared by manifests
_SYNC_SECONDS = 10.0  # fsync data + log at most this often (kill -9 needs only the write order)


class CacheError(RuntimeError):
    """The cache is missing, incomplete or does not match the front end; the message says which."""


def default_cache_dir(data_dir: str | Path) -> Path:
    """Where features are cached unless configured: ``DATA_DIR/.noisytag-cache`` (beside a manifest)."""
    data_dir = Path(data_dir)
    return (data_dir.parent if is_manifest(data_dir) else data_dir) / ".noisytag-cache"


def split_folder(split: str) -> str:
    """Split key ("curated", "noisy", "test") or folder name ("train_curated", …, or the manifest
    pool "files") → folder name."""

    if split in SPLITS:
        return SPLITS[split]
    if split in (*SPLITS.values(), POOL):
        return split
    raise CacheError(f"unknown split '{split}' (expected one of {', '.join(SPLITS)})")


def split_dir(cache_dir: str | Path, cfg: FrontendConfig, split: str) -> Path:
    """``cache_dir/<cfg.key()>/<split folder>``: the directory of one split's features."""
    return Path(cache_dir) / cfg.key() / split_folder(split)


# ----------------------------------------------------------------------------------------------
# building


def _signature(files: list[tuple[str, int, int]], cfg: FrontendConfig) -> str:
    """What ``done`` holds: the front end's identity (a log-mel cache's as before ``frontend.kind``), files."""
    payload = json.dumps([FORMAT_VERSION, cfg.identity(), files])
    return hashlib.sha256(payload.encode()).hexdigest()


def _recover(out: Path, n_mels: int) -> tuple[list[dict], int]:
    """Repair after a crash → (valid progress entries in log order, rows in frames.f16).

    Keeps log lines up to the first incomplete one or the first whose rows are not fully in the data
    file, truncates frames.f16 after the last kept clip and rewrites the log if anything was dropped.
    """
    row_bytes = n_mels * _DTYPE.itemsize
    log_path, frames_path = out / PROGRESS, out / FRAMES
    lines = log_path.read_bytes().split(b"\n") if log_path.exists() else []
    on_disk = frames_path.stat().st_size // row_bytes if frames_path.exists() else 0
    entries: list[dict] = []
    rows = 0
    complete = len(lines) - 1  # text after the last newline is an unfinished line
    for raw in lines[:complete]:
        try:
            entry = json.loads(raw)
        except ValueError:
            break
        if "error" not in entry:
            if entry.get("offset") != rows or rows + entry.get("n_frames", 0) > on_disk:
                break
            rows += entry["n_frames"]
        entries.append(entry)
    if len(entries) != max(complete, 0) or (lines and lines[-1]):
        logger.info("%s: resuming after an interrupted run (%d clips kept)", out, len(entries))
        write_text(log_path, "".join(json.dumps(e) + "\n" for e in entries))
    if frames_path.exists() and frames_path.stat().st_size != rows * row_bytes:
        with open(frames_path, "r+b") as f:
            f.truncate(rows * row_bytes)
    return entries, rows


def _build_group(
    clips: Sequence[tuple[str, Path]], out: Path, cfg: FrontendConfig, workers: int, bar, keep_others: bool
) -> None:
    """Extract clips (key, audio path) into ``out`` (resumable); ``bar(total)`` → advance callable.

    The index lists the given clips; with ``keep_others`` also every clip indexed before (a shared
    pool of several manifests: building for one never drops the other's clips).
    """
    import pandas as pd

    stats = [(key, p, p.stat()) for key, p in clips]
    files = [(key, st.st_size, st.st_mtime_ns) for key, _, st in stats]
    signature = _signature(files, cfg)
    out.mkdir(parents=True, exist_ok=True)
    done = out / DONE
    if done.exists() and done.read_text() == signature:
        return
    with open(out / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits, then finds the work done
        if done.exists() and done.read_text() == signature:
            return
        done.unlink(missing_ok=True)
        entries, rows = _recover(out, cfg.n_mels)
        current = {name: (size, mtime) for name, size, mtime in files}
        latest = {e["fname"]: e for e in entries if current.get(e["fname"]) == (e["size"], e["mtime"])}
        todo = [(key, p, st) for key, p, st in stats if key not in latest]
        advance = bar(len(todo))
        with open(out / FRAMES, "ab") as data, open(out / PROGRESS, "a") as log:
            synced = time.monotonic()
            results = ordered_results([str(p) for _, p, _ in todo], cfg, workers)
            for (key, path, st), res in zip(todo, results, strict=True):
                entry = {"fname": key, "size": st.st_size, "mtime": st.st_mtime_ns}
                if res[0] == "ok":
                    db, lo, hi, seconds = res[1:]
                    data.write(db.tobytes())
                    data.flush()  # rows reach the OS before the log line that points at them
                    entry.update(offset=rows, n_frames=len(db), lo=lo, hi=hi, duration=seconds)
                    rows += len(db)
                else:
                    entry["error"] = res[1]
                    logger.warning("%s: %s", path, res[1])
                log.write(json.dumps(entry) + "\n")
                log.flush()
                latest[key] = entry
                advance()
                if time.monotonic() - synced > _SYNC_SECONDS:
                    os.fsync(data.fileno())
                    os.fsync(log.fileno())
                    synced = time.monotonic()
            os.fsync(data.fileno())
            os.fsync(log.fileno())
        kept = [latest[name] for name, _, _ in files]
        ok = [e for e in kept if "error" not in e]
        index = pd.DataFrame([{k: e[k] for k in INDEX_COLUMNS} for e in ok], columns=INDEX_COLUMNS)
        if keep_others and (out / INDEX).exists():
            before = pd.read_csv(out / INDEX, dtype={"fname": str}, keep_default_na=False)
            index = pd.concat([before[~before["fname"].isin(current)], index], ignore_index=True)
        index = index.sort_values("fname", kind="stable").reset_index(drop=True)
        write_text(out / INDEX, index.to_csv(index=False))
        failed = [[e["fname"], e["error"]] for e in kept if "error" in e]
        info = {
            "format_version": FORMAT_VERSION,
            "key": cfg.key(),
            "split": out.name,
            "frontend": dataclasses.asdict(cfg),
            "dtype": "float16",
            "layout": "frames.f16 is row-major (total_frames, n_mels); clip = rows [offset, offset + n_frames)",
            "lo_hi": "min/max of the stored float16 dB values of each clip",
            "n_mels": cfg.n_mels,
            "total_frames": rows,
            "n_clips": len(index),
            "seconds": float(index["duration"].astype(float).sum()),
            "failed": failed,
        }
        write_text(out / CACHE_INFO, json.dumps(info, indent=1) + "\n")
        (out / OLD_CACHE_INFO).unlink(missing_ok=True)  # a rebuilt pre-0.4 cache keeps one info file
        write_text(done, signature)


def _groups(
    data_dir: Path, splits: Sequence[str], data: Dataset | None
) -> list[tuple[str, list[tuple[str, Path]]]]:
    """(cache folder, clips (key, path)) to extract: one folder per split folder of the competition
    layout (every audio file in it, keyed by file name), or the pool of a manifest's clips (read from
    ``data`` when the caller has loaded it already)."""
    if is_manifest(data_dir):
        if data is None:
            data = load_manifest(data_dir, skip_invalid=True, splits=tuple(splits))
        keys = {k for s in splits for k in data.split(s)["key"]}  # a manifest's key is the resolved path
        return [(POOL, [(k, Path(k)) for k in sorted(keys)])]
    groups = []
    for split in splits:
        folder = data_dir / split_folder(split)
        if not folder.is_dir():
            logger.warning("%s: split folder missing, skipped", folder)
            continue
        groups.append((folder.name, [(p.name, p) for p in audio_files(folder)]))
    return groups


def cache_folder(data_dir: str | Path, split: str) -> str:
    """The cache folder holding a split's clips: its split folder, or the pool for a manifest."""
    return POOL if is_manifest(data_dir) else split_folder(split)


def build_cache(
    data_dir: str | Path,
    cache_dir: str | Path,
    cfg: FrontendConfig = FrontendConfig(),
    splits: Sequence[str] = ("curated", "noisy", "test"),
    workers: int = 0,
    progress: bool = True,
    data: Dataset | None = None,
) -> Path:
    """Extract the clips of a data set into ``cache_dir/<cfg.key()>/`` → that directory.

    ``data_dir``: a folder in the competition layout (every audio file of each split folder goes to a
    cache folder of the same name) or a manifest CSV (its clips go to the shared ``files`` pool, keyed by
    resolved path). Resumable after any interruption; an up-to-date split returns at once. A missing
    split folder is skipped with a warning; unreadable files are logged, listed in the cache info and
    skipped. ``workers``: extraction processes (0 = all cores, 1 = this process). ``data``: the
    manifest's data set when already loaded (it is not read again).
    """
    data_dir = Path(data_dir)
    if not data_dir.exists():
        raise CacheError(f"{data_dir}: data directory does not exist")
    root = Path(cache_dir) / cfg.key()
    with contextlib.ExitStack() as stack:
        if progress:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

            bars = stack.enter_context(
                Progress(
                    "[progress.description]{task.description}",
                    BarColumn(),
                    MofNCompleteColumn(),
                    TimeRemainingColumn(),
                )
            )
        for folder, clips in _groups(data_dir, splits, data):

            def bar(total: int, name: str = folder):
                if not progress or total == 0:
                    return lambda: None
                task = bars.add_task(f"features {name}", total=total)
                return lambda: bars.advance(task)

            _build_group(clips, root / folder, cfg, workers, bar, keep_others=folder == POOL)
    return root


def build_signatures(
    data_dir: str | Path, cfg: FrontendConfig, splits: Sequence[str], data: Dataset | None = None
) -> dict[str, str]:
    """``{"<cfg.key()>/<cache folder>": signature}``: what each ``done`` holds once built for the audio
    files on disk now (only their sizes and times are read): a reader compares it, never building."""
    out = {}
    for folder, clips in _groups(Path(data_dir), splits, data):
        files = [(key, st.st_size, st.st_mtime_ns) for key, st in ((k, p.stat()) for k, p in clips)]
        out[f"{cfg.key()}/{folder}"] = _signature(files, cfg)
    return out


def build_folder_cache(
    folder: str | Path, cache_dir: str | Path, cfg: FrontendConfig, name: str, workers: int = 0
) -> FeatureCache:
    """Extract every audio file under ``folder`` (recursively; keyed by resolved path) into
    ``cache_dir/<cfg.key()>/<name>`` and open it: audio outside any data set (distillation's unlabelled
    clips). Resumable like :func:`build_cache`; CacheError when the folder holds no audio."""
    folder = Path(folder)
    files = audio_files(folder, recursive=True) if folder.is_dir() else []
    if not files:
        raise CacheError(f"{folder}: no audio files (.wav, .flac, .ogg, .mp3) in this folder")
    out = Path(cache_dir) / cfg.key() / name
    _build_group([(str(p.resolve()), p) for p in files], out, cfg, workers, lambda total: lambda: None, False)
    return FeatureCache(out, split=name)


# ----------------------------------------------------------------------------------------------
# reading


def read_cache_info(directory: str | Path) -> dict:
    """A built cache folder's ``cache.json``, or the ``manifest.json`` of one built before 0.4 (still valid)."""
    path = Path(directory) / CACHE_INFO
    old = Path(directory) / OLD_CACHE_INFO
    return json.loads((path if path.is_file() or not old.is_file() else old).read_text())


class FeatureCache:
    """Read access to one split of a built cache: the index and memory-mapped float16 frames.

    The frames file is mapped read-only; clips and windows are copied out as float32 dB. Pages a
    process has touched count towards its resident memory, so after ``resident_mb`` megabytes of reads
    the mapping is released with ``madvise(MADV_DONTNEED)`` (the data stays in the OS page cache and
    is faulted back cheaply): random reads over a 6 GB cache stay within a fixed footprint.
    Picklable, e.g. for DataLoader worker processes: a copy re-maps the files but keeps this index, so
    its positions stay valid while another process adds clips to the same cache.
    """

    def __init__(
        self,
        directory: str | Path,
        resident_mb: float = 32.0,
        split: str | None = None,
        index=None,
    ) -> None:
        import pandas as pd

        self.directory = Path(directory)
        self.split = split or self.directory.name  # the split name it was opened with
        if not (self.directory / DONE).exists():
            raise CacheError(
                f"{self.directory}: no complete feature cache here (run `noisytag features DATA_DIR`)"
            )
        self.info = read_cache_info(self.directory)
        self.n_mels = int(self.info["n_mels"])
        if index is None:
            index = pd.read_csv(
                self.directory / INDEX,
                dtype={
                    "fname": str,
                    "offset": np.int64,
                    "n_frames": np.int64,
                    "lo": np.float32,
                    "hi": np.float32,
                },
                keep_default_na=False,
            )
        self.index = index
        self.failed: list[tuple[str, str]] = [(f, r) for f, r in self.info["failed"]]
        self._offset = self.index["offset"].to_numpy(np.int64)
        self._n_frames = self.index["n_frames"].to_numpy(np.int64)
        self._lo = self.index["lo"].to_numpy(np.float32)
        self._positions: dict[str, int] | None = None
        self._resident_limit = int(resident_mb * 2**20)
        self._touched = 0
        self._mmap: mmap.mmap | None = None
        # Rows the index points at (frames.f16 only grows, and rows are on disk before their index line).
        total = int((self._offset + self._n_frames).max()) if len(self.index) else 0
        size = total * self.n_mels * _DTYPE.itemsize
        if size == 0:
            self.frames = np.zeros((0, self.n_mels), dtype=_DTYPE)
            return
        with open(self.directory / FRAMES, "rb") as f:
            if os.fstat(f.fileno()).st_size < size:
                raise CacheError(
                    f"{self.directory / FRAMES}: shorter than its cache info says (rebuild the cache)"
                )
            self._mmap = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        self.frames = np.frombuffer(self._mmap, dtype=_DTYPE).reshape(total, self.n_mels)

    @classmethod
    def open(cls, cache_dir: str | Path, cfg: FrontendConfig, split: str, resident_mb: float = 32.0):
        """The cache of ``split`` built by ``build_cache(…, cache_dir, cfg)`` (``cache_dir`` as given there)."""
        cache = cls(split_dir(cache_dir, cfg, split), resident_mb, split)
        if not cfg.same_as(cache.info.get("frontend")):
            raise CacheError(f"{cache.directory}: built with other front-end parameters than requested")
        return cache

    def __reduce__(self):
        return (type(self), (self.directory, self._resident_limit / 2**20, self.split, self.index))

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.directory)!r}, clips={len(self)}, frames={len(self.frames)})"

    def position(self, fname: str) -> int:
        """Row of ``fname`` in :attr:`index` (KeyError naming the file if it is not cached)."""
        if self._positions is None:
            self._positions = {name: i for i, name in enumerate(self.index["fname"])}
        try:
            return self._positions[fname]
        except KeyError:
            raise KeyError(f"{fname}: not in the feature cache {self.directory}") from None

    def _account(self, nbytes: int) -> None:
        self._touched += nbytes
        if self._mmap is not None and self._touched > self._resident_limit:
            self._mmap.madvise(mmap.MADV_DONTNEED)
            self._touched = 0

    def clip(self, i: int) -> np.ndarray:
        """Whole clip ``i`` as float32 dB (n_mels, T)."""
        o, n = int(self._offset[i]), int(self._n_frames[i])
        out = widen(self.frames[o : o + n][None])[0]
        self._account(n * self.n_mels * _DTYPE.itemsize + _FAULT_AROUND)
        return out

    def windows(self, indices, starts, width: int) -> np.ndarray:
        """Batched read → float32 dB (B, n_mels, width); window b = frames [starts[b], starts[b] + width) of clip indices[b].

        Frames past a clip's end (a clip shorter than ``width``, or a late start) are filled with that
        clip's ``lo``. All rows are gathered with one fancy index into the mapped frames.
        """
        idx, st = np.broadcast_arrays(
            np.asarray(indices, np.int64).ravel(), np.asarray(starts, np.int64).ravel()
        )
        if st.size and st.min() < 0:
            raise ValueError("window starts must be >= 0")
        t = st[:, None] + np.arange(width)  # (B, width) frame numbers within each clip
        valid = t < self._n_frames[idx][:, None]
        rows = self._offset[idx][:, None] + np.where(valid, t, 0)
        gathered = self.frames[rows.ravel()].reshape(len(idx), width, self.n_mels)
        out = widen(gathered)
        if not valid.all():
            np.copyto(out, self._lo[idx][:, None, None], where=~valid[:, None, :])
        self._account(rows.size * self.n_mels * _DTYPE.itemsize + len(idx) * _FAULT_AROUND)
        return out
