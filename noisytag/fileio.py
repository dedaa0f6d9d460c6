"""Kill-safe file writing and the software-version record: the one owner of both.

Every output of noisytag (run-directory files, caches, model files, exports) is written to a
temporary name beside its target, flushed to disk and renamed over it, so a process killed at any
moment leaves either the old file or the new one, never half a file.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

# Packages whose versions a run records (run.json, model files, reports).
VERSIONED_PACKAGES = ("noisytag", "torch", "lightning", "numpy", "librosa", "pandas", "onnxruntime")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is fsynced and renamed onto ``path``.

    The temporary name keeps the target's suffix (``.name.tmp<pid>.npy``) so writers that add or
    check a suffix (numpy, onnx, safetensors) behave; on an error it is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_npy(path: str | Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def write_csv(path: str | Path, frame: pd.DataFrame, **to_csv) -> None:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False, **to_csv)


def software_versions() -> dict[str, str]:
    """Python, platform and the versions of :data:`VERSIONED_PACKAGES` that are installed."""
    out = {"python": platform.python_version(), "platform": platform.platform()}
    for pkg in VERSIONED_PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out
