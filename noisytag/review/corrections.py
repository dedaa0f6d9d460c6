"""What a review changes, written beside the run and never into the data set: ``RUN/review/corrections.csv``
(the latest live decision per clip) and ``RUN/review/manifest.csv`` (the corrected data set, with its
``classes.txt``), both written atomically.

The manifest is an ordinary noisytag manifest (:mod:`noisytag.data.manifest`): ``check``, ``pipeline`` and
``distill`` read it like any other data set. Every curated and noisy clip keeps the fold the run gave it
(RUN/folds.csv), so a retrain that reuses the run's stages 1-2 stays out-of-fold: a reviewed noisy clip becomes
``curated`` with the reviewer's labels, a dropped clip leaves, an unsure or unreviewed one stays ``noisy`` with
its given labels. Paths are absolute; ``fname`` (ignored by the manifest reader) keeps each clip's name in the
run, so a retrain can map its rows back. Truth columns are never written.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pandas as pd

from noisytag.data.dataset import format_labels
from noisytag.data.manifest import CLASSES_FILE
from noisytag.fileio import write_csv, write_text
from noisytag.review.events import EventLog, ReviewState, review_dir
from noisytag.review.queue import ReviewError, ReviewQueue

log = logging.getLogger(__name__)

CORRECTIONS_COLUMNS = (
    "fname",
    "given",
    "reviewed",
    "action",
    "reviewer",
    "time",
    "suggested",
    "seconds",
    "mode",
)
LABELLING = ("accept_given", "accept_models", "set")  # the decisions that make a clip curated


def corrections_table(queue: ReviewQueue, state: ReviewState) -> pd.DataFrame:
    """One row per decided clip (latest live decision), in the order the decisions were made.

    ``reviewed`` is empty for drop / unsure; ``suggested`` is what the models proposed at that moment, kept
    apart from the person's answer so accepted suggestions can be counted."""
    rows = []
    for fname, event in sorted(state.decisions.items(), key=lambda kv: kv[1].get("line", 0)):
        try:
            clip_id = queue.clip_id(fname)
        except KeyError:
            log.warning("corrections: clip %r of the events is not in the run's queue: left out", fname)
            continue
        after = event.get("after")
        rows.append(
            {
                "fname": fname,
                "given": format_labels(queue.given(clip_id)),
                "reviewed": format_labels(after) if after is not None else "",
                "action": event["action"],
                "reviewer": event.get("reviewer", ""),
                "time": event.get("time", ""),
                "suggested": format_labels(event.get("suggested") or ()),
                "seconds": event.get("seconds", ""),
                "mode": event.get("mode", ""),
            }
        )
    return pd.DataFrame(rows, columns=list(CORRECTIONS_COLUMNS))


def _fold_text(folds: dict[str, int], fname: str) -> str:
    return str(folds[fname]) if fname in folds else ""


def corrected_manifest(queue: ReviewQueue, state: ReviewState) -> pd.DataFrame:
    """The corrected data set as manifest rows (path, labels, subset, fold[, usage], fname); see the module
    docstring. ReviewError naming the clip when a decision sets a label the run does not know."""
    folds_frame = pd.read_csv(queue.run / "folds.csv", dtype={"fname": str, "split": str})
    folds = {
        s: dict(zip(f["fname"], f["fold"].astype(int), strict=True)) for s, f in folds_frame.groupby("split")
    }
    known = set(queue.classes)
    data = queue.dataset
    rows = []
    _row = _Rows()
    for fname, path, labels in zip(
        data.curated["fname"], data.curated["path"], data.curated["labels"], strict=True
    ):
        rows.append(_row(path, labels, "curated", _fold_text(folds.get("curated", {}), fname), fname))
    noisy_folds = folds.get("noisy", {})
    for fname, path, labels in zip(
        data.noisy["fname"], data.noisy["path"], data.noisy["labels"], strict=True
    ):
        decision = state.decisions.get(fname)
        action = decision["action"] if decision else None
        if action == "drop":
            continue
        if action in LABELLING:
            reviewed = tuple(decision.get("after") or ())
            unknown = [x for x in reviewed if x not in known]
            if unknown or not reviewed:
                why = f"unknown label {unknown[0]!r}" if unknown else "no labels"
                raise ReviewError(f"events line {decision.get('line')}: clip {fname!r} is set to {why}")
            rows.append(_row(path, reviewed, "curated", _fold_text(noisy_folds, fname), fname))
        else:
            rows.append(_row(path, labels, "noisy", _fold_text(noisy_folds, fname), fname))
    usage = "usage" in data.test.columns
    for fname, path, row in zip(data.test["fname"], data.test["path"], data.test.itertuples(), strict=True):
        test_row = _row(path, (), "test", "", fname)
        if usage:
            test_row["usage"] = str(getattr(row, "usage", "") or "")
        rows.append(test_row)
    columns = ["path", "labels", "subset", "fold", *(["usage"] if usage else []), "fname"]
    return pd.DataFrame(rows, columns=columns).fillna("")


class _Rows:
    """Manifest rows with absolute paths, each folder resolved once (resolving every one of 20,000 paths
    took most of a rewrite, which follows every decision)."""

    def __init__(self):
        self._folders: dict[str, Path] = {}

    def __call__(self, path, labels, subset: str, fold: str, fname: str) -> dict:
        path = Path(path)
        folder = str(path.parent)
        if folder not in self._folders:
            self._folders[folder] = path.parent.resolve()
        return {
            "path": str(self._folders[folder] / path.name),
            "labels": format_labels(labels),
            "subset": subset,
            "fold": fold,
            "fname": fname,
        }


def write_corrections(queue: ReviewQueue, state: ReviewState) -> tuple[Path, Path]:
    """Write RUN/review/corrections.csv and RUN/review/manifest.csv (+ classes.txt, the run's class list in
    its order) atomically; return (corrections, manifest)."""
    out = review_dir(queue.run)
    corrections, manifest = out / "corrections.csv", out / "manifest.csv"
    table = corrected_manifest(queue, state)  # validates every decision before anything is written
    write_text(out / CLASSES_FILE, "".join(f"{c}\n" for c in queue.classes))
    write_csv(manifest, table)
    write_csv(corrections, corrections_table(queue, state))
    return corrections, manifest


class LiveState:
    """The log's state, read again only when the file changed (several servers may share a log)."""

    def __init__(self, log_: EventLog):
        self.log = log_
        self._key: tuple | None = None
        self._state = None
        self._lock = threading.Lock()

    def get(self):
        path = Path(self.log.path)
        with self._lock:
            st = path.stat() if path.exists() else None
            key = (st.st_size, st.st_mtime_ns) if st else None
            if self._state is None or key != self._key:
                self._state, self._key = self.log.state(), key
            return self._state


class CorrectionsWriter:
    """Rewrites corrections.csv and the corrected manifest after decisions, in one background thread
    (later decisions that arrive while it writes are folded into one more write)."""

    def __init__(self, queue: ReviewQueue, state: LiveState):
        self.queue, self.state = queue, state
        self._dirty = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="review-corrections")
        self._thread.start()

    def mark(self) -> None:
        self._dirty.set()

    def write(self) -> tuple[Path, Path]:
        with self._lock:
            return write_corrections(self.queue, self.state.get())

    def _loop(self) -> None:
        while True:
            self._dirty.wait()
            self._dirty.clear()
            try:
                self.write()
            except Exception:  # the log is the record; the files are rewritten at the next decision
                log.exception("could not rewrite the corrections")
