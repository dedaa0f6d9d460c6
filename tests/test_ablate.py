"""noisytag ablate: variant parsing, resume, failures, stage reuse and the tables (a fake pipeline runner),
plus one real tiny ablation (slow)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_config

from noisytag.ablate import describe_plan, parse_variant, run_ablation
from noisytag.rundir import RunDir


class FakeRunner:
    """Stands in for run_pipeline: writes done-markers, folds.csv and timings like a run, returns tables
    whose numbers follow the config (test lwlrap = 0.6 + lr + seed / 1000), and records what it saw."""

    def __init__(self, fail_variant: str | None = None, interrupt_at: int | None = None):
        self.calls: list[str] = []
        self.present: dict[str, list[str]] = {}  # run → stages already done when it was called
        self.fail_variant, self.interrupt_at = fail_variant, interrupt_at

    def __call__(self, data_dir, run_dir, cfg, force=False, progress=True):
        name = f"{run_dir.parent.name}/{run_dir.name}"
        self.calls.append(name)
        if self.interrupt_at is not None and len(self.calls) == self.interrupt_at:
            raise KeyboardInterrupt
        if self.fail_variant == run_dir.parent.name:
            raise ValueError("the fake pipeline\nfailed")
        run = RunDir(run_dir)
        self.present[name] = [
            f"stage{s}" for s in cfg.pipeline.stages if run.fold_done("cnn1", s, 0).is_file()
        ]
        run.folds.write_text("fname,split,fold\n")
        info = json.loads(run.run_info.read_text()) if run.run_info.is_file() else {"timings": {}}
        for stage in cfg.pipeline.stages:
            for fold in range(cfg.train.folds):
                key = f"cnn1/stage{stage}/fold{fold}"
                if not run.fold_done("cnn1", stage, fold).is_file():
                    run.fold_dir("cnn1", stage, fold).mkdir(parents=True, exist_ok=True)
                    (run.fold_dir("cnn1", stage, fold) / "oof.npy").write_text(name)
                    run.fold_done("cnn1", stage, fold).write_text("1\n")
                    info["timings"][key] = 10.0
        run.run_info.write_text(json.dumps(info))
        score = 0.6 + cfg.train.lr + (cfg.train.seed - 42) / 1000
        stages = pd.DataFrame(
            [
                {
                    "arch": "cnn1",
                    "stage": s,
                    "lwlrap_noisy": 0.5,
                    "lwlrap_curated": 0.7 + s / 100,
                    "lwlrap_noisy_truth": 0.6,
                    "test_lwlrap": score + s / 100,
                    "n_train": 100,
                    "seconds": sum(v for k, v in info["timings"].items() if k.startswith(f"cnn1/stage{s}/")),
                }
                for s in cfg.pipeline.stages
            ]
        )
        selection = pd.DataFrame(
            [
                {"arch": "cnn1", "stage": s, "selected": 40 + s, "precision": 0.9, "base_rate": 0.6}
                for s in (3, 4)
            ]
        )
        test = pd.DataFrame(
            [{"model": "stage 2", "arch": "cnn1", "test_lwlrap": score},
             {"model": "ensemble cnn1/stage2", "arch": "all", "test_lwlrap": score + 0.05}]
        )  # fmt: skip
        return {"stage_table": stages, "selection": selection, "test": test}


def fake_cfg(**sets):
    return tiny_config(**{"pipeline.stages": "[1,2,3,4]", "train.lr": 0.01, **sets})


def test_parse_variant():
    assert parse_variant("seed") == ("seed", [])
    assert parse_variant("lr3=train.lr=0.003,augment.specmix_p=0") == (
        "lr3",
        ["train.lr=0.003", "augment.specmix_p=0"],
    )
    assert parse_variant("short=pipeline.stage_epochs=[10,10],train.lr=0.003") == (
        "short",
        ["pipeline.stage_epochs=[10,10]", "train.lr=0.003"],
    )
    assert parse_variant("s=noisy.stages=[3, 4]; train.lr=0.1") == (
        "s",
        ["noisy.stages=[3, 4]", "train.lr=0.1"],
    )
    with pytest.raises(ValueError, match="name"):
        parse_variant("a/b=train.lr=1")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_variant("a=train.lr=1;oops")


def test_ablation_tables_failures_and_files(tmp_path):
    runner = FakeRunner(fail_variant="broken")
    variants = {"seed": [], "lr": ["train.lr=0.02"], "broken": ["train.lr=0.03"]}
    table = run_ablation(tmp_path / "data", tmp_path / "abl", fake_cfg(), variants, seeds=2, runner=runner)
    assert runner.calls[:3] == ["seed/seed0", "lr/seed0", "broken/seed0"]  # seed-major
    assert list(table["variant"]) == ["seed", "lr", "broken"]
    assert list(table["n_ok"]) == [2, 2, 0] and list(table["n_failed"]) == [0, 0, 2]
    assert table.loc[2, "error"] == "ValueError: the fake pipeline failed"  # one line
    row = table.set_index("variant").loc["lr"]
    seeds = np.array([0.6 + 0.02 + 0.05, 0.6 + 0.02 + 0.05 + 0.001])
    assert np.isclose(row["test_ensemble_mean"], seeds.mean())
    assert np.isclose(row["test_ensemble_std"], seeds.std(ddof=1))
    assert np.isclose(row["test_ensemble_min"], seeds.min()) and np.isclose(
        row["test_ensemble_max"], seeds.max()
    )
    assert np.isclose(row["precision_s3_mean"], 0.9) and row["selected_s4_mean"] == 44
    assert np.isclose(row["cv_curated_s4_mean"], 0.74) and row["train_seconds_mean"] == 80
    summary = json.loads((tmp_path / "abl/runs/lr/seed1/ablate.json").read_text())
    assert (
        summary["status"] == "ok"
        and summary["train_seed"] == 43
        and summary["overrides"] == ["train.lr=0.02"]
    )
    assert set(summary["metrics"]) >= {"test_ensemble", "test_s1", "test_s4", "cv_curated_s2", "wall_seconds"}
    failed = json.loads((tmp_path / "abl/runs/broken/seed0/ablate.json").read_text())
    assert failed["status"] == "failed" and "fake pipeline" in failed["error"]
    csv = pd.read_csv(tmp_path / "abl/ablation.csv")
    assert {"test_ensemble_mean", "test_ensemble_std", "wall_seconds_max"} <= set(csv.columns)
    md = (tmp_path / "abl/ablation.md").read_text()
    assert "| seed | (base) | 2/2 |" in md and "broken: 2 run(s) failed" in md
    html = (tmp_path / "abl/ablation.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    saved = yaml.safe_load((tmp_path / "abl/ablation.yaml").read_text())
    assert saved["variants"] == variants and saved["seeds"] == 2 and saved["base"]["train"]["lr"] == 0.01
    assert len(pd.read_csv(tmp_path / "abl/ablation_runs.csv")) == 6


def test_ablation_resumes_after_interrupt_and_skips_finished(tmp_path):
    variants = {"seed": [], "lr": ["train.lr=0.02"]}
    args = (tmp_path / "data", tmp_path / "abl", fake_cfg(), variants)
    cut = FakeRunner(interrupt_at=2)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(*args, seeds=2, runner=cut)
    assert (tmp_path / "abl/runs/seed/seed0/ablate.json").is_file()
    assert not (tmp_path / "abl/runs/lr/seed0/ablate.json").exists()
    rest = FakeRunner()
    table = run_ablation(*args, seeds=2, runner=rest)
    assert rest.calls == ["lr/seed0", "seed/seed1", "lr/seed1"]
    assert list(table["n_ok"]) == [2, 2]
    again = FakeRunner()
    run_ablation(*args, seeds=2, runner=again)
    assert again.calls == []
    # a failed run is retried by the next call; a new variant is added, the old ones kept
    more = FakeRunner()
    table = run_ablation(tmp_path / "data", tmp_path / "abl", fake_cfg(), {"wd": ["train.weight_decay=0"]}, 2,
                         runner=more)  # fmt: skip
    assert more.calls == ["wd/seed0", "wd/seed1"] and list(table["variant"]) == ["seed", "lr", "wd"]
    with pytest.raises(ValueError, match="already exists"):
        run_ablation(*args[:3], {"lr": ["train.lr=0.5"]}, 1, runner=FakeRunner())
    with pytest.raises(ValueError, match="another base config"):
        run_ablation(*args[:2], fake_cfg(**{"model.width": 0.25}), variants, 1, runner=FakeRunner())


def test_ablation_reuses_identical_stages(tmp_path):
    variants = {"seed": [], "cap2": ["selection.stage3_cap=2"], "lr": ["train.lr=0.02"]}
    args = (tmp_path / "data", tmp_path / "abl", fake_cfg(), variants, 1)
    plan = describe_plan(*args[1:])
    assert list(plan["state"]) == ["to run"] * 3
    assert "cnn1/stage1 ← " in plan.loc[1, "reuse"] and "(after it runs)" in plan.loc[1, "reuse"]
    assert "stage3" not in plan.loc[1, "reuse"] and plan.loc[2, "reuse"] == ""
    runner = FakeRunner()
    lines: list[str] = []
    table = run_ablation(*args, runner=runner, echo=lines.append)
    assert runner.present == {"seed/seed0": [], "cap2/seed0": ["stage1", "stage2"], "lr/seed0": []}
    src, dst = RunDir(tmp_path / "abl/runs/seed/seed0"), RunDir(tmp_path / "abl/runs/cap2/seed0")
    assert (dst.fold_dir("cnn1", 2, 1) / "oof.npy").read_text() == "seed/seed0"  # made by the other run
    assert (dst.fold_dir("cnn1", 2, 1) / "oof.npy").stat().st_ino == (
        src.fold_dir("cnn1", 2, 1) / "oof.npy"
    ).stat().st_ino
    assert dst.folds.is_file()
    assert any("cap2/seed0: reused cnn1/stage2" in line for line in lines)
    # the reused stages' training seconds follow them into the stage table
    assert table.set_index("variant").loc["cap2", "train_seconds_mean"] == 80
    assert set(describe_plan(*args[1:])["state"]) == {"done"}


def test_cli_ablate_dry_run_and_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from noisytag.cli import app
    from noisytag.config import save_config

    config = tmp_path / "base.yaml"
    save_config(fake_cfg(), config)
    base = ["ablate", str(tmp_path / "data"), "-c", str(config), "-o", str(tmp_path / "abl")]
    variants = ["--variant", "seed", "--variant", "short=pipeline.stage_epochs=[1,1,1,1],train.lr=0.02"]
    result = CliRunner().invoke(app, [*base, *variants, "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "seed/seed0: to run" in result.output and "short/seed0: to run" in result.output
    assert not (tmp_path / "abl").exists()
    runner = FakeRunner()
    monkeypatch.setattr("noisytag.runs.pipeline.run_pipeline", runner)
    result = CliRunner().invoke(app, [*base, *variants, "--seeds", "2"])
    assert result.exit_code == 0, result.output
    assert "short/seed1: ok" in result.output and "ablation.md" in result.output
    assert len(runner.calls) == 4
    # no --variant, no --config: the saved ablation continues (nothing left to run)
    result = CliRunner().invoke(
        app, ["ablate", str(tmp_path / "data"), "-o", str(tmp_path / "abl"), "--seeds", "2"]
    )
    assert result.exit_code == 0, result.output
    assert len(runner.calls) == 4
    result = CliRunner().invoke(app, [*base, "--variant", "bad=train.nope=1"])
    assert result.exit_code == 2 and "train.nope" in result.output


@pytest.mark.slow
def test_real_tiny_ablation(tmp_path, tiny_data, tiny_cache):
    """Two variants × one seed of the real pipeline; the second reuses stages 1-2 of the first."""
    cfg = tiny_config(**{"data.cache_dir": str(tiny_cache)})
    variants = {"seed": [], "cap2": ["selection.stage3_cap=2"]}
    lines: list[str] = []
    table = run_ablation(tiny_data, tmp_path / "abl", cfg, variants, seeds=1, echo=lines.append)
    assert list(table["variant"]) == ["seed", "cap2"] and list(table["n_ok"]) == [1, 1], lines
    for metric in ("test_ensemble", "test_s1", "test_s4", "cv_curated_s4", "precision_s3", "selected_s3"):
        assert table[f"{metric}_mean"].notna().all(), metric
    assert table["test_ensemble_std"].isna().all()  # one seed: no spread
    assert any("cap2/seed0: reused cnn1/stage2" in line for line in lines), lines
    row = table.set_index("variant")
    assert row.loc["cap2", "selected_s3_mean"] <= row.loc["seed", "selected_s3_mean"]
    assert np.isclose(row.loc["cap2", "test_s2_mean"], row.loc["seed", "test_s2_mean"])  # the same stage 2
    assert (tmp_path / "abl/ablation.html").is_file()


@pytest.mark.slow
def test_parallel_jobs_give_the_same_table_as_one_job(tmp_path, tiny_data, tiny_cache):
    """--jobs 2 runs each (variant, seed) in its own process; the results equal a one-job ablation."""
    cfg = tiny_config(
        **{"data.cache_dir": str(tiny_cache), "pipeline.stages": "[1, 2]", "infer.stages": "[2]"}
    )
    variants = {"seed": [], "joint": ["pipeline.mode=joint"]}
    one = run_ablation(tiny_data, tmp_path / "one", cfg, variants, seeds=1, echo=lambda _: None)
    two = run_ablation(tiny_data, tmp_path / "two", cfg, variants, seeds=1, jobs=2, echo=lambda _: None)
    assert list(two["n_ok"]) == [1, 1]
    # the workers use 1 thread each, this process 2: float sums differ in the last bits, ranks rarely
    np.testing.assert_allclose(two["test_ensemble_mean"], one["test_ensemble_mean"], atol=5e-3)
