"""int8 ONNX members: static QDQ quantisation calibrated on real clips, checked on held-out clips.

:func:`quantize_members` adds, per member of an export directory (``noisytag export --int8``)::

    {member}/model.int8.onnx   {member}/fast.int8.onnx   (same inputs and outputs as the float graphs)

made by onnxruntime's ``quantize_static`` in QDQ format: int8 weights per output channel, uint8
activations (asymmetric; most follow a ReLU) whose ranges span the calibration values from the
0.001st to the 99.999th percentile (clipping the rarest outliers keeps the int8 steps fine: on the demo
run's students and teacher members the test lwlrap of the int8 graph was 0.0002–0.0027 higher than with
min–max ranges, 4 of 4 graphs). Before quantising, onnxruntime's basic graph
optimisation folds each batch norm into its convolution (the optimisation step of ``quant_pre_process``;
its symbolic shape inference fails on torch.export's ``Constant`` nodes and these graphs do not need it),
so the convolutions are quantised with the batch-norm scale in their weights; the first convolution, which
sees the log-mel itself, and the output layer (the last linear layer and the sigmoid after it, so the
probabilities are not rounded to 256 levels and tied) stay in float (:func:`quantize_graph`,
:func:`output_nodes`). onnxruntime fuses the QDQ pairs into
integer kernels (VNNI where the CPU has it) when it loads the graph.

Calibration clips (:class:`~noisytag.infer.calibration.CalibrationSet`) come from the run's data set (run.json ``data_dir``; features
from its cache, else decoded), from another data set, or from a folder of audio files; they are normalised
exactly as the model input (:func:`noisytag.audio.model_input.model_input`). ``model.int8.onnx`` is
calibrated on up to 256 inference windows of up to 128 clips (on a demo run, 64 clips / 143 windows left
a member's largest error at 0.07, 128 / 256 at 0.045; 512 windows did no better), ``fast.int8.onnx`` on up
to 16 clips cut or padded to 512 frames (the percentile calibration needs inputs of one shape). Parity is
measured on other clips (the test split with truth when the data set has one): largest and mean
|int8 − float| window probability in both modes and, with labels, each member's lwlrap at both precisions.
Everything lands in the export index (``export.json``): the member's ``int8`` entry and the directory's
``int8`` section.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from noisytag.audio.model_input import Clip, model_input, take_windows
from noisytag.audio.windows import window_offsets
from noisytag.config import InferConfig
from noisytag.fileio import atomic_path
from noisytag.infer.calibration import CalibrationSet
from noisytag.infer.ensemble import index_members, write_export_index
from noisytag.infer.members import INT8_METHOD, INT8_PERCENTILE, OnnxMember, int8_current
from noisytag.infer.predict import iter_window_probs
from noisytag.metrics import lwlrap

log = logging.getLogger(__name__)

ACTIVATIONS = ("uint8", "int8")
MAX_WINDOWS = 256  # calibration windows of model.int8.onnx
MAX_CLIPS_FAST = 16  # calibration clips of fast.int8.onnx
FAST_FRAMES = 512  # their length in frames (≈ 6 s at the default hop)
BATCH = 16
LINEAR_OPS = ("Gemm", "MatMul", "Conv")  # where the float output layer (:func:`output_nodes`) begins


# ----------------------------------------------------------------------------------------------
# calibration feeds and quantisation


class Feeds:
    """Prepared input dicts as an onnxruntime ``CalibrationDataReader`` (it recognises ``get_next``)."""

    def __init__(self, feeds: list[dict]):
        self._feeds = iter(feeds)

    def get_next(self) -> dict | None:
        return next(self._feeds, None)


def window_feeds(
    clips: Sequence[Clip], width: int, max_stride: int, normalize: str, max_windows: int = MAX_WINDOWS
) -> list[dict]:
    """``{"x": (BATCH, 1, F, width)}`` batches of the clips' inference windows (a seeded sample of
    ``max_windows`` when there are more). Every batch has the same shape, as the percentile calibration
    needs: the windows past the last whole batch are left out (one smaller batch when there are fewer)."""
    windows = []
    for c in clips:
        x = model_input(c.db, c.lo, c.hi, width, normalize)
        windows.append(take_windows(x, window_offsets(c.db.shape[1], width, max_stride), width))
    x = np.concatenate(windows)
    if len(x) > max_windows:
        x = x[np.sort(np.random.default_rng(0).choice(len(x), max_windows, replace=False))]
    x = x[: max(len(x) // BATCH * BATCH, min(len(x), BATCH)), None]
    return [{"x": x[i : i + BATCH]} for i in range(0, len(x), BATCH)]


def clip_feeds(
    clips: Sequence[Clip],
    width: int,
    max_stride: int,
    normalize: str,
    max_clips: int = MAX_CLIPS_FAST,
    frames: int = FAST_FRAMES,
) -> list[dict]:
    """``{"x": (1, 1, F, frames), "starts": (n,)}`` per clip, ≤ ``max_clips`` clips: the fast graph's
    inputs for the clip's first ``frames`` frames (a shorter clip padded with its ``lo``, as
    :func:`model_input` pads). One length for all, as the percentile calibration needs."""
    starts = window_offsets(frames, width, max_stride)
    out = []
    for c in clips[:max_clips]:
        x = model_input(c.db[:, :frames], c.lo, c.hi, frames, normalize)
        out.append({"x": x[None, None], "starts": starts})
    return out


@contextlib.contextmanager
def _quiet_quantizer():
    """Drop the notes onnxruntime's quantiser logs as root-logger warnings (e.g. that it quantises the
    head's batch-norm weights per tensor, not per channel) and what its calibrator prints."""

    def keep(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or "onnxruntime" not in record.pathname

    root = logging.getLogger()
    root.addFilter(keep)
    try:  # the percentile calibrator also prints its progress to stdout
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.removeFilter(keep)


def output_nodes(graph) -> list[str]:
    """Names of the nodes from the last linear layer (``Gemm``, ``MatMul`` or ``Conv``) to each graph
    output, that layer included.

    They stay in float so the output tensor is never quantised: a quantised sigmoid output holds at
    most 256 values, and quantised logits few more, so most rows of real clips held tied scores (99.3 %
    of an int8 student's on realdev), which costs a ranking metric.
    """
    produced = {o: n for n in graph.node for o in n.output}
    names: list[str] = []
    todo = [o.name for o in graph.output]
    while todo:
        node = produced.get(todo.pop())
        if node is None or node.name in names:
            continue
        names.append(node.name)
        if node.op_type not in LINEAR_OPS:
            todo.extend(i for i in node.input if i in produced)
    return names


def quantize_graph(src: Path, dst: Path, feeds: list[dict], activation: str = "uint8") -> None:
    """Float graph ``src`` → static QDQ int8 graph ``dst`` calibrated on ``feeds`` (kill-safe write).

    The first convolution stays in float: it sees the normalised log-mel itself, whose 256 uint8 levels
    doubled the largest probability error of a tiny trained cnn1, for a small share of the work (one
    input channel; figures in benchmarks/README.md). So does the output layer (:func:`output_nodes`):
    one small matrix product, and the probabilities keep their float resolution.
    """
    import tempfile

    import onnx  # heavy and optional: only export needs them
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation type '{activation}' (expected {' or '.join(ACTIVATIONS)})")
    with tempfile.TemporaryDirectory(prefix="noisytag-int8-") as tmp, _quiet_quantizer():
        optimized = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        opts.optimized_model_filepath = str(optimized)
        opts.log_severity_level = 3
        ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
        graph = onnx.load(str(optimized)).graph
        convs = [n.name for n in graph.node if n.op_type == "Conv"]
        with atomic_path(dst) as out:
            quantize_static(
                str(optimized),
                str(out),
                Feeds(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8 if activation == "uint8" else QuantType.QInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.Percentile,
                extra_options={"CalibPercentile": INT8_PERCENTILE},
                nodes_to_exclude=convs[:1] + output_nodes(graph),
            )


# ----------------------------------------------------------------------------------------------
# parity


def _window_probs(member, clips: Sequence[Clip], cfg: InferConfig, normalize: str) -> list[np.ndarray]:
    got = {key: probs for key, _, probs in iter_window_probs([member], clips, cfg, normalize)}
    return [got[c.key] for c in clips]


def int8_parity(
    float_member, int8_member, calib: CalibrationSet, width: int, max_stride: int, normalize: str
) -> tuple[dict, np.ndarray, np.ndarray]:
    """Held-out comparison of one member → (figures, float clip probs (N, K), int8 clip probs (N, K)).

    Figures: ``max_abs_diff`` / ``mean_abs_diff`` (window probabilities, exact mode),
    ``clip_max_abs_diff`` (clip probabilities: mean over windows), ``fast_max_abs_diff`` (window
    probabilities, fast mode) and, when the held-out clips have labels, ``lwlrap_float``/``lwlrap_int8``.
    """
    clips = [Clip(i, c.db, c.lo, c.hi) for i, c in enumerate(calib.heldout)]
    figures: dict = {"clips": len(clips)}
    clip_probs = []
    for mode in ("exact", "fast"):
        cfg = InferConfig(window=width, max_stride=max_stride, batch_size=64, mode=mode)
        a = _window_probs(float_member, clips, cfg, normalize)
        b = _window_probs(int8_member, clips, cfg, normalize)
        diff = np.abs(np.concatenate(a) - np.concatenate(b))
        if mode == "exact":
            figures.update(
                windows=len(diff), max_abs_diff=float(diff.max()), mean_abs_diff=float(diff.mean())
            )
            clip_probs = [np.stack([p.mean(axis=0) for p in probs]) for probs in (a, b)]
            figures["clip_max_abs_diff"] = float(np.abs(clip_probs[0] - clip_probs[1]).max())
        else:
            figures["fast_max_abs_diff"] = float(diff.max())
    if calib.truth is not None:
        figures["lwlrap_float"] = lwlrap(calib.truth, clip_probs[0])
        figures["lwlrap_int8"] = lwlrap(calib.truth, clip_probs[1])
    return figures, clip_probs[0], clip_probs[1]


# ----------------------------------------------------------------------------------------------
# an export directory's int8 members


def quantize_members(
    out_dir: str | Path,
    calib: CalibrationSet,
    names: Sequence[str] | None = None,
    activation: str = "uint8",
    force: bool = False,
    progress: bool = False,
) -> dict:
    """Quantise members ``names`` (default: all) of export directory ``out_dir`` → the updated export index.

    A member whose int8 graphs were made from its current weights with the same calibration source is
    kept (unless ``force``). Each new one is checked on the held-out clips (:func:`int8_parity`).
    """
    from rich.progress import track

    out_dir = Path(out_dir)
    index, entries, names = index_members(out_dir, names)
    width, stride, normalize = index["window"], index["max_stride"], index.get("normalize", "minmax")
    todo = [n for n in names if force or not int8_current(entries[n], calib.source, activation)]
    if todo:
        model_feeds = window_feeds(calib.calibrate, width, stride, normalize)
        fast_feeds = clip_feeds(calib.calibrate, width, stride, normalize)
    ensemble: list[list[np.ndarray]] = [[], []]
    for name in track(todo, description="quantising", transient=True) if progress else todo:
        entry = entries[name]
        files = {kind: f"{name}/{kind}.int8.onnx" for kind in ("model", "fast")}
        quantize_graph(out_dir / entry["model"], out_dir / files["model"], model_feeds, activation)
        quantize_graph(out_dir / entry["fast"], out_dir / files["fast"], fast_feeds, activation)
        int8 = {
            **files,
            "weights_sha256": entry.get("weights_sha256"),
            "calibration": calib.source,
            "activations": activation,
            "method": INT8_METHOD,
        }
        float_member = OnnxMember(out_dir, entry, width)
        int8_member = OnnxMember(out_dir, {**entry, "int8": int8}, width, precision="int8")
        int8["parity"], p_float, p_int8 = int8_parity(
            float_member, int8_member, calib, width, stride, normalize
        )
        entry["int8"] = int8
        ensemble[0].append(p_float)
        ensemble[1].append(p_int8)
    if todo:
        import onnxruntime as ort

        section = {
            "format": f"QDQ: int8 weights per output channel, {activation} activations "
            f"(percentile {INT8_PERCENTILE} calibration), first convolution and output layer in float; "
            "onnxruntime quantize_static",
            "onnxruntime": ort.__version__,
            "activations": activation,
            "calibration": {
                "source": calib.source,
                "clips": len(calib.calibrate),
                "windows": sum(len(f["x"]) for f in model_feeds),
                "fast_clips": len(fast_feeds),
            },
            "heldout": {"source": calib.heldout_source, "clips": len(calib.heldout)},
            "ensemble": ensemble_parity(ensemble[0], ensemble[1], calib.truth),
        }
        index["int8"] = section
        write_export_index(out_dir, index)
    return index


def ensemble_parity(float_probs: list, int8_probs: list, truth: np.ndarray | None) -> dict:
    """Clip probabilities averaged over the members quantised together: largest difference and lwlrap."""
    a, b = np.mean(float_probs, axis=0), np.mean(int8_probs, axis=0)
    out = {"members": len(float_probs), "clip_max_abs_diff": float(np.abs(a - b).max())}
    if truth is not None:
        out.update(lwlrap_float=lwlrap(truth, a), lwlrap_int8=lwlrap(truth, b))
    return out
