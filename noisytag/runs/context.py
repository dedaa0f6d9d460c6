"""The shared start of every stage: validated data, adopted config, feature caches, folds, truth.

:func:`open_run` returns a :class:`RunContext` that the pipeline's stages read from. Paths and the
config / run.json rules belong to :class:`noisytag.rundir.RunDir`; kill-safe writing to
:mod:`noisytag.fileio`.

Ranks started together (torchrun, SLURM) do not race: one writer (global rank zero) adopts the config,
builds the feature caches and the folds, then writes ``RUN/.prepared``; every other process waits for
that marker and only reads. The marker holds what a reader can compute itself (the config's hash and
the cache signatures of the audio files on disk), so a marker left by an earlier launch of the same
run is only taken when nothing would change. A writer that fails among ranks launched together leaves
``RUN/.prepare-failed``, so the readers stop with its message instead of waiting.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch.distributed as dist
from lightning.fabric.utilities.rank_zero import rank_zero_only

from noisytag.audio.cache import (
    DONE,
    FeatureCache,
    build_cache,
    build_signatures,
    cache_folder,
    default_cache_dir,
)
from noisytag.config import RunConfig
from noisytag.data.dataset import Dataset, multi_hot
from noisytag.data.manifest import load_data
from noisytag.fileio import write_json
from noisytag.learn.folds import load_folds, load_or_make_folds
from noisytag.learn.loader import ClipSet
from noisytag.plan import RunPlan
from noisytag.rundir import RunDir
from noisytag.runs.validate import checked_plan

log = logging.getLogger(__name__)

LABELLED = ("curated", "noisy")
PREPARE_TIMEOUT_ENV = "NOISYTAG_PREPARE_TIMEOUT"  # seconds a reader waits for the writer (default 6 h)
PREPARE_TIMEOUT_S = 6 * 3600.0  # building the full FSDKaggle2019 cache takes hours on few cores
_POLL_S = 0.25
_STALE_FAILURE_S = 120.0  # a failure marker older than the reader's wait: taken after this long


def is_global_zero() -> bool:
    """True in the process that writes run-level files: global rank 0 of the distributed runtime.

    Inside a distributed job that rank comes from ``torch.distributed``. Before the process group
    exists, from the launcher's environment: ``RANK`` (torchrun) when set, else Lightning's
    ``rank_zero_only.rank`` (read at import from ``LOCAL_RANK`` of its own launcher or ``SLURM_PROCID``
    under srun; the global rank once a Trainer has set up) on node ``NODE_RANK`` 0, so a second node's
    local rank 0 under Lightning's launcher is never taken for the global one.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    if os.environ.get("RANK"):
        return int(os.environ["RANK"]) == 0
    return getattr(rank_zero_only, "rank", 0) == 0 and int(os.environ.get("NODE_RANK") or 0) == 0


def barrier() -> None:
    """Wait for every process of a distributed job (no-op in a single process)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


@dataclass(frozen=True)
class Split:
    """The clips of one split that have features, in folds.csv order (test: data-set order)."""

    clips: ClipSet  # cache positions and given-label targets
    fnames: list[str]
    labels: list[tuple[str, ...]]
    fold: np.ndarray | None  # (N,) fold of each clip; None for the test split
    truth: list[tuple[str, ...]] | None = None  # true label sets (truth/<split>.csv or a manifest's)
    usage: list[str] | None = None  # test: the leaderboard part of each clip (Public / Private)

    def rows(self, mask: np.ndarray) -> ClipSet:
        return self.clips.subset(mask)


@dataclass
class RunContext:
    """Everything a stage needs: config, run directory, data set, caches, folds and the three splits."""

    cfg: RunConfig
    plan: RunPlan  # what the config means: stages, training sets, ensemble (noisytag.plan)
    run: RunDir
    data_dir: Path
    classes: list[str]
    caches: dict[str, FeatureCache]
    splits: dict[str, Split]  # curated, noisy, test
    progress: bool = True
    selections: dict[tuple[str, int], pd.DataFrame] = field(default_factory=dict)  # (arch, stage) → clips

    @property
    def curated(self) -> Split:
        return self.splits["curated"]

    @property
    def noisy(self) -> Split:
        return self.splits["noisy"]

    @property
    def test(self) -> Split:
        return self.splits["test"]

    @property
    def truth_test(self) -> np.ndarray | None:
        """(N_test, K) multi-hot true labels of the test clips, when the data set has them."""
        truth = self.test.truth
        return None if truth is None else multi_hot(truth, self.classes)


def prepared_marker(run: RunDir) -> Path:
    """``RUN/.prepared``: written by the run's writer once config, feature caches and folds are ready
    (JSON: the config's hash and the cache signatures, no time, so reruns write the same bytes)."""
    return run.root / ".prepared"


def failed_marker(run: RunDir) -> Path:
    """``RUN/.prepare-failed``: the writer's error (JSON: config hash, error, time), for the readers."""
    return run.root / ".prepare-failed"


def feature_cache_dir(data_dir: str | Path, cfg: RunConfig) -> Path:
    """The feature cache root of a data set: ``data.cache_dir``, else where ``noisytag features`` puts
    it (:func:`~noisytag.audio.cache.default_cache_dir`: beside a manifest CSV, never under it)."""
    return Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(data_dir)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _built(cache_dir: Path, signatures: dict[str, str]) -> bool:
    """Whether each cache folder's ``done`` holds its signature (complete for the files on disk)."""
    with contextlib.suppress(OSError):
        return all((cache_dir / name / DONE).read_text() == s for name, s in signatures.items())
    return False


def _not_ready(run: RunDir, prepared: dict, cache_dir: Path) -> str | None:
    """Why the run is not yet prepared as ``prepared`` says (None: it is)."""
    marker = _read_json(prepared_marker(run))
    if marker is None:
        return f"no {prepared_marker(run).name} marker yet"
    if marker != prepared:
        return f"its {prepared_marker(run).name} marker is for another config or other audio files"
    if not _built(cache_dir, prepared["caches"]):
        return f"the feature cache in {cache_dir} is not complete"
    if not run.folds.is_file():
        return f"no {run.folds.name} yet"
    return None


def wait_for_writer(run: RunDir, prepared: dict, cache_dir: Path, timeout: float | None = None) -> None:
    """Return once the run's writer (global rank zero) has prepared ``run`` as this process would:
    its marker holds ``prepared`` (this config's hash and the cache signatures of the audio files on
    disk now), every cache folder is built for them and folds.csv exists.

    One-line RuntimeError naming the run directory when the writer reports a failure for this config,
    or after ``timeout`` seconds (default ``$NOISYTAG_PREPARE_TIMEOUT``, else 6 h).
    """
    if timeout is None:
        timeout = float(os.environ.get(PREPARE_TIMEOUT_ENV) or PREPARE_TIMEOUT_S)
    started = time.monotonic()
    before = _read_json(failed_marker(run))  # maybe left by an earlier launch: the writer removes it
    waiting = False
    while (why := _not_ready(run, prepared, cache_dir)) is not None:
        failure = _read_json(failed_marker(run))
        waited = time.monotonic() - started
        if failure is not None and failure.get("config") == prepared["config"]:
            if failure != before or waited > _STALE_FAILURE_S:
                raise RuntimeError(
                    f"{run.root}: global rank zero failed to prepare the run: {failure['error']}"
                )
        if waited > timeout:
            raise RuntimeError(
                f"{run.root}: waited {timeout:.0f} s for global rank zero to prepare the run ({why}); "
                f"is it running? ({PREPARE_TIMEOUT_ENV} sets the wait in seconds)"
            )
        if not waiting:
            log.info("waiting for global rank zero to prepare %s (%s)", run.root, why)
            waiting = True
        time.sleep(_POLL_S)


def _record_failure(run: RunDir, cfg: RunConfig, err: BaseException) -> None:
    """Leave the writer's error for the readers when ranks were launched together (torchrun's
    WORLD_SIZE, srun's SLURM_NTASKS); a single process, or Lightning's launcher before it starts the
    other ranks, has nobody waiting and leaves nothing."""
    if int(os.environ.get("WORLD_SIZE") or os.environ.get("SLURM_NTASKS") or 1) <= 1:
        return
    error = " ".join(f"{type(err).__name__}: {err}".split())
    record = {"config": cfg.hash(), "error": error, "time": time.time(), "pid": os.getpid()}
    try:
        write_json(failed_marker(run), record)
    except OSError as failed:
        log.warning("%s: could not record the failure for the other ranks: %s", run.root, failed)


def open_caches(
    data_dir: Path, cfg: RunConfig, progress: bool, data: Dataset | None = None, build: bool = True
) -> dict[str, FeatureCache]:
    """Build (or reuse) the feature cache of each split and open it (a manifest's splits share one;
    ``data``: the data set already loaded, so a manifest is not read twice; ``build=False``: open
    what the writer built, never write)."""
    cache_dir = feature_cache_dir(data_dir, cfg)
    splits = (*LABELLED, "test")
    if build:
        build_cache(
            data_dir,
            cache_dir,
            cfg.frontend,
            splits=splits,
            workers=cfg.data.workers,
            progress=progress,
            data=data,
        )
    opened: dict[str, FeatureCache] = {}
    for split in splits:
        folder = cache_folder(data_dir, split)
        if folder not in opened:
            opened[folder] = FeatureCache.open(cache_dir, cfg.frontend, folder)
            for fname, reason in opened[folder].failed:  # a manifest's clips are keyed by their path
                path = Path(fname) if Path(fname).is_absolute() else Path(data_dir) / folder / fname
                log.warning("%s left out: %s", path, reason)
    return {s: opened[cache_folder(data_dir, s)] for s in splits}


def _with_features(split: str, frame: pd.DataFrame, cache: FeatureCache) -> pd.DataFrame:
    """The rows of a split table whose clip the cache holds (files that failed extraction drop out)."""
    held = frame["key"].isin(set(cache.index["fname"]))
    if not held.all():
        log.warning("%s: %d clip(s) without features are left out", split, int((~held).sum()))
    return frame[held].reset_index(drop=True)


def _column(frame: pd.DataFrame, name: str) -> list | None:
    return list(frame[name]) if name in frame.columns else None


def open_run(
    data_dir: str | Path,
    run_dir: str | Path,
    cfg: RunConfig,
    force: bool = False,
    progress: bool = True,
    writer: bool | None = None,
    plan: RunPlan | None = None,
) -> RunContext:
    """Validate data, adopt the config, build caches and folds: the shared start of every stage.

    ``writer``: whether this process prepares and records the run (saves config.yaml, builds the
    feature caches and folds.csv, writes the ``.prepared`` marker, marks run.json started); default:
    global rank zero. Every other process (DDP ranks, Ray tasks) waits for the marker
    (:func:`wait_for_writer`), checks its config against the saved one and only reads. ``plan``: the
    validated plan of ``cfg`` the command built once (:func:`checked_plan`); default: built here.
    """
    data_dir, run = Path(data_dir), RunDir(run_dir)
    writer = is_global_zero() if writer is None else writer
    if writer:
        failed_marker(run).unlink(missing_ok=True)  # an earlier launch's failure is not this one's
    try:
        plan = plan or checked_plan(cfg)  # validates the whole config before any data is read
        data = load_data(data_dir, skip_invalid=cfg.data.skip_invalid)
        for problem in data.problems:
            log.warning("skipped: %s", problem)
        cache_dir, splits = feature_cache_dir(data_dir, cfg), (*LABELLED, "test")
        prepared = {"config": cfg.hash(), "caches": build_signatures(data_dir, cfg.frontend, splits, data)}
        if writer:
            run.adopt_config(cfg, force, plan)
        else:
            wait_for_writer(run, prepared, cache_dir)
            run.check_config(cfg, force, plan)
        caches = open_caches(data_dir, cfg, progress, data, build=writer)
        frames = {s: _with_features(s, data.split(s), caches[s]) for s in splits}
        kept = Dataset(data.root, data.classes, frames["curated"], frames["noisy"], frames["test"])
        if writer:
            folds = load_or_make_folds(run.folds, kept, cfg.train.folds, cfg.train.seed)
            write_json(prepared_marker(run), prepared)
        else:
            folds = load_folds(run.folds, kept, cfg.train.folds)
    except BaseException as err:
        if writer:
            _record_failure(run, cfg, err)
        raise
    split_data = {}
    for split, frame in frames.items():
        fnames = list(frame["fname"])
        labels = [tuple(x) for x in frame["labels"]]
        positions = np.array([caches[split].position(k) for k in frame["key"]], dtype=np.int64)
        fold = None
        if split in LABELLED:
            table = folds[folds["split"] == split].set_index("fname")["fold"]
            fold = table.loc[fnames].to_numpy(dtype=np.int64)
        clips = ClipSet(np.full(len(fnames), split, dtype=object), positions, multi_hot(labels, data.classes))
        truth = _column(frame, "truth")
        split_data[split] = Split(clips, fnames, labels, fold, truth, _column(frame, "usage"))
    if writer:
        run.mark_started(data_dir)
    return RunContext(cfg, plan, run, data_dir, list(data.classes), caches, split_data, progress=progress)
