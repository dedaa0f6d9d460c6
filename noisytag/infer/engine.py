"""The windowed-evaluation engine (SPEC §7): which windows, which batches, which per-clip mean.

Validation during training, out-of-fold and test scoring and tagging all go through it, so a fold's
``metrics.csv`` and its predictions measure the same thing under either ``infer.mode``:

* windows: :func:`noisytag.audio.windows.window_offsets` of each clip (``window`` frames, stride at
  most ``max_stride``), read from the clip's model input (:mod:`noisytag.audio.model_input`);
* batches (:class:`Batcher`): windows of consecutive clips share batches of exactly ``batch_size``
  windows (the last one smaller); in fast mode a clip of more than one window is a batch of its own,
  ``whole`` (the conv body runs once over the clip, the head on each window's slice);
* per-clip mean (:func:`clip_mean`): the clip's window probabilities summed in window order in float32,
  then divided by their count.

:func:`stream_windows` drives it over a stream of clips (``predict``); :func:`plan_batches` plans a fixed
set of clips up front, so a Lightning validation loop (and its distributed sampler) can run the batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from noisytag.audio.model_input import Clip, model_input, take_windows
from noisytag.audio.windows import window_offsets
from noisytag.config import InferConfig

# score(x, starts): (B, F, W) windows with starts None → (B, K); one whole (F, T) clip with its (n,)
# window starts (a ``whole`` batch, fast mode) → (n, K).
Score = Callable[[np.ndarray, np.ndarray | None], np.ndarray]


@dataclass(frozen=True)
class Piece:
    """Windows ``[first, first + count)`` of clip number ``clip`` (in input order) within one batch."""

    clip: int
    first: int
    count: int


@dataclass(frozen=True)
class Batch:
    """One forward: windows of one or more clips, or (``whole``) all windows of one clip at once."""

    pieces: tuple[Piece, ...]
    whole: bool = False


@dataclass
class Batcher:
    """Clips' window counts in, batches out, in the order the engine runs them (see the module doc)."""

    batch_size: int
    mode: str = "exact"
    _pending: list[Piece] = field(default_factory=list)
    _n: int = 0

    def add(self, clip: int, n_windows: int) -> list[Batch]:
        """Queue clip ``clip``'s windows; return the batches that are now complete."""
        if self.mode == "fast" and n_windows > 1:
            return [Batch((Piece(clip, 0, n_windows),), whole=True)]
        self._pending.append(Piece(clip, 0, n_windows))
        self._n += n_windows
        size = max(int(self.batch_size), 1)
        out = []
        while self._n >= size:
            out.append(self._take(size))
        return out

    def finish(self) -> list[Batch]:
        """The last, smaller batch of the windows still queued (none when nothing is)."""
        return [self._take(self._n)] if self._n else []

    def _take(self, n: int) -> Batch:
        pieces, need = [], n
        while need:
            head = self._pending[0]
            if head.count <= need:
                pieces.append(self._pending.pop(0))
                need -= head.count
            else:
                pieces.append(Piece(head.clip, head.first, need))
                self._pending[0] = Piece(head.clip, head.first + need, head.count - need)
                need = 0
        self._n -= n
        return Batch(tuple(pieces))


def plan_batches(
    n_frames: Sequence[int], cfg: InferConfig, batch_size: int
) -> tuple[list[np.ndarray], list[Batch]]:
    """Window starts of each clip and every batch, for clips of ``n_frames`` frames known up front."""
    starts = [window_offsets(int(n), cfg.window, cfg.max_stride) for n in n_frames]
    batcher = Batcher(batch_size, cfg.mode)
    batches = [b for i, s in enumerate(starts) for b in batcher.add(i, len(s))]
    return starts, batches + batcher.finish()


def batch_input(
    batch: Batch, inputs: Callable[[int], tuple[np.ndarray, np.ndarray]], width: int
) -> np.ndarray:
    """The model input of ``batch``: (B, F, width) windows, or the whole (F, T) clip of a ``whole`` batch.

    ``inputs(clip)``: that clip's (F, T) model input and its window starts.
    """
    if batch.whole:
        return inputs(batch.pieces[0].clip)[0]
    parts = []
    for p in batch.pieces:
        x, starts = inputs(p.clip)
        parts.append(take_windows(x, starts[p.first : p.first + p.count], width))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


def clip_mean(window_probs: np.ndarray) -> np.ndarray:
    """(n, K) window probabilities → (K,) float32: summed in window order in float32, divided by n.

    One fixed order, so validation (torch's ``index_add_`` did the same) and prediction agree to the bit.
    """
    total = np.zeros(window_probs.shape[1], np.float32)
    for row in np.asarray(window_probs, dtype=np.float32):
        total += row
    return total / np.float32(len(window_probs))


@dataclass
class _Open:
    """A clip whose windows are not all scored yet."""

    key: object
    starts: np.ndarray
    x: np.ndarray
    parts: list[np.ndarray] = field(default_factory=list)
    done: int = 0


def stream_windows(
    clips: Iterable[Clip], cfg: InferConfig, normalize: str, score: Score
) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
    """Yield ``(key, starts (n,), probs (n, K))`` per clip as soon as all its windows are scored.

    Clips are read one at a time; memory holds the clips of one batch. In fast mode clips may come back
    out of order (a ``whole`` clip is scored at once); use ``key``.
    """
    batcher = Batcher(cfg.batch_size, cfg.mode)
    open_: dict[int, _Open] = {}

    def inputs(i: int) -> tuple[np.ndarray, np.ndarray]:
        return open_[i].x, open_[i].starts

    def run(batches: list[Batch]) -> Iterator[tuple[object, np.ndarray, np.ndarray]]:
        for batch in batches:
            x = batch_input(batch, inputs, cfg.window)
            probs = score(x, open_[batch.pieces[0].clip].starts if batch.whole else None)
            pos = 0
            for p in batch.pieces:
                clip = open_[p.clip]
                clip.parts.append(probs[pos : pos + p.count])
                clip.done += p.count
                pos += p.count
                if clip.done == len(clip.starts):
                    del open_[p.clip]
                    parts = clip.parts
                    yield clip.key, clip.starts, np.concatenate(parts) if len(parts) > 1 else parts[0]

    for i, clip in enumerate(clips):
        starts = window_offsets(clip.db.shape[1], cfg.window, cfg.max_stride)
        open_[i] = _Open(clip.key, starts, model_input(clip.db, clip.lo, clip.hi, cfg.window, normalize))
        yield from run(batcher.add(i, len(starts)))
    yield from run(batcher.finish())
