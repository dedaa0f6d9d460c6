"""Prediction through the window engine (SPEC §7): clips → windows → batched forward → per-clip mean.

Flow: clips (cached log-mels or decoded audio, both from :mod:`noisytag.audio.model_input`, the one owner
of clip → model input) → the run's normalisation → the evenly spread 128-frame windows of
:func:`noisytag.audio.windows.window_offsets` → batches of ``cfg.batch_size`` windows
taken from as many clips as needed → every ensemble member → sigmoid → mean over members (per
window) → mean over the clip's windows. Windows, batches and the per-clip mean are
:mod:`noisytag.infer.engine`'s, which training's validation uses too. Clips stream through: memory holds
one batch of windows and the (N, K) result, whatever the number of clips.

Two modes (``InferConfig.mode``):

* ``"exact"``: one forward per window, as SPEC §7 and the original entry.
* ``"fast"``: both architectures are fully convolutional, so the conv body runs once over the whole
  clip and the head pools each window's slice of the feature map (``width / time_reduction`` feature
  steps starting at ``round(offset / time_reduction)``). Windows see their neighbours' context at the
  edges instead of zero padding, so scores differ slightly from the exact mode (see benchmarks/README).

Members follow the interface of :mod:`noisytag.infer.members`; plain ``nn.Module``s are wrapped as
:class:`~noisytag.infer.members.TorchMember`.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.progress import track

from noisytag.audio.decode import load_clip
from noisytag.audio.model_input import Clip, cached_clips, check_normalize, loaded_clip
from noisytag.config import FrontendConfig, InferConfig
from noisytag.infer.engine import clip_mean, stream_windows
from noisytag.infer.members import as_members
from noisytag.settings import check_mode

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# the streaming engine


def ensemble_probs(members: Sequence, x: np.ndarray) -> np.ndarray:
    """(B, F, W) windows → (B, K): each member's sigmoid probabilities, averaged over members."""
    batch = x[:, None]
    total = members[0].probs(batch).astype(np.float64)
    for member in members[1:]:
        total += member.probs(batch)
    return (total / len(members)).astype(np.float32)


def fast_clip_probs(members: Sequence, x: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """Fast mode for one clip: body once over (F, T) ``x``, head on each window's slice → (n, K)."""
    clip = x[None, None]
    total = members[0].fast_probs(clip, starts, width).astype(np.float64)
    for member in members[1:]:
        total += member.fast_probs(clip, starts, width)
    return (total / len(members)).astype(np.float32)


def iter_window_probs(
    members: Sequence, clips: Iterable[Clip], cfg: InferConfig, normalize: str = "minmax"
) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
    """Yield ``(key, starts (n,), probs (n, K))`` per clip: window probabilities averaged over members.

    Windows of consecutive clips share batches of exactly ``cfg.batch_size`` windows (the last one
    smaller); a clip is yielded as soon as all its windows are scored. In fast mode, clips of more
    than one window are scored on their own (body once per clip); one-window clips still share
    batches. Clips may therefore come back out of order in fast mode; use ``key``. ``normalize``: the
    run's ``data.normalize`` (ValueError naming the key for an unknown one, before any clip is read).
    """
    check_normalize(normalize)
    check_mode(cfg.mode)
    members = as_members(members)

    def score(x: np.ndarray, starts: np.ndarray | None) -> np.ndarray:
        if starts is None:
            return ensemble_probs(members, x)
        return fast_clip_probs(members, x, starts, cfg.window)

    yield from stream_windows(clips, cfg, normalize, score)


def _track(items: Iterable, total: int, progress: bool, label: str) -> Iterable:
    return track(items, total=total, description=label, transient=True) if progress else items


# ----------------------------------------------------------------------------------------------
# cached clips


def predict_cache(
    models,
    cache,
    indices: Sequence[int],
    cfg: InferConfig,
    normalize: str = "minmax",
    device: str = "cpu",
    progress: bool = False,
) -> np.ndarray:
    """Clip probabilities (len(indices), K) float32 for cached clips (positions in ``cache.index``).

    ``models``: nn.Modules built by ``noisytag.models.build`` (or members). Mean over models per
    window, then over the clip's windows (SPEC §7). ``normalize``: the run's input normalisation.
    """
    check_normalize(normalize)
    members = as_members(models, device)
    indices = np.asarray(indices, dtype=np.int64)
    out = np.zeros((len(indices), members[0].n_classes), dtype=np.float32)
    results = iter_window_probs(members, cached_clips(cache, indices), cfg, normalize)
    for row, _starts, probs in _track(results, len(indices), progress, "predicting"):
        out[row] = clip_mean(probs)
    return out


# ----------------------------------------------------------------------------------------------
# audio files


@dataclass
class FileResult:
    """Per-file outcome of :func:`iter_files`: window probabilities, or the reason it failed.

    ``duration``: seconds of the decoded file. ``offset``: file time (s) of the first sample of the
    processed clip (after silence trimming, minus any 2-s padding on the left), so window ``w`` spans
    ``offset + starts[w] · hop / sr`` seconds of the file onwards. ``error``: one line, ``"PATH: reason"``.
    ``clip``: the clip's log-mel (:class:`~noisytag.audio.model_input.Clip`), kept only when asked.
    """

    path: Path
    duration: float = 0.0
    offset: float = 0.0
    starts: np.ndarray | None = None
    window_probs: np.ndarray | None = None
    error: str | None = None
    clip: Clip | None = None

    @property
    def probs(self) -> np.ndarray | None:
        return None if self.window_probs is None else clip_mean(self.window_probs)


@dataclass
class FilePredictions:
    """Result of :func:`predict_files`: rows follow ``paths``; failed files have NaN rows."""

    paths: list[Path]
    probs: np.ndarray
    failures: list[str] = field(default_factory=list)


def iter_files(
    members: Sequence,
    paths: Sequence[str | Path],
    cfg: InferConfig,
    frontend: FrontendConfig,
    normalize: str = "minmax",
    progress: bool = False,
    prefetch: int = 2,
    keep_clips: bool = False,
    max_seconds: float | None = None,
) -> Iterator[FileResult]:
    """Yield a :class:`FileResult` per path, in order; unreadable files carry ``error`` and are skipped.

    Decoding (:func:`noisytag.audio.decode.load_clip`) runs ``prefetch`` files ahead in a background
    thread (soundfile and soxr release the GIL), so it overlaps with the models; the log-mel
    (:func:`noisytag.audio.model_input.loaded_clip`) runs here, in the caller's thread, as the models do.
    torch must stay in one thread: each thread that runs torch ops gets its own OpenMP pool, and once
    the pools' threads outnumber the cores every pool stops spin-waiting, which makes each small op several
    times slower (benchmarks/README.md). ``keep_clips``: each result also holds its
    clip's log-mel (memory grows with the files).
    ``max_seconds``: a longer file is not scored; its result has its ``duration`` and an ``error``.
    """
    paths = [Path(p) for p in paths]
    results: dict[int, FileResult] = {i: FileResult(p) for i, p in enumerate(paths)}

    def decoded() -> Iterator[Clip]:
        if len(paths) == 1 or prefetch < 1:  # nothing to overlap: a thread would only add its start-up
            for i, p in enumerate(paths):
                yield from _resolve(i, _called(load_clip, p, frontend))
            return
        with ThreadPoolExecutor(max_workers=1) as pool:
            futures: deque = deque()
            for i, p in enumerate(paths):
                futures.append((i, pool.submit(load_clip, p, frontend)))
                while len(futures) > prefetch:
                    yield from _resolve(*futures.popleft())
            while futures:
                yield from _resolve(*futures.popleft())

    def _resolve(i, future) -> Iterator[Clip]:
        try:
            loaded = future.result()
        except Exception as err:  # AudioError and anything a decoder may raise: report, keep going
            reason = " ".join(str(err).split()) or type(err).__name__
            if not reason.startswith(str(paths[i])):
                reason = f"{paths[i]}: {reason}"
            results[i].error = reason
            log.warning("skipped %s", reason)
            return
        seconds = results[i].duration = loaded.duration
        results[i].offset = loaded.offset
        if max_seconds is not None and seconds > max_seconds:
            results[i].error = f"{paths[i]}: the audio lasts {seconds:.1f} s, more than {max_seconds:g} s"
            log.warning("skipped %s", results[i].error)
            return
        clip = loaded_clip(loaded, frontend, i)
        if keep_clips:
            results[i].clip = clip
        yield clip

    next_out = 0
    for i, starts, probs in _track(
        iter_window_probs(members, decoded(), cfg, normalize), len(paths), progress, "tagging"
    ):
        results[i].starts, results[i].window_probs = starts, probs
        while next_out < len(paths) and (
            results[next_out].window_probs is not None or results[next_out].error is not None
        ):
            yield results.pop(next_out)
            next_out += 1
    while next_out < len(paths):
        yield results.pop(next_out)
        next_out += 1


def _called(fn, *args) -> Future:
    """``fn(*args)`` run now in this thread, as a finished future (its result or its exception)."""
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:
        future.set_exception(err)
    return future


def predict_files(
    models,
    paths: Sequence[str | Path],
    cfg: InferConfig,
    frontend_cfg: FrontendConfig,
    normalize: str = "minmax",
    device: str = "cpu",
    progress: bool = False,
) -> FilePredictions:
    """Clip probabilities for arbitrary audio files (decode → log-mel → the same windows as the cache)."""
    check_normalize(normalize)
    members = as_members(models, device)
    paths = [Path(p) for p in paths]
    probs = np.full((len(paths), members[0].n_classes), np.nan, dtype=np.float32)
    failures = []
    for row, res in enumerate(iter_files(members, paths, cfg, frontend_cfg, normalize, progress)):
        if res.error is not None:
            failures.append(res.error)
        else:
            probs[row] = res.probs
    return FilePredictions(paths, probs, failures)
