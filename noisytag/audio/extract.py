"""Extraction of many clips for the feature cache: a crash-isolating process pool around
:func:`noisytag.audio.model_input.extract_clip`, results in input order with bounded memory."""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

import numpy as np
import torch

from noisytag.audio.decode import AudioError
from noisytag.audio.features import LogMel, mel_filters
from noisytag.audio.model_input import extract_clip
from noisytag.config import FrontendConfig

_WORKER: tuple | None = None  # (cfg, LogMel) of a pool worker process


def init_worker(cfg_fields: dict, filters: np.ndarray) -> None:
    """Process-pool initialiser: one torch thread per process (the pool is the parallelism)."""
    global _WORKER
    torch.set_num_threads(1)
    cfg = FrontendConfig(**cfg_fields)
    _WORKER = (cfg, LogMel(cfg, filters=filters))


def work(path: str, cfg: FrontendConfig | None = None) -> tuple:
    """("ok", db, lo, hi, seconds) or ("error", reason) — never raises for a bad file.

    Without ``cfg`` it uses the worker's front end set by :func:`init_worker`.
    """
    try:
        if cfg is None:
            return ("ok", *extract_clip(path, *_WORKER))
        return ("ok", *extract_clip(path, cfg))
    except AudioError as err:
        return ("error", err.reason)
    except Exception as err:  # a decoder crash on one file must not stop 30,000 others
        return ("error", f"{type(err).__name__}: {err}")


def resolve_workers(workers: int) -> int:
    """``workers``, with 0 or less meaning every core."""
    return max(1, os.cpu_count() or 1) if workers <= 0 else workers


def ordered_results(paths: Sequence[str], cfg: FrontendConfig, workers: int) -> Iterator[tuple]:
    """:func:`work` results in input order; at most ``4 · workers`` clips in flight (flat memory).

    ``workers <= 1`` runs in this process. Pools use "spawn": forking a process that has already
    started torch's thread pools can deadlock. If a worker process dies (a decoder crash on a
    malformed file), the clips in flight are retried one by one in fresh processes, so only the
    culprit is reported as failed and the rest of the data set is still extracted.
    """
    workers = resolve_workers(workers)
    if workers == 1 or len(paths) <= 1:
        for p in paths:
            yield work(p, cfg)
        return
    ctx = multiprocessing.get_context("spawn")
    init = (dataclasses.asdict(cfg), mel_filters(cfg))
    todo = deque(paths)
    while todo:
        pending: deque = deque()
        pool = ProcessPoolExecutor(min(workers, len(todo)), ctx, init_worker, init)
        try:
            while todo or pending:
                while todo and len(pending) < 4 * workers:
                    path = todo.popleft()
                    pending.append((path, pool.submit(work, path)))
                result = pending[0][1].result()
                pending.popleft()
                yield result
        except BrokenProcessPool:
            for path, _ in pending:
                yield _isolated(path, ctx, init)
        finally:
            pool.shutdown(wait=False, cancel_futures=True)


def _isolated(path: str, ctx, init: tuple) -> tuple:
    """``work(path)`` in a process of its own; a crash of that process becomes the file's error."""
    with ProcessPoolExecutor(1, ctx, init_worker, init) as pool:
        try:
            return pool.submit(work, path).result()
        except BrokenProcessPool:
            return ("error", "the decoder crashed on this file (its worker process died)")
