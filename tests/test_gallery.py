"""Augmentation gallery: label-mixture text, the figure grid, and the PNG from a data directory."""

from __future__ import annotations

import numpy as np
import pytest

from noisytag.report.gallery import gallery_columns, gallery_figure, mixture_text


def test_mixture_text():
    classes = ["bell", "siren", "Accelerating_and_revving_and_vroom", "dog"]
    assert mixture_text(np.array([0.62, 0.38, 0, 0]), classes) == "0.62 bell + 0.38 siren"
    assert mixture_text(np.array([0.3, 0.62, 0.001, 0]), classes) == "0.62 siren + 0.30 bell"
    assert mixture_text(np.zeros(4), classes) == "(no label)"
    long = mixture_text(np.array([0.4, 0.3, 0.2, 0.1]), classes, max_terms=3, width=200)
    assert long == "0.40 bell + 0.30 siren + 0.20 Accelerating and revving and vroom + 1 more"
    assert all(len(line) <= 34 for line in mixture_text(np.array([0.4, 0.3, 0.2, 0.1]), classes).split("\n"))


def test_gallery_figure_grid(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((3, 32, 40)).astype(np.float32)
    y = np.eye(3, dtype=np.float32)
    fig = gallery_figure(x, y, ["a", "b", "c"], seed=1, names=["x.wav", "y.wav", "z.wav"])
    axes = fig.get_axes()
    assert len(axes) == 3 * len(gallery_columns())
    assert [ax.get_title() for ax in axes[: len(gallery_columns())]] == list(gallery_columns())
    assert axes[0].get_xlabel() == "1.00 a"
    assert " + " in axes[1].get_xlabel()  # mixup panel shows a mixture
    assert axes[0].get_ylabel().startswith("x.wav")
    out = tmp_path / "g.png"
    fig.savefig(out, dpi=40)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_gallery_figure_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="gallery"):
        gallery_figure(np.zeros((2, 8, 8)), np.zeros((3, 2)), ["a", "b"])


@pytest.mark.slow
def test_save_gallery_from_data_dir(tiny_data, tmp_path):
    from noisytag.report.gallery import load_windows, save_gallery

    x, y, classes, names = load_windows(tiny_data, n_clips=3, seed=0)
    assert x.shape == (3, 128, 128) and x.dtype == np.float32
    assert 0 <= x.min() and x.max() <= 1
    assert y.shape == (3, len(classes)) and (y.sum(1) >= 1).all()
    assert len(set(names)) == 3
    out = save_gallery(tiny_data, tmp_path / "sub" / "gallery.png", n_clips=3, seed=0)
    assert out.is_file() and out.stat().st_size > 10_000


@pytest.mark.slow
def test_augment_gallery_command(tiny_data, tmp_path):
    from typer.testing import CliRunner

    from noisytag.cli import app

    out = tmp_path / "g.png"
    result = CliRunner().invoke(app, ["augment-gallery", str(tiny_data), "-o", str(out), "--n-clips", "2"])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:4] == b"\x89PNG"
    missing = CliRunner().invoke(app, ["augment-gallery", str(tmp_path / "nope"), "-o", str(out)])
    assert missing.exit_code == 2
