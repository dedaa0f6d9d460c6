"""The warm-up pipeline's wiring (SPEC §6): what each fold trains on, where it starts, what it writes."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import tiny_config
from typer.testing import CliRunner

from noisytag.cli import app
from noisytag.models import build
from noisytag.models.weights import load_model
from noisytag.plan import run_seed
from noisytag.rundir import RunDir
from noisytag.runs import pipeline
from noisytag.runs.context import open_run

pytestmark = pytest.mark.slow


def _context(data, run_dir, cache, **overrides):
    cfg = tiny_config(**{"data.cache_dir": str(cache), **overrides})
    return open_run(data, run_dir, cfg, force=True, progress=False)


def _members(clips) -> set[tuple[str, int]]:
    return set(zip(clips.split, clips.position.tolist(), strict=True))


@pytest.mark.parametrize("stage", [3, 4])
def test_stages_3_and_4_train_on_other_folds_curated_plus_their_selected_noisy(
    stage, run_copy, tiny_data, tiny_cache
):
    ctx = _context(tiny_data, run_copy, tiny_cache)
    selected = pd.read_csv(RunDir(run_copy).selection("cnn1", stage))
    for fold in (0, 1):
        got = _members(pipeline.training_clips(ctx, "cnn1", stage, fold))
        curated = {("curated", int(p)) for p in ctx.curated.clips.position[ctx.curated.fold != fold]}
        chosen = set(selected.loc[selected["fold"] != fold, "fname"])
        noisy = {
            ("noisy", int(p))
            for f, p in zip(ctx.noisy.fnames, ctx.noisy.clips.position, strict=True)
            if f in chosen
        }
        assert got == curated | noisy
        assert not chosen & set(selected.loc[selected["fold"] == fold, "fname"])


def test_each_stage_starts_from_the_previous_stage_of_the_same_fold(
    run_copy, tiny_data, tiny_cache, monkeypatch
):
    run = RunDir(run_copy)
    seen = {}

    def fake_fit(cfg, *, arch, n_classes, init_state, **kwargs):
        model = build(arch, n_classes, cfg.model.in_channels, width=cfg.model.width)
        model.load_state_dict(init_state)
        seen[kwargs["seed"]] = init_state
        return SimpleNamespace(model=model)

    monkeypatch.setattr(pipeline, "fit_fold", fake_fit)
    ctx = _context(tiny_data, run_copy, tiny_cache)
    for stage in (2, 3, 4):
        run.fold_done("cnn1", stage, 1).unlink()
        pipeline.run_fold(ctx, "cnn1", stage, 1)
        expected, _ = load_model(run.fold_dir("cnn1", stage - 1, 1))
        init = seen[run_seed(ctx.cfg.train.seed, ctx.plan.kind, stage, 1)]
        for name, tensor in expected.state_dict().items():
            torch.testing.assert_close(init[name], tensor)
        assert run.fold_done("cnn1", stage, 1).is_file()


def test_train_command_trains_one_stage_and_fold(run_copy, tiny_data, tiny_cache):
    run = RunDir(run_copy)
    other = run.fold_dir("cnn1", 4, 0) / "weights.safetensors"
    before = other.stat().st_mtime_ns
    run.fold_done("cnn1", 4, 1).unlink()
    cfg_args = ["--set", f"data.cache_dir={tiny_cache}", "--force", "--no-progress"]
    args = ["train", str(tiny_data), "-o", str(run_copy), "--stage", "4", "--fold", "1", *cfg_args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert run.fold_done("cnn1", 4, 1).is_file()
    assert other.stat().st_mtime_ns == before


def test_pipeline_submission_equals_predict(tiny_run, tiny_data, tmp_path):
    out = tmp_path / "submission.csv"
    result = CliRunner().invoke(app, ["predict", str(tiny_run), str(tiny_data / "test"), "-o", str(out)])
    assert result.exit_code == 0, result.output
    ours = pd.read_csv(RunDir(tiny_run).submission).set_index("fname").sort_index()
    theirs = pd.read_csv(out).set_index("fname").sort_index()
    assert list(ours.columns) == list(theirs.columns)
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), atol=2e-5)
