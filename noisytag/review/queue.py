"""The review queue: which noisy clips a person should hear first, and what the card of each one shows.

Suspicion comes from the two detectors of the run's last selection stage (the run plan's highest stage that
selects, e.g. stage 4, which selects from stage 3's out-of-fold predictions), judging each noisy clip's given
labels by the best out-of-fold predictions the run has: once a later stage has trained (stage 4, on the clips
that selection trusted), the same detectors with the run's thresholds run again on its predictions
(``runfiles.rejudged_audits``); before that, the verdicts are read from the selection's audit
(``{arch}/selections/stage{k}_audit.csv``). Each detector's score (higher = more trusted) is turned into a rank
in [0, 1] (1 = the least trusted clip; a clip without a score counts as 1), the detectors' ranks are averaged,
then the architectures'. The models' probabilities on a card are the same out-of-fold predictions
(``{arch}/stage{s}/fold{f}/oof_noisy.npy``, rows = the noisy clips of fold f in folds.csv order), averaged
over the architectures: every clip is judged by models that never trained on it.

The queue never reads a truth column: the audits are read without ``true_labels`` / ``correct`` and the data
set's ``truth`` column is dropped as it is loaded, so the order is the same with the truth removed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.data.dataset import Dataset
from noisytag.plan import RunPlan, StagePlan
from noisytag.review.runfiles import (
    DETECTOR_COLUMNS,
    TRUTH_COLUMNS,
    ReviewError,
    detector_columns,
    judging_stage,
    load_reviewable,
    noisy_oof,
    read_audits,
    read_folds,
    rejudged_audits,
    suspicion_ranks,
)
from noisytag.rundir import RunDir

__all__ = ["MODES", "HEARD", "Card", "ReviewQueue", "ReviewError", "DETECTOR_COLUMNS", "TRUTH_COLUMNS",
           "last_selection_stage", "suspicion_ranks"]  # fmt: skip

log = logging.getLogger(__name__)

MODES = ("suspect", "disagree", "class", "pair", "random")
HEARD = 0.5  # a class the models give at least this probability is one they "hear"
DETECTOR_TEXT = {"lwlrap": "the out-of-fold lwlrap detector", "cleanlab": "cleanlab"}


@dataclass(frozen=True)
class Card:
    """One noisy clip as the reviewer sees it (every field is from the given labels and the models)."""

    clip_id: int  # stable id = row index of the clip in the queue's clip table (never a path)
    fname: str
    fold: int
    given: tuple[str, ...]  # given labels
    probs: dict[str, float]  # models' out-of-fold probability per class (mean over architectures)
    suspicion: float  # rank-average suspicion in [0, 1], 1 = most suspect
    scores: dict[str, float]  # the detectors' scores now (e.g. {"lwlrap": .., "cleanlab": ..})
    likely_wrong: tuple[str, ...]  # given labels whose OOF probability is low
    likely_missing: tuple[str, ...]  # not-given labels the models hear
    suggested: tuple[str, ...]  # the models' label set (what "accept the models' labels" sets)
    candidates: tuple[str, ...]  # all classes by descending probability (keys 1-9 = first nine)
    reasons: tuple[str, ...]  # why it is in the queue, human sentences


def multi_hot(label_sets, classes) -> np.ndarray:
    """(N, K) float multi-hot of label tuples over ``classes`` (unknown labels ignored)."""
    index = {c: j for j, c in enumerate(classes)}
    out = np.zeros((len(label_sets), len(classes)))
    for i, labels in enumerate(label_sets):
        out[i, [index[c] for c in labels if c in index]] = 1.0
    return out


def last_selection_stage(plan: RunPlan) -> StagePlan:
    """The plan's last stage that selects noisy clips (its audit is the queue's), or ReviewError."""
    selecting = [s for s in plan.stages if s.selects_from]
    if not selecting:
        raise ReviewError(
            f"the run's plan ({plan.kind}, stages {', '.join(map(str, plan.stage_numbers))}) has no stage "
            "that selects noisy clips, so there are no audits to review"
        )
    return max(selecting, key=lambda s: s.stage)


class ReviewQueue:
    """The noisy clips of a run with the detectors' suspicion and the models' out-of-fold probabilities.

    Clip ids are the row indices of :attr:`clips` (the noisy clips in folds.csv order), stable for a run.
    """

    def __init__(
        self,
        run: Path,
        dataset: Dataset,
        clips: pd.DataFrame,
        probs: np.ndarray,
        stage: int,
        sources: tuple[int, ...],
        architectures: tuple[str, ...],
    ):
        self.run = Path(run)
        self.dataset = dataset  # truth columns dropped
        self.classes: list[str] = list(dataset.classes)
        self.clips = clips  # fname, path, fold, given, suspicion, score_*, flag_* (one row per clip id)
        self.probs = probs  # (N, K) float32
        self.stage = stage  # the last selection stage: its detectors rank the queue
        self.sources = sources  # the stages whose OOF probabilities the detectors judge and the cards show
        self.architectures = architectures
        self.detectors = tuple(d for d in DETECTOR_COLUMNS if f"score_{d}" in clips.columns)
        self._ids = {f: i for i, f in enumerate(clips["fname"])}
        self._given_hot = multi_hot(clips["given"], self.classes) > 0
        heard = probs >= HEARD
        top = np.nan_to_num(probs, nan=-1.0).argmax(axis=1) if probs.shape[1] else np.zeros(len(probs), int)
        heard[np.arange(len(probs)), top] = True  # a clip always has at least one suggested label
        self._heard = heard
        self._base = self._suspect_order()
        self._rank = np.empty(len(self._base), dtype=int)
        self._rank[self._base] = np.arange(1, len(self._base) + 1)  # 1 = most suspect
        self._examples: dict[str, int | None] = {}

    # construction --------------------------------------------------------------------------------
    @classmethod
    def from_run(cls, run: Path | str, data: Path | str | None = None) -> ReviewQueue:
        """The queue of run ``run`` over data set ``data`` (default: the one recorded in RUN/run.json)."""
        rundir = RunDir(run)
        if not rundir.root.is_dir():
            raise ReviewError(f"{rundir.root}: run directory not found")
        try:
            plan = rundir.plan()
        except (FileNotFoundError, ValueError, KeyError) as err:
            raise ReviewError(f"{rundir.root}: cannot read the run's plan ({err})") from None
        selecting = last_selection_stage(plan)
        archs = tuple(a for a in plan.architectures if rundir.audit(a, selecting.stage).is_file())
        if not archs:
            raise ReviewError(
                f"{rundir.audit(plan.architectures[0], selecting.stage)}: not found (no selection audits: "
                f"run the pipeline through stage {selecting.stage} first)"
            )
        data = data if data is not None else rundir.info().get("data_dir")
        if data is None:
            raise ReviewError(f"{rundir.run_info}: names no data set; pass --data DIR")
        dataset = load_reviewable(data)
        folds = read_folds(rundir)
        noisy = folds.loc[folds["split"] == "noisy"].reset_index(drop=True)
        k = len(dataset.classes)
        table = dataset.noisy.drop_duplicates("fname").set_index("fname")
        known = noisy["fname"].isin(table.index).to_numpy()
        if not known.all():
            missing = noisy.loc[~known, "fname"]
            log.warning(
                "%d noisy clip(s) of %s are not in the data set %s (e.g. %s): left out of the queue",
                len(missing), rundir.folds, data, missing.iloc[0],
            )  # fmt: skip
        clips = pd.DataFrame(
            {
                "fname": noisy["fname"].to_numpy()[known],
                "fold": noisy["fold"].to_numpy(dtype=int)[known],
            }
        )
        clips["path"] = table.loc[clips["fname"], "path"].to_numpy()
        clips["given"] = [tuple(x) for x in table.loc[clips["fname"], "labels"]]
        config = rundir.saved_config()  # the detectors' thresholds; without it only the audit can rank
        judging = judging_stage(rundir, plan, selecting, archs, folds) if config is not None else None
        sources = (judging,) if judging is not None else selecting.selects_from
        oofs = {
            a: np.mean([noisy_oof(rundir, folds, a, s, k)[known] for s in sources], axis=0) for a in archs
        }
        probs = np.mean(list(oofs.values()), axis=0).astype(np.float32)
        if judging is not None:
            given = multi_hot(clips["given"], dataset.classes)
            audits = rejudged_audits(config, selecting, judging, oofs, clips, given)
            where = f"stage-{judging} out-of-fold predictions of {{arch}}"
        else:
            audits = read_audits(rundir, archs, selecting.stage, clips["fname"])
            where = str(rundir.audit("{arch}", selecting.stage))
        clips = detector_columns(clips, audits, where)
        return cls(rundir.root, dataset, clips, probs, selecting.stage, sources, archs)

    def __len__(self) -> int:
        return len(self.clips)

    def _suspect_order(self) -> np.ndarray:
        """Clip ids by descending suspicion, ties by file name (deterministic)."""
        frame = pd.DataFrame({"s": -self.clips["suspicion"].to_numpy(), "f": self.clips["fname"].to_numpy()})
        return frame.sort_values(["s", "f"], kind="stable").index.to_numpy()

    def flagged(self, detector: str) -> np.ndarray:
        """(N,) bool: the detector distrusts the clip's given labels (in at least half the architectures)."""
        column = f"flag_{detector}"
        if column not in self.clips.columns:
            return np.zeros(len(self), dtype=bool)
        return np.nan_to_num(self.clips[column].to_numpy(dtype=float), nan=0.0) >= 0.5

    def disagreeing(self) -> np.ndarray:
        """(N,) bool: the two detectors' verdicts differ."""
        flags = [self.flagged(d) for d in DETECTOR_COLUMNS]
        return flags[0] != flags[1]

    def _label_index(self, label: str) -> int:
        if label not in self.classes:
            raise ValueError(f"unknown label {label!r} (not one of the run's {len(self.classes)} classes)")
        return self.classes.index(label)

    def order(
        self,
        mode: str = "suspect",
        label: str | None = None,
        pair: tuple[str, str] | None = None,
        seed: int = 0,
    ) -> list[int]:
        """Clip ids in queue order.

        ``suspect``: most suspect first; ``disagree``: clips on which the detectors' verdicts differ first,
        then the rest, each most suspect first; ``class``: the clips given ``label`` or in which the models
        hear it; ``pair``: the clips given ``pair[0]`` that the models do not hear, while they hear
        ``pair[1]``, which was not given; ``random``: a shuffle seeded by ``seed``. ValueError for an unknown
        mode or label, or a class / pair mode without its label / pair.
        """
        base = self._base
        if mode == "suspect":
            return base.tolist()
        if mode == "disagree":
            differ = self.disagreeing()[base]
            return np.concatenate([base[differ], base[~differ]]).tolist()
        if mode == "class":
            if label is None:
                raise ValueError("mode 'class' needs a label")
            j = self._label_index(label)
            keep = (self._given_hot[:, j] | self._heard[:, j])[base]
            return base[keep].tolist()
        if mode == "pair":
            if pair is None or len(pair) != 2:
                raise ValueError("mode 'pair' needs a pair (given label, heard label)")
            x, y = self._label_index(pair[0]), self._label_index(pair[1])
            keep = self._given_hot[:, x] & ~self._heard[:, x] & self._heard[:, y] & ~self._given_hot[:, y]
            return base[keep[base]].tolist()
        if mode == "random":
            return np.random.default_rng(seed).permutation(len(self)).tolist()
        raise ValueError(f"unknown queue mode {mode!r}; choose from {', '.join(MODES)}")

    def pairs(self) -> list[tuple[str, str, int]]:
        """(given X, models hear Y, count): X given but not heard and Y heard but not given in the same
        clip; most common first, ties by names."""
        wrong = self._given_hot & ~self._heard
        missing = self._heard & ~self._given_hot
        counts = wrong.T.astype(np.int64) @ missing.astype(np.int64)  # (K, K): X given-not-heard, Y heard
        xs, ys = np.nonzero(counts)
        out = [(self.classes[x], self.classes[y], int(counts[x, y])) for x, y in zip(xs, ys, strict=True)]
        return sorted(out, key=lambda t: (-t[2], t[0], t[1]))

    # one clip ------------------------------------------------------------------------------------
    def _check_id(self, clip_id: int) -> int:
        if (
            isinstance(clip_id, bool)
            or not isinstance(clip_id, (int, np.integer))
            or not 0 <= clip_id < len(self)
        ):
            raise KeyError(f"unknown clip id {clip_id!r} (the queue has ids 0..{len(self) - 1})")
        return int(clip_id)

    def clip_id(self, fname: str) -> int:
        """The id of the noisy clip named ``fname`` (KeyError if it is not in the queue)."""
        try:
            return self._ids[fname]
        except KeyError:
            raise KeyError(f"unknown clip {fname!r}") from None

    def audio_path(self, clip_id: int) -> Path:
        return Path(self.clips["path"].iat[self._check_id(clip_id)])

    def given(self, clip_id: int) -> tuple[str, ...]:
        return tuple(self.clips["given"].iat[self._check_id(clip_id)])

    def suggested(self, clip_id: int) -> tuple[str, ...]:
        """The models' label set: the classes heard (probability ≥ HEARD, or the most probable one), in
        descending probability."""
        i = self._check_id(clip_id)
        order = np.argsort(-np.nan_to_num(self.probs[i], nan=-1.0), kind="stable")
        return tuple(self.classes[j] for j in order if self._heard[i, j])

    def card(self, clip_id: int) -> Card:
        """The card of clip ``clip_id`` (KeyError for an unknown id)."""
        i = self._check_id(clip_id)
        row = self.clips.iloc[i]
        p = self.probs[i]
        probs = {c: round(float(v), 4) for c, v in zip(self.classes, p, strict=True)}
        given = tuple(row["given"])
        order = np.argsort(-np.nan_to_num(p, nan=-1.0), kind="stable")
        candidates = tuple(self.classes[j] for j in order)
        suggested = self.suggested(i)
        likely_wrong = tuple(c for c in given if c not in suggested)
        likely_missing = tuple(c for c in suggested if c not in given)
        scores = {d: float(row[f"score_{d}"]) for d in self.detectors}
        for d in DETECTOR_COLUMNS:
            if f"flag_{d}" in row.index:
                scores[f"{d}_flag"] = float(row[f"flag_{d}"])
        return Card(
            clip_id=i,
            fname=str(row["fname"]),
            fold=int(row["fold"]),
            given=given,
            probs=probs,
            suspicion=float(row["suspicion"]),
            scores=scores,
            likely_wrong=likely_wrong,
            likely_missing=likely_missing,
            suggested=suggested,
            candidates=candidates,
            reasons=self._reasons(i, probs, likely_wrong, likely_missing),
        )

    def _reasons(self, i: int, probs: dict, wrong: tuple, missing: tuple) -> tuple[str, ...]:
        row = self.clips.iloc[i]
        n = len(self)
        rank = int(self._rank[i])
        archs = len(self.architectures)
        rejudged = min(self.sources) >= self.stage  # by a stage trained after the selection's inputs
        judged_by = (
            f"on the stage-{self.sources[0]} out-of-fold predictions"
            if rejudged
            else f"in the stage-{self.stage} audit"
        )
        out = [
            f"Suspicion {row['suspicion']:.2f}: number {rank} of {n} noisy clips by the detectors' rank average "
            f"{judged_by}" + (f" ({archs} architectures)" if archs > 1 else "") + "."
        ]
        judged = [d for d in DETECTOR_COLUMNS if f"flag_{d}" in row.index]
        flagged = [d for d in judged if np.nan_to_num(float(row[f"flag_{d}"]), nan=0.0) >= 0.5]
        if len(judged) == 2 and len(flagged) == 2:
            out.append("Both detectors distrust its given labels.")
        elif len(judged) == 2 and len(flagged) == 1:
            other = next(d for d in judged if d not in flagged)
            out.append(
                f"The detectors disagree: {DETECTOR_TEXT[flagged[0]]} distrusts its given labels, "
                f"{DETECTOR_TEXT[other]} does not."
            )
        elif judged:
            out.append("No detector flags its given labels.")
        if wrong:
            out.append(
                "The models barely hear the given "
                + ", ".join(f"{c} (p = {probs[c]:.2f})" for c in wrong)
                + "."
            )
        if missing:
            out.append(
                "The models hear " + ", ".join(f"{c} (p = {probs[c]:.2f})" for c in missing) + ", not given."
            )
        if not wrong and not missing:
            out.append("The models hear exactly the given labels.")
        return tuple(out)

    # trusted examples ------------------------------------------------------------------------------
    def example(self, label: str) -> int | None:
        """Row index in the data set's curated table of a trusted clip carrying ``label`` (fewest labels
        first, then file name), or None; NOT a noisy clip id (see :meth:`example_path`)."""
        if label not in self._examples:
            self._label_index(label)
            curated = self.dataset.curated
            rows = [
                (len(labels), str(f), i)
                for i, (f, labels) in enumerate(zip(curated["fname"], curated["labels"], strict=True))
                if label in labels
            ]
            self._examples[label] = min(rows)[2] if rows else None
        return self._examples[label]

    def example_path(self, label: str) -> Path | None:
        """The audio of a trusted curated clip carrying ``label`` (None if there is none); ValueError for
        an unknown label."""
        row = self.example(label)
        return None if row is None else Path(self.dataset.curated["path"].iat[row])
