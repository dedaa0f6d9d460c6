"""noisytag distill: a finished run's ensemble → one student run that every inference command reads."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from lightning.pytorch.callbacks import Callback
from typer.testing import CliRunner

from noisytag.audio.cache import CacheError
from noisytag.cli import app
from noisytag.config import ConfigError
from noisytag.data.dataset import DataError
from noisytag.infer.ensemble import select_model_dirs
from noisytag.infer.export import export_run
from noisytag.infer.tag import Tagger
from noisytag.learn.distill import WindowTargets, student_targets
from noisytag.rundir import RunDir
from noisytag.runs.context import open_run
from noisytag.runs.distill import load_student_config, run_distill
from noisytag.runs.scoring import stage_oof

pytestmark = pytest.mark.slow

SETS = ["distill.epochs=2", "distill.width=0.25", "train.batch_size=16"]


@pytest.fixture(scope="module")
def student(tiny_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("student") / "student"
    cfg = load_student_config(tiny_run, out, None, [*SETS, "distill.targets=oof"])
    results = run_distill(tiny_run, out, cfg, progress=False)
    return out, results


def test_the_student_is_a_normal_run_with_one_member(student, tiny_data, tmp_path):
    out, results = student
    run = RunDir(out)
    assert run.plan().kind == "student" and run.plan().ensemble == (1,)
    assert [d.relative_to(out).as_posix() for d in select_model_dirs(out)] == ["mobilenet/stage1/fold0"]
    wavs = sorted((tiny_data / "test").glob("*.wav"))[:2]
    records = Tagger(out).tag(wavs)
    assert len(records) == 2 and all(r.labels for r in records)
    assert len(export_run(out, tmp_path / "onnx")["members"]) == 1
    table = results["stage_table"]
    assert list(table["model"].str.split(":").str[0]) == ["teacher", "student"]
    assert np.isfinite(table["test_lwlrap"]).all()
    per_class = pd.read_csv(run.per_class)
    assert set(per_class["source"]) == {"teacher", "student"}
    assert len(pd.read_csv(run.submission)) == len(list((tiny_data / "test").glob("*.wav")))
    report = CliRunner().invoke(app, ["report", str(out)])
    assert report.exit_code == 0, report.output


def test_out_of_fold_targets_are_the_runs_own_oof(student, tiny_run, tiny_data):
    """A curated clip of fold f is taught by fold f's models alone: its window mean is the run's OOF."""
    out, _ = student
    targets = WindowTargets.load(out / "teacher" / "curated.npz")
    teacher = RunDir(tiny_run)
    ctx = open_run(tiny_data, tiny_run, teacher.saved_config(), progress=False, writer=False)
    oof = np.mean([stage_oof(ctx, "cnn1", s, "curated") for s in teacher.plan().ensemble], axis=0)
    np.testing.assert_allclose(targets.clip_means(), oof, atol=2e-5)


def test_curated_targets_mix_in_their_labels():
    teacher = WindowTargets(
        np.array([0, 2]), np.array([2, 1]), np.array([0, 48, 0]), np.full((3, 2), 0.5, np.float32)
    )
    labels = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    out = student_targets(teacher, labels, np.array([0.1, 0.0], np.float32))
    np.testing.assert_allclose(out, [[0.55, 0.45], [0.55, 0.45], [0.5, 0.5]])


class StopAtEpoch(Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == 1:
            raise RuntimeError("simulated interruption")


def test_a_killed_distillation_resumes(tiny_run, tmp_path, caplog):
    out = tmp_path / "student"
    cfg = load_student_config(tiny_run, out, None, SETS)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        run_distill(tiny_run, out, cfg, progress=False, callbacks=[StopAtEpoch()])
    run = RunDir(out)
    assert run.fold_checkpoint("mobilenet", 1, 0).is_file() and not run.fold_done("mobilenet", 1, 0).exists()
    teacher_files = {p.name: p.stat().st_mtime_ns for p in (out / "teacher").glob("*.npz")}
    with caplog.at_level("INFO"):
        run_distill(tiny_run, out, load_student_config(tiny_run, out, None, []), progress=False)
    assert any("resuming" in r.message for r in caplog.records)
    assert run.fold_done("mobilenet", 1, 0).is_file()
    assert {p.name: p.stat().st_mtime_ns for p in (out / "teacher").glob("*.npz")} == teacher_files


def test_unlabelled_audio_teaches_the_student(tiny_run, tiny_data, tmp_path, recwarn):
    folder = tmp_path / "field"
    folder.mkdir()
    for wav in sorted((tiny_data / "test").glob("*.wav"))[:3]:
        shutil.copy(wav, folder / wav.name)
    out = tmp_path / "student"
    cfg = load_student_config(
        tiny_run, out, None, [*SETS, "distill.epochs=1", f"distill.unlabelled={folder}"]
    )
    run_distill(tiny_run, out, cfg, progress=False)
    assert len(WindowTargets.load(out / "teacher" / "unlabelled.npz")) == 3
    assert RunDir(out).plan().stage(1).trains_on == ("teacher", "unlabelled")
    assert not [w for w in recwarn if "val_dataloader" in str(w.message)]  # no validation, on purpose


def test_a_student_teaches_a_second_round_in_sample(student, tmp_path):
    first, _ = student
    refused = load_student_config(first, tmp_path / "refused", None, [*SETS, "distill.targets=oof"])
    with pytest.raises(
        ConfigError, match=r"^config key 'distill.targets': a student teacher .*targets=insample$"
    ):
        run_distill(first, tmp_path / "refused", refused, progress=False)
    out = tmp_path / "second"
    cfg = load_student_config(first, out, None, [*SETS, "distill.targets=insample", "distill.epochs=1"])
    run_distill(first, out, cfg, progress=False)
    second = RunDir(out)
    assert second.plan().kind == "student" and second.saved_config().distill.teacher == str(first.resolve())
    assert second.submission.is_file() and (out / "teacher" / "curated.npz").is_file()


def test_bad_input_is_one_line(tiny_run, tmp_path):
    unfinished = shutil.copytree(tiny_run, tmp_path / "unfinished")
    (unfinished / "cnn1" / "stage4" / "fold1" / "done").unlink()
    with pytest.raises(DataError, match="not finished"):
        run_distill(unfinished, tmp_path / "s1", load_student_config(unfinished, tmp_path / "s1", None, SETS))
    with pytest.raises(ConfigError, match=r"^config key .frontend.n_mels.: .* \(128\), got 64$"):
        cfg = load_student_config(tiny_run, tmp_path / "s2", None, [*SETS, "frontend.n_mels=64"])
        run_distill(tiny_run, tmp_path / "s2", cfg, progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheError, match="no audio files"):
        cfg = load_student_config(
            tiny_run, tmp_path / "s3", None, [*SETS, f"distill.unlabelled={tmp_path / 'empty'}"]
        )
        run_distill(tiny_run, tmp_path / "s3", cfg, progress=False)
    result = CliRunner().invoke(
        app, ["distill", str(unfinished), "-o", str(tmp_path / "s4"), "--set", "distill.epochs=1"]
    )
    assert result.exit_code == 2 and "not finished" in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) <= 2


class FakeCache:
    """Two clips of 300 and 100 frames whose dB value at frame t is t (enough for the dataset)."""

    index = pd.DataFrame({"n_frames": [300, 100], "lo": [0.0, 0.0], "hi": [300.0, 300.0]})

    def windows(self, positions, starts, width):
        return np.stack([np.tile(np.arange(s, s + width, dtype=np.float32), (4, 1)) for s in starts])


@pytest.mark.parametrize("crop", ["random", "grid"])
def test_window_targets_follow_the_crop(crop):
    from noisytag.learn.distill import TeacherWindowDataset
    from noisytag.learn.loader import ClipSet

    starts = np.array([0, 43, 86, 129, 172, 0])  # clip 0: 5 grid windows of 128 frames; clip 1: one
    probs = np.linspace(0, 1, 6, dtype=np.float32)[:, None].repeat(2, axis=1)
    teacher = WindowTargets(np.array([0, 5]), np.array([5, 1]), starts, probs)
    clips = ClipSet(np.array(["c", "c"], dtype=object), np.array([0, 1]), np.zeros((2, 2), np.float32))
    data = TeacherWindowDataset({"c": FakeCache()}, clips, teacher, probs, 128, seed=3, crop=crop)
    seen = set()
    for epoch in range(40):
        x, y = data[epoch * 2]
        start = int(round(float(x[0, 0, 0]) * 300))  # minmax input: frame t → t / 300
        seen.add(start)
        expected = np.interp(start, starts[:5], probs[:5, 0])
        assert y[0].item() == pytest.approx(expected, abs=1e-5) and y[-1].item() == 0.0
        if crop == "grid":
            assert start in set(starts[:5].tolist())
    assert len(seen) > (10 if crop == "random" else 3)
    x, y = data[1]  # the one-window clip always gives its window
    assert y[0].item() == pytest.approx(1.0)


def test_unlabelled_cache_of_a_manifest_teacher_goes_where_features_puts_it(tmp_path, monkeypatch):
    """A manifest teacher's data_dir is its CSV file: the unlabelled audio's features are cached beside
    it, where ``noisytag features`` caches the data set's own, never under the file."""
    from conftest import tiny_config, write_model_run

    from noisytag.audio.cache import default_cache_dir
    from noisytag.runs import distill

    manifest = tmp_path / "data" / "clips.csv"
    manifest.parent.mkdir()
    manifest.write_text("path,labels,split\n")
    cfg = tiny_config()
    teacher = RunDir(tmp_path / "teacher")
    teacher.adopt_config(cfg)
    members = [(s, f) for s in teacher.plan().ensemble for f in range(cfg.train.folds)]
    write_model_run(teacher.root, ["a", "b"], members=members)
    teacher.folds.write_text("fname,split,fold\n")
    teacher.update_info(manifest)
    field = tmp_path / "field"
    field.mkdir()
    seen = []

    def cache_of(folder, cache_dir, *args, **kwargs):
        seen.append(cache_dir)
        raise RuntimeError("stop: the cache folder is all this test needs")

    monkeypatch.setattr(distill, "open_run", lambda *args, **kwargs: None)
    monkeypatch.setattr(distill, "build_folder_cache", cache_of)
    out = tmp_path / "student"
    student = load_student_config(teacher.root, out, None, [f"distill.unlabelled={field}"])
    with pytest.raises(RuntimeError, match="stop"):
        run_distill(teacher.root, out, student, progress=False)
    assert seen == [default_cache_dir(manifest)] == [manifest.parent / ".noisytag-cache"]
