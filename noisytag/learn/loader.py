"""Datasets over the feature cache: random training windows and the window engine's validation batches.

Training examples are one random ``width``-frame window of a clip, new every epoch (SPEC §4). The crop
and the order of an epoch are pure functions of ``(seed, epoch, example)``: the sampler yields keys
``epoch * N + i`` and the dataset derives the crop from them. Nothing random lives in worker or sampler
state, so a run resumed from an epoch checkpoint sees exactly the batches it would have seen, and
Lightning's distributed sampler wrapper splits the same keys over processes.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from noisytag.audio.model_input import cache_windows, cached_clips, check_normalize, model_input
from noisytag.config import InferConfig
from noisytag.infer.engine import batch_input, plan_batches

Caches = Mapping[str, object]  # split name → FeatureCache


@dataclass(frozen=True)
class ClipSet:
    """Clips drawn from one or more cached splits, with their (soft) targets.

    ``split[i]`` names the cache of clip i, ``position[i]`` its row in that cache's index,
    ``targets[i]`` its (K,) float32 label vector and ``untrusted[i]`` (float32, 0 or 1) whether its
    labels are treated as noisy (SPEC §6b: noisy head or Lsoft), 0 for every clip by default.
    """

    split: np.ndarray  # (N,) str
    position: np.ndarray  # (N,) int64
    targets: np.ndarray  # (N, K) float32
    untrusted: np.ndarray | None = None  # (N,) float32; None = all trusted

    def __len__(self) -> int:
        return len(self.position)

    @property
    def weights(self) -> np.ndarray:
        """(N,) float32 untrusted flags (zeros when none were given)."""
        if self.untrusted is None:
            return np.zeros(len(self), np.float32)
        return self.untrusted.astype(np.float32, copy=False)

    def subset(self, mask: np.ndarray) -> ClipSet:
        return ClipSet(self.split[mask], self.position[mask], self.targets[mask], self.weights[mask])

    def with_labels(self, targets: np.ndarray | None = None, untrusted: float | None = None) -> ClipSet:
        """The same clips with other targets and/or every clip's untrusted flag set to ``untrusted``."""
        flags = self.weights if untrusted is None else np.full(len(self), untrusted, np.float32)
        targets = self.targets if targets is None else targets.astype(np.float32)
        return ClipSet(self.split, self.position, targets, flags)

    @staticmethod
    def concat(parts: Sequence[ClipSet]) -> ClipSet:
        return ClipSet(
            np.concatenate([p.split for p in parts]),
            np.concatenate([p.position for p in parts]).astype(np.int64),
            np.concatenate([p.targets for p in parts]).astype(np.float32),
            np.concatenate([p.weights for p in parts]),
        )


class _ClipWindows(Dataset):
    """The clips of a training window dataset: their caches, lengths and window reads.

    ``normalize``: the run's ``data.normalize`` (ValueError naming the key for an unknown one).
    """

    def __init__(self, caches: Caches, clips: ClipSet, width: int, normalize: str):
        self.caches = caches
        self.clips = clips
        self.width = width
        self.normalize = check_normalize(normalize)
        self.n_frames = np.array(
            [caches[s].index["n_frames"].iat[p] for s, p in zip(clips.split, clips.position, strict=True)],
            dtype=np.int64,
        )

    def window(self, i: int, start: int) -> torch.Tensor:
        """(1, n_mels, width) float32 model input of clip i's window starting at frame ``start``."""
        cache = self.caches[self.clips.split[i]]
        position = int(self.clips.position[i])
        return torch.from_numpy(cache_windows(cache, [position], [start], self.width, self.normalize))


class RandomWindowDataset(_ClipWindows):
    """Item ``key = epoch * N + i`` → (x (1, n_mels, width), y (K + 1,)) for a random window of clip i.

    The last target column is the clip's untrusted flag: batch augmentations mix it like the labels,
    so a mixed example carries the share of untrusted labels in it (the loss weights by it).
    """

    def __init__(self, caches: Caches, clips: ClipSet, width: int = 128, seed: int = 0, normalize="minmax"):
        super().__init__(caches, clips, width, normalize)
        self.seed = seed
        self.targets = np.concatenate([clips.targets, clips.weights[:, None]], axis=1)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), len(self.clips))
        room = max(int(self.n_frames[i]) - self.width, 0)
        start = int(np.random.default_rng([self.seed, epoch, i]).integers(0, room + 1))
        return self.window(i, start), torch.from_numpy(self.targets[i])


class EpochSampler(Sampler[int]):
    """A seeded permutation per epoch, yielding keys ``epoch * N + i`` (see RandomWindowDataset)."""

    def __init__(self, n: int, seed: int = 0, shuffle: bool = True):
        self.n = n
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        order = np.arange(self.n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.n)
        return iter((order + self.epoch * self.n).tolist())


class ValidationBatches(Dataset):
    """The window engine's batches of the validation clips (:mod:`noisytag.infer.engine`): item i → batch i.

    The same windows, batches and (after scoring) per-clip mean as out-of-fold and test prediction, so
    a fold's ``metrics.csv`` measures what its predictions do, under either ``infer.mode``. Batches
    hold ``batch_size`` windows (fast mode: one whole clip of several windows, ``whole``); each item
    is a dict: ``x`` (B, 1, n_mels, width) windows or the (1, 1, n_mels, T) clip, ``starts`` (B,) their
    start frames, ``window`` (B,) global window ids (a distributed sampler pads with repeated
    batches; the ids let validation drop them), ``row`` (B,) the clip of each window, ``target``
    (B, K) its clip's targets, ``whole``, ``width``.
    """

    def __init__(
        self,
        caches: Caches,
        clips: ClipSet,
        infer: InferConfig | None = None,
        batch_size: int = 256,
        normalize: str = "minmax",
    ):
        infer = infer if infer is not None else InferConfig()
        self.caches = caches
        self.clips = clips
        self.width = infer.window
        self.normalize = check_normalize(normalize)
        n_frames = [
            caches[s].index["n_frames"].iat[p] for s, p in zip(clips.split, clips.position, strict=True)
        ]
        self.starts, self.batches = plan_batches(n_frames, infer, batch_size)
        counts = [len(s) for s in self.starts]
        self.first_window = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return len(self.batches)

    def _input(self, i: int) -> np.ndarray:
        (clip,) = cached_clips(self.caches[self.clips.split[i]], [int(self.clips.position[i])])
        return model_input(clip.db, clip.lo, clip.hi, self.width, self.normalize)

    def __getitem__(self, k: int) -> dict:
        batch = self.batches[k]
        inputs = {p.clip: self._input(p.clip) for p in batch.pieces}
        x = batch_input(batch, lambda i: (inputs[i], self.starts[i]), self.width)
        span = [(p.clip, np.arange(p.first, p.first + p.count)) for p in batch.pieces]
        rows = np.concatenate([np.full(len(w), i, np.int64) for i, w in span])
        return {
            "x": torch.from_numpy(x[None, None] if batch.whole else x[:, None]),
            "starts": torch.from_numpy(np.concatenate([self.starts[i][w] for i, w in span])),
            "window": torch.from_numpy(np.concatenate([self.first_window[i] + w for i, w in span])),
            "row": torch.from_numpy(rows),
            "target": torch.from_numpy(self.clips.targets[rows]),
            "whole": batch.whole,
            "width": self.width,
        }
