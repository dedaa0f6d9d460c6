"""Ranks started together (torchrun, SLURM) do not race: global rank zero prepares the run (config,
feature caches, folds), the others wait for its ``.prepared`` marker and only read."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from noisytag.fileio import write_json
from noisytag.rundir import RunDir
from noisytag.runs.context import (
    failed_marker,
    is_global_zero,
    prepared_marker,
    wait_for_writer,
)

SCRIPT = Path(__file__).with_name("ranks_open_run.py")
PREPARED = {"config": "abc123", "caches": {"key/train_curated": "sig"}}


@pytest.fixture()
def prepared_run(tmp_path):
    """A run directory whose cache and folds.csv are in place, but whose marker is not written yet."""
    run, cache = RunDir(tmp_path / "run"), tmp_path / "cache"
    (cache / "key" / "train_curated").mkdir(parents=True)
    (cache / "key" / "train_curated" / "done").write_text("sig")
    run.root.mkdir()
    run.folds.write_text("fname,split,fold\n")
    return run, cache


def later(seconds: float, action) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_reader_waits_until_the_marker_appears(prepared_run):
    run, cache = prepared_run
    started = time.monotonic()
    later(1.0, lambda: write_json(prepared_marker(run), PREPARED))
    wait_for_writer(run, PREPARED, cache, timeout=30)
    assert 0.9 < time.monotonic() - started < 10


def test_marker_of_another_config_or_cache_is_not_taken(prepared_run):
    """A marker left by an earlier launch with another config, or an incomplete cache, is waited past."""
    run, cache = prepared_run
    write_json(prepared_marker(run), {**PREPARED, "config": "other"})
    (cache / "key" / "train_curated" / "done").write_text("old signature")
    started = time.monotonic()
    later(0.5, lambda: write_json(prepared_marker(run), PREPARED))
    later(1.0, lambda: (cache / "key" / "train_curated" / "done").write_text("sig"))
    wait_for_writer(run, PREPARED, cache, timeout=30)
    assert 0.9 < time.monotonic() - started < 10


def test_reader_stops_with_the_writers_error(prepared_run):
    run, cache = prepared_run
    error = {"config": PREPARED["config"], "error": "RunConfigMismatch: train.lr", "time": 0, "pid": 1}
    later(0.5, lambda: write_json(failed_marker(run), error))
    with pytest.raises(RuntimeError) as err:
        wait_for_writer(run, PREPARED, cache, timeout=30)
    assert (
        str(err.value)
        == f"{run.root}: global rank zero failed to prepare the run: RunConfigMismatch: train.lr"
    )


def test_waiting_too_long_is_one_line_naming_the_run(prepared_run):
    run, cache = prepared_run
    with pytest.raises(RuntimeError) as err:
        wait_for_writer(run, PREPARED, cache, timeout=0.3)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"{run.root}: waited 0 s") and ".prepared" in message


@pytest.mark.parametrize(
    "env, zero",
    [
        ({}, True),
        ({"RANK": "0", "WORLD_SIZE": "2"}, True),
        ({"RANK": "1", "WORLD_SIZE": "2"}, False),
        ({"NODE_RANK": "1"}, False),  # Lightning's launcher on a second node, before it starts ranks
        ({"RANK": "0", "NODE_RANK": "1"}, True),  # torchrun's RANK is the global rank
    ],
)
def test_global_zero_from_the_launchers_environment(monkeypatch, env, zero):
    for name in ("RANK", "NODE_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert is_global_zero() is zero


@pytest.mark.slow
def test_two_ranks_started_together_build_one_cache_and_one_folds_table(tmp_path):
    """Two processes open a fresh run on a fresh data set at once: one folds.csv, one build of each
    cache folder, both see the same folds and caches, and rank one writes nothing."""
    from noisytag.audio.cache import DONE, FRAMES, PROGRESS, build_signatures
    from noisytag.config import FrontendConfig
    from noisytag.data.synth import generate

    data, run, cache = tmp_path / "data", RunDir(tmp_path / "run"), tmp_path / "cache"
    generate(data, scale="tiny", seed=0)
    base = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(SCRIPT.parent.parent),
        "WORLD_SIZE": "2",
    }
    procs = [
        subprocess.Popen(
            [sys.executable, str(SCRIPT), str(data), str(run.root), str(cache)],
            env={**base, "RANK": str(rank), "LOCAL_RANK": str(rank), "NODE_RANK": "0"},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in (0, 1)
    ]  # both started before either is waited for
    outputs = [p.communicate(timeout=240) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err[-3000:]
    zero, one = (json.loads(out.strip().splitlines()[-1]) for out, _ in outputs)

    assert zero["writer"] and not one["writer"]
    assert one["writes"] == []  # rank one neither built the cache nor wrote folds.csv
    assert one["folds"] == zero["folds"] and one["caches"] == zero["caches"]
    assert one["splits"] == zero["splits"] and all(n > 0 for n in zero["splits"].values())
    assert sorted(p.name for p in run.root.iterdir()) == [
        ".prepared",
        "config.yaml",
        "folds.csv",
        "plan.json",
        "run.json",
    ]

    frontend = FrontendConfig()
    for name, signature in build_signatures(data, frontend, ("curated", "noisy", "test")).items():
        assert (cache / name / DONE).read_text() == signature  # built for the files on disk
    folders = sorted(p for p in (cache / frontend.key()).iterdir() if p.is_dir())
    assert [p.name for p in folders] == ["test", "train_curated", "train_noisy"]
    for folder in folders:  # one build: every clip extracted and appended once
        logged = [json.loads(line) for line in (folder / PROGRESS).read_text().splitlines()]
        names = [e["fname"] for e in logged]
        assert len(names) == len(set(names)) == len(list((data / folder.name).iterdir()))
        rows = sum(e.get("n_frames", 0) for e in logged)
        assert (folder / FRAMES).stat().st_size == rows * frontend.n_mels * 2
