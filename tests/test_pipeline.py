import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from noisytag.config import save_config
from noisytag.rundir import RunConfigMismatch, RunDir
from noisytag.runs.pipeline import run_pipeline

pytestmark = pytest.mark.slow


def test_tiny_pipeline_writes_every_artifact(tiny_run):
    run = RunDir(tiny_run)
    for path in (run.config, run.run_info, run.folds, run.stage_table, run.submission, run.test_scores):
        assert path.is_file(), path
    for stage in (1, 2, 3, 4):
        for fold in (0, 1):
            fold_dir = run.fold_dir("cnn1", stage, fold)
            for name in (
                "weights.safetensors",
                "model.json",
                "metrics.csv",
                "oof_curated.npy",
                "oof_noisy.npy",
                "test.npy",
                "done",
            ):
                assert (fold_dir / name).is_file(), fold_dir / name
            assert not (fold_dir / "last.ckpt").exists()
    for stage in (3, 4):
        sel = pd.read_csv(run.selection("cnn1", stage))
        assert list(sel.columns[:4]) == ["fname", "fold", "labels", "score"]
    table = pd.read_csv(run.stage_table)
    assert list(table["stage"]) == [1, 2, 3, 4]
    assert table[["lwlrap_noisy", "lwlrap_curated", "test_lwlrap"]].notna().all().all()
    scores = pd.read_csv(run.scores("cnn1"))
    assert {"s1", "s2", "s3", "s4", "correct"} <= set(scores.columns)
    sub = pd.read_csv(run.submission)
    assert sub.columns[0] == "fname" and np.all((sub.iloc[:, 1:] >= 0) & (sub.iloc[:, 1:] <= 1))


def test_submission_follows_sample_submission_columns(tiny_run, tiny_data):
    sample = pd.read_csv(tiny_data / "sample_submission.csv")
    sub = pd.read_csv(RunDir(tiny_run).submission)
    assert list(sub.columns) == list(sample.columns)
    assert sorted(sub["fname"]) == sorted(sample["fname"])


def test_rerun_skips_finished_folds(tiny_run, tiny_data, tiny_cache):
    run = RunDir(tiny_run)
    weights = run.fold_dir("cnn1", 2, 1) / "weights.safetensors"
    before = weights.stat().st_mtime_ns
    started = time.perf_counter()
    cfg = tiny_config(**{"data.cache_dir": str(tiny_cache)})
    run_pipeline(tiny_data, tiny_run, cfg, progress=False)
    assert weights.stat().st_mtime_ns == before
    assert time.perf_counter() - started < 60


def test_changed_config_is_refused_without_force(tiny_run, tiny_data, tiny_cache):
    cfg = tiny_config(**{"data.cache_dir": str(tiny_cache), "train.lr": 0.01})
    with pytest.raises(RunConfigMismatch, match=r"train\.lr"):
        run_pipeline(tiny_data, tiny_run, cfg, progress=False)


def _pipeline_cmd(data, run, config):
    return [
        sys.executable,
        "-m",
        "noisytag",
        "pipeline",
        str(data),
        "-o",
        str(run),
        "--config",
        str(config),
        "--no-progress",
        "--no-report",
    ]


def test_killed_pipeline_resumes_to_the_same_artifacts(tmp_path, tiny_data, tiny_cache):
    cfg = tiny_config(
        **{
            "data.cache_dir": str(tiny_cache),
            "train.epochs": 3,
            "pipeline.stages": "[1, 2]",
            "infer.stages": "[2]",
        }
    )
    config = tmp_path / "cfg.yaml"
    save_config(cfg, config)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(_pipeline_cmd(tiny_data, whole, config), check=True, env=env, capture_output=True)
    proc = subprocess.Popen(
        _pipeline_cmd(tiny_data, cut, config), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    ckpt = RunDir(cut).fold_checkpoint("cnn1", 1, 1)
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), "the run should have been killed in the middle of stage 1, fold 1"
    assert not RunDir(cut).fold_done("cnn1", 1, 1).exists()
    subprocess.run(_pipeline_cmd(tiny_data, cut, config), check=True, env=env, capture_output=True)
    for stage in (1, 2):
        for fold in (0, 1):
            for split in ("curated", "noisy"):
                a = np.load(RunDir(whole).fold_oof("cnn1", stage, fold, split))
                b = np.load(RunDir(cut).fold_oof("cnn1", stage, fold, split))
                np.testing.assert_allclose(a, b, atol=1e-5)
    pd.testing.assert_frame_equal(
        pd.read_csv(RunDir(whole).submission), pd.read_csv(RunDir(cut).submission), atol=1e-5
    )


def test_cli_resumes_a_run_with_its_saved_config(tiny_run, tiny_data):
    """No --config: the run directory's own config.yaml is used, so nothing is refused or redone."""
    from typer.testing import CliRunner

    from noisytag.cli import app

    weights = RunDir(tiny_run).fold_dir("cnn1", 4, 1) / "weights.safetensors"
    before = weights.stat().st_mtime_ns
    result = CliRunner().invoke(
        app, ["pipeline", str(tiny_data), "-o", str(tiny_run), "--no-progress", "--no-report"]
    )
    assert result.exit_code == 0, result.output
    assert "CV noisy" in result.output
    assert weights.stat().st_mtime_ns == before
