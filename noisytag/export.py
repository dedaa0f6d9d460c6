"""ONNX export of a run's ensemble members, and running them with onnxruntime.

``export_run(run_dir, out_dir)`` writes, per ensemble member, two graphs with dynamic axes:

* ``{member}/model.onnx``: ``x`` (B, 1, n_mels, T) min-max-normalised log-mel windows → ``probs`` (B, K)
  (sigmoid included; channels are repeated inside the graph when the model wants three);
* ``{member}/fast.onnx``: ``x`` (1, 1, n_mels, T) whole clip + ``starts`` (n,) int64 window start frames →
  ``probs`` (n, K): the fast mode of :mod:`noisytag.infer` (body once, head per window slice);

plus ``manifest.json`` (classes, front-end parameters, normalisation, window arithmetic, members and
their measured parity with PyTorch). ``--with-frontend`` adds ``tagger.onnx``, one graph from a mono
44.1 kHz waveform to the ensemble's clip probabilities (see :mod:`noisytag.onnx_frontend`).

Export is slow per graph (torch.export), but members of one architecture differ only in their
weights: each architecture is traced once without graph optimisation, so its initializers keep the
state-dict names, and every member is a copy with its own tensors swapped in (onnxruntime fuses
conv + batch norm when it loads the graph). Every member is then checked against PyTorch.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "noisytag-onnx/1"
PARITY_TOL = 1e-4


class ExportError(RuntimeError):
    """Export or parity failure; the message names the member or file."""


@contextlib.contextmanager
def _quiet_exporter():
    """torch.onnx prints progress and warns about optional torchvision ops; keep the console clean."""
    import io
    import warnings

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
    import torch

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


def trace_templates(model, width: int = 128):
    """Graphs (model.onnx, fast.onnx) of one architecture, initializers named after ``model``'s state dict."""
    import torch

    from noisytag.members import ProbsModel, WindowedHead

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
    import onnx
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


def _save(proto, path: Path) -> None:
    import onnx

    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    onnx.save(proto, str(tmp))
    os.replace(tmp, path)


def session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session with full graph optimisation (``threads`` 0 = onnxruntime's default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


class OnnxMember:
    """One exported member behind the :mod:`noisytag.infer` member interface (onnxruntime, CPU)."""

    def __init__(self, root: Path, entry: dict, window: int, threads: int = 0):
        self.name = entry["name"]
        self.n_classes = int(entry["n_classes"])
        self.in_channels = int(entry["in_channels"])
        self.time_reduction = int(entry["time_reduction"])
        self.window = int(window)
        self._paths = {"model": Path(root) / entry["model"], "fast": Path(root) / entry["fast"]}
        self._sessions: dict = {}
        self._threads = threads

    def _session(self, kind: str):
        if kind not in self._sessions:
            self._sessions[kind] = session(self._paths[kind], self._threads)
        return self._sessions[kind]

    def probs(self, x: np.ndarray) -> np.ndarray:
        """(B, 1, F, W) normalised windows → (B, K) probabilities."""
        return self._session("model").run(None, {"x": np.ascontiguousarray(x, dtype=np.float32)})[0]

    def fast_probs(self, x: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
        """(1, 1, F, T) clip + (n,) start frames → (n, K) probabilities (graph traced for ``window``)."""
        if width != self.window:
            raise ExportError(f"{self._paths['fast']}: exported for {self.window}-frame windows, not {width}")
        feeds = {"x": np.ascontiguousarray(x, dtype=np.float32), "starts": np.asarray(starts, dtype=np.int64)}
        return self._session("fast").run(None, feeds)[0]


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


def read_manifest(out_dir: str | Path) -> dict:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing (not an export directory)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path}: corrupt JSON ({err})") from None


def export_models(
    model_dirs: Sequence[Path],
    out_dir: str | Path,
    window: int = 128,
    max_stride: int = 48,
    progress: bool = False,
) -> dict:
    """Export the fold models of ``model_dirs`` into ``out_dir`` and (re)write its manifest.

    Members already exported with the same weights (sha256) are kept; the manifest lists every member
    present. Raises :class:`ExportError` when a member differs from PyTorch by more than 1e-4.
    """
    from noisytag.infer import _member_name, _shared
    from noisytag.members import TorchMember
    from noisytag.weights import load_model, read_meta

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        manifest = read_manifest(out_dir)
    except FileNotFoundError:
        manifest = {}
    if manifest and manifest.get("window") != window:
        manifest = {}  # traced for another window width: start over
    known = {m["name"]: m for m in manifest.get("members", [])}
    metas = [read_meta(d) for d in model_dirs]
    classes, frontend, normalize = _shared(metas, list(model_dirs))
    if manifest and manifest.get("classes") != classes:
        raise ExportError(f"{out_dir / MANIFEST}: holds members for other classes; use another directory")
    templates: dict[str, tuple] = {}
    items = list(zip(model_dirs, metas, strict=True))
    if progress:
        from rich.progress import track

        items = track(items, description="exporting", transient=True)
    for directory, meta in items:
        name = _member_name(meta, Path(directory))
        if name in known and known[name].get("weights_sha256") == meta.get("weights_sha256"):
            continue
        model, _ = load_model(directory)
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
    manifest = {
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
        "tagger": manifest.get("tagger"),
    }
    _write_manifest(out_dir, manifest)
    return manifest


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    tmp = out_dir / f".{MANIFEST}.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, out_dir / MANIFEST)


def export_run(
    run_dir: str | Path,
    out_dir: str | Path,
    stages=None,
    archs=None,
    with_frontend: bool = False,
    progress: bool = False,
) -> dict:
    """Export the chosen stages × folds × architectures of a run (default: its infer.stages)."""
    from noisytag.infer import run_infer_config, select_model_dirs

    cfg = run_infer_config(run_dir)
    dirs = select_model_dirs(run_dir, stages, archs)
    manifest = export_models(dirs, out_dir, cfg.window, cfg.max_stride, progress)
    if with_frontend:
        from noisytag.onnx_frontend import export_tagger

        manifest["tagger"] = export_tagger(dirs, Path(out_dir), cfg.window, cfg.max_stride)
        _write_manifest(Path(out_dir), manifest)
    return manifest


def load_members(out_dir: str | Path, names: Sequence[str] | None = None, threads: int = 0) -> list:
    """:class:`OnnxMember` objects of an export directory (all, or those named, in that order)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    entries = {m["name"]: m for m in manifest["members"]}
    names = list(names) if names is not None else sorted(entries)
    missing = [n for n in names if n not in entries]
    if missing:
        raise ExportError(f"{out_dir / MANIFEST}: no member(s) {', '.join(missing)}")
    return [OnnxMember(out_dir, entries[n], manifest["window"], threads) for n in names]


def onnx_members(run_dir: str | Path, model_dirs: Sequence[Path], threads: int = 0) -> list:
    """ONNX members for ``model_dirs`` of a run, exported into ``RUN_DIR/onnx`` when missing or stale."""
    from noisytag.infer import _member_name, run_infer_config
    from noisytag.weights import read_meta

    out_dir = Path(run_dir) / "onnx"
    cfg = run_infer_config(run_dir)
    metas = [read_meta(d) for d in model_dirs]
    names = [_member_name(m, Path(d)) for m, d in zip(metas, model_dirs, strict=True)]
    try:
        manifest = read_manifest(out_dir)
        have = {m["name"]: m.get("weights_sha256") for m in manifest["members"]}
        fresh = manifest.get("window") == cfg.window and all(
            have.get(n) == m.get("weights_sha256") for n, m in zip(names, metas, strict=True)
        )
    except (FileNotFoundError, ExportError, KeyError):
        fresh = False
    if not fresh:
        log.info("exporting %d model(s) to %s", len(model_dirs), out_dir)
        export_models(model_dirs, out_dir, cfg.window, cfg.max_stride)
    return load_members(out_dir, names, threads)
