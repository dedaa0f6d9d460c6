"""A reviewer who knows the truth: answers the queue's cards from a truth file and writes the same events a
person would, to measure what an ordering is worth (the cleaning curve) and to test the loop end to end.

The cleaning curve counts, after each clip reviewed, the wrong label sets found so far: reviewed clips whose
given label set differs from the true one. It needs no retraining. Truth files (both name each noisy clip's
true labels): the synthetic set's ``truth/noisy.csv`` (fname, labels) and realdev's ``noisy_true_labels.csv``
(fname, labels = the true ones, given_labels, corruption); a manifest-style file with ``path`` and
``true_labels`` works too. This module is the only part of the review that reads the truth, and only here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from noisytag.data.dataset import DataError, parse_labels, read_csv_rows
from noisytag.review.events import DECISIONS, EventLog, decision_event, events_path
from noisytag.review.queue import ReviewError, ReviewQueue

# policy → queue mode. "oracle" is the ceiling of a review: exactly the clips whose given labels are wrong
# (known from the truth only here), in the suspect order, so with a large enough budget every wrong label set
# is fixed and nothing else changes.
POLICIES = {"top": "suspect", "random": "random", "disagree": "disagree", "oracle": "suspect"}
CURVE_POINTS = (25, 50, 100, 200)


def read_truth_labels(path: Path | str) -> dict[str, tuple[str, ...]]:
    """Clip name → true label set from a truth CSV (key column ``fname`` or ``path``; labels from
    ``true_labels`` when present, else ``labels``); ReviewError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ReviewError(f"{path}: truth file not found")
    try:
        frame, _, problems = read_csv_rows(path)
    except (OSError, DataError) as err:
        raise ReviewError(f"{path}: unreadable truth file ({err})") from None
    if frame is None:
        raise ReviewError(f"{path}: unreadable truth file ({'; '.join(problems)})")
    key = next((c for c in ("fname", "path") if c in frame.columns), None)
    labels = next((c for c in ("true_labels", "labels") if c in frame.columns), None)
    if key is None or labels is None:
        raise ReviewError(
            f"{path}: a truth file needs columns fname (or path) and labels (or true_labels); "
            f"got {','.join(map(str, frame.columns))}"
        )
    return {
        str(k).strip(): parse_labels(v) for k, v in zip(frame[key], frame[labels].fillna(""), strict=True)
    }


def truth_for(truth: dict[str, tuple[str, ...]], fname: str) -> tuple[str, ...] | None:
    """The true labels of ``fname`` (matched by name, then by file name for manifest-made runs), or None."""
    if fname in truth:
        return truth[fname]
    return truth.get(Path(fname).name)


def queue_truth(queue: ReviewQueue, truth_csv: Path | str) -> dict[str, tuple[str, ...]]:
    """The truth file's labels (:func:`read_truth_labels`), or ReviewError when it names none of the queue's
    clips."""
    truth = read_truth_labels(truth_csv)
    if not any(truth_for(truth, f) is not None for f in queue.clips["fname"]):
        raise ReviewError(f"{truth_csv}: names none of the run's {len(queue)} noisy clips")
    return truth


def is_wrong(true: tuple[str, ...] | None, given) -> bool:
    """Whether a clip's given label set differs from its true one (a clip the truth does not name is not)."""
    return true is not None and set(true) != set(given)


def simulate(
    queue: ReviewQueue,
    truth_csv: Path | str,
    budget: int,
    policy: str = "top",
    reviewer: str = "simulator",
    seed: int = 0,
    log: EventLog | None = None,
) -> pd.DataFrame:
    """Review the first ``budget`` undecided clips of the ``policy`` order, answering each from the truth.

    The answer sets the true labels: ``accept_given`` when they equal the given ones, ``accept_models`` when
    they equal the models' suggestion, ``set`` otherwise (``drop`` for an empty true set, ``unsure`` for a
    clip the truth file does not name). Each answer is appended to ``log`` (default RUN/review/events.jsonl)
    as the page would. Clips already decided there are skipped, so a second call continues the review.

    Returns one row per reviewed clip: n_reviewed, clip_id, fname, rank (0-based position in the queue),
    given, true, action, wrong (the given set differs from the true one), wrong_found (cumulative).
    """
    if policy not in POLICIES:
        raise ReviewError(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    if budget < 1:
        raise ReviewError(f"budget must be ≥ 1, got {budget}")
    truth = queue_truth(queue, truth_csv)
    log = log or EventLog(events_path(queue.run))
    decided = log.state().decided()
    mode = POLICIES[policy]
    rows, found = [], 0
    for rank, clip_id in enumerate(queue.order(mode, seed=seed)):
        if len(rows) >= budget:
            break
        card = queue.card(clip_id)
        if card.fname in decided:
            continue
        true = truth_for(truth, card.fname)
        if policy == "oracle" and (true is None or set(true) == set(card.given)):
            continue
        action, after = _answer(card.given, card.suggested, true)
        log.append(decision_event(card, action, after, reviewer, 0.0, mode, rank))
        wrong = is_wrong(true, card.given)
        found += wrong
        rows.append(
            {
                "n_reviewed": len(rows) + 1,
                "clip_id": card.clip_id,
                "fname": card.fname,
                "rank": rank,
                "given": ",".join(card.given),
                "true": "" if true is None else ",".join(true),
                "action": action,
                "wrong": wrong,
                "wrong_found": found,
            }
        )
    columns = ["n_reviewed", "clip_id", "fname", "rank", "given", "true", "action", "wrong", "wrong_found"]
    return pd.DataFrame(rows, columns=columns)


def _answer(given: tuple, suggested: tuple, true: tuple | None) -> tuple[str, tuple | None]:
    if true is None:
        return "unsure", None
    if not true:
        return "drop", None
    if set(true) == set(given):
        return "accept_given", tuple(given)
    if set(true) == set(suggested):
        return "accept_models", tuple(suggested)
    return "set", tuple(true)


def cleaning_curve(
    events: list[dict] | pd.DataFrame, truth: dict[str, tuple[str, ...]] | Path | str
) -> pd.DataFrame:
    """Wrong label sets found against clips reviewed, at every step.

    Args:
        events: decision events in the order they were made (as :meth:`EventLog.events` returns them; pass
            one reviewer's), or the frame :func:`simulate` returns. Undos are not undone here: each clip
            counts once, the first time it is reviewed.
        truth: clip name → true labels, or a truth CSV (:func:`read_truth_labels`).

    Returns:
        DataFrame(n_reviewed, wrong_found, fixed, found_per_clip): ``fixed`` counts wrong clips whose
        reviewed labels equal the true ones (a drop counts when the true set is empty).
    """
    truth = truth if isinstance(truth, dict) else read_truth_labels(truth)
    if isinstance(events, pd.DataFrame):
        events = [
            {
                "clip": f,
                "before": parse_labels(g),
                "after": parse_labels(t) if a in ("accept_given", "accept_models", "set") else None,
                "action": a,
            }
            for f, g, t, a in zip(
                events["fname"], events["given"], events["true"], events["action"], strict=True
            )
        ]
    seen: set[str] = set()
    rows, found, fixed = [], 0, 0
    for event in events:
        if event.get("action") not in DECISIONS or event.get("clip") in seen:
            continue
        seen.add(event["clip"])
        true = truth_for(truth, event["clip"])
        if is_wrong(true, event.get("before") or ()):
            found += 1
            after = event.get("after")
            fixed += (
                (set(after) == set(true)) if after is not None else (event["action"] == "drop" and not true)
            )
        n = len(rows) + 1
        rows.append({"n_reviewed": n, "wrong_found": found, "fixed": int(fixed), "found_per_clip": found / n})
    return pd.DataFrame(rows, columns=["n_reviewed", "wrong_found", "fixed", "found_per_clip"])


def random_curve(queue: ReviewQueue, truth_csv: Path | str, budget: int) -> pd.DataFrame:
    """The random policy's expected cleaning curve, in :func:`cleaning_curve`'s columns.

    Reviewing n of the queue's M clips in a uniformly random order finds n·W/M of its W wrong label sets on
    average (the mean of a hypergeometric draw): the diagonal of a cleaning-curve plot. It is exact, where the
    mean of any number of drawn orders only estimates it. The simulated reviewer answers from the truth, so
    every wrong set it sees is fixed: ``fixed`` equals ``wrong_found``."""
    if budget < 1:
        raise ReviewError(f"budget must be ≥ 1, got {budget}")
    truth = queue_truth(queue, truth_csv)
    wrong = sum(
        is_wrong(truth_for(truth, f), g)
        for f, g in zip(queue.clips["fname"], queue.clips["given"], strict=True)
    )
    n = np.arange(1, min(budget, len(queue)) + 1)
    found = n * wrong / len(queue)
    return pd.DataFrame({"n_reviewed": n, "wrong_found": found, "fixed": found, "found_per_clip": found / n})


def curve_points(curve: pd.DataFrame, budget: int | None = None) -> pd.DataFrame:
    """The curve's rows at N = 25, 50, 100, 200 (those ≤ ``budget`` and reached), plus its last row."""
    budget = budget if budget is not None else (int(curve["n_reviewed"].max()) if len(curve) else 0)
    points = [n for n in CURVE_POINTS if n <= budget]
    if len(curve):
        points.append(int(curve["n_reviewed"].iloc[-1]))
    return curve[curve["n_reviewed"].isin(points)].drop_duplicates("n_reviewed").reset_index(drop=True)
