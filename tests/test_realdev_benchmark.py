"""benchmarks/realdev.py keeps finished runs' scoring files in git, so a later session (whose checkout
has no runs/) scores and compares them without training again."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture(scope="module")
def realdev():
    sys.path.insert(0, str(BENCH))
    try:
        spec = importlib.util.spec_from_file_location("realdev_bench", BENCH / "realdev.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCH))


def _finished_run(run: Path, probs: np.ndarray) -> None:
    run.mkdir(parents=True)
    frame = pd.DataFrame(probs, columns=["Bark", "Gong"])
    frame.insert(0, "fname", ["a.wav", "b.wav", "c.wav"])
    frame.to_csv(run / "submission.csv", index=False)
    pd.DataFrame({"model": ["stage 3"], "seconds": [12.5]}).to_csv(run / "stage_table.csv", index=False)
    (run / "weights.bin").write_bytes(b"not archived")


def test_a_finished_run_is_archived_and_scored_from_the_archive_alone(realdev, tmp_path):
    truth = tmp_path / "test_labels.csv"
    truth.write_text('fname,labels\na.wav,Bark\nb.wav,Gong\nc.wav,"Bark,Gong"\n')
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.7]])
    run, kept = tmp_path / "runs" / "seed0", tmp_path / "archive" / "seed0"
    _finished_run(run, probs)

    realdev.archive_run(run, kept)
    assert sorted(p.name for p in kept.iterdir()) == ["stage_table.csv", "submission.csv"]

    import shutil

    shutil.rmtree(tmp_path / "runs")  # a new session: no runs/
    scored, seconds = realdev.load_run(
        tmp_path / "runs", "ref", [0], truth, ("teacher",), tmp_path / "archive"
    )
    fnames, classes, y, p = scored["ref/teacher/seed0"]
    assert fnames == ["a.wav", "b.wav", "c.wav"] and classes == ["Bark", "Gong"]
    np.testing.assert_allclose(p, probs)
    assert seconds["ref/teacher/seed0"] == 12.5


def test_an_archived_teacher_is_not_trained_again(realdev, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(realdev, "noisytag", lambda *argv: calls.append(argv[0]))
    args = realdev.parse_args(["--name", "ref", "--skip-distill"])
    archive = tmp_path / "archive"
    _finished_run(archive / "seed0", np.full((3, 2), 0.5))
    realdev.run_seed(args, tmp_path / "data", tmp_path / "runs", archive, 0)
    assert calls == []
    realdev.run_seed(args, tmp_path / "data", tmp_path / "runs", archive, 1)
    assert calls == ["pipeline"]
