"""Build steps before a run is tagged, served or predicted with onnxruntime: its members exported (and
for onnx-int8 quantised) from their current weights, where the Tagger will read them.

Why a module of its own: exporting traces graphs and quantising loads the training data set to
calibrate, work a runtime object must not start on its own. The ``tag``, ``serve`` and ``predict``
commands call :func:`ensure_onnx` before they build a :class:`~noisytag.infer.tag.Tagger`, which only
reads current files (and names this step when they are missing); the runtime never imports this module.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from noisytag.infer.ensemble import (
    BACKENDS,
    member_name,
    onnx_current,
    read_export_index,
    read_metas,
    run_infer_config,
    select_model_dirs,
    stale_onnx,
)
from noisytag.infer.export import export_models, quantize_int8
from noisytag.infer.members import int8_current
from noisytag.rundir import RunDir

log = logging.getLogger(__name__)


def refresh_onnx(
    run_dir: str | Path,
    model_dirs: Sequence[Path],
    precision: str = "float32",
    out_dir: str | Path | None = None,
    metas: Sequence[dict] | None = None,
) -> tuple[int, int]:
    """Export ``model_dirs`` of a run into ``out_dir`` (default ``RUN_DIR/onnx``) unless they are there and
    current → ``(exported, quantised)`` member counts.

    ``precision="int8"``: and quantise those without current int8 graphs, calibrated on the run's data set.
    """
    out_dir = Path(out_dir) if out_dir is not None else RunDir(run_dir).onnx_dir
    metas = read_metas(model_dirs) if metas is None else list(metas)
    if onnx_current(run_dir, model_dirs, precision, metas, out_dir):
        return 0, 0
    stale = stale_onnx(run_dir, model_dirs, "float32", metas, out_dir)
    if stale:
        cfg = run_infer_config(run_dir)
        log.debug("exporting %d model(s) to %s", len(stale), out_dir)  # the command says it in one line
        export_models(model_dirs, out_dir, cfg.window, cfg.max_stride, metas=metas)
    quantised = 0
    if precision == "int8":
        names = [member_name(m, Path(d)) for m, d in zip(metas, model_dirs, strict=True)]
        quantised = ensure_int8(run_dir, out_dir, names)
    return len(stale), quantised


def ensure_int8(run_dir: str | Path, out_dir: str | Path, names) -> int:
    """Quantise those members ``names`` of export directory ``out_dir`` that lack int8 graphs of their
    current weights made by the current recipe (from any calibration), calibrated on the run's data set
    → how many were quantised."""
    entries = {m["name"]: m for m in read_export_index(out_dir)["members"]}
    stale = [n for n in names if not int8_current(entries[n])]
    if stale:
        log.debug("quantising %d model(s) in %s", len(stale), out_dir)
        quantize_int8(run_dir, out_dir, stale)
    return len(stale)


@dataclass(frozen=True)
class OnnxBuild:
    """What :func:`ensure_onnx` did: the folder holding the current members (None: the backend needs no
    ONNX files), how many it exported and quantised, and whether the folder is a new temporary one."""

    folder: Path | None
    exported: int = 0
    quantised: int = 0
    temporary: bool = False


def writable(folder: Path) -> bool:
    """Whether files can be made in ``folder`` (or in the nearest existing folder above it)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return os.access(folder, os.W_OK | os.X_OK)


def ensure_onnx(
    run_dir: str | Path, stages=None, archs=None, backend: str = "onnx", onnx_dir: str | Path | None = None
) -> OnnxBuild:
    """The build step before a run is tagged, served or predicted with an onnxruntime ``backend``: the
    members of ``stages`` × ``archs`` exported (and for onnx-int8 quantised) where the Tagger will read them.

    ``RUN_DIR/onnx`` when it already holds them current; else they are exported into ``onnx_dir`` when
    given, else into ``RUN_DIR/onnx``, or into a new temporary folder when the run directory is read-only
    (``temporary``: the caller removes it). The torch backend needs nothing (``folder`` None).
    """
    precision = BACKENDS.get(backend).meta["precision"]
    if precision is None:
        return OnnxBuild(None)
    run = RunDir(run_dir)
    dirs = select_model_dirs(run_dir, stages, archs)
    metas = read_metas(dirs)
    if onnx_current(run_dir, dirs, precision, metas):
        return OnnxBuild(run.onnx_dir)
    temporary = onnx_dir is None and not writable(run.onnx_dir)
    if temporary:
        onnx_dir = tempfile.mkdtemp(prefix="noisytag-onnx-")
    out_dir = Path(onnx_dir) if onnx_dir is not None else run.onnx_dir
    exported, quantised = refresh_onnx(run_dir, dirs, precision, out_dir, metas)
    return OnnxBuild(out_dir, exported, quantised, temporary)
