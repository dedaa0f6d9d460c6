"""Shared fixtures: a tiny synthetic data set in the competition layout, made once per test run."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """A tiny demo-like data set (competition layout + truth/), generated once per session."""
    from noisytag.synth import generate

    root = tmp_path_factory.mktemp("tiny_data")
    generate(root, scale="tiny", seed=0)
    return root


@pytest.fixture(scope="session")
def tiny_cache(tiny_data, tmp_path_factory):
    """Feature cache of ``tiny_data`` (all splits), built once per session."""
    from noisytag.cache import build_cache
    from noisytag.config import FrontendConfig

    cache_dir = tmp_path_factory.mktemp("tiny_cache")
    build_cache(tiny_data, cache_dir, FrontendConfig(), workers=1, progress=False)
    return cache_dir
