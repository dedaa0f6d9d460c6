"""The data layer: reading the competition layout, the class list, multi-hot targets and every validation error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from typer.testing import CliRunner

from noisytag.cli import app
from noisytag.data.dataset import (
    DataError,
    describe,
    format_labels,
    load_dataset,
    multi_hot,
    parse_labels,
    read_classes,
    read_truth,
)

CLASSES = ["Dog", "Cat", "Bird_song", "Hi-hat"]  # not sorted on purpose: the header order is the class order


def _wav(path: Path, seconds: float = 0.1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(8000 * seconds), np.int16), 8000, subtype="PCM_16")


def make_layout(
    root: Path, curated: str | None = None, noisy: str | None = None, submission: bool = True
) -> Path:
    """A small valid data set; ``curated``/``noisy`` replace the CSV text (audio files a.wav–d.wav exist)."""
    for folder in ("train_curated", "train_noisy", "test"):
        for name in ("a.wav", "b.wav", "c.wav", "d.wav"):
            _wav(root / folder / name)
    (root / "test" / "notes.txt").write_text("not audio")
    (root / "train_curated.csv").write_text(
        curated if curated is not None else 'fname,labels\na.wav,Dog\nb.wav,"Cat,Dog"\nc.wav,Hi-hat\n'
    )
    (root / "train_noisy.csv").write_text(
        noisy if noisy is not None else 'fname,labels\na.wav,Bird_song\nb.wav,"Bird_song,Hi-hat,Cat"\n'
    )
    if submission:
        frame = pd.DataFrame(0, index=range(4), columns=CLASSES)
        frame.insert(0, "fname", ["a.wav", "b.wav", "c.wav", "d.wav"])
        frame.to_csv(root / "sample_submission.csv", index=False)
    return root


def _problems(root: Path) -> list[str]:
    with pytest.raises(DataError) as info:
        load_dataset(root)
    assert str(info.value) == "\n".join(info.value.problems)
    return info.value.problems


def test_valid_layout(tmp_path):
    ds = load_dataset(make_layout(tmp_path))
    assert ds.classes == CLASSES and ds.problems == []
    assert list(ds.curated.columns) == ["fname", "path", "key", "labels"]
    assert ds.curated["labels"].tolist() == [("Dog",), ("Dog", "Cat"), ("Hi-hat",)]  # class order
    assert ds.noisy["labels"].tolist()[1] == ("Cat", "Bird_song", "Hi-hat")
    assert ds.test["fname"].tolist() == ["a.wav", "b.wav", "c.wav", "d.wav"]  # audio files only, sorted
    assert ds.test["labels"].tolist() == [()] * 4
    assert all(Path(p).is_file() for p in ds.curated["path"])
    assert ds.targets("curated").tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 1]]
    only = load_dataset(tmp_path, splits=("curated",))
    assert len(only.curated) == 3 and len(only.noisy) == 0 and len(only.test) == 0


def test_missing_audio_file(tmp_path):
    make_layout(tmp_path, curated="fname,labels\na.wav,Dog\nzz.wav,Cat\n")
    assert _problems(tmp_path) == [
        "train_curated.csv line 3 ('zz.wav'): audio file missing: train_curated/zz.wav"
    ]


def test_unknown_label_fails_by_default_and_is_skipped_on_request(tmp_path):
    make_layout(tmp_path, noisy='fname,labels\na.wav,Bird_song\nb.wav,"Cat,Wolf"\nc.wav,Dog\n')
    problems = _problems(tmp_path)
    assert problems == [
        "train_noisy.csv line 3 ('b.wav'): unknown label 'Wolf' (not in sample_submission.csv)"
    ]
    ds = load_dataset(tmp_path, skip_invalid=True)
    assert ds.noisy["fname"].tolist() == ["a.wav", "c.wav"] and ds.problems == problems
    assert len(ds.curated) == 3  # the rest of the work is kept


def test_duplicate_file_name(tmp_path):
    make_layout(tmp_path, curated="fname,labels\na.wav,Dog\nb.wav,Cat\na.wav,Cat\n")
    assert _problems(tmp_path) == [
        "train_curated.csv line 4 ('a.wav'): duplicate file name (first at line 2)"
    ]
    ds = load_dataset(tmp_path, skip_invalid=True)
    assert ds.curated["labels"].tolist() == [("Dog",), ("Cat",)]  # the first occurrence is kept


def test_empty_label_field_and_empty_file_name(tmp_path):
    make_layout(tmp_path, curated='fname,labels\na.wav,\nb.wav,""\nc.wav\n,Dog\nd.wav,Dog\n')
    assert _problems(tmp_path) == [
        "train_curated.csv line 2 ('a.wav'): empty label field",
        "train_curated.csv line 3 ('b.wav'): empty label field",
        "train_curated.csv line 4 ('c.wav'): empty label field",
        "train_curated.csv line 5: empty file name",
    ]
    assert load_dataset(tmp_path, skip_invalid=True).curated["fname"].tolist() == ["d.wav"]


def test_all_problems_listed_together_one_line_each(tmp_path):
    make_layout(tmp_path, curated="fname,labels\nzz.wav,Wolf\na.wav,Dog\na.wav,\n")
    (tmp_path / "train_noisy.csv").unlink()
    problems = _problems(tmp_path)
    assert problems == [
        "train_curated.csv line 2 ('zz.wav'): audio file missing: train_curated/zz.wav; "
        "unknown label 'Wolf' (not in sample_submission.csv)",
        "train_curated.csv line 4 ('a.wav'): duplicate file name (first at line 3); empty label field",
        "train_noisy.csv: file missing",
    ]
    assert all("\n" not in p for p in problems)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("file,label\na.wav,Dog\n", "train_curated.csv: header must be 'fname,labels' (got 'file,label')"),
        ("", "train_curated.csv: unreadable CSV (No columns to parse from file)"),
        ('fname,labels\na.wav,"Dog\n', "train_curated.csv: unreadable CSV"),
        (b"\xff\xfe\x00\x01garbage", "train_curated.csv: unreadable CSV"),
        ("fname,labels\na.wav,Dog\nb.wav,Cat,Dog\n", "train_curated.csv line 3: expected 2 fields, saw 3"),
    ],
    ids=["wrong-header", "empty", "unterminated-quote", "binary", "unquoted-multi-label"],
)
def test_malformed_csv(tmp_path, text, expected):
    make_layout(tmp_path)
    path = tmp_path / "train_curated.csv"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    problems = _problems(tmp_path)
    assert len(problems) == 1 and problems[0].startswith(expected), problems
    ds = load_dataset(tmp_path, skip_invalid=True)
    assert len(ds.noisy) == 2  # the other split is kept
    if "line 3" in expected:
        assert ds.curated["fname"].tolist() == ["a.wav"]  # only the bad line is dropped
        assert "quote a field holding several labels" in problems[0]


def test_line_numbers_after_a_skipped_line(tmp_path):
    make_layout(tmp_path, curated="fname,labels\na.wav,Dog\nb.wav,Cat,Dog\nc.wav,Wolf\n")
    problems = _problems(tmp_path)
    assert problems[0].startswith("train_curated.csv line 3:")
    assert problems[1].startswith("train_curated.csv line 4 ('c.wav'): unknown label 'Wolf'")


def test_classes_without_sample_submission(tmp_path):
    make_layout(tmp_path, submission=False)
    assert read_classes(tmp_path) == ["Bird_song", "Cat", "Dog", "Hi-hat"]  # sorted union of the CSV labels
    ds = load_dataset(tmp_path)
    assert ds.classes == ["Bird_song", "Cat", "Dog", "Hi-hat"] and len(ds.test) == 4


def test_bad_sample_submission_header(tmp_path):
    make_layout(tmp_path)
    (tmp_path / "sample_submission.csv").write_text("file,Dog,Cat\n")
    with pytest.raises(DataError, match="sample_submission.csv: header must be 'fname'"):
        read_classes(tmp_path)
    (tmp_path / "sample_submission.csv").write_text("fname,Dog,Cat,Dog\n")
    with pytest.raises(DataError, match="repeated in the header: Dog"):
        read_classes(tmp_path)


def test_missing_folders_and_root(tmp_path):
    with pytest.raises(DataError, match="data folder not found"):
        load_dataset(tmp_path / "nowhere")
    make_layout(tmp_path)
    for folder in ("train_noisy", "test"):
        for p in (tmp_path / folder).iterdir():
            p.unlink()
        (tmp_path / folder).rmdir()
    problems = _problems(tmp_path)
    assert problems == [
        "train_noisy/: audio folder missing (2 rows of train_noisy.csv point into it)",
        "test/: audio folder missing",
    ]


def test_probe_audio_durations_and_unreadable_files(tmp_path):
    make_layout(tmp_path)
    ds = load_dataset(tmp_path, probe_audio=True)
    assert ds.curated["duration"].tolist() == pytest.approx([0.1, 0.1, 0.1])
    (tmp_path / "train_curated" / "c.wav").write_bytes(b"RIFF....not audio")
    problems = _problems_probe(tmp_path)
    assert len(problems) == 1 and problems[0].startswith("train_curated/c.wav: unreadable audio (")


def _problems_probe(root: Path) -> list[str]:
    with pytest.raises(DataError) as info:
        load_dataset(root, probe_audio=True)
    return info.value.problems


def test_multi_hot():
    y = multi_hot([("Cat",), ("Dog", "Hi-hat"), (), "Bird_song,Cat"], CLASSES)
    assert y.dtype == np.float32 and y.shape == (4, 4)
    assert y.tolist() == [[0, 1, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0], [0, 1, 1, 0]]
    assert multi_hot([], CLASSES).shape == (0, 4)
    with pytest.raises(DataError, match="unknown label 'Wolf'"):
        multi_hot([("Wolf",)], CLASSES)


def test_labels_round_trip_through_a_quoted_csv(tmp_path):
    labels = [("Dog",), ("Cat", "Hi-hat"), ()]
    frame = pd.DataFrame({"fname": ["a.wav", "b.wav", "c.wav"], "labels": [format_labels(x) for x in labels]})
    frame.to_csv(tmp_path / "truth.csv", index=False)
    assert '"Cat,Hi-hat"' in (tmp_path / "truth.csv").read_text()
    truth = read_truth(tmp_path / "truth.csv")
    assert truth["labels"].tolist() == labels and truth["fname"].tolist() == ["a.wav", "b.wav", "c.wav"]
    assert parse_labels(" Dog , Cat,,Dog ") == ("Dog", "Cat")


def test_describe_and_truth_of_the_synthetic_set(tiny_data):
    from noisytag.data.synth import CLASSES as SYNTH_CLASSES

    ds = load_dataset(tiny_data)
    assert ds.classes == SYNTH_CLASSES
    d = describe(ds)
    assert d["splits"]["curated"]["clips"] == 24 and d["splits"]["noisy"]["clips"] == 48
    assert d["splits"]["test"]["clips"] == 12 and d["splits"]["test"]["labels_per_clip"] is None
    assert d["splits"]["curated"]["multi_label_share"] == pytest.approx(0.25)
    assert sum(v["curated"] for v in d["per_class"].values()) == sum(len(x) for x in ds.curated["labels"])
    truth = read_truth(Path(tiny_data) / "truth" / "test.csv")
    assert set(truth["fname"]) == set(ds.test["fname"])
    assert multi_hot(truth["labels"], ds.classes).sum(axis=1).min() >= 1


def test_check_command(tmp_path, tiny_data):
    runner = CliRunner()
    ok = runner.invoke(app, ["check", str(tiny_data)])
    assert ok.exit_code == 0, ok.output
    assert "data set is valid" in ok.output and "Hi-hat" in ok.output
    make_layout(tmp_path, curated='fname,labels\na.wav,Dog\nzz.wav,Cat\nb.wav,"Dog,Wolf"\n')
    bad = runner.invoke(app, ["check", str(tmp_path)])
    assert bad.exit_code == 1
    assert "line 3 ('zz.wav'): audio file missing" in bad.output and "unknown label 'Wolf'" in bad.output
    skipped = runner.invoke(app, ["check", str(tmp_path), "--skip-invalid"])
    assert skipped.exit_code == 0 and "skipped 2 invalid" in skipped.output
