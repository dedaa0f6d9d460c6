"""The review's events log: one fsynced line per decision, torn lines survived, latest wins, undo per
reviewer, agreement."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from noisytag.review import events as events_module
from noisytag.review.events import EventLog, review_state


def decision(clip, reviewer="ann", action="set", after=("Bell",), **extra):
    after = None if action in ("drop", "unsure") else list(after)
    return {"clip": clip, "clip_id": 0, "before": ["Drum"], "after": after, "action": action,
            "reviewer": reviewer, "seconds": 1.5, "mode": "suspect", "rank": 0, **extra}  # fmt: skip


def test_append_writes_one_fsynced_line(tmp_path, monkeypatch):
    synced = []
    real_fsync = events_module.os.fsync
    monkeypatch.setattr(events_module.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    log = EventLog(tmp_path / "review" / "events.jsonl")
    first = log.append(decision("a.wav"))
    second = log.append(decision("b.wav", action="drop"))
    assert len(synced) == 2
    lines = log.path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["after"] is None
    assert (first["line"], second["line"]) == (0, 1)
    assert first["time"].endswith("Z") and "line" not in json.loads(lines[0])
    read = log.events()
    assert [e["clip"] for e in read] == ["a.wav", "b.wav"] and read[0]["seconds"] == 1.5


def test_bad_events_are_refused(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    for bad in (
        decision("a.wav", action="nope"),
        {**decision("a.wav"), "after": None},
        {**decision("a.wav"), "after": []},
        {**decision("a.wav", action="drop"), "after": ["Bell"]},
        {**decision("a.wav"), "reviewer": ""},
        {"clip": "a.wav", "action": "undo", "reviewer": "ann"},
    ):
        with pytest.raises(ValueError):
            log.append(bad)
    assert log.events() == []


def test_torn_last_line_is_skipped_and_the_log_goes_on(tmp_path, caplog):
    log = EventLog(tmp_path / "events.jsonl")
    log.append(decision("a.wav"))
    with open(log.path, "a") as fh:
        fh.write('{"clip": "b.wav", "act')  # a writer killed mid-line
    with caplog.at_level(logging.WARNING):
        assert [e["clip"] for e in EventLog(log.path).events()] == ["a.wav"]
    assert "torn" in caplog.text
    again = EventLog(log.path).append(decision("c.wav"))
    assert again["line"] == 2
    assert [(e["clip"], e["line"]) for e in log.events()] == [("a.wav", 0), ("c.wav", 2)]
    assert EventLog(log.path).undo("ann")["undoes"] == 2
    assert set(log.state().decided()) == {"a.wav"}


def test_latest_decision_wins_across_reviewers(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append(decision("a.wav", "ann", after=("Bell",)))
    log.append(decision("a.wav", "bob", after=("Knock",)))
    log.append(decision("b.wav", "bob", action="drop"))
    log.append(decision("b.wav", "ann", action="unsure"))
    state = log.state()
    assert state.decisions["a.wav"]["after"] == ["Knock"] and state.decisions["b.wav"]["action"] == "unsure"
    assert state.by_reviewer["ann"]["a.wav"]["after"] == ["Bell"]
    assert state.decided() == {"a.wav", "b.wav"}


def test_undo_is_per_reviewer(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append(decision("a.wav", "ann", after=("Bell",)))
    log.append(decision("b.wav", "bob"))
    log.append(decision("a.wav", "ann", after=("Siren",)))
    log.append(decision("c.wav", "bob"))
    undo = log.undo("ann")
    assert undo["action"] == "undo" and undo["undoes"] == 2 and undo["clip"] == "a.wav"
    assert undo["before"] == ["Siren"] and undo["reviewer"] == "ann"
    assert log.state().decisions["a.wav"]["after"] == ["Bell"]  # ann's earlier decision is live again
    assert log.undo("ann")["undoes"] == 0
    assert "a.wav" not in log.state().decisions
    assert log.undo("ann") is None  # nothing left to undo for ann
    assert log.undo("bob")["undoes"] == 3  # bob's latest, not ann's
    assert log.state().decided() == {"b.wav"}
    assert log.undo("nobody") is None


def test_undo_does_not_take_back_another_reviewers_later_decision(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append(decision("a.wav", "ann", after=("Bell",)))
    log.append(decision("a.wav", "bob", after=("Knock",)))
    log.undo("ann")
    assert log.state().decisions["a.wav"]["reviewer"] == "bob"


def test_agreement_on_clips_both_decided(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")
    log.append(decision("a.wav", "ann", after=("Bell", "Siren")))
    log.append(decision("a.wav", "bob", after=("Siren", "Bell")))  # same set
    log.append(decision("b.wav", "ann", action="drop"))
    log.append(decision("b.wav", "bob", after=("Knock",)))
    log.append(decision("c.wav", "ann"))  # only ann: not counted
    log.append(decision("d.wav", "cid", action="unsure"))
    agreement = log.state().agreement()
    assert agreement["ann|bob"]["n"] == 2 and agreement["ann|bob"]["agree"] == 1
    assert agreement["ann|bob"]["share"] == 0.5
    assert agreement["ann|cid"]["n"] == 0 and agreement["ann|cid"]["share"] is None  # JSON has no NaN
    assert review_state([]).agreement() == {}


def test_a_log_read_again_parses_only_what_was_appended(tmp_path, monkeypatch):
    """Every decision reads the state again: a reader parses the new lines only and sees what a fresh
    reader sees, torn lines and appends by other writers included."""
    path = tmp_path / "events.jsonl"
    reader, writer = EventLog(path), EventLog(path)
    parsed = []
    real_loads = json.loads
    monkeypatch.setattr(events_module.json, "loads", lambda s: parsed.append(s) or real_loads(s))
    for i in range(5):
        writer.append(decision(f"{i}.wav", "ann"))
        assert reader.events() == EventLog(path).events()
    parsed.clear()
    writer.append(decision("5.wav", "bob"))
    assert [e["clip"] for e in reader.events()] == [f"{i}.wav" for i in range(6)]
    assert len(parsed) == 1  # the one new line
    with open(path, "ab") as fh:
        fh.write(b'{"clip": "torn')  # a writer killed mid-line
    assert reader.events() == EventLog(path).events() and len(reader.events()) == 6
    writer.append(decision("6.wav", "ann"))  # starts a fresh line after the torn one
    assert reader.events() == EventLog(path).events()
    assert [e["line"] for e in reader.events()] == [0, 1, 2, 3, 4, 5, 7]
    path.write_bytes(b"")  # replaced by a shorter file: read again
    writer.append(decision("7.wav", "ann"))
    assert [e["clip"] for e in reader.events()] == ["7.wav"]


def test_threads_append_whole_lines(tmp_path):
    log = EventLog(tmp_path / "events.jsonl")

    def work(k):
        for i in range(25):
            EventLog(log.path).append(decision(f"{k}-{i}.wav", reviewer=f"r{k}"))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    read = log.events()
    assert len(read) == 200 and sorted(e["line"] for e in read) == list(range(200))
    assert len(log.path.read_text().splitlines()) == 200
