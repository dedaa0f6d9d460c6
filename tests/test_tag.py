"""Tagger: records, folders, bad files reported and skipped, table/JSON/CSV output, CLI."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import write_model_run

from noisytag.config import FrontendConfig

CLASSES = ["bark", "meow", "chirp", "hum"]


def make_run(root, stages=(2, 3), folds=(0,), width=0.125):
    """A run directory with tiny untrained cnn1 fold models (enough to exercise inference)."""
    return write_model_run(root, CLASSES, [(s, f) for s in stages for f in folds], width)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="module")
def audio(tmp_path_factory):
    """Readable files in several formats/rates/lengths, plus an empty and a corrupt file."""
    root = tmp_path_factory.mktemp("audio")
    rng = np.random.default_rng(0)
    (root / "sub").mkdir()

    def tone(seconds, sr, freq):
        t = np.arange(int(seconds * sr)) / sr
        return (0.3 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)

    sf.write(root / "short.wav", tone(0.7, 44100, 440), 44100)
    sf.write(root / "sub" / "long.flac", np.stack([tone(9.0, 22050, 880)] * 2, axis=1), 22050)
    sf.write(root / "sub" / "mid.ogg", tone(3.0, 32000, 1000), 32000)
    (root / "empty.wav").write_bytes(b"")
    (root / "broken.wav").write_bytes(b"RIFF....WAVEfmt garbage" * 10)
    (root / "notes.txt").write_text("not audio")
    return root


def test_tag_records_and_bad_files(run_dir, audio):
    from noisytag.infer.tag import Tagger

    tagger = Tagger(run_dir, stages=[2, 3])
    assert len(tagger.ensemble.members) == 2
    records = tagger.tag([audio, audio / "short.wav", audio / "missing.wav"], top_k=3, frames=True)
    files = [r.file.rsplit("/", 1)[-1] for r in records]
    # folders expanded recursively and sorted, .txt ignored, repeats dropped, order of arguments kept
    assert files == ["broken.wav", "empty.wav", "short.wav", "long.flac", "mid.ogg", "missing.wav"]
    errors = {f: r.error for f, r in zip(files, records, strict=True) if r.error}
    assert set(errors) == {"broken.wav", "empty.wav", "missing.wav"}
    assert all(str(audio) in e or "missing.wav" in e for e in errors.values())
    good = {f: r for f, r in zip(files, records, strict=True) if not r.error}
    assert good["long.flac"].duration == pytest.approx(9.0, abs=0.01)
    for r in good.values():
        assert len(r.labels) == 3 and {lab.label for lab in r.labels} <= set(CLASSES)
        probs = [lab.prob for lab in r.labels]
        assert probs == sorted(probs, reverse=True) and all(0 < p < 1 for p in probs)
    # timeline: windows of SPEC §7 over the trimmed clip, in file seconds
    long = good["long.flac"].timeline.windows
    assert len(long) == 11  # 9 s → 1 + 396900 // 694 = 572 frames → ceil(444 / 48) + 1 windows
    assert long[0].start_s == pytest.approx(0.0, abs=0.05) and long[-1].end_s == pytest.approx(9.0, abs=0.05)
    assert [s.start_s for s in long] == sorted(s.start_s for s in long)
    assert len(good["short.wav"].timeline.windows) == 1
    # the timeline's columns are the file's top labels; a file's windows average to its probabilities
    tl = good["long.flac"].timeline
    assert tl.classes == [lab.label for lab in good["long.flac"].labels]
    assert np.asarray(tl.probs).shape == (11, 3)
    np.testing.assert_allclose(
        np.mean(tl.probs, axis=0), [lab.prob for lab in good["long.flac"].labels], atol=1e-4
    )


def test_clip_probs_match_window_mean(run_dir, audio):
    """A record's probabilities are the mean of its windows' ensemble probabilities."""
    from noisytag.audio.decode import load
    from noisytag.audio.features import log_mel
    from noisytag.config import InferConfig
    from noisytag.infer.ensemble import load_ensemble
    from noisytag.infer.predict import predict_files

    ens = load_ensemble(run_dir, stages=[2, 3])
    path = audio / "sub" / "long.flac"
    got = predict_files(ens.members, [path], InferConfig(batch_size=3), ens.frontend, "minmax").probs[0]
    db = log_mel(load(path, FrontendConfig())).astype(np.float16).astype(np.float32)  # as the cache
    x = (db - db.min()) / (db.max() - db.min())
    from noisytag.audio.windows import window_offsets

    wins = np.stack([x[:, s : s + 128] for s in window_offsets(db.shape[1])])[:, None]
    with torch.no_grad():
        per_model = [torch.sigmoid(member.model(torch.from_numpy(wins))).numpy() for member in ens.members]
    np.testing.assert_allclose(got, np.mean(per_model, axis=0).mean(axis=0), atol=1e-5)


def test_output_formats():
    from noisytag.infer.tag import Label, Segment, TagRecord, Timeline, to_csv, to_json, to_table

    timeline = Timeline(["bark", "hum"], [Segment(0.0, 2.0, "bark", 0.9)], [[0.9, 0.2]])
    records = [
        TagRecord("a.wav", 3.5, [Label("bark", 0.9), Label("hum", 0.2)], timeline),
        TagRecord("b.wav", error="b.wav: cannot decode audio (bad header)"),
    ]
    data = json.loads(to_json(records))
    assert data[0]["labels"][0] == {"label": "bark", "prob": 0.9}
    assert data[0]["timeline"]["windows"][0]["end_s"] == 2.0 and data[1]["error"].startswith("b.wav")
    assert data[0]["timeline"]["classes"] == ["bark", "hum"] and "logmel" not in data[0]
    assert "timeline" not in data[1]
    rows = list(csv.DictReader(io.StringIO(to_csv(records))))
    assert [(r["file"], r["rank"], r["label"]) for r in rows] == [
        ("a.wav", "1", "bark"),
        ("a.wav", "2", "hum"),
        ("b.wav", "", ""),
    ]
    assert rows[2]["error"].startswith("b.wav")
    frames = list(csv.DictReader(io.StringIO(to_csv(records, frames=True))))
    assert frames[0]["label"] == "bark" and frames[1]["error"]
    from rich.console import Console

    console = Console(record=True, width=150)
    console.print(to_table(records, frames=True))
    text = console.export_text()
    assert "bark" in text and "error" in text and "0.900" in text


def test_cli_tag_formats(run_dir, audio):
    from typer.testing import CliRunner

    from noisytag.cli import app

    runner = CliRunner()
    res = runner.invoke(
        app, ["tag", str(run_dir), str(audio / "short.wav"), str(audio / "broken.wav"), "--json"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert len(data) == 2 and data[1]["error"] and len(data[0]["labels"]) == 4
    res = runner.invoke(app, ["tag", str(run_dir), str(audio / "short.wav"), "--csv", "--top-k", "2"])
    assert res.exit_code == 0 and res.stdout.splitlines()[0] == "file,duration,rank,label,prob,error"
    assert len(res.stdout.splitlines()) == 3
    res = runner.invoke(app, ["tag", str(run_dir), str(audio / "sub"), "--frames", "--json"])
    assert res.exit_code == 0
    assert [len(r["timeline"]["windows"]) for r in json.loads(res.stdout)] == [
        11,
        3,
    ]  # long.flac 9 s, mid.ogg 3 s (191 frames)
    res = runner.invoke(app, ["tag", str(run_dir), str(audio / "sub"), "--frames"], env={"COLUMNS": "300"})
    assert res.exit_code == 0 and "timeline" in res.stdout and "mid.ogg" in res.stdout


def test_timeline_of_a_short_padded_clip(run_dir, audio):
    """A 0.7 s clip is padded to 2 s; its single window still spans the file's own 0–0.7 s."""
    from noisytag.infer.tag import Tagger

    (record,) = Tagger(run_dir, stages=[2]).tag([audio / "short.wav"], frames=True)
    assert record.duration == pytest.approx(0.7, abs=1e-3)
    ((seg),) = record.timeline.windows
    assert seg.start_s == 0.0 and seg.end_s == pytest.approx(0.7, abs=1e-3)


def test_longer_files_than_max_seconds_are_not_tagged(run_dir, audio):
    """``max_seconds``: the file is decoded (its duration is known) but not tagged."""
    from noisytag.infer.tag import Tagger

    long, short = Tagger(run_dir, stages=[2]).tag(
        [audio / "sub" / "long.flac", audio / "short.wav"], max_seconds=5
    )
    assert long.error and "lasts 9.0 s" in long.error and long.duration == pytest.approx(9.0, abs=0.01)
    assert not long.labels and short.error is None and short.labels


def test_logmel_picture_when_asked(run_dir, audio):
    import base64

    from noisytag.infer.tag import Tagger

    (record,) = Tagger(run_dir, stages=[2]).tag([audio / "sub" / "mid.ogg"], logmel=True)
    pic = record.logmel
    assert base64.b64decode(pic.png).startswith(b"\x89PNG") and pic.height == 128 and pic.width == 191
    assert pic.db_min < pic.db_max and record.timeline is None
    assert "logmel" in record.to_dict() and "timeline" not in record.to_dict()


@pytest.mark.parametrize("n_frames", [5, 600, 601, 1199, 1800, 7777])
def test_logmel_picture_max_pools_time_into_at_most_600_columns(n_frames):
    """Each column is the maximum of its frames (a short loud event stays visible), past-the-end frames
    count as ``lo``; high bands on top; lo → 0, hi → 255."""
    from noisytag.audio.image import MAX_COLUMNS, gray_image

    db = np.random.default_rng(n_frames).uniform(-80, 0, (8, n_frames)).astype(np.float32)
    lo, hi = float(db.min()), float(db.max())
    image, per = gray_image(db, lo, hi)
    cols = -(-n_frames // per)
    padded = np.full((8, cols * per), lo, np.float32)
    padded[:, :n_frames] = db
    expect = np.round((padded.reshape(8, cols, per).max(axis=2) - lo) / (hi - lo) * 255)
    assert image.shape == (8, cols) and cols <= MAX_COLUMNS and (per == 1) == (n_frames <= MAX_COLUMNS)
    np.testing.assert_array_equal(image, expect.astype(np.uint8)[::-1])


def write_infer_config(run, *sets: str) -> None:
    """The run's config.yaml with these ``infer`` settings (as a pipeline run saves its config)."""
    from noisytag.config import load_config, save_config

    save_config(load_config(None, list(sets)), run / "config.yaml")


@pytest.mark.slow
def test_the_run_config_chooses_backend_and_mode(tmp_path, audio):
    """A run whose config says infer.backend onnx and infer.mode fast tags that way without flags: the
    command exports the members first (one line on stderr), the Tagger reads them. A flag given still
    overrides its setting, and only that one; ``info`` shows each value and where it came from."""
    from typer.testing import CliRunner

    from noisytag.cli import app
    from noisytag.infer.members import OnnxMember, TorchMember
    from noisytag.infer.tag import Tagger

    run = make_run(tmp_path / "run", stages=(2,))
    write_infer_config(run, "infer.backend=onnx", "infer.mode=fast")
    runner = CliRunner()
    res = runner.invoke(app, ["tag", str(run), str(audio / "short.wav"), "--json"])
    assert res.exit_code == 0, res.output
    assert "exported 1" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert json.loads(res.stdout)[0]["labels"] and (run / "onnx" / "export.json").is_file()
    tagger = Tagger(run)
    assert [type(m) for m in tagger.ensemble.members] == [OnnxMember] and tagger.cfg.mode == "fast"
    assert tagger.settings.sources["backend"] == tagger.settings.sources["mode"] == "config"
    flagged = Tagger(run, backend="torch")
    assert [type(m) for m in flagged.ensemble.members] == [TorchMember] and flagged.cfg.mode == "fast"
    assert flagged.settings.sources["backend"] == "flag"
    res = runner.invoke(app, ["tag", str(run), str(audio / "short.wav"), "--json", "--backend", "torch"])
    assert res.exit_code == 0 and "exported" not in res.stderr
    res = runner.invoke(app, ["info", str(run), "--mode", "exact"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    cells = [line.replace("│", " ").split() for line in res.stdout.splitlines() if "infer." in line]
    rows = {cell[0]: cell[1:] for cell in cells}
    assert rows["infer.backend"] == ["onnx", "config"] and rows["infer.mode"] == ["exact", "flag"]
    res = runner.invoke(app, ["tag", str(run), str(audio / "short.wav"), "--mode", "slow"])
    assert res.exit_code != 0 and "--mode: 'exact' or 'fast', got 'slow'" in res.output


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_a_tagger_reads_each_model_json_once(tmp_path, monkeypatch, backend):
    """One Tagger selects the model folders once and reads each member's model.json once, whoever needs
    its classes, front end, name or weights' checksum."""
    import collections
    import sys
    from pathlib import Path

    from noisytag.infer.export import export_run
    from noisytag.infer.tag import Tagger
    from noisytag.rundir import RunDir

    run = make_run(tmp_path / "run")
    if backend == "onnx":
        export_run(run, run / "onnx")
    dirs = sorted(run.glob("cnn1/stage*/fold*"))
    reads: collections.Counter = collections.Counter()
    selections = []
    for name, module in list(sys.modules.items()):
        original = getattr(module, "read_meta", None) if name.startswith("noisytag.") else None
        if callable(original):

            def counted(directory, _original=original):
                reads[Path(directory)] += 1
                return _original(directory)

            monkeypatch.setattr(module, "read_meta", counted)
    model_dirs = RunDir.model_dirs

    def selected(self, *args, **kwargs):
        selections.append(args)
        return model_dirs(self, *args, **kwargs)

    monkeypatch.setattr(RunDir, "model_dirs", selected)
    tagger = Tagger(run, stages=[2, 3], backend=backend)
    assert reads == {d: 1 for d in dirs} and len(tagger.ensemble.members) == 2
    assert len(selections) == 1
