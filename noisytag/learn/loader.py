"""Datasets over the feature cache: random training windows and all-window validation sets.

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

from noisytag.audio.model_input import cache_windows, check_normalize
from noisytag.audio.windows import window_offsets

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
    """Shared part of the window datasets: the clips, their caches, lengths and window reads.

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


class AllWindowsDataset(_ClipWindows):
    """Every inference window (SPEC §7) of every clip: item → (x, y, window_id, clip_row).

    Validation averages the window probabilities per ``clip_row``; ``window_id`` lets a distributed
    run drop the duplicates its sampler pads in.
    """

    def __init__(self, caches: Caches, clips: ClipSet, width: int = 128, max_stride=48, normalize="minmax"):
        super().__init__(caches, clips, width, normalize)
        offsets = [window_offsets(int(n), width, max_stride) for n in self.n_frames]
        self.rows = np.repeat(np.arange(len(offsets)), [len(o) for o in offsets]).astype(np.int64)
        self.starts = np.concatenate(offsets).astype(np.int64) if offsets else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        row = int(self.rows[k])
        return self.window(row, int(self.starts[k])), torch.from_numpy(self.clips.targets[row]), k, row
