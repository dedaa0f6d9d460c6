"""The review's only record: ``RUN/review/events.jsonl``, one JSON object per decision, appended and never
rewritten, so nothing a reviewer did is lost or overwritten.

An event line::

    {"clip": fname, "clip_id": int, "before": [...], "after": [...] | null (drop / unsure),
     "action": one of ACTIONS, "reviewer": str, "time": ISO-8601 UTC, "seconds": time spent on the card,
     "mode": queue mode, "rank": position in that queue, "scores": the detectors' scores then,
     "suggested": the models' labels then, "undoes": line of the undone event (undo only)}

``append`` returns only after the line is flushed and fsynced, so a decision the server has answered survives
a SIGKILL. A process killed mid-write leaves a torn last line: it is skipped with a warning, and the next append
starts a fresh line after it. Events are numbered by their line in the file (0-based; ``line`` on every event
read back), which ``undoes`` refers to.

The state: the latest live decision (not undone) on a clip wins, whoever made it; undo is per reviewer (it
undoes that reviewer's latest live decision); reviewers' agreement is counted on the clips both decided.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path

log = logging.getLogger(__name__)

ACTIONS = ("accept_given", "accept_models", "set", "drop", "unsure", "undo")
DECISIONS = ACTIONS[:-1]  # every action but undo
NO_LABELS = ("drop", "unsure")  # their "after" is null
REVIEW_DIR = "review"  # RUN/review/: everything a review writes


def review_dir(run: Path | str) -> Path:
    return Path(run) / REVIEW_DIR


def events_path(run: Path | str) -> Path:
    """RUN/review/events.jsonl."""
    return review_dir(run) / "events.jsonl"


_LOCKS: dict[Path, threading.RLock] = {}  # one lock per log file, shared by every EventLog of this process
_LOCKS_LOCK = threading.Lock()


def _lock_for(path: Path) -> threading.RLock:
    with _LOCKS_LOCK:
        return _LOCKS.setdefault(path, threading.RLock())


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_event(event: dict) -> None:
    """ValueError (one line) unless ``event`` is a well-formed decision or undo."""
    action = event.get("action")
    if action not in ACTIONS:
        raise ValueError(f"unknown action {action!r}; choose from {', '.join(ACTIONS)}")
    for key in ("clip", "reviewer"):
        if not isinstance(event.get(key), str) or not event.get(key):
            raise ValueError(f"event needs a non-empty {key!r}")
    after = event.get("after")
    if action in NO_LABELS and after is not None:
        raise ValueError(f"a {action!r} event has after = null")
    if action in ("accept_given", "accept_models", "set") and not (
        isinstance(after, (list, tuple)) and all(isinstance(x, str) for x in after)
    ):
        raise ValueError(f"a {action!r} event needs 'after': a list of labels")
    if action == "set" and not after:
        raise ValueError("a 'set' event needs at least one label (drop the clip instead)")
    if action == "undo" and not isinstance(event.get("undoes"), int):
        raise ValueError("an 'undo' event needs 'undoes': the line of the undone event")


class EventLog:
    """Append-only JSON-lines log of review decisions (thread-safe; processes take a file lock)."""

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = _lock_for(self.path.resolve())
        self._size = 0  # bytes of the file already counted
        self._lines = 0  # complete lines in those bytes
        self._warned: set[int] = set()  # unreadable lines already warned about
        self._parsed: list[dict] = []  # events of the complete lines read so far (see events)
        self._parsed_bytes = 0  # bytes of those lines
        self._parsed_lines = 0  # their number

    def _count_lines(self, fh) -> tuple[int, bool]:
        """(complete lines in the file now, True when it ends inside a line), counting only new bytes."""
        size = os.fstat(fh.fileno()).st_size
        if size < self._size:  # replaced by a shorter file: count again
            self._size, self._lines = 0, 0
        fh.seek(self._size)
        chunk = fh.read(size - self._size)
        self._lines += chunk.count(b"\n")
        self._size = size
        if size == 0:
            return 0, False
        fh.seek(size - 1)
        return self._lines, fh.read(1) != b"\n"

    def append(self, event: dict) -> dict:
        """Write ``event`` as one line (``time`` filled in when absent); return it with its ``line``.

        Returns only after the line is flushed and fsynced. ValueError for a malformed event."""
        event = dict(event)
        event.pop("line", None)
        event.setdefault("time", utc_now())
        if isinstance(event.get("after"), tuple):
            event["after"] = list(event["after"])
        check_event(event)
        text = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a+b") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # other processes append whole lines too
                lines, torn = self._count_lines(fh)
                prefix = b"\n" if torn else b""  # a torn last line stays alone on its line
                data = prefix + text.encode("utf-8") + b"\n"
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                self._size += len(data)
                self._lines = lines + (1 if torn else 0) + 1
            return {**event, "line": self._lines - 1}

    def events(self) -> list[dict]:
        """Every readable event in file order, each with its ``line``; unreadable lines (a torn last line
        of a killed writer) are skipped with a warning.

        Only the bytes appended since the last call are parsed (every decision reads the state again, so
        re-parsing the whole log made a long review quadratic); a file that shrank is read again."""
        if not self.path.is_file():
            return []
        with self._lock:
            with open(self.path, "rb") as fh:
                size = os.fstat(fh.fileno()).st_size
                if size < self._parsed_bytes:  # replaced by a shorter file
                    self._parsed, self._parsed_bytes, self._parsed_lines = [], 0, 0
                fh.seek(self._parsed_bytes)
                chunk = fh.read(size - self._parsed_bytes)
            *complete, tail = chunk.split(b"\n")
            for piece in complete:
                event = self._parse(piece, self._parsed_lines, last=False)
                if event is not None:
                    self._parsed.append(event)
                self._parsed_lines += 1
            self._parsed_bytes += len(chunk) - len(tail)
            last = self._parse(tail, self._parsed_lines, last=True)  # not kept: its writer may still be at it
            return [*self._parsed, *([last] if last is not None else [])]

    def _parse(self, piece: bytes, number: int, last: bool) -> dict | None:
        """Line ``number`` as an event with its ``line``, or None (blank or unreadable: warned once)."""
        if not piece.strip():
            return None
        try:
            event = json.loads(piece)
            if not isinstance(event, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            if number not in self._warned:
                self._warned.add(number)
                log.warning(
                    "%s: %s %d skipped",
                    self.path,
                    "torn last line" if last else "unreadable line",
                    number + 1,
                )
            return None
        return {**event, "line": number}

    def state(self) -> ReviewState:
        return review_state(self.events())

    def undo(self, reviewer: str) -> dict | None:
        """Append an undo of ``reviewer``'s latest live decision and return it (None when there is none)."""
        with self._lock:  # re-entrant: no other thread appends between finding the target and undoing it
            target = latest_live(self.events(), reviewer)
            if target is None:
                return None
            return self.append(
                {
                    "clip": target["clip"],
                    "clip_id": target.get("clip_id"),
                    "before": target.get("after"),
                    "after": target.get("before"),
                    "action": "undo",
                    "reviewer": reviewer,
                    "undoes": int(target["line"]),
                }
            )


def _live(events: list[dict]) -> list[dict]:
    """The decisions (not undos) that no undo has taken back, in file order."""
    undone = {e.get("undoes") for e in events if e.get("action") == "undo"}
    return [e for e in events if e.get("action") in DECISIONS and e.get("line") not in undone]


def latest_live(events: list[dict], reviewer: str) -> dict | None:
    """``reviewer``'s latest decision that is not undone, or None."""
    mine = [e for e in _live(events) if e.get("reviewer") == reviewer]
    return mine[-1] if mine else None


@dataclass
class ReviewState:
    """What the log says now: each clip's latest live decision, overall and per reviewer."""

    decisions: dict[str, dict] = field(default_factory=dict)  # fname → latest live decision (any reviewer)
    by_reviewer: dict[str, dict[str, dict]] = field(default_factory=dict)  # reviewer → fname → decision

    def decided(self) -> set[str]:
        return set(self.decisions)

    def agreement(self) -> dict:
        """Pairwise agreement of the reviewers on the clips both decided: ``{"a|b": {"n", "agree",
        "share"}}`` (share None when n = 0: JSON has no NaN). Two decisions agree when they keep or drop the clip alike and
        set the same label set (unsure agrees only with unsure)."""
        out = {}
        for a, b in combinations(sorted(self.by_reviewer), 2):
            both = set(self.by_reviewer[a]) & set(self.by_reviewer[b])
            agree = sum(_same(self.by_reviewer[a][f], self.by_reviewer[b][f]) for f in both)
            out[f"{a}|{b}"] = {
                "reviewers": [a, b],
                "n": len(both),
                "agree": agree,
                "share": agree / len(both) if both else None,
            }
        return out


def _verdict(event: dict) -> tuple:
    action = event.get("action")
    if action in NO_LABELS:
        return (action,)
    return ("labels", frozenset(event.get("after") or ()))


def _same(a: dict, b: dict) -> bool:
    return _verdict(a) == _verdict(b)


def review_state(events: list[dict]) -> ReviewState:
    """The :class:`ReviewState` of ``events`` (as :meth:`EventLog.events` returns them, in file order)."""
    state = ReviewState()
    for event in _live(events):  # file order: a later line replaces an earlier one
        state.decisions[event["clip"]] = event
        state.by_reviewer.setdefault(event["reviewer"], {})[event["clip"]] = event
    return state


def decision_event(card, action: str, after, reviewer: str, seconds: float, mode: str, rank: int) -> dict:
    """The event line of one decision on a :class:`~noisytag.review.queue.Card` (page and simulator alike):
    the labels before and after, and the models' suggestion and the detectors' scores as the card showed them."""
    return {
        "clip": card.fname,
        "clip_id": card.clip_id,
        "before": list(card.given),
        "after": None if after is None else list(after),
        "action": action,
        "reviewer": reviewer,
        "seconds": round(float(seconds), 3),
        "mode": mode,
        "rank": int(rank),
        "scores": dict(card.scores),
        "suggested": list(card.suggested),
    }
