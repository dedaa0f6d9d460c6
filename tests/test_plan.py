"""The run plan: SPEC §6 as data, the one owner of stages, result keys, the ensemble and the resume rule."""

from __future__ import annotations

import pytest
import soundfile as sf
from conftest import tiny_config, write_model_run
from typer.testing import CliRunner

from noisytag.ablate.runs import _stage_keys
from noisytag.cli import app
from noisytag.config import ConfigError, load_config
from noisytag.infer.ensemble import select_model_dirs
from noisytag.infer.export import export_run
from noisytag.infer.tag import Tagger
from noisytag.plan import RunPlan, build_plan
from noisytag.rundir import RunConfigMismatch, RunDir
from noisytag.runs.pipeline import run_pipeline
from noisytag.runs.validate import checked_plan

CLASSES = ["Bark", "Bell", "Chirp"]


def test_demo_plan_is_the_article_table():
    plan = build_plan(load_config("configs/demo.yaml"))
    assert plan.stage_numbers == (1, 2, 3, 4)
    assert [s.trains_on for s in plan.stages] == [
        ("noisy",),
        ("curated",),
        ("curated", "selected"),
        ("curated", "selected"),
    ]
    assert [s.starts_from for s in plan.stages] == [None, 1, 2, 3]
    assert [s.epochs for s in plan.stages] == [24, 30, 20, 20]
    assert [s.selects_from for s in plan.stages] == [(), (), (1, 2), (3,)]
    assert plan.ensemble == (3, 4)
    assert RunPlan.from_dict(plan.to_dict()) == plan


def test_treatment_and_joint_plans():
    plan = build_plan(tiny_config(**{"noisy.treatment": "lsoft"}))
    assert plan.stage(3).trains_on == ("curated", "selected", "untrusted")
    assert plan.stage(3).treatment == "lsoft" and plan.stage(2).treatment == "drop"
    joint = build_plan(tiny_config(**{"pipeline.mode": "joint"}))
    assert joint.stage_numbers == (1,) and joint.stage(1).trains_on == ("curated", "noisy")
    assert joint.ensemble == (1,)  # infer.stages (2, 3, 4) are not trained: the last stage is


@pytest.mark.parametrize(
    "key, value",
    [
        ("pipeline.stages", "[1, 3]"),
        ("pipeline.mode", "both"),
        ("train.folds", 1),
        ("infer.mode", "quick"),
        ("infer.max_stride", 0),
        ("noisy.treatment", "ignore"),
        ("pipeline.architectures", "[resnet]"),
    ],
)
def test_invalid_settings_name_their_key(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        checked_plan(tiny_config(**{key: value}))


def test_invalid_augmentation_is_refused_before_any_data_is_read(tmp_path):
    cfg = tiny_config(**{"augment.zoom_max": 0.9})
    with pytest.raises(ConfigError, match=r"augment\.zoom_max"):
        run_pipeline(tmp_path / "no-data-here", tmp_path / "run", cfg, progress=False)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "key, value", [("infer.max_stride", 24), ("infer.mode", "fast"), ("infer.window", 96)]
)
def test_resume_with_another_oof_setting_is_refused(tmp_path, key, value):
    run = RunDir(tmp_path / "run")
    run.adopt_config(tiny_config())
    with pytest.raises(RunConfigMismatch, match=key.replace(".", r"\.")):
        run.check_config(tiny_config(**{key: value}))
    run.check_config(tiny_config(**{key: value}), force=True)


@pytest.mark.parametrize(
    "key, value",
    [("infer.stages", "[4]"), ("infer.batch_size", 8), ("infer.backend", "onnx"), ("train.num_workers", 2)],
)
def test_resume_may_change_what_no_stage_reads(tmp_path, key, value):
    run = RunDir(tmp_path / "run")
    run.adopt_config(tiny_config())
    run.check_config(tiny_config(**{key: value}))
    run.adopt_config(tiny_config(**{key: value}))
    assert run.plan() == build_plan(tiny_config(**{key: value}))


def test_ablate_never_reuses_a_stage_across_inference_modes():
    exact, fast = _stage_keys(tiny_config()), _stage_keys(tiny_config(**{"infer.mode": "fast"}))
    assert all(exact["cnn1"][s] != fast["cnn1"][s] for s in exact["cnn1"])
    later = _stage_keys(tiny_config(**{"selection.stage4_threshold": 0.9}))
    assert [exact["cnn1"][s] == later["cnn1"][s] for s in "1234"] == [True, True, True, False]


@pytest.fixture(scope="module")
def joint_run(tmp_path_factory):
    """A finished joint-mode run: its only stage is 1, while infer.stages keeps the default 2, 3, 4."""
    root = tmp_path_factory.mktemp("joint_run")
    write_model_run(root, CLASSES, members=((1, 0), (1, 1)), bn_stats=True)
    RunDir(root).adopt_config(tiny_config(**{"pipeline.mode": "joint"}))
    return root


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    import numpy as np

    path = tmp_path_factory.mktemp("clips") / "tone.wav"
    t = np.arange(3 * 44100) / 44100
    sf.write(path, (0.3 * np.sin(2 * np.pi * 880 * t)).astype("float32"), 44100)
    return path


def test_a_joint_run_tags_predicts_and_exports(joint_run, wav, tmp_path):
    assert [d.parent.name for d in select_model_dirs(joint_run)] == ["stage1", "stage1"]
    records = Tagger(joint_run).tag([wav])
    assert len(records) == 1 and records[0].labels
    manifest = export_run(joint_run, tmp_path / "onnx")
    assert len(manifest["members"]) == 2
    result = CliRunner().invoke(
        app, ["predict", str(joint_run), str(wav.parent), "-o", str(tmp_path / "s.csv")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "s.csv").is_file()


def test_plan_command_prints_the_table():
    result = CliRunner().invoke(app, ["plan", "-c", "configs/demo.yaml"])
    assert result.exit_code == 0, result.output
    for words in (
        "selected noisy",
        "stage 3",
        "OOF of 1+2",
        "ensemble: stages 3, 4",
    ):
        assert words in result.output
    bad = CliRunner().invoke(app, ["plan", "--set", "infer.mode=quick"])
    assert bad.exit_code == 2 and "infer.mode" in bad.output


def test_the_stages_a_stage_needs_follow_selects_from(monkeypatch):
    """``pipeline.stages`` is checked against SELECTS_FROM, not a copy: stage 3 selecting from stage 2
    alone runs without stage 1, and every detector of it reads stage 2 (test_selection)."""
    from noisytag import plan as plans

    with pytest.raises(ConfigError, match=r"stage 3 needs stages \(1, 2\)"):
        build_plan(tiny_config(**{"pipeline.stages": "[2, 3]"}))
    monkeypatch.setitem(plans.SELECTS_FROM, 3, (2,))
    plan = build_plan(tiny_config(**{"pipeline.stages": "[2, 3]"}))
    assert plan.stage(3).selects_from == (2,) and plans.needed_stages(4) == (2, 3)
    monkeypatch.undo()
    assert [plans.needed_stages(k) for k in (1, 2, 3, 4)] == [(), (), (1, 2), (1, 2, 3)]


def test_one_seed_rule_keeps_every_run_kinds_seeds():
    from noisytag.plan import run_seed

    for kind in ("warmup", "joint"):
        assert [run_seed(7, kind, s, f) for s, f in ((1, 0), (3, 4))] == [1007, 3011]
    assert run_seed(7, "student", 1, 0) == 7 + 7919
