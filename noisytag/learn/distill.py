"""Distillation: a finished run's ensemble teaches one student on every clip (``noisytag distill``).

The teacher scores every inference window (SPEC §7 grid) of every clip once; the student then trains
on those same windows, one random window of each clip per epoch, against the teacher's probabilities
for exactly that window (mixed with the given labels of curated clips). Out-of-fold teaching: a clip of
fold f is scored only by fold f's models, which never trained on it, so the student does not copy the
teacher's confidence on its own training clips. Noisy clips the selection left out and unlabelled audio
train too: their targets come from the teacher, not from their given (or missing) labels.

View-consistent targets (``distill.views`` V > 0): instead of a window grid, the teacher scores V
augmented views of each clip, drawn once before the student trains (:func:`draw_views`): a random crop
and, by the run's mixup rule, a partner clip's crop mixed in (:func:`view_inputs`, the one function that
makes a view's input for the teacher and for the student, so both see the same numbers). The student
trains in epoch e on view e mod V of each clip (:class:`TeacherViewDataset`) against the teacher's
probability of exactly that input (:func:`view_targets`). The partner of a clip comes from its own
teaching group (out-of-fold: its fold), so the members that score the mix trained on neither clip.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from noisytag.audio.model_input import cache_windows, cached_clips
from noisytag.config import InferConfig
from noisytag.fileio import atomic_path
from noisytag.infer.predict import ensemble_probs, iter_window_probs
from noisytag.learn.loader import ClipSet, _ClipWindows

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------------------------
# view-consistent targets (distill.views)

VIEW_CHUNK = 1024  # clips per resumable part of the view cache


@dataclass(frozen=True)
class ViewDraws:
    """V augmented views of each of N training clips; every array is (V, N).

    View v of clip i: frames ``[start, start + width)`` of clip i, mixed with frames
    ``[partner_start, partner_start + width)`` of clip ``partner`` (a row of the same training set; -1:
    no mix) as ``lam·own + (1 − lam)·partner``, each window normalised with its own clip's lo/hi first,
    as the pipeline's batch mixup mixes model inputs (:class:`noisytag.learn.augment.Mixup`).
    """

    start: np.ndarray  # (V, N) int64
    partner: np.ndarray  # (V, N) int64; -1 = not mixed
    partner_start: np.ndarray  # (V, N) int64; 0 when not mixed
    lam: np.ndarray  # (V, N) float32 own share; 1 when not mixed

    @property
    def views(self) -> int:
        return int(self.start.shape[0])

    def __len__(self) -> int:
        return int(self.start.shape[1])


def clip_lengths(caches: Mapping, clips: ClipSet) -> np.ndarray:
    """(N,) int64 frames of each clip of ``clips`` (from its cache's index)."""
    return np.array(
        [caches[s].index["n_frames"].iat[p] for s, p in zip(clips.split, clips.position, strict=True)],
        dtype=np.int64,
    )


def draw_views(
    n_frames: np.ndarray,
    group: np.ndarray,
    views: int,
    width: int,
    seed: int,
    mixup_p: float,
    mixup_alpha: float,
) -> ViewDraws:
    """Draw V views of each clip, view v of clip i from ``(seed, v, i)`` alone (a remake draws the same).

    The crop start is uniform over the clip, as the training loader's random windows; mixup follows
    the pipeline's batch rule: with probability ``mixup_p`` the clip is mixed, λ ~ Beta(α, α) then
    λ ← max(λ, 1 − λ) (each view keeps at least half of its own clip), the partner a uniform draw
    among the clips of the same ``group`` (the clip's teaching group; it may be the clip itself, as a
    batch permutation may), with its own random crop.
    """
    n = len(n_frames)
    room = np.maximum(np.asarray(n_frames, np.int64) - width, 0)
    pools = {int(g): np.flatnonzero(group == g) for g in np.unique(group)}
    start = np.zeros((views, n), np.int64)
    partner = np.full((views, n), -1, np.int64)
    partner_start = np.zeros((views, n), np.int64)
    lam = np.ones((views, n), np.float32)
    for v in range(views):
        for i in range(n):
            rng = np.random.default_rng([seed, v, i, 11])
            start[v, i] = rng.integers(0, room[i] + 1)
            if mixup_p > 0 and rng.random() < mixup_p:
                share = float(rng.beta(mixup_alpha, mixup_alpha))
                pool = pools[int(group[i])]
                j = int(pool[rng.integers(0, len(pool))])
                lam[v, i], partner[v, i] = max(share, 1.0 - share), j
                partner_start[v, i] = rng.integers(0, room[j] + 1)
    return ViewDraws(start, partner, partner_start, lam)


def _windows(caches: Mapping, clips: ClipSet, rows: np.ndarray, starts: np.ndarray, width, normalize):
    """(B, n_mels, width) model input of the windows at ``starts`` of training clips ``rows``."""
    split = clips.split[rows]
    out = None
    for name in dict.fromkeys(split.tolist()):
        mask = split == name
        part = cache_windows(caches[name], clips.position[rows[mask]], starts[mask], width, normalize)
        if out is None:
            out = np.empty((len(rows), *part.shape[1:]), np.float32)
        out[mask] = part
    return out


def view_inputs(
    caches: Mapping, clips: ClipSet, draws: ViewDraws, v: int, rows, width: int, normalize: str
) -> np.ndarray:
    """(B, n_mels, width) float32 input of view ``v`` of training clips ``rows``: what the teacher
    scores and what the student's loader gives, the same numbers (one function makes both)."""
    rows = np.asarray(rows, dtype=np.int64)
    x = _windows(caches, clips, rows, draws.start[v, rows], width, normalize)
    partner = draws.partner[v, rows]
    mixed = np.flatnonzero(partner >= 0)
    if len(mixed):
        other = _windows(caches, clips, partner[mixed], draws.partner_start[v, rows[mixed]], width, normalize)
        lam = draws.lam[v, rows[mixed]][:, None, None]
        x[mixed] = lam * x[mixed] + (np.float32(1) - lam) * other
    return x


def score_views(
    members_by_group: Mapping[int, Sequence],
    group: np.ndarray,
    caches: Mapping,
    clips: ClipSet,
    draws: ViewDraws,
    v: int,
    rows: np.ndarray,
    width: int,
    normalize: str,
    batch_size: int,
) -> np.ndarray:
    """(len(rows), K) teacher probabilities of view ``v`` of clips ``rows``: the mean over the members
    of each clip's group (:func:`noisytag.infer.predict.ensemble_probs` on the view's exact input)."""
    rows = np.asarray(rows, dtype=np.int64)
    out = None
    for g in np.unique(group[rows]):
        sel = np.flatnonzero(group[rows] == g)
        for b in range(0, len(sel), batch_size):
            part = sel[b : b + batch_size]
            x = view_inputs(caches, clips, draws, v, rows[part], width, normalize)
            p = ensemble_probs(list(members_by_group[int(g)]), x)
            if out is None:
                out = np.zeros((len(rows), p.shape[1]), np.float32)
            out[part] = p
    return out


@dataclass(frozen=True)
class TeacherViews:
    """The view cache: the draws and the teacher's (V, N, K) probabilities of each view's input.

    ``signature``: hash of what made it (clips, groups, draws, width, normalisation, teacher), so a
    file made for other clips or views is never read as this one's.
    """

    draws: ViewDraws
    probs: np.ndarray  # (V, N, K) float32
    signature: str = ""

    def save(self, path) -> None:
        """Whole or absent: written to a temporary file and renamed (a kill never leaves half a file)."""
        d = self.draws
        with atomic_path(path) as tmp:
            np.savez(tmp, start=d.start, partner=d.partner, partner_start=d.partner_start, lam=d.lam,
                     probs=self.probs, signature=np.array(self.signature))  # fmt: skip

    @classmethod
    def load(cls, path) -> TeacherViews:
        with np.load(path, allow_pickle=False) as z:
            draws = ViewDraws(z["start"], z["partner"], z["partner_start"], z["lam"])
            return cls(draws, z["probs"], str(z["signature"]))


def views_signature(
    clips: ClipSet, group: np.ndarray, draws: ViewDraws, width: int, normalize: str, key: str
):
    """Short hash of every input of a view cache (``key``: the teacher and how it teaches)."""
    h = hashlib.sha256(json.dumps([key, int(width), normalize, clips.split.tolist()]).encode())
    for a in (clips.position, group, draws.start, draws.partner, draws.partner_start, draws.lam):
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def make_teacher_views(
    path: str | Path,
    members_by_group: Callable[[], Mapping[int, Sequence]],
    group: np.ndarray,
    caches: Mapping,
    clips: ClipSet,
    draws: ViewDraws,
    width: int,
    normalize: str,
    batch_size: int,
    key: str = "",
    chunk: int = VIEW_CHUNK,
) -> TeacherViews:
    """The view cache at ``path``: read when it was made from the same inputs, else made, resumably.

    Each (view, ``chunk`` clips) part is scored and written on its own (``PATH-SIGNATURE.parts/``), so
    a killed make redoes at most one part; the whole file replaces them at the end. ``members_by_group``
    is called (models loaded) only when a part is missing.
    """
    path = Path(path)
    signature = views_signature(clips, group, draws, width, normalize, key)
    if path.is_file():
        views = TeacherViews.load(path)
        if views.signature == signature:
            return views
        log.info("%s: made for other clips or views; making it again", path)
    parts = path.with_name(f"{path.stem}-{signature}.parts")
    members, n, probs = None, len(clips), []
    for v in range(draws.views):
        blocks = []
        for c, first in enumerate(range(0, n, chunk)):
            part = parts / f"view{v}_chunk{c}.npy"
            try:
                scored = np.load(part, allow_pickle=False)
            except FileNotFoundError:  # not made yet (or removed by a rank launched together that finished)
                members = members if members is not None else members_by_group()
                log.info("teacher: scoring view %d of clips %d–%d", v, first, min(first + chunk, n) - 1)
                rows = np.arange(first, min(first + chunk, n))
                scored = score_views(
                    members, group, caches, clips, draws, v, rows, width, normalize, batch_size
                )
                with atomic_path(part) as tmp:
                    np.save(tmp, scored)
            blocks.append(scored)
        probs.append(np.concatenate(blocks))
    views = TeacherViews(draws, np.stack(probs).astype(np.float32), signature)
    views.save(path)
    shutil.rmtree(parts, ignore_errors=True)
    return views


def view_targets(views: TeacherViews, labels: np.ndarray, label_weight: np.ndarray, union: bool = False):
    """(V, N, K) targets of the views: (1 − w)·teacher + the given-label part, w per clip as in
    :func:`student_targets`. A mixed view's given-label part follows mixup's target rule
    (``augment.mixup_target``): "mix": λ·wᵢ·yᵢ + (1 − λ)·wⱼ·yⱼ with w = λ·wᵢ + (1 − λ)·wⱼ; "union":
    max(wᵢ·yᵢ, wⱼ·yⱼ) with w = max(wᵢ, wⱼ). The teacher's part needs no rule: it scored the mix itself."""
    d = views.draws
    own = label_weight[:, None].astype(np.float32) * labels.astype(np.float32)  # (N, K)
    has = d.partner >= 0
    j = np.where(has, d.partner, np.arange(len(d))[None, :])  # (V, N): partner, or the clip itself
    wi, wj = label_weight[None, :].astype(np.float32), label_weight[j].astype(np.float32)
    if union:
        given = np.where(has[..., None], np.maximum(own[None], own[j]), own[None])
        w = np.where(has, np.maximum(wi, wj), wi)
    else:
        lam = d.lam[..., None]
        given = np.where(has[..., None], lam * own[None] + (1 - lam) * own[j], own[None])
        w = np.where(has, d.lam * wi + (1 - d.lam) * wj, wi)
    return ((1 - w[..., None]) * views.probs + given).astype(np.float32)


class TeacherViewDataset(_ClipWindows):
    """Item ``key = epoch * N + i`` → (x (1, n_mels, width), y (K + 1,)): view ``epoch mod V`` of clip i
    (:func:`view_inputs`) and its target (:func:`view_targets`; last column the untrusted flag, 0).

    Nothing is drawn here: the views were drawn once, so a resumed run sees the same examples. In
    training, the batch augmentations other than mixup (which the view already carries; the student's
    mixup is switched off) act on top of the view, as configured.
    """

    def __init__(
        self,
        caches: Mapping,
        clips: ClipSet,
        views: TeacherViews,
        targets: np.ndarray,
        width: int = 128,
        normalize: str = "minmax",
    ):
        super().__init__(caches, clips, width, normalize)
        if len(views.draws) != len(clips) or targets.shape[:2] != views.probs.shape[:2]:
            raise ValueError("teacher views do not match the student's clips")
        self.draws = views.draws
        self.targets = np.concatenate([targets, np.zeros((*targets.shape[:2], 1), np.float32)], axis=2)

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), len(self.clips))
        v = epoch % self.draws.views
        x = view_inputs(self.caches, self.clips, self.draws, v, [i], self.width, self.normalize)
        return torch.from_numpy(x), torch.from_numpy(self.targets[v, i])
