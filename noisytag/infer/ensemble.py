"""A run's ensemble: which fold models, checking they agree, loading them as members.

The ensemble of a run is its finished fold models of the chosen stages (default: the run's
``infer.stages``) and architectures. Members must share their classes, front end and input
normalisation (:func:`shared_settings`). They load as PyTorch models (``backend="torch"``) or as the
onnxruntime graphs that ``noisytag export`` wrote into ``RUN_DIR/onnx`` (``backend="onnx"``; this
module only reads them: :func:`onnx_current` says whether they are there and up to date).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from noisytag.config import FrontendConfig, InferConfig, load_config
from noisytag.infer.members import ExportError, OnnxMember, TorchMember, int8_current
from noisytag.models.weights import load_model, read_meta
from noisytag.registry import Registry
from noisytag.rundir import RunDir

MANIFEST = "manifest.json"  # the index of an export directory (written by noisytag.infer.export)


@dataclass
class Ensemble:
    """Members of a run's ensemble and what they share (classes, front end, input normalisation)."""

    members: list
    classes: list[str]
    frontend: FrontendConfig
    normalize: str


def run_infer_config(run_dir: str | Path) -> InferConfig:
    """The ``infer`` section of the run's config.yaml (defaults when the run has none)."""
    path = RunDir(run_dir).config
    return load_config(path).infer if path.is_file() else InferConfig()


def ensemble_stages(run_dir: str | Path) -> tuple[int, ...]:
    """The stages of the run's ensemble, as its run plan says (the config's defaults without one)."""
    run = RunDir(run_dir)
    if run.plan_file.is_file() or run.config.is_file():
        return run.plan().ensemble
    return InferConfig().stages


def select_model_dirs(run_dir: str | Path, stages=None, archs=None) -> list[Path]:
    """Finished fold models of the run for ``stages`` (default: the run plan's ensemble) and ``archs``."""
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise FileNotFoundError(f"{run.root}: run directory does not exist")
    stages = tuple(stages) if stages else ensemble_stages(run_dir)
    dirs = run.model_dirs(stages=stages, archs=list(archs) if archs else None)
    if not dirs:
        found = sorted({(p.parent.parent.name, p.parent.name) for p in run.model_dirs()})
        have = ", ".join(f"{a}/{s}" for a, s in found) or "none"
        raise FileNotFoundError(
            f"{run.root}: no finished models for stages {','.join(map(str, stages))}"
            f"{' and archs ' + ','.join(archs) if archs else ''} (finished: {have})"
        )
    return dirs


def shared_settings(metas: Sequence[dict], dirs: Sequence[Path]) -> tuple[list[str], FrontendConfig, str]:
    """(classes, front end, normalisation) that every model.json of ``dirs`` agrees on.

    Raises ``ValueError`` naming the first model directory that differs, or one without classes.
    """
    first = metas[0]
    for meta, d in zip(metas[1:], dirs[1:], strict=True):
        for key in ("classes", "frontend", "normalize"):
            if meta.get(key) != first.get(key):
                raise ValueError(f"{d}/model.json: '{key}' differs from {dirs[0]}/model.json")
    if not first.get("classes"):
        raise ValueError(f"{dirs[0]}/model.json: no 'classes'")
    return (
        list(first["classes"]),
        FrontendConfig(**(first.get("frontend") or {})),
        first.get("normalize", "minmax"),
    )


def member_name(meta: dict, directory: Path) -> str:
    """``{arch}_stage{k}_fold{f}`` from a model.json (the directory's name when it lacks them)."""
    if {"arch", "stage", "fold"} <= set(meta):
        return f"{meta['arch']}_stage{meta['stage']}_fold{meta['fold']}"
    return Path(directory).name


BACKENDS = Registry("inference backend", "infer.backend")


@BACKENDS.register("torch", precision=None)
def torch_members(run_dir, dirs: Sequence[Path], metas: Sequence[dict], device: str = "cpu") -> list:
    """PyTorch modules loaded from the run's safetensors weights."""
    return [
        TorchMember(load_model(d, device)[0], device, name=member_name(meta, d))
        for d, meta in zip(dirs, metas, strict=True)
    ]


@BACKENDS.register("onnx", precision="float32")
def onnx_float_members(run_dir, dirs: Sequence[Path], metas: Sequence[dict], device: str = "cpu") -> list:
    """onnxruntime sessions of the graphs exported to ``RUN_DIR/onnx`` (float32)."""
    return onnx_members(run_dir, dirs)


@BACKENDS.register("onnx-int8", precision="int8")
def onnx_int8_members(run_dir, dirs: Sequence[Path], metas: Sequence[dict], device: str = "cpu") -> list:
    """onnxruntime sessions of the int8 (static QDQ) graphs quantised in ``RUN_DIR/onnx``."""
    return onnx_members(run_dir, dirs, precision="int8")


def load_ensemble(
    run_dir: str | Path, stages=None, archs=None, device: str = "cpu", backend: str = "torch"
) -> Ensemble:
    """Load the chosen stages × folds × architectures of a run (SPEC §7 default: the run's infer.stages).

    ``backend``: a name of :data:`BACKENDS` (torch, onnx, onnx-int8). The onnx backends run the members
    with onnxruntime from ``RUN_DIR/onnx``, which must hold them
    exported from the current weights (:func:`onnx_current`; ``noisytag.infer.tag.open_ensemble`` exports
    them first when needed).
    """
    dirs = select_model_dirs(run_dir, stages, archs)
    metas = [read_meta(d) for d in dirs]
    classes, frontend, normalize = shared_settings(metas, dirs)
    members = BACKENDS.build(backend, run_dir, dirs, metas, device)
    return Ensemble(members, classes, frontend, normalize)


# ----------------------------------------------------------------------------------------------
# exported members


def read_manifest(out_dir: str | Path) -> dict:
    """The ``manifest.json`` of an export directory (FileNotFoundError, or ExportError when corrupt)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not an export directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: corrupt JSON ({err})") from None


def manifest_members(out_dir: Path, names: Sequence[str] | None) -> tuple[dict, dict, list[str]]:
    """An export directory's manifest, its member entries by name, and ``names`` (default: all, sorted);
    ExportError naming the members the manifest lacks."""
    manifest = read_manifest(out_dir)
    entries = {m["name"]: m for m in manifest["members"]}
    names = list(names) if names is not None else sorted(entries)
    missing = [n for n in names if n not in entries]
    if missing:
        raise ExportError(f"{out_dir / MANIFEST}: no member(s) {', '.join(missing)}")
    return manifest, entries, names


def load_members(
    out_dir: str | Path, names: Sequence[str] | None = None, threads: int = 0, precision: str = "float32"
) -> list:
    """:class:`OnnxMember` objects of an export directory (all, or those named, in that order).

    ``precision="int8"``: the quantised graphs that ``noisytag export --int8`` added (ExportError naming
    the members without them).
    """
    out_dir = Path(out_dir)
    manifest, entries, names = manifest_members(out_dir, names)
    lacking = [n for n in names if OnnxMember.graphs(entries[n], precision) is None]
    if lacking:
        raise ExportError(
            f"{out_dir / MANIFEST}: no {precision} graphs for {', '.join(lacking)} "
            f"(run `noisytag export RUN --onnx {out_dir} --int8`)"
        )
    return [OnnxMember(out_dir, entries[n], manifest["window"], threads, precision) for n in names]


def onnx_current(run_dir: str | Path, model_dirs: Sequence[Path], precision: str = "float32") -> bool:
    """Whether ``RUN_DIR/onnx`` holds every model of ``model_dirs``, exported from its current weights
    (sha256) for the run's window width; ``precision="int8"``: and quantised from those weights with
    the current recipe (:func:`~noisytag.infer.members.int8_current`)."""
    OnnxMember.graphs({}, precision)  # ValueError naming the precisions for an unknown one
    metas = [read_meta(d) for d in model_dirs]
    names = [member_name(m, Path(d)) for m, d in zip(metas, model_dirs, strict=True)]
    try:
        manifest = read_manifest(RunDir(run_dir).onnx_dir)
        have = {
            m["name"]: m.get("weights_sha256")
            for m in manifest["members"]
            if precision == "float32" or int8_current(m)
        }
        return manifest.get("window") == run_infer_config(run_dir).window and all(
            have.get(n) == m.get("weights_sha256") for n, m in zip(names, metas, strict=True)
        )
    except (FileNotFoundError, ExportError, KeyError):
        return False


def onnx_members(
    run_dir: str | Path, model_dirs: Sequence[Path], threads: int = 0, precision: str = "float32"
) -> list:
    """ONNX members for ``model_dirs`` of a run, read from ``RUN_DIR/onnx`` (``precision``: float32 or int8).

    Raises :class:`~noisytag.infer.members.ExportError` when they are missing or were exported from other
    weights or for another window width (see :func:`onnx_current`).
    """
    out_dir = RunDir(run_dir).onnx_dir
    if not onnx_current(run_dir, model_dirs, precision):
        int8 = precision == "int8"
        raise ExportError(
            f"{out_dir}: {'int8 ' if int8 else ''}ONNX members missing or stale; "
            f"run `noisytag export {run_dir} --onnx {out_dir}{' --int8' if int8 else ''}`"
        )
    names = [member_name(read_meta(d), Path(d)) for d in model_dirs]
    return load_members(out_dir, names, threads, precision)
