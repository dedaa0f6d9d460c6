"""ONNX export of a run's ensemble members: writes the graphs, checks them, indexes them.

``export_run(run_dir, out_dir)`` writes, per ensemble member, two graphs with dynamic axes:

* ``{member}/model.onnx``: ``x`` (B, 1, n_mels, T) min-max-normalised log-mel windows → ``probs`` (B, K)
  (sigmoid included; a model that wants more channels expands its single input channel itself);
* ``{member}/fast.onnx``: ``x`` (1, 1, n_mels, T) whole clip + ``starts`` (n,) int64 window start frames →
  ``probs`` (n, K): the fast mode of :mod:`noisytag.infer.predict` (body once, head per window slice);

plus the export index ``export.json`` (classes, front-end parameters, normalisation, window arithmetic,
members and their measured parity with PyTorch; ``manifest.json`` before 0.4, still read).
``--with-frontend`` adds ``waveform.onnx``, one graph from a mono 44.1 kHz waveform to the ensemble's
clip probabilities (:class:`noisytag.infer.onnx_frontend.WaveformEnsemble`).
``--int8`` adds ``{member}/model.int8.onnx`` and ``{member}/fast.int8.onnx``, statically quantised and
checked on held-out clips (:mod:`noisytag.infer.quantize`).
This module only writes; :mod:`noisytag.infer.ensemble` and :mod:`noisytag.infer.members` read and run the files.
It is a build step: the runtime (``Tagger``, the service) never imports it; :mod:`noisytag.infer.build`
keeps a run's export current for the ``tag``, ``serve`` and ``predict`` commands.

Export is slow per graph (torch.export), but members of one architecture differ only in their
weights: each architecture is traced once without graph optimisation, so its initializers keep the
state-dict names, and every member is a copy with its own tensors swapped in (onnxruntime fuses
conv + batch norm when it loads the graph). Every member is then checked against PyTorch.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from rich.progress import track

from noisytag.audio.decode import prepare
from noisytag.audio.features import log_mel
from noisytag.config import FrontendConfig, InferConfig
from noisytag.fileio import atomic_path
from noisytag.infer.calibration import calibration_set
from noisytag.infer.ensemble import (
    EXPORT_INDEX,
    member_name,
    read_export_index,
    read_metas,
    run_infer_config,
    select_model_dirs,
    shared_settings,
    write_export_index,
)
from noisytag.infer.members import (
    ExportError,
    OnnxMember,
    ProbsModel,
    TorchMember,
    WindowedHead,
    session,
)
from noisytag.infer.onnx_frontend import WaveformEnsemble
from noisytag.infer.predict import Clip, iter_window_probs
from noisytag.infer.quantize import quantize_members
from noisytag.models.weights import load_model

log = logging.getLogger(__name__)

FORMAT = "noisytag-onnx/1"
PARITY_TOL = 1e-4
WAVEFORM_FILE = "waveform.onnx"  # the waveform graph (``--with-frontend``)


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress and warns about optional torchvision ops; keep the console clean."""
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch._export", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _trace(module, args: tuple, input_names, dynamic_shapes, opset: int | None = None):
    """torch.onnx.export (dynamo) without graph optimisation → onnx.ModelProto."""
    with _quiet_exporter():
        program = torch.onnx.export(
            module.eval(),
            args,
            input_names=input_names,
            output_names=["probs"],
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            optimize=False,
            opset_version=opset,
            verbose=False,
        )
    return program.model_proto


def _save(proto, path: Path, **options) -> None:
    """Kill-safe ``onnx.save_model`` (temporary name, then rename)."""
    import onnx  # heavy and optional: only export needs it

    with atomic_path(path) as tmp:
        onnx.save_model(proto, str(tmp), **options)


def trace_templates(model, width: int = 128):
    """Graphs (model.onnx, fast.onnx) of one architecture, initializers named after ``model``'s state dict."""
    n_mels = 128
    batch, time = torch.export.Dim("batch", min=1), torch.export.Dim("time", min=width)
    x = torch.rand(2, 1, n_mels, width + 32)
    exact = _trace(ProbsModel(model), (x,), ["x"], {"x": {0: batch, 3: time}})
    clip = torch.rand(1, 1, n_mels, 4 * width)
    starts = torch.tensor([0, 48, 96, 3 * width], dtype=torch.int64)
    windows = torch.export.Dim("windows", min=1)
    fast = _trace(
        WindowedHead(model, width),
        (clip, starts),
        ["x", "starts"],
        {"x": {3: torch.export.Dim("frames", min=width)}, "starts": {0: windows}},
    )
    return exact, fast


def with_weights(template, state: dict, prefix: str = "model."):
    """Copy of ``template`` whose initializers ``prefix + key`` hold ``state[key]`` (numpy arrays)."""
    import onnx  # heavy and optional: only export needs it
    from onnx import numpy_helper

    proto = onnx.ModelProto()
    proto.CopyFrom(template)
    used = set()
    for init in proto.graph.initializer:
        if not init.name.startswith(prefix):
            continue
        key = init.name[len(prefix) :]
        if key not in state:
            raise ExportError(f"ONNX initializer '{init.name}' has no tensor '{key}' in the state dict")
        value = np.ascontiguousarray(state[key])
        if tuple(init.dims) != value.shape:
            raise ExportError(f"ONNX initializer '{init.name}': shape {tuple(init.dims)} vs {value.shape}")
        init.CopyFrom(numpy_helper.from_array(value.astype(numpy_helper.to_array(init).dtype), init.name))
        used.add(key)
    missing = [k for k, v in state.items() if k not in used and np.issubdtype(v.dtype, np.floating)]
    if missing:
        raise ExportError(f"state-dict tensors absent from the ONNX graph: {', '.join(missing[:3])}")
    return proto


# ----------------------------------------------------------------------------------------------
# run-level export


def _parity(member_torch, member_onnx, width: int, seed: int = 0) -> float:
    """Largest |ONNX − PyTorch| probability over random windows and a random clip in fast mode."""
    rng = np.random.default_rng(seed)
    x = rng.random((3, 1, 128, width), dtype=np.float32)
    clip = rng.random((1, 1, 128, 3 * width + 37), dtype=np.float32)
    starts = np.array([0, 40, 97, 2 * width + 37], dtype=np.int64)
    a = np.abs(member_torch.probs(x) - member_onnx.probs(x)).max()
    b = np.abs(
        member_torch.fast_probs(clip, starts, width) - member_onnx.fast_probs(clip, starts, width)
    ).max()
    return float(max(a, b))


def export_models(
    model_dirs: Sequence[Path],
    out_dir: str | Path,
    window: int = 128,
    max_stride: int = 48,
    progress: bool = False,
    metas: Sequence[dict] | None = None,
) -> dict:
    """Export the fold models of ``model_dirs`` (``metas``: their model.json records, read when not given)
    into ``out_dir`` and (re)write its export index.

    Members already exported with the same weights (sha256) are kept; the index lists every member
    present. Raises :class:`ExportError` when a member differs from PyTorch by more than 1e-4.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        index = read_export_index(out_dir)
    except FileNotFoundError:
        index = {}
    if index and index.get("window") != window:
        index = {}  # traced for another window width: start over
    known = {m["name"]: m for m in index.get("members", [])}
    metas = read_metas(model_dirs) if metas is None else list(metas)
    classes, _frontend, normalize = shared_settings(metas, list(model_dirs))
    if index and index.get("classes") != classes:
        raise ExportError(f"{out_dir / EXPORT_INDEX}: holds members for other classes; use another directory")
    templates: dict[str, tuple] = {}
    items = list(zip(model_dirs, metas, strict=True))
    if progress:
        items = track(items, description="exporting", transient=True)
    for directory, meta in items:
        name = member_name(meta, Path(directory))
        if name in known and known[name].get("weights_sha256") == meta.get("weights_sha256"):
            continue
        model, _ = load_model(directory, meta=meta)
        spec_key = json.dumps(model.spec, sort_keys=True)
        if spec_key not in templates:
            templates[spec_key] = trace_templates(model, window)
        state = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
        member_dir = out_dir / name
        member_dir.mkdir(exist_ok=True)
        for proto, fname in zip(templates[spec_key], ("model.onnx", "fast.onnx"), strict=True):
            _save(with_weights(proto, state), member_dir / fname)
        entry = {
            "name": name,
            "arch": meta.get("arch", model.spec["name"]),
            "stage": meta.get("stage"),
            "fold": meta.get("fold"),
            "model": f"{name}/model.onnx",
            "fast": f"{name}/fast.onnx",
            "spec": model.spec,
            "n_classes": int(model.spec["n_classes"]),
            "in_channels": int(model.spec.get("in_channels", 1)),
            "time_reduction": int(getattr(model, "time_reduction", 1)),
            "weights_sha256": meta.get("weights_sha256"),
            "source": str(directory),
        }
        diff = _parity(TorchMember(model), OnnxMember(out_dir, entry, window), window)
        if diff > PARITY_TOL:
            raise ExportError(f"{member_dir}: ONNX differs from PyTorch by {diff:.2e} (> {PARITY_TOL})")
        entry["parity_max_abs_diff"] = diff
        known[name] = entry
    index = {
        "format": FORMAT,
        "classes": classes,
        "frontend": metas[0].get("frontend") or {},
        "normalize": normalize,
        "window": window,
        "max_stride": max_stride,
        "inputs": {
            "model.onnx": "x float32 (batch, 1, n_mels, frames): per-clip min-max normalised log-mel windows",
            "fast.onnx": "x float32 (1, 1, n_mels, frames) whole clip; starts int64 (windows,) start frames",
        },
        "outputs": "probs float32 (rows, n_classes): sigmoid probabilities, columns in 'classes' order",
        "members": sorted(known.values(), key=lambda m: m["name"]),
        "waveform": index.get("waveform", index.get("tagger")),  # "tagger" before 0.4
        "int8": index.get("int8"),  # how the members' int8 graphs were made (noisytag.infer.quantize)
    }
    write_export_index(out_dir, index)
    return index


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    stages=None,
    archs=None,
    with_frontend: bool = False,
    progress: bool = False,
    int8: bool = False,
    calibration: str | Path | None = None,
) -> dict:
    """Export the chosen stages × folds × architectures of a run (default: its infer.stages).

    ``int8``: also quantise them, calibrated on ``calibration`` (a data set or a folder of audio files;
    default: the run's data set) — see :func:`noisytag.infer.quantize.quantize_members`.
    """
    cfg = run_infer_config(run_dir)
    dirs = select_model_dirs(run_dir, stages, archs)
    metas = read_metas(dirs)
    index = export_models(dirs, out_dir, cfg.window, cfg.max_stride, progress, metas)
    if with_frontend:
        index["waveform"] = export_waveform(dirs, Path(out_dir), cfg.window, cfg.max_stride, metas=metas)
        write_export_index(out_dir, index)
    if int8:
        names = [member_name(m, Path(d)) for m, d in zip(metas, dirs, strict=True)]
        index = quantize_int8(run_dir, out_dir, names, calibration, progress)
    return index


def quantize_int8(
    run_dir: str | Path, out_dir: str | Path, names=None, calibration=None, progress: bool = False
) -> dict:
    """Quantise members ``names`` of export directory ``out_dir``, calibrated on ``calibration`` (default:
    the run's data set) → the export index."""
    index = read_export_index(out_dir)
    frontend = FrontendConfig(**(index.get("frontend") or {}))
    calib = calibration_set(run_dir, frontend, index["classes"], calibration)
    return quantize_members(out_dir, calib, names, progress=progress)


# ----------------------------------------------------------------------------------------------
# waveform graph


def export_waveform(
    model_dirs: Sequence[Path],
    out_dir: Path,
    width: int = 128,
    max_stride: int = 48,
    check: bool = True,
    metas: Sequence[dict] | None = None,
) -> dict:
    """Write ``out_dir/waveform.onnx`` for the fold models of ``model_dirs``; return its export index entry."""
    metas = read_metas(model_dirs) if metas is None else list(metas)
    _classes, frontend, normalize = shared_settings(metas, list(model_dirs))
    models = [load_model(d, meta=m)[0] for d, m in zip(model_dirs, metas, strict=True)]
    module = WaveformEnsemble(models, frontend, width, max_stride, normalize).eval()
    example = torch.from_numpy(_example_wave(frontend.sample_rate, 3.3))[None]
    samples = torch.export.Dim("samples", min=frontend.n_fft)
    with _quiet_exporter():
        program = torch.onnx.export(
            module,
            (example,),
            input_names=["waveform"],
            output_names=["probs", "window_probs", "starts"],
            dynamic_shapes={"wave": {1: samples}},
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    proto = program.model_proto
    path = Path(out_dir) / WAVEFORM_FILE
    if proto.ByteSize() > 1_800_000_000:  # protobuf's 2 GB limit: weights beside the graph
        _save(proto, path, save_as_external_data=True, location=WAVEFORM_FILE + ".data")
    else:
        _save(proto, path)
    entry = {
        "file": WAVEFORM_FILE,
        "members": [str(d) for d in model_dirs],
        "input": f"waveform float32 (1, samples): mono at {frontend.sample_rate} Hz, untrimmed, ≥ {frontend.n_fft} samples",
        "outputs": {
            "probs": "(1, n_classes) mean over members, then windows",
            "window_probs": "(windows, n_classes) mean over members per window",
            "starts": "(windows,) int64 start frames in the trimmed and padded clip",
        },
    }
    if check:
        diff = waveform_parity(path, models, frontend, width, max_stride, normalize)
        if diff > 1e-3:
            raise ExportError(f"{path}: differs from the PyTorch path by {diff:.2e}")
        entry["parity_max_abs_diff"] = diff
    return entry


def _example_wave(sr: int, seconds: float, seed: int = 0) -> np.ndarray:
    """A test signal with silent edges (exercises trimming), a tone, a chirp and noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(sr * seconds)) / sr
    y = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.2 * np.sin(2 * np.pi * (200 + 2000 * t) * t)
    y += 0.05 * rng.standard_normal(t.size)
    y[: int(0.3 * sr)] = 0.0
    y[-int(0.2 * sr) :] *= 1e-5
    return y.astype(np.float32)


def waveform_parity(path, models, frontend: FrontendConfig, width, max_stride, normalize) -> float:
    """Largest |waveform.onnx − PyTorch path| clip probability on test signals of 0.5 s, 2.7 s and 7.1 s."""
    sess = session(path)
    cfg = InferConfig(window=width, max_stride=max_stride)
    worst = 0.0
    for seconds in (0.5, 2.7, 7.1):
        wave = _example_wave(frontend.sample_rate, seconds, seed=int(seconds * 10))
        db = log_mel(prepare(wave, frontend.sample_rate, frontend), frontend)
        clip = Clip(0, db, float(db.min()), float(db.max()))
        ((_, _, window_probs),) = iter_window_probs(list(models), [clip], cfg, normalize)
        got = sess.run(None, {"waveform": wave[None]})[0][0]
        worst = max(worst, float(np.abs(got - window_probs.mean(axis=0)).max()))
    return worst
