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

from noisytag.features import normalize as minmax
from noisytag.windows import window_offsets


@dataclass(frozen=True)
class ClipSet:
    """Clips drawn from one or more cached splits, with their multi-hot targets.

    ``split[i]`` names the cache of clip i, ``position[i]`` its row in that cache's index and
    ``targets[i]`` its (K,) float32 label vector.
    """

    split: np.ndarray  # (N,) str
    position: np.ndarray  # (N,) int64
    targets: np.ndarray  # (N, K) float32

    def __len__(self) -> int:
        return len(self.position)

    @staticmethod
    def concat(parts: Sequence[ClipSet]) -> ClipSet:
        return ClipSet(
            np.concatenate([p.split for p in parts]),
            np.concatenate([p.position for p in parts]).astype(np.int64),
            np.concatenate([p.targets for p in parts]).astype(np.float32),
        )


def _read_window(cache, position: int, start: int, width: int, normalize: str) -> np.ndarray:
    """(1, n_mels, width) float32 input of one window, normalised as the model expects."""
    db = cache.windows(np.array([position]), np.array([start]), width)[0]
    if normalize == "minmax":
        row = cache.index.iloc[position]
        db = minmax(db, np.float32(row["lo"]), np.float32(row["hi"]))
    return db[None].astype(np.float32, copy=False)


class RandomWindowDataset(Dataset):
    """Item ``key = epoch * N + i`` → (x (1, n_mels, width), y (K,)) for a random window of clip i."""

    def __init__(
        self,
        caches: Mapping[str, object],
        clips: ClipSet,
        width: int = 128,
        seed: int = 0,
        normalize: str = "minmax",
    ):
        self.caches = caches
        self.clips = clips
        self.width = width
        self.seed = seed
        self.normalize = normalize
        self.n_frames = np.array(
            [caches[s].index["n_frames"].iat[p] for s, p in zip(clips.split, clips.position, strict=True)],
            dtype=np.int64,
        )

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), len(self.clips))
        room = max(int(self.n_frames[i]) - self.width, 0)
        start = int(np.random.default_rng([self.seed, epoch, i]).integers(0, room + 1))
        cache = self.caches[self.clips.split[i]]
        x = _read_window(cache, int(self.clips.position[i]), start, self.width, self.normalize)
        return torch.from_numpy(x), torch.from_numpy(self.clips.targets[i])


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


class AllWindowsDataset(Dataset):
    """Every inference window (SPEC §7) of every clip: item → (x, y, window_id, clip_row).

    Validation averages the window probabilities per ``clip_row``; ``window_id`` lets a distributed
    run drop the duplicates its sampler pads in.
    """

    def __init__(
        self,
        caches: Mapping[str, object],
        clips: ClipSet,
        width: int = 128,
        max_stride: int = 48,
        normalize: str = "minmax",
    ):
        self.caches = caches
        self.clips = clips
        self.width = width
        self.normalize = normalize
        rows, starts = [], []
        for row, (split, pos) in enumerate(zip(clips.split, clips.position, strict=True)):
            offsets = window_offsets(int(caches[split].index["n_frames"].iat[pos]), width, max_stride)
            rows.append(np.full(len(offsets), row))
            starts.append(offsets)
        self.rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self.starts = np.concatenate(starts) if starts else np.zeros(0, np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, k: int):
        row = int(self.rows[k])
        cache = self.caches[self.clips.split[row]]
        x = _read_window(
            cache, int(self.clips.position[row]), int(self.starts[k]), self.width, self.normalize
        )
        return torch.from_numpy(x), torch.from_numpy(self.clips.targets[row]), k, row
