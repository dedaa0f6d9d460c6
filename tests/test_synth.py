"""The demo data set generator: layout, determinism, label-noise rate, multi-label share, formats."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from noisytag.data.sounds import SOUNDS, render_clip
from noisytag.data.synth import CLASSES, CONFUSABLE, SCALES, corrupt_labels, generate, plan, synth_mismatch


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".noisytag-cache" not in p.parts
    }


def _labels(path: Path) -> dict[str, tuple[str, ...]]:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    return {f: tuple(x.split(",")) if x else () for f, x in zip(frame["fname"], frame["labels"], strict=True)}


def test_layout(tiny_data):
    root = Path(tiny_data)
    for name in ("train_curated.csv", "train_noisy.csv", "sample_submission.csv", "truth/test.csv"):
        assert (root / name).is_file(), name
    assert (root / "truth/noisy.csv").is_file()
    submission = pd.read_csv(root / "sample_submission.csv")
    assert list(submission.columns) == ["fname", *CLASSES]
    assert (submission[CLASSES].to_numpy() == 0).all()
    sc = SCALES["tiny"]
    expected = {"train_curated": sc.curated, "train_noisy": sc.noisy, "test": sc.test}
    for folder, per_class in expected.items():
        files = sorted(p.name for p in (root / folder).iterdir())
        assert len(files) == per_class * len(CLASSES)
        info = sf.info(root / folder / files[0])
        assert (info.samplerate, info.channels, info.subtype) == (44100, 1, "PCM_16")
    assert set(_labels(root / "train_curated.csv")) == {p.name for p in (root / "train_curated").iterdir()}
    assert (
        set(_labels(root / "truth/test.csv"))
        == set(submission["fname"])
        == set(p.name for p in (root / "test").iterdir())
    )
    assert set(_labels(root / "truth/noisy.csv")) == set(_labels(root / "train_noisy.csv"))
    durations = [sf.info(p).duration for p in (root / "train_noisy").iterdir()]
    assert 0.5 - 1e-3 <= min(durations) and max(durations) <= 4.0 + 1e-3
    # Multi-label fields are quoted exactly like the competition CSVs.
    text = (root / "train_curated.csv").read_text()
    assert text.startswith("fname,labels\n") and '"' in text


def test_labels_and_noise_rate_in_files(tiny_data):
    root = Path(tiny_data)
    given, truth = _labels(root / "train_noisy.csv"), _labels(root / "truth/noisy.csv")
    wrong = np.mean([given[f] != truth[f] for f in truth])
    assert abs(wrong - 0.35) < 0.02  # 17 of 48 clips
    for split in ("train_curated.csv", "truth/noisy.csv", "truth/test.csv"):
        labels = _labels(root / split).values()
        assert np.mean([len(x) > 1 for x in labels]) == pytest.approx(0.25, abs=0.02)
        assert all(1 <= len(x) <= 3 and set(x) <= set(CLASSES) for x in labels)
    assert all(given[f] and set(given[f]) <= set(CLASSES) for f in given)


@pytest.mark.parametrize("scale", ["demo", "small"])
def test_plan_rates(scale):
    summary = plan(scale, seed=3).summary()
    assert summary["noisy_label_rate"] == pytest.approx(0.35, abs=0.01)
    assert summary["multi_label_share"]["all"] == pytest.approx(0.25, abs=0.01)
    sc = SCALES[scale]
    assert summary["clips"] == {
        "curated": sc.curated * len(CLASSES),
        "noisy": sc.noisy * len(CLASSES),
        "test": sc.test * len(CLASSES),
    }
    assert summary["clips"]["noisy"] >= 3 * summary["clips"]["curated"]
    assert sum(summary["corruptions"].values()) == round(0.35 * summary["clips"]["noisy"])


def test_corruption_kinds():
    rng = np.random.default_rng(0)
    true = [("Whistle",), ("Drum", "Knock"), ("Bell", "Rain", "Wind")] * 100
    given, kinds = corrupt_labels(rng, true, rate=0.5)
    assert sum(k != "" for k in kinds) == 150
    for t, g, k in zip(true, given, kinds, strict=True):
        if not k:
            assert g == t
            continue
        assert g != t and g and list(g) == [c for c in CLASSES if c in g]
        if k == "swap":
            assert len(g) == len(t)
            (new,) = set(g) - set(t)
            (old,) = set(t) - set(g)
            assert new in CONFUSABLE[old] or all(c in t for c in CONFUSABLE[old])
        elif k == "extra":
            assert set(t) < set(g) and len(g) == len(t) + 1
        else:
            assert set(g) < set(t) and len(g) == len(t) - 1


@pytest.mark.slow  # ~5 s: a spawn pool and a second data set
def test_deterministic_across_workers_and_seeds(tiny_data, tmp_path):
    again = tmp_path / "again"
    generate(again, scale="tiny", seed=0, workers=2)  # spawn pool: bytes must not depend on it
    assert _digests(again) == _digests(Path(tiny_data))
    other = tmp_path / "other"
    generate(other, scale="tiny", seed=1)
    same = [k for k, v in _digests(other).items() if _digests(again).get(k) == v]
    assert same == []  # other names, other audio, other CSVs and truth


def _check_format(root: Path, fmt: str, rate: int) -> None:
    files = sorted((root / "test").iterdir())
    assert files and all(p.suffix == f".{fmt}" for p in files)
    y, sr = sf.read(files[0])
    assert sr == rate and y.ndim == 1 and np.abs(y).max() > 0.01
    assert set(_labels(root / "truth/test.csv")) == {p.name for p in files}


def test_ogg_at_22050(tmp_path):
    summary = generate(tmp_path, scale="tiny", seed=2, sample_rate=22050, fmt="ogg")
    assert summary["format"] == "ogg" and summary["sample_rate"] == 22050
    _check_format(tmp_path, "ogg", 22050)


def test_cli_synth_flac_at_16000(tmp_path):
    from typer.testing import CliRunner

    from noisytag.cli import app

    result = CliRunner().invoke(
        app, ["synth", str(tmp_path / "d"), "--scale", "tiny", "--sample-rate", "16000", "--format", "flac"]
    )
    assert result.exit_code == 0, result.output
    assert "noisy-label rate" in result.output and "35.4%" in result.output
    _check_format(tmp_path / "d", "flac", 16000)
    bad = CliRunner().invoke(app, ["synth", str(tmp_path / "e"), "--scale", "huge"])
    assert bad.exit_code == 2 and "unknown scale" in bad.output


def test_regenerate_in_place_and_refuse_foreign_folder(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not a noisytag synth data set"):
        generate(foreign, scale="tiny")
    with pytest.raises(ValueError, match="unknown scale"):
        generate(tmp_path / "x", scale="huge")
    with pytest.raises(ValueError, match="unknown format"):
        generate(tmp_path / "x", scale="tiny", fmt="mp4")


def test_mixed_test_domain_shifts_exactly_half_the_test_clips(tmp_path):
    mixed, clean = plan("demo", test_domain="mixed"), plan("demo", test_domain="clean")
    assert mixed.domains["test"].count("noisy") == len(mixed.truth["test"]) // 2 == 48
    assert set(clean.domains["test"]) == set(mixed.domains["curated"]) == {"clean"}
    assert set(mixed.domains["noisy"]) == {"noisy"}
    assert mixed.truth == clean.truth and mixed.given == clean.given  # only the recording domain differs
    assert set(mixed.fnames["test"]).isdisjoint(clean.fnames["test"])  # so no cache mixes the two versions
    assert mixed.summary()["domains"]["test"] == {"clean": 48, "noisy": 48}
    with pytest.raises(ValueError, match="unknown test domain"):
        plan("tiny", test_domain="studio")

    # Same clip generator per index: the clean-domain test clips keep their audio, the shifted ones change.
    for domain in ("mixed", "clean"):
        generate(tmp_path / domain, scale="tiny", test_domain=domain)
    p_mixed, p_clean = plan("tiny", test_domain="mixed"), plan("tiny", test_domain="clean")
    for i, shifted in enumerate(d == "noisy" for d in p_mixed.domains["test"]):
        a, _ = sf.read(tmp_path / "mixed/test" / p_mixed.fnames["test"][i])
        b, _ = sf.read(tmp_path / "clean/test" / p_clean.fnames["test"][i])
        assert (a.shape != b.shape or not np.array_equal(a, b)) == shifted
    assert synth_mismatch(tmp_path / "mixed", test_domain="mixed", scale="tiny") == ""
    assert synth_mismatch(tmp_path / "clean", test_domain="mixed") == "test_domain clean -> mixed"
    assert synth_mismatch(tmp_path / "nothing", test_domain="mixed") == ""


def test_sounds_are_finite_and_bounded():
    for sr in (8000, 44100):
        for i, name in enumerate(SOUNDS):
            rng = np.random.default_rng(i)
            for domain in ("clean", "noisy"):
                y = render_clip(rng, (name,), int(0.7 * sr), sr, domain)
                assert y.dtype == np.float32 and np.isfinite(y).all()
                assert 0.02 < np.abs(y).max() <= 1.0, (name, sr, domain)


def test_classes_differ_in_spectrum():
    """Long-term log spectra (24 log-spaced bands) of two renderings of the same class (without background
    or distractors) are often nearest to each other (chance: 1/12): the classes are discriminable, yet they
    vary from clip to clip and the spectrum alone is not enough (the time patterns carry the rest)."""
    sr = 22050
    edges = np.geomspace(100, 0.45 * sr, 25)

    def profile(name: str, seed: int) -> np.ndarray:
        y = SOUNDS[name](np.random.default_rng(seed), 2 * sr, sr)
        frames = y[: len(y) // 2048 * 2048].reshape(-1, 2048) * np.hanning(2048)
        power = (np.abs(np.fft.rfft(frames, axis=1)) ** 2).mean(axis=0)
        band = np.digitize(np.fft.rfftfreq(2048, 1 / sr), edges)
        p = 10 * np.log10(np.array([power[band == k].mean() for k in range(1, 25)]) + 1e-12)
        return p - p.mean()

    names = list(SOUNDS)
    a = np.stack([profile(n, 10) for n in names])
    b = np.stack([profile(n, 20) for n in names])
    dist = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)  # (C, C)
    assert np.mean(dist.argmin(axis=1) == np.arange(len(names))) >= 0.3
    assert np.abs(a - b).max() > 3.0


@pytest.mark.slow  # ~20 s: the whole demo command on a tiny data set with a one-epoch slim model
def test_demo_command_regenerates_a_version_1_data_set(tmp_path):
    from typer.testing import CliRunner

    from noisytag.cli import app

    data = tmp_path / "demo"
    generate(data, scale="tiny", test_domain="clean")
    sets = [
        "model.width=0.125",
        "train.folds=2",
        "pipeline.stage_epochs=[1,1,1,1]",
        "train.val_batch_size=64",
    ]
    args = ["demo", "--data", str(data), "-o", str(tmp_path / "run"), "--scale", "tiny"]
    result = CliRunner().invoke(app, args + [a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())  # rich wraps long lines
    assert "(test_domain clean -> mixed)" in said and "ensemble" in said
    assert synth_mismatch(data, test_domain="mixed") == ""
