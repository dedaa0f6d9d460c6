"""Manifest data sets: validation (one line per problem), the shared cache, fixed folds, and a whole
pipeline on a nested layout giving the same results as the same clips in the competition layout."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_config
from typer.testing import CliRunner

from noisytag.audio.cache import POOL, build_cache, default_cache_dir
from noisytag.cli import app
from noisytag.config import FrontendConfig
from noisytag.data.dataset import DataError, load_dataset
from noisytag.data.manifest import load_data, load_manifest
from noisytag.data.synth import generate

CLASSES = ["Bark", "Meow", "Purr"]


@pytest.fixture(scope="module")
def manifest_data(tmp_path_factory):
    """The tiny synthetic data set of ``tiny_data`` (same seed, same clips) in the manifest layout."""
    root = tmp_path_factory.mktemp("manifest_data")
    generate(root, scale="tiny", seed=0, layout="manifest")
    return root / "manifest.csv"


def _write(tmp_path, rows: list[dict], classes=CLASSES, name="manifest.csv"):
    """A manifest over small WAV files it creates under tmp_path/rec/<sub>/ (paths as given)."""
    import soundfile as sf

    for row in rows:
        path = tmp_path / row["path"]
        if row.get("make", True) and not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            sf.write(path, np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 16000)
    table = pd.DataFrame([{k: v for k, v in row.items() if k != "make"} for row in rows])
    table.to_csv(tmp_path / name, index=False)
    if classes is not None:
        (tmp_path / "classes.txt").write_text("\n".join(classes) + "\n")
    return tmp_path / name


def _good_rows() -> list[dict]:
    return [
        {"path": "rec/a/1.wav", "labels": "Bark", "subset": "curated"},
        {"path": "rec/a/2.wav", "labels": "Bark,Meow", "subset": "curated"},
        {"path": "rec/b/3.wav", "labels": "Purr", "subset": "noisy"},
        {"path": "rec/c/4.wav", "labels": "", "subset": "test"},
    ]


def test_valid_manifest_reads_like_the_competition_layout(tmp_path):
    ds = load_manifest(_write(tmp_path, _good_rows()))
    assert ds.classes == CLASSES and ds.problems == []
    assert list(ds.curated["fname"]) == ["rec/a/1.wav", "rec/a/2.wav"]
    assert ds.curated["labels"].tolist() == [("Bark",), ("Bark", "Meow")]
    assert ds.curated["key"].iloc[0] == str((tmp_path / "rec/a/1.wav").resolve())
    assert ds.test["labels"].tolist() == [()] and "truth" not in ds.test.columns
    assert ds.manifest == tmp_path / "manifest.csv"


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"labels": "Dog"}, "line 2 ('rec/a/1.wav'): unknown label 'Dog' (not in classes.txt)"),
        ({"subset": "train"}, "unknown subset 'train' (expected curated, noisy or test)"),
        ({"labels": ""}, "line 2 ('rec/a/1.wav'): empty label field"),
        ({"path": "rec/missing.wav", "make": False}, "audio file missing: rec/missing.wav"),
        ({"path": "rec/a/2.wav"}, "line 3 ('rec/a/2.wav'): same file as line 2"),
        ({"path": "./rec/b/../b/3.wav"}, "clip in two subsets (curated at line 2, noisy here)"),
        ({"path": "rec/a", "make": False}, "not a file: rec/a"),
        ({"path": ""}, "line 2: empty path"),
        ({"fold": "x"}, "fold must be a whole number ≥ 0 (got 'x')"),
        ({"true_labels": "Cat"}, "unknown true label 'Cat' (not in classes.txt)"),
    ],
)
def test_each_problem_is_one_line_naming_the_row(tmp_path, change, expected):
    rows = _good_rows()
    rows[0] = {**rows[0], **change}
    if "fold" in change or "true_labels" in change:
        for row in rows[1:]:
            row.setdefault("fold", "")
            row.setdefault("true_labels", "")
    path = _write(tmp_path, rows)
    with pytest.raises(DataError) as err:
        load_manifest(path)
    assert len(err.value.problems) == 1, err.value.problems
    assert expected in err.value.problems[0] and "\n" not in err.value.problems[0]
    kept = load_manifest(path, skip_invalid=True)  # the rest is kept
    assert len(kept.problems) == 1 and len(kept.noisy) + len(kept.test) >= 1


def test_a_clip_listed_twice_in_two_subsets_names_both_lines(tmp_path):
    rows = [*_good_rows(), {"path": "rec/a/1.wav", "labels": "", "subset": "test"}]
    with pytest.raises(DataError, match=r"line 6 \('rec/a/1.wav'\): clip in two subsets \(curated at line 2"):
        load_manifest(_write(tmp_path, rows))


def test_missing_columns_and_class_list_from_the_labels(tmp_path):
    path = _write(tmp_path, _good_rows(), classes=None)
    assert load_manifest(path).classes == ["Bark", "Meow", "Purr"]  # sorted labels of curated + noisy
    pd.DataFrame({"file": ["rec/a/1.wav"], "labels": ["Bark"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="column\\(s\\) path, subset missing"):
        load_manifest(path)


def test_unreadable_audio_is_found_by_probing(tmp_path):
    rows = _good_rows()
    path = _write(tmp_path, rows)
    (tmp_path / "rec/b/3.wav").write_bytes(b"not audio at all")
    assert load_manifest(path).problems == []  # headers are only read when asked (check does)
    with pytest.raises(DataError, match=r"manifest.csv line 4: unreadable audio"):
        load_manifest(path, probe_audio=True)


def test_check_command_validates_a_manifest(tmp_path):
    rows = _good_rows()
    rows[1]["labels"] = "Dog"
    path = _write(tmp_path, rows)
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 1
    assert "line 3 ('rec/a/2.wav'): unknown label 'Dog'" in result.output
    result = CliRunner().invoke(app, ["check", str(path), "--skip-invalid"])
    assert result.exit_code == 0 and "skipped 1 invalid row" in result.output


def test_two_manifests_over_the_same_files_share_the_cache(tmp_path):
    rows = _good_rows()
    first = _write(tmp_path, rows, name="all.csv")
    second = _write(tmp_path, rows[:2] + rows[3:], name="some.csv")  # a subset of the same files
    cache = default_cache_dir(first)
    assert cache == tmp_path / ".noisytag-cache"
    cfg = FrontendConfig()
    build_cache(first, cache, cfg, workers=1, progress=False)
    progress = cache / cfg.key() / POOL / "progress.jsonl"
    extracted = progress.read_text().count("\n")
    assert extracted == 4
    build_cache(second, cache, cfg, workers=1, progress=False)
    assert progress.read_text().count("\n") == extracted  # nothing extracted again
    index = pd.read_csv(cache / cfg.key() / POOL / "index.csv")
    assert len(index) == 4  # the clips of the first manifest stay indexed
    assert set(index["fname"]) == {str((tmp_path / r["path"]).resolve()) for r in rows}


def test_fixed_folds_win_over_generated_ones(tmp_path):
    from noisytag.learn.folds import assign_folds

    rows = [{"path": f"rec/{i}.wav", "labels": CLASSES[i % 3], "subset": "curated"} for i in range(9)]
    for i, row in enumerate(rows):
        row["fold"] = "1" if i < 3 else ""
    ds = load_manifest(_write(tmp_path, rows))
    folds = assign_folds(ds, 3, seed=0).set_index("fname")["fold"]
    assert [folds[f"rec/{i}.wav"] for i in range(3)] == [1, 1, 1]
    assert set(folds) == {0, 1, 2}
    rows[0]["fold"] = "5"
    with pytest.raises(ValueError, match="rec/0.wav has fold 5, but there are 3 folds"):
        assign_folds(load_manifest(_write(tmp_path, rows)), 3, seed=0)


def test_synth_writes_the_same_clips_in_both_layouts(tiny_data, manifest_data):
    competition = load_dataset(tiny_data)
    manifest = load_data(manifest_data)
    assert manifest.classes == competition.classes
    for split in ("curated", "noisy", "test"):
        a = competition.split(split)
        b = manifest.split(split).assign(fname=lambda t: t["fname"].str.split("/").str[-1])
        if split == "test":  # test/ is listed in file-name order, the manifest in the plan's order
            b = b.sort_values("fname").reset_index(drop=True)
        assert list(b["fname"]) == list(a["fname"])
        assert list(b["labels"]) == list(a["labels"])
        assert list(b.get("truth", [])) == list(a.get("truth", []))
        first_a, first_b = a["path"].iloc[0], b["path"].iloc[0]
        assert open(first_a, "rb").read() == open(first_b, "rb").read()
    assert "truth" in manifest.noisy.columns and "truth" in manifest.test.columns  # from true_labels


@pytest.mark.slow
def test_pipeline_on_a_manifest_matches_the_competition_layout(manifest_data, tiny_run, tmp_path):
    """check, features, pipeline and predict through the CLI on a nested manifest layout; the stage
    table and predictions equal those of ``tiny_run`` (same clips, competition layout, same config)."""
    table = pd.read_csv(manifest_data, dtype=str, keep_default_na=False)
    test_rows = table["subset"] == "test"
    table.loc[test_rows, "usage"] = np.where(np.arange(test_rows.sum()) % 2, "Private", "Public")
    table.to_csv(manifest_data, index=False)
    runner = CliRunner()
    assert runner.invoke(app, ["check", str(manifest_data)]).exit_code == 0
    result = runner.invoke(app, ["features", str(manifest_data), "--workers", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert (manifest_data.parent / ".noisytag-cache").is_dir()

    from noisytag.runs.pipeline import run_pipeline

    run_dir = tmp_path / "run"
    run_pipeline(manifest_data, run_dir, tiny_config(), progress=False)
    ours = pd.read_csv(run_dir / "stage_table.csv")
    theirs = pd.read_csv(tiny_run / "stage_table.csv")
    columns = ["lwlrap_noisy", "lwlrap_curated", "lwlrap_noisy_truth", "test_lwlrap"]
    np.testing.assert_allclose(ours[columns].to_numpy(), theirs[columns].to_numpy(), atol=1e-6)
    scores = pd.read_csv(run_dir / "test_scores.csv")
    assert {"test_lwlrap_public", "test_lwlrap_private"} <= set(scores.columns)
    assert scores[["test_lwlrap_public", "test_lwlrap_private"]].notna().all().all()

    def by_name(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.assign(fname=frame["fname"].str.split("/").str[-1])
        return frame.set_index("fname").sort_index()

    submission = by_name(pd.read_csv(run_dir / "submission.csv"))
    np.testing.assert_allclose(
        submission.to_numpy(), by_name(pd.read_csv(tiny_run / "submission.csv")), atol=1e-6
    )
    assert all(f.startswith("audio/") for f in pd.read_csv(run_dir / "submission.csv")["fname"])

    out = tmp_path / "predicted.csv"
    result = runner.invoke(
        app, ["predict", str(run_dir), str(manifest_data), "-o", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    np.testing.assert_allclose(by_name(pd.read_csv(out)).to_numpy(), submission.to_numpy(), atol=1e-5)
    assert json.loads((run_dir / "run.json").read_text())["data_dir"] == str(manifest_data)

    from noisytag.report.page import write_report

    page = write_report(run_dir).read_text()  # finds the clips through the manifest recorded in run.json
    assert 'alt="augmentation gallery"' in page and 'alt="example log-mels"' in page
