"""Distillation: a finished run's ensemble teaches one student on every clip (``noisytag distill``).

The teacher scores every inference window (SPEC §7 grid) of every clip once; the student then trains
on those same windows, one random window of each clip per epoch, against the teacher's probabilities
for exactly that window (mixed with the given labels of curated clips). Out-of-fold teaching: a clip of
fold f is scored only by fold f's models, which never trained on it, so the student does not copy the
teacher's confidence on its own training clips. Noisy clips the selection left out and unlabelled audio
train too: their targets come from the teacher, not from their given (or missing) labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from noisytag.audio.model_input import cached_clips
from noisytag.config import InferConfig
from noisytag.infer.predict import iter_window_probs
from noisytag.learn.loader import ClipSet, _ClipWindows


@dataclass(frozen=True)
class WindowTargets:
    """Teacher probabilities of every inference window of N clips, flat.

    Clip i owns rows ``first[i] : first[i] + count[i]`` of ``starts`` (frame of each window) and
    ``probs`` (K teacher probabilities of each window).
    """

    first: np.ndarray  # (N,) int64
    count: np.ndarray  # (N,) int64
    starts: np.ndarray  # (W,) int64
    probs: np.ndarray  # (W, K) float32

    def __len__(self) -> int:
        return len(self.first)

    def clip_means(self) -> np.ndarray:
        """(N, K): each clip's teacher probability, the mean over its windows (SPEC §7)."""
        sums = np.add.reduceat(self.probs, self.first, axis=0) if len(self.probs) else self.probs
        return (sums / self.count[:, None]).astype(np.float32)

    def save(self, path) -> None:
        np.savez(path, first=self.first, count=self.count, starts=self.starts, probs=self.probs)

    @classmethod
    def load(cls, path) -> WindowTargets:
        with np.load(path, allow_pickle=False) as z:
            return cls(z["first"], z["count"], z["starts"], z["probs"])

    @staticmethod
    def concat(parts: Sequence[WindowTargets]) -> WindowTargets:
        offsets = np.cumsum([0] + [len(p.starts) for p in parts[:-1]])
        return WindowTargets(
            np.concatenate([p.first + o for p, o in zip(parts, offsets, strict=True)]).astype(np.int64),
            np.concatenate([p.count for p in parts]).astype(np.int64),
            np.concatenate([p.starts for p in parts]).astype(np.int64),
            np.concatenate([p.probs for p in parts]).astype(np.float32),
        )


def teach(
    members_by_group: Mapping[int, Sequence],
    group: np.ndarray,
    cache,
    positions: np.ndarray,
    infer: InferConfig,
    normalize: str,
    progress=None,
) -> WindowTargets:
    """Window probabilities of the clips at ``positions`` of ``cache``; clip i is scored by the members
    of its group ``group[i]`` (out-of-fold teaching: the group is the clip's fold; one group: in-sample).

    ``progress``: a callable advanced once per clip, or None.
    """
    n = len(positions)
    starts: list[np.ndarray] = [np.zeros(0, np.int64)] * n
    probs: list[np.ndarray] = [np.zeros((0, 0), np.float32)] * n
    exact = dataclasses.replace(infer, mode="exact")  # every window: the ones the student trains on
    for g, members in members_by_group.items():
        rows = np.flatnonzero(group == g)
        if not len(rows):
            continue
        clips = cached_clips(cache, positions[rows])
        for key, s, p in iter_window_probs(list(members), clips, exact, normalize):
            starts[rows[key]], probs[rows[key]] = np.asarray(s, np.int64), p
            if progress is not None:
                progress()
    count = np.array([len(s) for s in starts], dtype=np.int64)
    first = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
    return WindowTargets(first, count, np.concatenate(starts), np.concatenate(probs).astype(np.float32))


def student_targets(teacher: WindowTargets, labels: np.ndarray, label_weight: np.ndarray) -> np.ndarray:
    """(W, K) targets per window: (1 − w)·teacher + w·given labels of its clip, w per clip (0 for
    noisy and unlabelled clips, ``distill.label_weight`` for curated ones)."""
    clip_of = np.repeat(np.arange(len(teacher)), teacher.count)
    w = label_weight[clip_of, None].astype(np.float32)
    return ((1 - w) * teacher.probs + w * labels[clip_of]).astype(np.float32)


class TeacherWindowDataset(_ClipWindows):
    """Item ``key = epoch * N + i`` → (x (1, n_mels, width), y (K + 1,)): a window of clip i drawn from
    ``(seed, epoch, i)`` alone (resumable like the training loader), and the teacher's target for it.

    ``crop="random"``: any start frame, as the pipeline's training crops, with the target interpolated
    linearly between the two teacher windows around it (the grid is at most ``max_stride`` frames
    apart); ``crop="grid"``: one of the teacher's own windows, with its exact target. The last target
    column is the untrusted flag of :class:`noisytag.learn.train.TrainingModule` (0: all trusted).
    """

    def __init__(
        self,
        caches: Mapping,
        clips: ClipSet,
        teacher: WindowTargets,
        targets: np.ndarray,
        width: int = 128,
        seed: int = 0,
        normalize: str = "minmax",
        crop: str = "random",
    ):
        super().__init__(caches, clips, width, normalize)
        if len(teacher) != len(clips) or len(targets) != len(teacher.starts):
            raise ValueError("teacher targets do not match the student's clips")
        if crop not in ("random", "grid"):
            raise ValueError(f"distill.crop: 'random' or 'grid', got {crop!r}")
        self.teacher, self.seed, self.crop = teacher, seed, crop
        self.targets = np.concatenate([targets, np.zeros((len(targets), 1), np.float32)], axis=1)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), len(self.clips))
        rng = np.random.default_rng([self.seed, epoch, i, 5])
        first, count = int(self.teacher.first[i]), int(self.teacher.count[i])
        starts = self.teacher.starts[first : first + count]
        if self.crop == "grid" or count == 1:
            row = first + int(rng.integers(0, count))
            return self.window(i, int(starts[row - first])), torch.from_numpy(self.targets[row])
        start = int(rng.integers(0, int(starts[-1]) + 1))
        j = min(int(np.searchsorted(starts, start, side="right")) - 1, count - 2)
        alpha = np.float32((start - starts[j]) / max(int(starts[j + 1] - starts[j]), 1))
        target = (1 - alpha) * self.targets[first + j] + alpha * self.targets[first + j + 1]
        return self.window(i, start), torch.from_numpy(target.astype(np.float32))
