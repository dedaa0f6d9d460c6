"""Scale-out: the pipeline through Ray tasks writes what the in-process loop writes, survives a killed
worker and a stopped driver; DDP ranks other than zero write nothing and wait for rank zero."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config

from noisytag.config import ConfigError, RunConfig, save_config
from noisytag.rundir import RunDir
from noisytag.runs import executors, pipeline
from noisytag.runs.executors import (
    EXECUTORS,
    INSTALL_HINT,
    KILL_ENV,
    ExecutorError,
    RayExecutor,
    check_shared,
)
from noisytag.runs.pipeline import FoldJob, InProcessExecutor, batches, run_pipeline

DDP_SCRIPT = Path(__file__).with_name("ddp_pipeline.py")
VOLATILE = {"run.json", "done", "metrics.csv", "stage_table.csv", "model.json", "weights.safetensors"}


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray instance with two 1-CPU workers' worth of resources, shared by this module."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def assert_same_run(a: Path, b: Path, atol: float = 1e-6) -> None:
    """Same files; predictions within ``atol``; selections, scores and submission equal (floats within
    ``atol``: the in-process run may use more torch threads than a 1-CPU task); the rest byte-equal
    except timings and the weights' hash (the models match through their predictions)."""

    def listed(root: Path) -> list[Path]:  # executor.json: the Ray run's own record of its tasks
        return sorted(
            p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.name != "executor.json"
        )

    files = listed(a)
    assert files == listed(b)
    for rel in files:
        pa, pb = a / rel, b / rel
        if rel.suffix == ".npy":
            np.testing.assert_allclose(np.load(pa), np.load(pb), atol=atol, rtol=0, err_msg=str(rel))
        elif rel.suffix == ".csv" and rel.name not in VOLATILE:
            pd.testing.assert_frame_equal(pd.read_csv(pa), pd.read_csv(pb), check_exact=False, atol=atol)
        elif rel.name == "model.json":
            ja, jb = (json.loads(p.read_text()) for p in (pa, pb))
            assert {k: v for k, v in ja.items() if "sha" not in k} == {
                k: v for k, v in jb.items() if "sha" not in k
            }
        elif rel.name not in VOLATILE:
            assert filecmp.cmp(pa, pb, shallow=False), rel
    for stage in (3, 4):  # the selected clips themselves: identical
        sa, sb = (pd.read_csv(RunDir(r).selection("cnn1", stage)) for r in (a, b))
        assert list(sa["fname"]) == list(sb["fname"])


def ray_run(run_dir: Path, tiny_data: Path, tiny_cache: Path, **executor) -> dict:
    cfg = tiny_config(**{"data.cache_dir": str(tiny_cache)})
    with RayExecutor(cpus_per_task=1, **executor) as runner:
        return run_pipeline(tiny_data, run_dir, cfg, progress=False, executor=runner)


@pytest.mark.slow
def test_ray_run_writes_what_the_local_run_writes(ray_cluster, tiny_run, tiny_data, tiny_cache, tmp_path):
    done: list[FoldJob] = []
    ray_run(tmp_path / "run", tiny_data, tiny_cache, on_done=lambda job, seconds: done.append(job))
    assert_same_run(tiny_run, tmp_path / "run")
    assert len(done) == 8 and {j.stage for j in done[:2]} == {1}  # stage by stage
    info = RunDir(tmp_path / "run").info()
    assert "resumed" not in info and len(info["timings"]) == 8  # the tasks' open_run is no resume
    assert not RunDir(tmp_path / "run").executor_token.exists()
    record = json.loads(RunDir(tmp_path / "run").executor_log.read_text())
    assert len(record["tasks"]) == 8  # each task's wall, start-up and training seconds: the overhead
    assert all(t["wall_s"] >= t["task_s"] >= t["train_s"] > 0 for t in record["tasks"])


@pytest.mark.slow
def test_killed_worker_is_retried_from_its_checkpoint(
    ray_cluster, tiny_run, tiny_data, tiny_cache, tmp_path, monkeypatch
):
    """Through the CLI: the worker training stage 2, fold 1 dies once its epoch checkpoint exists."""
    from typer.testing import CliRunner

    from noisytag.cli import app

    config, marker = tmp_path / "cfg.yaml", tmp_path / "killed"
    save_config(tiny_config(**{"data.cache_dir": str(tiny_cache)}), config)
    monkeypatch.setenv(KILL_ENV, f"cnn1/2/1:{marker}")
    args = ["pipeline", str(tiny_data), "-o", str(tmp_path / "run"), "-c", str(config), "--no-progress"]
    args += ["--no-report", "--executor", "ray", "--cpus-per-task", "1", "--max-tasks", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert marker.is_file(), "the worker training stage 2, fold 1 should have been killed once"
    assert_same_run(tiny_run, tmp_path / "run")


class StopDriver(Exception):
    pass


@pytest.mark.slow
def test_stopped_driver_resumes_without_retraining(ray_cluster, tiny_run, tiny_data, tiny_cache, tmp_path):
    def stop(job: FoldJob, seconds: float) -> None:
        raise StopDriver(job)

    run = RunDir(tmp_path / "run")
    with pytest.raises(StopDriver):
        ray_run(run.root, tiny_data, tiny_cache, max_tasks=1, on_done=stop)
    finished = [f for f in (0, 1) if run.fold_done("cnn1", 1, f).is_file()]
    assert len(finished) == 1, "one task at a time: exactly one fold of stage 1 finished"
    kept = [
        run.fold_done("cnn1", 1, finished[0]),
        run.fold_dir("cnn1", 1, finished[0]) / "weights.safetensors",
    ]
    before = [p.stat().st_mtime_ns for p in kept]
    ray_run(run.root, tiny_data, tiny_cache)
    assert [p.stat().st_mtime_ns for p in kept] == before
    assert_same_run(tiny_run, run.root)


def test_ray_missing_is_one_line(tiny_data, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from noisytag.cli import app

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    args = ["pipeline", str(tiny_data), "-o", str(tmp_path / "run"), "--executor", "ray", "--no-progress"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "pip install 'noisytag[ray]'" in result.output and INSTALL_HINT in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()  # refused before anything was built or written


def test_unshared_run_directory_is_refused(tiny_data, tmp_path):
    RunDir(tmp_path).executor_token.write_text("abc\n")
    check_shared(tiny_data, tmp_path, "abc")
    with pytest.raises(ExecutorError, match="cannot see the run directory .* mounts at the same path"):
        check_shared(tiny_data, tmp_path, "other")
    with pytest.raises(ExecutorError, match="cannot see the data set"):
        check_shared(tmp_path / "elsewhere", tmp_path, "abc")


SCALE_OUT = {"address": None, "gpus_per_task": 0.5, "cpus_per_task": 1, "max_tasks": 2}


@pytest.mark.parametrize("name", EXECUTORS.names())
def test_every_executor_builds_from_the_cli_options(name):
    runner = executors.build(name, **SCALE_OUT)
    executors.validate(RunConfig(), name)
    assert callable(runner.run_folds) and callable(runner.__enter__) and callable(runner.__exit__)
    assert isinstance(runner.stage_at_once, bool)


def test_executor_registry_names_and_unknown_one():
    assert EXECUTORS.names()[0] == "local" and "ray" in EXECUTORS.names()
    assert isinstance(executors.build("ray", **SCALE_OUT), RayExecutor)
    executors.validate(RunConfig())  # the config chooses no executor
    with pytest.raises(ConfigError, match=r"^--executor: unknown executor 'slurm' \(known: local, ray\)$"):
        executors.build("slurm")


def test_local_executor_is_a_registry_entry_like_ray():
    """No None: the default is a real executor, with Ray's interface, that trains folds in order."""
    runner = executors.build("local", **SCALE_OUT)
    assert isinstance(runner, InProcessExecutor) and runner.stage_at_once is False
    assert RayExecutor.stage_at_once is True  # Ray: each stage's folds of every architecture at once
    with runner as entered:
        assert entered is runner


PLAN = SimpleNamespace(architectures=("cnn1", "vgg16"), stage_numbers=(1, 2, 3, 4))


def test_one_loop_batches_in_each_executors_order():
    assert batches(PLAN, stage_at_once=False) == [[(a, s)] for a in ("cnn1", "vgg16") for s in (1, 2, 3, 4)]
    assert batches(PLAN, stage_at_once=True) == [[("cnn1", s), ("vgg16", s)] for s in (1, 2, 3, 4)]


def pipeline_events(monkeypatch, executor, events: list[tuple]) -> list[tuple]:
    """What run_pipeline does, in order, with every step replaced by a recorder (no training)."""
    ctx = SimpleNamespace(plan=PLAN, cfg=SimpleNamespace(train=SimpleNamespace(folds=2)))
    record = events.append
    monkeypatch.setattr(pipeline, "open_run", lambda *a, **k: ctx)
    monkeypatch.setattr(pipeline, "prepare_stage", lambda c, arch, stage: record(("prepare", arch, stage)))
    monkeypatch.setattr(pipeline, "close_stage", lambda c, arch, stage: record(("close", arch, stage)))
    monkeypatch.setattr(
        pipeline, "run_fold", lambda c, arch, stage, fold: record(("fold", arch, stage, fold))
    )
    monkeypatch.setattr(pipeline, "finish", lambda c: record(("finish",)) or {})
    run_pipeline("data", "run", RunConfig(), executor=executor)
    return events


def test_in_process_order_is_architecture_then_stage_then_fold(monkeypatch):
    """The default executor keeps the order of the in-process loop: each architecture's stages in turn,
    each stage prepared, its folds, closed (so results and resume stay as they were)."""
    expected = []
    for arch in PLAN.architectures:
        for stage in PLAN.stage_numbers:
            folds = [("fold", arch, stage, f) for f in (0, 1)]
            expected += [("prepare", arch, stage), *folds, ("close", arch, stage)]
    expected.append(("finish",))
    assert pipeline_events(monkeypatch, None, []) == expected
    assert pipeline_events(monkeypatch, executors.build("local"), []) == expected


def test_ray_order_is_stage_by_stage_over_every_architecture(monkeypatch):
    """A stage_at_once executor gets each stage's folds of every architecture as one batch."""
    events: list[tuple] = []

    class Recorder:
        stage_at_once = True

        def run_folds(self, ctx, jobs):
            events.append(("run_folds", *[(j.arch, j.stage, j.fold) for j in jobs]))

    expected = []
    for stage in PLAN.stage_numbers:
        expected += [("prepare", arch, stage) for arch in PLAN.architectures]
        expected.append(("run_folds", *[(a, stage, f) for a in PLAN.architectures for f in (0, 1)]))
        expected += [("close", arch, stage) for arch in PLAN.architectures]
    assert pipeline_events(monkeypatch, Recorder(), events) == expected + [("finish",)]


def test_unknown_executor_fails_in_one_line_before_any_work(tiny_data, tmp_path):
    from typer.testing import CliRunner

    from noisytag.cli import app

    args = ["pipeline", str(tiny_data), "-o", str(tmp_path / "run"), "--executor", "slurm"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "unknown executor 'slurm' (known: local, ray)" in " ".join(result.output.split())
    assert not (tmp_path / "run").exists()


def test_settings_a_fold_task_cannot_run_are_refused(tmp_path):
    with pytest.raises(ExecutorError, match="at most one GPU"), RayExecutor(gpus_per_task=2):
        pass
    ctx = SimpleNamespace(run=RunDir(tmp_path), cfg=tiny_config(**{"train.devices": "2"}))
    with pytest.raises(ExecutorError, match="train.devices must be auto or 1"):
        RayExecutor().run_folds(ctx, [FoldJob("cnn1", 1, 0)])


@pytest.mark.slow
def test_task_on_an_unshared_run_directory_fails_in_one_line(
    ray_cluster, tiny_data, tiny_cache, tmp_path, monkeypatch
):
    """A task that does not find the driver's token (another node's disk) stops the run with one line."""
    from noisytag.runs.context import open_run

    ctx = open_run(
        tiny_data, tmp_path / "run", tiny_config(**{"data.cache_dir": str(tiny_cache)}), progress=False
    )
    real = executors.write_text
    monkeypatch.setattr(executors, "write_text", lambda path, text: real(path, "not the driver's token\n"))
    with RayExecutor(cpus_per_task=1) as runner, pytest.raises(ExecutorError) as err:
        runner.run_folds(ctx, [FoldJob("cnn1", 1, 0)])
    message = str(err.value)
    assert "\n" not in message and message.startswith("cnn1/stage1/fold0: node ")
    assert "cannot see the run directory" in message and not ctx.run.fold_done("cnn1", 1, 0).exists()


@pytest.mark.slow
def test_ddp_ranks_wait_for_rank_zero_and_write_nothing(tiny_data, tiny_cache, tmp_path):
    """Two gloo processes through stage 3. Their models differ from one process's (each rank sees half
    of every batch; batch norm keeps per-rank statistics), so the check is on what DDP must keep: the
    selection both ranks trained stage 3 on, and the selection and scores rank zero wrote, are those one
    process computes from the run's fold outputs; rank one wrote no file."""
    from noisytag.models.weights import read_meta
    from noisytag.runs.context import open_run
    from noisytag.runs.pipeline import select_for, training_clips
    from noisytag.runs.scoring import noisy_scores

    run, out = RunDir(tmp_path / "ddp"), tmp_path / "ddp.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(DDP_SCRIPT.parent.parent)}
    proc = subprocess.run(
        [sys.executable, str(DDP_SCRIPT), str(tiny_data), str(tiny_cache), str(run.root), "2", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    zero, one = (json.loads(Path(p).read_text()) for p in (out, f"{out}.rank1.json"))
    assert one["writes"] == []  # rank one writes nothing to the run directory, config.yaml included
    assert one["selections"] == zero["selections"] and set(zero["selections"]) == {"cnn1/3"}

    replay = RunDir(tmp_path / "replay")  # the fold outputs without the stage-level files
    shutil.copytree(run.root, replay.root, ignore=shutil.ignore_patterns("selections", "scores.csv"))
    ctx = open_run(tiny_data, replay.root, run.saved_config(), progress=False)
    assert list(select_for(ctx, "cnn1", 3)["fname"]) == zero["selections"]["cnn1/3"]
    for path in (RunDir.selection, RunDir.audit):
        assert filecmp.cmp(path(run, "cnn1", 3), path(replay, "cnn1", 3), shallow=False)
    written = pd.read_csv(run.scores("cnn1"))
    np.testing.assert_allclose(written[["s1", "s2", "s3"]], noisy_scores(ctx, "cnn1")[["s1", "s2", "s3"]])
    for fold in (0, 1):
        assert run.fold_done("cnn1", 3, fold).is_file()
        assert read_meta(run.fold_dir("cnn1", 3, fold))["n_train"] == len(
            training_clips(ctx, "cnn1", 3, fold)
        )
