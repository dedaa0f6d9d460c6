"""Shared fixtures: a tiny synthetic data set in the competition layout, made once per test run."""

from __future__ import annotations

import contextlib
import os
import shutil

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny demo-like data set (competition layout + truth/), generated once per session."""
    from noisytag.data.synth import generate

    root = tmp_path_factory.mktemp("tiny_data")
    generate(root, scale="tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tiny_data, tmp_path_factory):
    """Feature cache of ``tiny_data`` (all splits), built once per session."""
    from noisytag.audio.cache import build_cache
    from noisytag.config import FrontendConfig

    cache_dir = tmp_path_factory.mktemp("tiny_cache")
    build_cache(tiny_data, cache_dir, FrontendConfig(), workers=1, progress=False)
    return cache_dir


# The tiny model and schedule every training test uses (tiny_config; tests that run the CLI pass them as --set).
TINY_SETS = {
    "model.width": 0.125,
    "train.folds": 2,
    "train.epochs": 1,
    "train.batch_size": 16,
    "train.val_batch_size": 64,
    "infer.batch_size": 64,
}


def tiny_config(**overrides):
    """A RunConfig small enough to train the whole pipeline in seconds on the CPU."""
    from noisytag.config import load_config

    sets = {**TINY_SETS, **overrides}
    return load_config(None, [f"{k}={v}" for k, v in sets.items()])


@pytest.fixture(scope="session")
def tiny_run(tiny_data, tiny_cache, tmp_path_factory):
    """A finished tiny four-stage pipeline run directory (2 folds, 1 epoch per stage, slim cnn1)."""
    from noisytag.runs.pipeline import run_pipeline

    run_dir = tmp_path_factory.mktemp("tiny_run")
    cfg = tiny_config(**{"data.cache_dir": str(tiny_cache)})
    run_pipeline(tiny_data, run_dir, cfg, progress=False)
    return run_dir


@pytest.fixture()
def run_copy(tiny_run, tmp_path):
    """A private copy of the finished tiny run, free to change (``tiny_run`` itself is shared)."""
    import shutil

    return shutil.copytree(tiny_run, tmp_path / "run")


def write_model_run(root, classes, members=((2, 0), (3, 0)), width=0.125, in_channels=1, bn_stats=False):
    """A run directory holding tiny untrained cnn1 fold models (enough to exercise inference/export).

    ``members``: (stage, fold) pairs; ``bn_stats``: one forward pass in training mode first, so the
    batch-norm statistics are not trivial.
    """
    import dataclasses

    import torch

    from noisytag.config import FrontendConfig
    from noisytag.models import build
    from noisytag.models.record import FoldRecord
    from noisytag.models.weights import save_model

    for stage, fold in members:
        torch.manual_seed(10 * stage + fold)
        model = build("cnn1", len(classes), in_channels, width=width).train()
        if bn_stats:
            with torch.no_grad():
                model(torch.randn(8, in_channels, 128, 160))
        d = root / "cnn1" / f"stage{stage}" / f"fold{fold}"
        record = FoldRecord(
            arch="cnn1",
            stage=stage,
            fold=fold,
            classes=tuple(classes),
            frontend=dataclasses.asdict(FrontendConfig()),
            normalize="minmax",
        )
        save_model(d, model.eval(), record.to_json())
        (d / "done").write_text("1\n")
    return root


def torch_calls(monkeypatch, *targets) -> list[tuple[int, int]]:
    """Spy on ``(owner, method name)`` targets: every call appends (calling thread id, torch's thread count
    there) to the returned list. The tests that check torch stays in the threads meant for it use it."""
    import threading

    import torch

    calls: list[tuple[int, int]] = []
    for owner, name in targets:
        original = getattr(owner, name)

        def recorded(self, *args, _original=original, **kwargs):
            calls.append((threading.get_ident(), torch.get_num_threads()))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, recorded)
    return calls


@contextlib.contextmanager
def headless_chromium(*args: str):
    """The system Chromium, launched headless through playwright (never a downloaded browser); the test
    skips where playwright or Chromium is missing or cannot start. ``args``: extra command-line switches."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    exe = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
    if exe is None:
        pytest.skip("no Chromium on PATH (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        try:
            browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", *args])
        except Exception as err:  # a Chromium that cannot start here (sandbox, missing libraries)
            pytest.skip(f"Chromium did not launch: {str(err).splitlines()[0]}")
        try:
            yield browser
        finally:
            browser.close()
