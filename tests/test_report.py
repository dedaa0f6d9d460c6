"""The run report: every section is rendered from a (fabricated or real) run directory, and partial or
broken run directories still give a report that says what is missing."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest

from noisytag.config import load_config, save_config
from noisytag.report import SECTIONS, write_report
from noisytag.rundir import RunDir
from noisytag.runstats import least_trusted, stage_rows

SECTION_IDS = [sid for sid, _, _ in SECTIONS]


def _clips(prefix: str, n: int, classes: list[str], rng) -> pd.DataFrame:
    labels = [",".join(sorted(rng.choice(classes, size=rng.integers(1, 3), replace=False))) for _ in range(n)]
    return pd.DataFrame({"fname": [f"{prefix}{i:03d}.wav" for i in range(n)], "labels": labels})


def fake_run(root, classes, curated, noisy, test_fnames, truth_noisy=None, truth_test=None, archs=("cnn1",),
             stages=(1, 2, 3, 4), n_folds=2, seed=0, data_dir=None):  # fmt: skip
    """Write a run directory in the layout of noisytag.rundir with random but plausible numbers.

    curated / noisy: frames (fname, labels "a,b"); truth_*: fname → "a,b" (None when unknown).
    """
    rng = np.random.default_rng(seed)
    run = RunDir(root)
    run.root.mkdir(parents=True, exist_ok=True)
    k = len(classes)
    save_config(
        load_config(None, [f"train.folds={n_folds}", f"pipeline.architectures=[{','.join(archs)}]"]),
        run.config,
    )
    folds = pd.concat([curated.assign(split="curated"), noisy.assign(split="noisy")], ignore_index=True)
    folds["fold"] = np.arange(len(folds)) % n_folds
    folds[["fname", "split", "fold"]].to_csv(run.folds, index=False)
    timings, table, tests = {}, [], []
    for arch in archs:
        for stage in stages:
            for fold in range(n_folds):
                d = run.fold_dir(arch, stage, fold)
                d.mkdir(parents=True)
                epochs = np.arange(6)
                pd.DataFrame({"epoch": epochs, "train_loss": 0.7 * np.exp(-epochs / 3) + rng.uniform(0, 0.02, 6),
                              "val_loss": 0.72 * np.exp(-epochs / 4) + rng.uniform(0, 0.03, 6),
                              "val_lwlrap": 0.2 + 0.1 * stage + 0.05 * epochs + rng.uniform(0, 0.03, 6),
                              "lr": 3e-3 * np.sin(np.pi * (epochs + 0.5) / 6)}).to_csv(d / "metrics.csv", index=False)  # fmt: skip
                for split in ("curated", "noisy"):
                    n = int((folds[folds["split"] == split]["fold"] == fold).sum())
                    np.save(
                        run.fold_oof(arch, stage, fold, split), rng.uniform(size=(n, k)).astype(np.float32)
                    )
                (d / "model.json").write_text(
                    json.dumps({"arch": arch, "stage": stage, "fold": fold, "classes": classes})
                )
                (d / "done").write_text("")
                timings[f"{arch}/stage{stage}/fold{fold}"] = float(rng.uniform(20, 90))
            secs = sum(v for key, v in timings.items() if key.startswith(f"{arch}/stage{stage}/"))
            test = float(rng.uniform(0.5, 0.8)) if truth_test else np.nan
            table.append({"arch": arch, "stage": stage, "lwlrap_noisy": rng.uniform(0.3, 0.7),
                          "lwlrap_curated": rng.uniform(0.4, 0.9), "test_lwlrap": test,
                          "n_train": 40 + stage, "seconds": secs})  # fmt: skip
            tests.append({"model": f"stage {stage}", "arch": arch, "test_lwlrap": test})
        scores = noisy.assign(fold=folds[folds["split"] == "noisy"]["fold"].to_numpy())
        for stage in stages:
            scores[f"s{stage}"] = rng.uniform(size=len(noisy)).round(4)
        if truth_noisy:
            scores["true_labels"] = scores["fname"].map(truth_noisy)
            scores["correct"] = scores["labels"] == scores["true_labels"]
        run.scores(arch).parent.mkdir(parents=True, exist_ok=True)
        scores.to_csv(run.scores(arch), index=False)
        for stage in (3, 4):
            if stage in stages:
                run.selection(arch, stage).parent.mkdir(parents=True, exist_ok=True)
                sel = scores.sample(frac=0.4, random_state=stage)
                sel = sel.assign(score=sel["s1"]).drop(
                    columns=[c for c in sel if re.fullmatch(r"s\d|true_labels", c)]
                )
                sel.to_csv(run.selection(arch, stage), index=False)
    pd.DataFrame(table).to_csv(run.stage_table, index=False)
    if truth_test:
        tests.append(
            {"model": "ensemble cnn1/stage2+cnn1/stage3+cnn1/stage4", "arch": "all", "test_lwlrap": 0.81}
        )
        pd.DataFrame(tests).to_csv(run.test_scores, index=False)
    sub = pd.DataFrame(rng.uniform(size=(len(test_fnames), k)), columns=classes)
    sub.insert(0, "fname", test_fnames)
    sub.to_csv(run.submission, index=False)
    info = {"started": "2025-01-01 10:00:00", "finished": "2025-01-01 11:00:00", "timings": timings,
            "versions": {"torch": "2.13.0", "python": "3.11"}}  # fmt: skip
    if data_dir is not None:
        info["data_dir"] = str(data_dir)
    run.run_info.write_text(json.dumps(info))
    return run


def _fake_on_data(data_dir, root, **kw):
    """A fabricated run over the real files of a data set (so gallery, examples and truth work)."""
    classes = list(pd.read_csv(data_dir / "sample_submission.csv", nrows=0).columns[1:])
    curated = pd.read_csv(data_dir / "train_curated.csv")
    noisy = pd.read_csv(data_dir / "train_noisy.csv")
    test = sorted(p.name for p in (data_dir / "test").iterdir())
    truth_noisy = dict(pd.read_csv(data_dir / "truth" / "noisy.csv").values)
    return fake_run(root, classes, curated, noisy, test, truth_noisy=truth_noisy, truth_test=True,
                    data_dir=data_dir, **kw)  # fmt: skip


def _sections(page: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', page, flags=re.S))


@pytest.fixture(scope="module")
def full_report(tiny_data, tmp_path_factory):
    run = _fake_on_data(tiny_data, tmp_path_factory.mktemp("fake_run"))
    return run, write_report(run.root).read_text()


def test_report_contains_every_section(full_report):
    run, page = full_report
    sections = _sections(page)
    assert list(sections) == SECTION_IDS
    for sid, body in sections.items():
        assert "failed to build" not in body, (sid, body[:500])
        assert "not available" not in body, (sid, body[:500])
    assert (
        page.count('src="data:image/png;base64,') >= 4 + 1 + 1 + 2
    )  # curves, per-class, selections, gallery
    assert "http://" not in page and "https://" not in page  # self-contained
    for sid in SECTION_IDS:
        assert f'href="#{sid}"' in page


def test_report_tables_and_least_trusted_csv(full_report):
    run, page = full_report
    sections = _sections(page)
    assert "0.86222" in sections["stage-table"] and "ensemble" in sections["stage-table"]
    listed = pd.read_csv(run.root / "least_trusted.csv")
    scores = pd.read_csv(run.scores("cnn1"))
    assert len(listed) == len(scores)
    assert {"fname", "labels", "score", "true_labels", "correct"} <= set(listed.columns)
    assert listed["score"].is_monotonic_increasing
    assert listed["fname"].iloc[0] in sections["least-trusted"]
    assert "precision" in sections["selections"] and "base rate" in sections["selections"]


def test_least_trusted_is_mean_of_stage_scores(tmp_path):
    classes = ["a", "b", "c"]
    rng = np.random.default_rng(1)
    noisy = _clips("n", 12, classes, rng)
    run = fake_run(tmp_path / "run", classes, _clips("c", 6, classes, rng), noisy, ["t0.wav"], stages=(1, 2))
    scores = pd.read_csv(run.scores("cnn1"))
    table = least_trusted(run)
    expected = scores.assign(score=(scores["s1"] + scores["s2"]) / 2).sort_values(["score", "fname"])
    assert list(table["fname"]) == list(expected["fname"])
    np.testing.assert_allclose(table["score"], expected["score"])
    assert "true_labels" not in table  # truth unknown


def test_stage_rows_fill_test_lwlrap_and_add_ensemble(tmp_path):
    run = RunDir(tmp_path)
    pd.DataFrame({"arch": ["cnn1", "cnn1"], "stage": [2, 1], "lwlrap_noisy": [0.4, 0.6], "lwlrap_curated": [0.8, 0.4],
                  "test_lwlrap": [np.nan, np.nan], "n_train": [10, 20], "seconds": [5.0, 6.0]}).to_csv(run.stage_table, index=False)  # fmt: skip
    pd.DataFrame(
        {"model": ["stage 2", "ensemble x"], "arch": ["cnn1", "all"], "test_lwlrap": [0.7, 0.75]}
    ).to_csv(run.test_scores, index=False)
    rows = stage_rows(run)
    assert list(rows["model"]) == ["stage 1", "stage 2", "ensemble x"]
    assert (
        np.isnan(rows["test_lwlrap"][0]) and rows["test_lwlrap"][1] == 0.7 and rows["test_lwlrap"][2] == 0.75
    )


def test_empty_run_directory_gets_a_report(tmp_path):
    out = write_report(tmp_path / "run", out=tmp_path / "r" / "report.html")
    sections = _sections(out.read_text())
    assert list(sections) == SECTION_IDS
    for sid in ("stage-table", "curves", "per-class", "selections", "least-trusted"):
        assert "not available" in sections[sid], sid
    assert "failed to build" not in out.read_text()


def test_partial_and_broken_run_still_reports(tmp_path):
    classes = [f"class {i}" for i in range(5)]
    rng = np.random.default_rng(2)
    run = fake_run(tmp_path / "run", classes, _clips("c", 8, classes, rng), _clips("n", 10, classes, rng),
                   ["t0.wav", "t1.wav"], stages=(1,))  # fmt: skip
    run.stage_table.write_bytes(b"\xff\xfe\x00garbage")
    run.run_info.write_text("{not json")
    page = write_report(run.root).read_text()
    sections = _sections(page)
    assert list(sections) == SECTION_IDS
    assert "not available" in sections["stage-table"]
    assert "not available" in sections["selections"]  # stages 3-4 not run
    assert "data:image/png" in sections["curves"]  # stage 1 curves still shown
    assert "n00" in sections["least-trusted"]  # scores of stage 1 are enough
    assert "data set not found" in sections["gallery"]


def test_cli_report(tmp_path):
    from typer.testing import CliRunner

    from noisytag.cli import app

    out = tmp_path / "x.html"
    result = CliRunner().invoke(app, ["report", str(tmp_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert out.is_file() and '<section id="config">' in out.read_text()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nope")])
    assert missing.exit_code != 0


@pytest.mark.slow
def test_report_from_tiny_pipeline_run(tiny_run, tiny_data):
    page = write_report(tiny_run, out=tiny_run / "report_test.html", data_dir=tiny_data).read_text()
    sections = _sections(page)
    assert list(sections) == SECTION_IDS
    for sid, body in sections.items():
        assert "failed to build" not in body, (sid, body[:500])
        assert "not available" not in body, (sid, body[:500])
