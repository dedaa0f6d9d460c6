"""A run's ensemble: which fold models, checking they agree, loading them as members.

The ensemble of a run is its finished fold models of the chosen stages (default: the run's
``infer.stages``) and architectures. Members must share their classes, front end and input
normalisation (:func:`shared_settings`). They load as PyTorch models (``backend="torch"``) or as the
onnxruntime graphs that ``noisytag export`` wrote into ``RUN_DIR/onnx`` (``backend="onnx"``; this
module only reads them: :func:`onnx_current` says whether they are there and up to date; exporting is a
build step of :mod:`noisytag.infer.export`, which the runtime does not import).

Loading an ensemble selects the model folders once and reads each ``model.json`` once; everything that
needs the members' classes, front end, names or weights' checksums takes those records (``metas``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from noisytag.config import FrontendConfig, InferConfig, load_config
from noisytag.fileio import write_json
from noisytag.infer.members import ExportError, OnnxMember, TorchMember, int8_current
from noisytag.models.record import FoldRecord
from noisytag.models.weights import load_model, read_meta
from noisytag.registry import Registry
from noisytag.rundir import RunDir
from noisytag.settings import ResolvedInfer, resolve_infer

EXPORT_INDEX = "export.json"  # the index of an export directory (written by noisytag.infer.export)
OLD_EXPORT_INDEX = "manifest.json"  # its name before 0.4: read when export.json is absent


@dataclass
class Ensemble:
    """Members of a run's ensemble and what they share (classes, front end, input normalisation)."""

    members: list
    classes: list[str]
    frontend: FrontendConfig
    normalize: str
    dirs: list[Path] = field(default_factory=list)  # the members' fold model folders, in member order
    metas: list[dict] = field(default_factory=list)  # their model.json records, read once


def run_infer_config(run_dir: str | Path) -> InferConfig:
    """The ``infer`` section of the run's config.yaml (defaults when the run has none)."""
    path = RunDir(run_dir).config
    return load_config(path).infer if path.is_file() else InferConfig()


def resolved_infer(run_dir: str | Path, given: Mapping[str, Any] | None = None) -> ResolvedInfer:
    """The run's inference settings with the flags the user ``given`` (field → value) in their place,
    mode and backend checked (:func:`noisytag.settings.resolve_infer` with the registered backends)."""
    return resolve_infer(run_infer_config(run_dir), given, BACKENDS.names())


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


def read_metas(dirs: Sequence[Path]) -> list[dict]:
    """The ``model.json`` of each fold model folder: read once per ensemble, then passed down."""
    return [read_meta(d) for d in dirs]


def shared_settings(metas: Sequence[dict], dirs: Sequence[Path]) -> tuple[list[str], FrontendConfig, str]:
    """(classes, front end, normalisation) that every model.json of ``dirs`` agrees on (read as
    :class:`~noisytag.models.record.FoldRecord`, so older records take its defaults).

    Raises ``ValueError`` naming the first model directory that differs, or one without classes.
    """
    records = [FoldRecord.from_json(meta) for meta in metas]
    first = records[0]
    for record, d in zip(records[1:], dirs[1:], strict=True):
        for key in ("classes", "frontend", "normalize"):
            if key == "frontend":  # by identity: a record from before frontend.kind names the same log-mel
                same = record.frontend_config().identity() == first.frontend_config().identity()
            else:
                same = getattr(record, key) == getattr(first, key)
            if not same:
                raise ValueError(f"{d}/model.json: '{key}' differs from {dirs[0]}/model.json")
    if not first.classes:
        raise ValueError(f"{dirs[0]}/model.json: no 'classes'")
    return list(first.classes), first.frontend_config(), first.normalize


def member_name(meta: dict, directory: Path) -> str:
    """``{arch}_stage{k}_fold{f}`` from a model.json (the directory's name when it lacks them)."""
    return FoldRecord.from_json(meta).name or Path(directory).name


BACKENDS = Registry("inference backend", "infer.backend")


@BACKENDS.register("torch", precision=None)
def torch_members(run_dir, dirs: Sequence[Path], metas: Sequence[dict], device: str = "cpu", onnx_dir=None):
    """PyTorch modules loaded from the run's safetensors weights."""
    return [
        TorchMember(load_model(d, device, meta=meta)[0], device, name=member_name(meta, d))
        for d, meta in zip(dirs, metas, strict=True)
    ]


@BACKENDS.register("onnx", precision="float32")
def onnx_float_members(run_dir, dirs: Sequence[Path], metas: Sequence[dict], device="cpu", onnx_dir=None):
    """onnxruntime sessions of the graphs exported to ``onnx_dir`` (default ``RUN_DIR/onnx``; float32)."""
    return onnx_members(run_dir, dirs, metas=metas, onnx_dir=onnx_dir)


@BACKENDS.register("onnx-int8", precision="int8")
def onnx_int8_members(run_dir, dirs: Sequence[Path], metas: Sequence[dict], device="cpu", onnx_dir=None):
    """onnxruntime sessions of the int8 (static QDQ) graphs quantised in ``onnx_dir`` (default RUN_DIR/onnx)."""
    return onnx_members(run_dir, dirs, precision="int8", metas=metas, onnx_dir=onnx_dir)


def load_ensemble(
    run_dir: str | Path,
    stages=None,
    archs=None,
    device: str = "cpu",
    backend: str = "torch",
    onnx_dir: str | Path | None = None,
) -> Ensemble:
    """Load the chosen stages × folds × architectures of a run (SPEC §7 default: the run's infer.stages).

    ``backend``: a name of :data:`BACKENDS` (torch, onnx, onnx-int8). The onnx backends run the members
    with onnxruntime from ``onnx_dir`` (default ``RUN_DIR/onnx``), which must hold them exported from the
    current weights (:func:`onnx_current`; ``noisytag.infer.export.ensure_onnx`` exports them, and the
    ``tag``/``serve``/``predict`` commands call it first). The folders are selected once and each
    ``model.json`` is read once.
    """
    factory = BACKENDS.get(backend).factory  # ConfigError naming the backends before any file is read
    dirs = select_model_dirs(run_dir, stages, archs)
    metas = read_metas(dirs)
    classes, frontend, normalize = shared_settings(metas, dirs)
    members = factory(run_dir, dirs, metas, device, onnx_dir)
    return Ensemble(members, classes, frontend, normalize, list(dirs), metas)


# ----------------------------------------------------------------------------------------------
# exported members


def read_export_index(out_dir: str | Path) -> dict:
    """The export index of an export directory: ``export.json``, or the ``manifest.json`` of an export
    made before 0.4 (FileNotFoundError, or ExportError when corrupt)."""
    path = Path(out_dir) / EXPORT_INDEX
    if not path.is_file() and (Path(out_dir) / OLD_EXPORT_INDEX).is_file():
        path = Path(out_dir) / OLD_EXPORT_INDEX
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not an export directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: corrupt JSON ({err})") from None


def write_export_index(out_dir: str | Path, index: dict) -> None:
    """Write ``out_dir/export.json`` (and drop the ``manifest.json`` of an export made before 0.4)."""
    write_json(Path(out_dir) / EXPORT_INDEX, index)
    (Path(out_dir) / OLD_EXPORT_INDEX).unlink(missing_ok=True)


def index_members(out_dir: Path, names: Sequence[str] | None) -> tuple[dict, dict, list[str]]:
    """An export directory's export index, its member entries by name, and ``names`` (default: all,
    sorted); ExportError naming the members the index lacks."""
    index = read_export_index(out_dir)
    entries = {m["name"]: m for m in index["members"]}
    names = list(names) if names is not None else sorted(entries)
    missing = [n for n in names if n not in entries]
    if missing:
        raise ExportError(f"{out_dir / EXPORT_INDEX}: no member(s) {', '.join(missing)}")
    return index, entries, names


def load_members(
    out_dir: str | Path, names: Sequence[str] | None = None, threads: int = 0, precision: str = "float32"
) -> list:
    """:class:`OnnxMember` objects of an export directory (all, or those named, in that order).

    ``precision="int8"``: the quantised graphs that ``noisytag export --int8`` added (ExportError naming
    the members without them).
    """
    out_dir = Path(out_dir)
    index, entries, names = index_members(out_dir, names)
    lacking = [n for n in names if OnnxMember.graphs(entries[n], precision) is None]
    if lacking:
        raise ExportError(
            f"{out_dir / EXPORT_INDEX}: no {precision} graphs for {', '.join(lacking)} "
            f"(run `noisytag export RUN --onnx {out_dir} --int8`)"
        )
    return [OnnxMember(out_dir, entries[n], index["window"], threads, precision) for n in names]


def stale_onnx(
    run_dir: str | Path,
    model_dirs: Sequence[Path],
    precision: str = "float32",
    metas: Sequence[dict] | None = None,
    onnx_dir: str | Path | None = None,
) -> list[str]:
    """Names of the members of ``model_dirs`` that ``onnx_dir`` (default ``RUN_DIR/onnx``) lacks exported
    from their current weights (sha256) for the run's window width (all of them when it holds no export or
    one for another width); ``precision="int8"``: or lacks quantised from those weights with the current
    recipe (:func:`~noisytag.infer.members.int8_current`). ``metas``: the folders' model.json records."""
    OnnxMember.graphs({}, precision)  # ValueError naming the precisions for an unknown one
    metas = read_metas(model_dirs) if metas is None else metas
    names = [member_name(m, Path(d)) for m, d in zip(metas, model_dirs, strict=True)]
    try:
        index = read_export_index(Path(onnx_dir) if onnx_dir is not None else RunDir(run_dir).onnx_dir)
        have = {
            m["name"]: m.get("weights_sha256")
            for m in index["members"]
            if precision == "float32" or int8_current(m)
        }
        if index.get("window") != run_infer_config(run_dir).window:
            return names
    except (FileNotFoundError, ExportError, KeyError):
        return names
    return [n for n, m in zip(names, metas, strict=True) if have.get(n) != m.get("weights_sha256")]


def onnx_current(
    run_dir: str | Path,
    model_dirs: Sequence[Path],
    precision: str = "float32",
    metas: Sequence[dict] | None = None,
    onnx_dir: str | Path | None = None,
) -> bool:
    """Whether ``onnx_dir`` (default ``RUN_DIR/onnx``) holds every model of ``model_dirs`` current
    (:func:`stale_onnx` names none)."""
    return not stale_onnx(run_dir, model_dirs, precision, metas, onnx_dir)


def onnx_members(
    run_dir: str | Path,
    model_dirs: Sequence[Path],
    threads: int = 0,
    precision: str = "float32",
    metas: Sequence[dict] | None = None,
    onnx_dir: str | Path | None = None,
) -> list:
    """ONNX members for ``model_dirs`` of a run, read from ``onnx_dir`` (default ``RUN_DIR/onnx``;
    ``precision``: float32 or int8).

    Raises :class:`~noisytag.infer.members.ExportError` naming the command that makes them when they are
    missing or were exported from other weights or for another window width (see :func:`onnx_current`):
    loading never exports.
    """
    out_dir = Path(onnx_dir) if onnx_dir is not None else RunDir(run_dir).onnx_dir
    metas = read_metas(model_dirs) if metas is None else metas
    if not onnx_current(run_dir, model_dirs, precision, metas, out_dir):
        int8 = precision == "int8"
        raise ExportError(
            f"{out_dir}: {'int8 ' if int8 else ''}ONNX members missing or stale; "
            f"run `noisytag export {run_dir} --onnx {out_dir}{' --int8' if int8 else ''}` "
            "(noisytag tag, serve and predict export them themselves)"
        )
    names = [member_name(m, Path(d)) for m, d in zip(metas, model_dirs, strict=True)]
    return load_members(out_dir, names, threads, precision)
