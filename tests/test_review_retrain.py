"""Closing the review loop: a retrain on the corrected manifest keeps stages 1-2 of the run (fold models
byte-identical, out-of-fold rows re-indexed by clip), trains stages 3-4, and is compared with the run."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from noisytag.data.dataset import read_truth
from noisytag.data.manifest import load_data, write_manifest
from noisytag.rundir import RunDir

KEPT = (1, 2)


def label_sets(csv: Path) -> dict[str, tuple[str, ...]]:
    """fname → label tuple of a ``fname,labels`` CSV."""
    frame = read_truth(csv)
    return dict(zip(frame["fname"], frame["labels"], strict=True))


def corrected_manifest(run: Path, data: Path, moved: int = 2, dropped: int = 1, name: str = "manifest.csv"):
    """RUN/review/manifest.csv as a review writes it: the first ``moved`` noisy clips whose given labels are
    wrong become curated with their true labels (same fold), the next ``dropped`` noisy clip leaves.
    Returns (manifest, {"moved": [fnames], "dropped": [fnames]})."""
    ds = load_data(data)
    folds = pd.read_csv(run / "folds.csv", dtype={"fname": str})
    fold_of = {(s, f): int(k) for s, f, k in zip(folds["split"], folds["fname"], folds["fold"], strict=True)}
    truth = label_sets(data / "truth" / "noisy.csv")
    noisy = ds.noisy
    wrong = [
        f for f, given in zip(noisy["fname"], noisy["labels"], strict=True) if set(given) != set(truth[f])
    ]
    moved_clips, dropped_clips = (
        wrong[:moved],
        [f for f in noisy["fname"] if f not in wrong[:moved]][:dropped],
    )
    rows = []
    for split in ("curated", "noisy"):
        frame = ds.split(split)
        for fname, path, labels in zip(frame["fname"], frame["path"], frame["labels"], strict=True):
            if fname in dropped_clips:
                continue
            subset, labels = ("curated", truth[fname]) if fname in moved_clips else (split, labels)
            rows.append(
                {"path": path, "labels": labels, "subset": subset, "fold": str(fold_of[(split, fname)])}
            )
    rows += [{"path": p, "labels": (), "subset": "test", "fold": ""} for p in ds.test["path"]]
    path = write_manifest(run / "review" / name, pd.DataFrame(rows), classes=ds.classes)
    return path, {"moved": moved_clips, "dropped": dropped_clips}


def _paths(folds: pd.DataFrame, names: dict[str, str]) -> list[tuple[str, str, int]]:
    return [
        (names[f], s, int(k)) for f, s, k in zip(folds["fname"], folds["split"], folds["fold"], strict=True)
    ]


def oof_by_clip(run: Path, arch: str, stage: int, names: dict[str, str]) -> dict[str, np.ndarray]:
    """Resolved path → the clip's out-of-fold row of ``stage``, read through the run's folds.csv."""
    r = RunDir(run)
    folds = pd.read_csv(r.folds, dtype={"fname": str})
    out, seen = {}, {}
    for path, split, fold in _paths(folds, names):
        arr = np.load(r.fold_oof(arch, stage, fold, split))
        i = seen.get((split, fold), 0)
        out[path] = arr[i]
        seen[(split, fold)] = i + 1
    return out


def names_of(data: Path) -> dict[str, str]:
    """Clip name → resolved path for every labelled clip of a data set (either kind)."""
    ds = load_data(data)
    frames = (ds.curated, ds.noisy)
    return {f: str(Path(p).resolve()) for t in frames for f, p in zip(t["fname"], t["path"], strict=True)}


def check_kept(source: Path, target: Path, data: Path, manifest: Path, arch: str = "cnn1") -> None:
    """Stages 1-2 of ``target``: byte-identical fold models, the source's OOF rows by clip."""
    src, dst = RunDir(source), RunDir(target)
    for stage in KEPT:
        for fold in range(2):
            for name in ("weights.safetensors", "model.json"):
                a, b = src.fold_dir(arch, stage, fold) / name, dst.fold_dir(arch, stage, fold) / name
                assert a.read_bytes() == b.read_bytes(), (stage, fold, name)
            assert np.array_equal(
                np.load(src.fold_test(arch, stage, fold)), np.load(dst.fold_test(arch, stage, fold))
            )
        before = oof_by_clip(source, arch, stage, names_of(data))
        after = oof_by_clip(target, arch, stage, names_of(manifest))
        assert set(after) < set(before)
        for path, row in after.items():
            np.testing.assert_array_equal(row, before[path])


def test_seed_then_pipeline_trains_only_stages_3_and_4(run_copy, tiny_data, tmp_path, monkeypatch):
    from noisytag.runs import pipeline
    from noisytag.runs.warmstart import kept_stages, seed_from_run

    manifest, changed = corrected_manifest(run_copy, tiny_data)
    cfg = RunDir(run_copy).saved_config()
    target = tmp_path / "retrain"
    lines = seed_from_run(run_copy, target, manifest, cfg)
    assert [line.split(" ")[0] for line in lines] == ["cnn1/stage1", "cnn1/stage2"]
    assert not RunDir(target).stage_dir("cnn1", 3).exists()
    check_kept(run_copy, target, tiny_data, manifest)
    record = kept_stages(target)
    assert record["source"] == str(Path(run_copy).resolve()) and record["stages"] == [1, 2]
    assert record["keys"]["cnn1"]["2"] == RunDir(run_copy).plan().key("cnn1", 2)
    folds = pd.read_csv(target / "folds.csv", dtype={"fname": str})
    src_folds = pd.read_csv(run_copy / "folds.csv", dtype={"fname": str}).set_index("fname")
    curated = folds[folds["split"] == "curated"]
    for fname in changed["moved"]:  # a reviewed clip: curated now, same fold
        row = curated[curated["fname"].map(lambda p: Path(p).name) == fname]
        assert len(row) == 1 and int(row["fold"].iat[0]) == int(src_folds.loc[fname, "fold"])
    assert not folds["fname"].map(lambda p: Path(p).name).isin(changed["dropped"]).any()

    trained = []
    fit = pipeline.fit_fold

    def spy(cfg, **kw):
        trained.append(Path(kw["fold_dir"]).parent.name)
        return fit(cfg, **kw)

    monkeypatch.setattr(pipeline, "fit_fold", spy)
    assert seed_from_run(run_copy, target, manifest, cfg)[0].endswith(
        "(0 of 2 folds seeded now)"
    )  # resumable
    pipeline.run_pipeline(manifest, target, cfg, progress=False)
    assert sorted(trained) == ["stage3", "stage3", "stage4", "stage4"]
    check_kept(run_copy, target, tiny_data, manifest)  # the pipeline left the kept stages alone
    assert (target / "submission.csv").is_file()
    assert "kept_stages" in RunDir(target).info()


def test_seed_refuses_a_moved_fold_or_another_config(run_copy, tiny_data, tmp_path):
    from noisytag.config import with_overrides
    from noisytag.runs.warmstart import WarmStartError, seed_from_run

    manifest, _ = corrected_manifest(run_copy, tiny_data)
    cfg = RunDir(run_copy).saved_config()
    with pytest.raises(WarmStartError, match="stage 1 of cnn1"):
        seed_from_run(run_copy, tmp_path / "a", manifest, with_overrides(cfg, ["train.lr=0.5"]))
    frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    first = frame.index[frame["subset"] == "curated"][0]
    frame.loc[first, "fold"] = str(1 - int(frame.loc[first, "fold"]))
    frame.to_csv(manifest, index=False)
    with pytest.raises(WarmStartError, match="keeps its fold"):
        seed_from_run(run_copy, tmp_path / "b", manifest, cfg)


def write_review_files(run: Path, data: Path, changed: dict) -> None:
    """corrections.csv and curve.csv as the review and the simulator write them."""
    given, truth = label_sets(data / "train_noisy.csv"), label_sets(data / "truth" / "noisy.csv")
    rows = [{"fname": f, "given": ",".join(given[f]), "reviewed": ",".join(truth[f]), "action": "set"}
            for f in changed["moved"]]  # fmt: skip
    rows += [
        {"fname": f, "given": ",".join(given[f]), "reviewed": "", "action": "drop"}
        for f in changed["dropped"]
    ]
    frame = pd.DataFrame(rows).assign(reviewer="tester", time="2026-01-01T00:00:00Z")
    frame.to_csv(run / "review" / "corrections.csv", index=False)
    curve = pd.DataFrame(
        {
            "n_reviewed": [1, 2, 3, 1, 2, 3],
            "wrong_found": [1, 2, 2, 0, 1, 1],
            "policy": ["top"] * 3 + ["random"] * 3,
        }
    )
    curve.to_csv(run / "review" / "curve.csv", index=False)


def test_start_retrain_compare_and_report(run_copy, tiny_data, monkeypatch):
    from noisytag.report.review import write_review_report
    from noisytag.review import retrain

    manifest, changed = corrected_manifest(run_copy, tiny_data)
    write_review_files(run_copy, tiny_data, changed)
    out = retrain.start_retrain(run_copy, manifest)
    status = retrain.retrain_status(out)
    assert out == Path(run_copy).resolve() / "review" / "retrain-1"
    assert status["state"] == "done", "\n".join(status["log_tail"])
    assert status["returncode"] == 0 and "cnn1/stage4" in status["stages_done"]
    assert "--keep-stages-from" in json.loads((out / "retrain.json").read_text())["command"]
    check_kept(run_copy, out, tiny_data, out / "manifest.csv")
    assert (out / "submission.csv").is_file() and (out / "retrain.log").stat().st_size > 0

    comparison = retrain.compare(run_copy, out, tiny_data / "truth" / "test.csv", n_boot=200)
    assert comparison["lo"] <= comparison["delta"] <= comparison["hi"]
    assert np.isclose(comparison["delta"], comparison["after"] - comparison["before"])
    assert comparison["n_test"] > 0 and {"label", "before", "after", "change"} <= set(comparison["per_class"])
    assert comparison["kept_stages"]["stages"] == [1, 2]
    assert int(comparison["corrections"]["changed"].sum()) == 3
    assert comparison["label_changes"]["changed"].sum() + comparison["label_changes"]["dropped"].sum() > 0
    default_truth = retrain.compare(run_copy, out, n_boot=50)  # the run's data set's truth/test.csv
    assert np.isclose(default_truth["delta"], comparison["delta"])
    retrain.write_comparison(comparison)
    assert json.loads((out / "comparison.json").read_text())["n_test"] == comparison["n_test"]

    report = write_review_report(run_copy)
    text = report.read_text()
    assert report == Path(run_copy) / "review" / "report.html"
    assert f"stages 1-2 kept from {Path(run_copy).resolve()}" in text
    assert f"{comparison['delta']:+.4f} [{comparison['lo']:+.4f}, {comparison['hi']:+.4f}]" in text
    assert changed["moved"][0] in text and 'alt="cleaning curve"' in text and 'alt="per-class change"' in text

    # The next retrain of the same manifest goes to retrain-2 (retrain-1 finished); an unfinished one of the
    # same manifest is resumed; the whole pipeline is another retrain.
    launched = []

    def command(run, manifest, out, whole):
        launched.append((out.name, whole, manifest))
        return [sys.executable, "-c", "pass"]

    monkeypatch.setattr(retrain, "_command", command)
    second = retrain.start_retrain(run_copy, manifest)
    assert second.name == "retrain-2" and retrain.retrain_status(second)["state"] == "failed"
    assert retrain.start_retrain(run_copy, manifest).name == "retrain-2"  # resumed
    assert retrain.start_retrain(run_copy, manifest, whole=True).name == "retrain-3"
    assert [x[:2] for x in launched] == [("retrain-2", False), ("retrain-2", False), ("retrain-3", True)]
    assert launched[0][2] == second / "manifest.csv"

    # Without waiting: running at once (the command line names noisytag, as the real one does), then the
    # thread records the exit code; no submission, so the retrain failed.
    monkeypatch.setattr(
        retrain, "_command", lambda *a: [sys.executable, "-c", "import time; time.sleep(2)  # noisytag"]
    )
    third = retrain.start_retrain(run_copy, manifest, whole=True, wait=False)
    assert third.name == "retrain-3" and retrain.retrain_status(third)["state"] == "running"
    assert (
        retrain.start_retrain(run_copy, manifest, whole=True).name == "retrain-3"
    )  # running: not started again
    for _ in range(100):
        if retrain.retrain_status(third)["returncode"] is not None:
            break
        time.sleep(0.1)
    assert {"state": "failed", "returncode": 0}.items() <= retrain.retrain_status(third).items()
