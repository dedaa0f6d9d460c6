"""The run report and console summary, built from a real tiny pipeline run: every section renders from
the files the pipeline wrote, and a run directory with missing or broken files still gets a report."""

from __future__ import annotations

import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from rich.console import Console
from typer.testing import CliRunner

from noisytag.cli import app
from noisytag.report.page import SECTIONS, write_report
from noisytag.report.summary import print_results
from noisytag.rundir import RunDir
from noisytag.runs.pipeline import run_pipeline
from noisytag.runs.runstats import least_trusted, stage_rows

SECTION_IDS = [sid for sid, _, _ in SECTIONS]


def _sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))


@pytest.fixture(scope="module")
def pipeline_run(tiny_data, tiny_cache, tmp_path_factory):
    """One tiny four-stage pipeline run (2 folds, 1 epoch per stage) shared by this module's tests."""
    run_dir = tmp_path_factory.mktemp("report_run")
    cfg = tiny_config(**{"data.cache_dir": str(tiny_cache)})
    results = run_pipeline(tiny_data, run_dir, cfg, progress=False)
    return RunDir(run_dir), results


@pytest.fixture(scope="module")
def full_report(pipeline_run):
    run, _ = pipeline_run
    return run, write_report(run.root).read_text(encoding="utf-8")  # data set: the one in run.json


@pytest.mark.slow
def test_report_contains_every_section(full_report):
    run, page = full_report
    sections = _sections(page)
    assert list(sections) == SECTION_IDS
    for sid, body in sections.items():
        assert "failed to build" not in body, (sid, body[:500])
        assert "not available" not in body, (sid, body[:500])
        assert f'href="#{sid}"' in page
    assert (
        page.count('src="data:image/png;base64,') >= 4 + 1 + 1 + 2
    )  # curves, per-class, selections, gallery
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # self-contained: no external resources
    assert "http://" not in page and "https://" not in page


@pytest.mark.slow
def test_report_shows_the_tables_the_pipeline_wrote(full_report):
    run, page = full_report
    sections = _sections(page)
    table = pd.read_csv(run.stage_table)
    for value in table["lwlrap_curated"]:
        assert f"{value:.5f}" in sections["stage-table"]
    ensemble = pd.read_csv(run.test_scores).query("model.str.startswith('ensemble')", engine="python")
    assert len(ensemble) == 1 and ensemble["model"].iloc[0] in sections["stage-table"]
    assert pd.read_csv(run.per_class)["source"].iloc[0] in sections["per-class"]
    selections = sections["selections"]
    assert "precision" in selections and "base rate" in selections
    assert "Detectors of wrong label sets: OOF lwlrap vs cleanlab" in selections
    assert "cleanlab recall" in selections
    assert run.info()["versions"]["torch"] in sections["config"]


@pytest.mark.slow
def test_least_trusted_csv_is_the_mean_of_stage_scores(full_report):
    run, page = full_report
    listed = pd.read_csv(run.least_trusted)
    scores = pd.read_csv(run.scores("cnn1"))
    expected = scores.assign(score=scores[["s1", "s2", "s3", "s4"]].mean(axis=1))
    expected = expected.sort_values(["score", "fname"], kind="stable")
    assert list(listed["fname"]) == list(expected["fname"])
    np.testing.assert_allclose(listed["score"], expected["score"], atol=1e-5)
    assert {"fname", "fold", "labels", "score", "true_labels", "correct"} <= set(listed.columns)
    assert listed["fname"].iloc[0] in _sections(page)["least-trusted"]
    assert list(least_trusted(run)["fname"]) == list(listed["fname"])


@pytest.mark.slow
def test_stage_rows_are_the_stage_table_and_the_ensemble(pipeline_run):
    run, _ = pipeline_run
    rows = stage_rows(run)
    assert list(rows["model"]) == ["stage 1", "stage 2", "stage 3", "stage 4", rows["model"].iloc[-1]]
    assert rows["model"].iloc[-1].startswith("ensemble") and rows["test_lwlrap"].notna().all()


@pytest.mark.slow
def test_missing_and_broken_files_degrade_gracefully(pipeline_run, tmp_path):
    run = RunDir(shutil.copytree(pipeline_run[0].root, tmp_path / "run"))
    for path in (run.per_class, run.selection_table, run.scores("cnn1"), run.selection("cnn1", 4)):
        path.unlink()
    run.stage_table.write_bytes(b"\xff\xfe\x00garbage")
    run.run_info.write_text("{not json")  # the data set recorded there is lost too
    sections = _sections(write_report(run.root).read_text(encoding="utf-8"))
    assert list(sections) == SECTION_IDS
    for sid in ("stage-table", "per-class", "least-trusted"):
        assert "not available" in sections[sid], sid
    assert "failed to build" not in "".join(sections.values())
    assert "data:image/png" in sections["curves"]
    assert "stage 3" in sections["selections"] and "selection.csv not found" in sections["selections"]
    assert "data set not found" in sections["gallery"]


def test_empty_run_directory_gets_a_report(tmp_path):
    out = write_report(tmp_path / "run", out=tmp_path / "r" / "report.html")
    sections = _sections(out.read_text(encoding="utf-8"))
    assert list(sections) == SECTION_IDS
    for sid in ("stage-table", "curves", "per-class", "selections", "least-trusted"):
        assert "not available" in sections[sid], sid
    assert "failed to build" not in out.read_text(encoding="utf-8")


def test_cli_report(tmp_path):
    out = tmp_path / "x.html"
    result = CliRunner().invoke(app, ["report", str(tmp_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and '<section id="config">' in out.read_text(encoding="utf-8")
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code != 0


@pytest.mark.slow
def test_print_results_shows_every_table(pipeline_run):
    run, results = pipeline_run
    console = Console(record=True, width=160)
    print_results(console, {**results, "report": run.report}, run.root)
    text = console.export_text()
    for expected in ("CV noisy", "The article's numbers", "base rate", "Detectors", "cleanlab R", "ensemble"):
        assert expected in text, expected
    assert str(run.report) in text
