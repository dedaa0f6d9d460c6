"""Each command loads and validates its config once: a wrong value is one line before any work, and the
run plan is built once per command and passed down (not rebuilt by open_run, adopt_config, the resume rule)."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from noisytag.cli import app

BAD = ["--set", "data.normalize=bogus"]


def one_error_line(result) -> str:
    lines = [line for line in result.output.strip().splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1, result.output
    return lines[0]


def test_bad_normalize_is_refused_in_one_line(tiny_data, tmp_path):
    no_data = tmp_path / "no-data-here"
    for args in (
        ["plan", *BAD],
        ["pipeline", str(no_data), "-o", str(tmp_path / "run"), *BAD],
        ["check", str(tiny_data), *BAD],
    ):
        line = one_error_line(CliRunner().invoke(app, args))
        assert "data.normalize" in line and "'bogus'" in line and "minmax or none" in line, args
    assert not (tmp_path / "run").exists()  # refused before the run directory or any cache was made


def test_bad_normalize_is_refused_by_distill_before_the_teacher_is_read(tiny_run, tmp_path):
    result = CliRunner().invoke(app, ["distill", str(tiny_run), "-o", str(tmp_path / "student"), *BAD])
    line = one_error_line(result)
    assert "data.normalize" in line and "minmax or none" in line


@pytest.fixture()
def plan_builds(monkeypatch):
    """Every call of ``noisytag.plan.build_plan``, wherever a module looked it up (the modules the
    commands import are imported first, so none keeps the spy after the test)."""
    import noisytag.ablate.runs
    import noisytag.runs.distill
    import noisytag.runs.pipeline  # noqa: F401

    real, calls = noisytag.plan.build_plan, []

    def spy(cfg):
        calls.append(cfg.pipeline.mode)
        return real(cfg)

    for name, module in list(sys.modules.items()):
        if name.startswith("noisytag") and getattr(module, "build_plan", None) is real:
            monkeypatch.setattr(module, "build_plan", spy)
    return calls


def test_plan_command_builds_the_plan_once(plan_builds):
    result = CliRunner().invoke(app, ["plan", "-c", "configs/demo.yaml"])
    assert result.exit_code == 0, result.output
    assert len(plan_builds) == 1


def test_pipeline_builds_the_plan_once(run_copy, tiny_data, plan_builds):
    """Resuming a finished run: the command's plan also serves open_run, the resume rule and plan.json."""
    result = CliRunner().invoke(app, ["pipeline", str(tiny_data), "-o", str(run_copy), "--no-report"])
    assert result.exit_code == 0, result.output
    assert len(plan_builds) == 1


def test_train_builds_the_plan_once(run_copy, tiny_data, plan_builds):
    args = ["train", str(tiny_data), "-o", str(run_copy), "--stage", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(plan_builds) == 1


class Stop(Exception):
    pass


def test_distill_builds_the_plan_once(tiny_run, tmp_path, plan_builds, monkeypatch):
    """Stopped once open_run has adopted the student's config and plan (the teacher's scoring is next)."""
    import noisytag.runs.distill as distill

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(distill, "teacher_targets", stop)
    out = tmp_path / "student"
    result = CliRunner().invoke(app, ["distill", str(tiny_run), "-o", str(out), "--set", "distill.epochs=1"])
    assert isinstance(result.exception, Stop), result.output
    assert (out / "plan.json").is_file()
    assert plan_builds == ["student"]


def test_plan_shows_the_inference_settings_a_config_resolves_to():
    result = CliRunner().invoke(app, ["plan", "--set", "infer.mode=fast", "--set", "infer.backend=onnx"])
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if "│ infer." in line}
    assert "fast" in rows["infer.mode"] and "onnx" in rows["infer.backend"] and "config" in rows["infer.mode"]
