"""Ensemble members behind one interface: a PyTorch module or an onnxruntime session.

A member maps normalised log-mel input to sigmoid probabilities:

* ``probs(x)``: (B, 1, F, W) windows → (B, K);
* ``fast_probs(x, starts, width)``: one whole clip (1, 1, F, T) + (n,) window start frames → (n, K), the
  fast mode (conv body once over the clip, head on each window's slice of the feature map);
* attributes ``name`` and ``n_classes``.

:class:`TorchMember` runs :class:`ProbsModel` and :class:`WindowedHead` with PyTorch; :class:`OnnxMember`
runs their exported graphs (``noisytag.infer.export`` writes them) with onnxruntime, so both backends compute
the same thing; with ``precision="int8"`` it runs their quantised copies (``noisytag.infer.quantize``),
within a few hundredths in probability (the export measures it). Inputs always have one channel; a model
that wants more expands it itself.
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn


class ExportError(RuntimeError):
    """ONNX export, parity or an export directory's contents failed; the message names the member or file."""


class ProbsModel(nn.Module):
    """(B, 1, F, W) windows → (B, K) sigmoid probabilities.

    The graph exported to ONNX for the exact mode; the torch backend runs the same module.
    """

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.model(x))


class WindowedHead(nn.Module):
    """Fast mode: (1, 1, F, T) clip + (n,) window start frames → (n, K) probabilities.

    The body (``model.features``) runs once over the clip; window w's slice of the feature map starts at
    ``round(start / time_reduction)`` (clamped into the map) and spans ``width // time_reduction``
    steps; the head pools and classifies each slice. Exported to ONNX as one graph.
    """

    def __init__(self, model, width: int = 128):
        super().__init__()
        self.model = model
        self.reduction = int(getattr(model, "time_reduction", 1))
        self.steps = max(width // self.reduction, 1)

    def forward(self, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x, starts))

    def logits(self, x: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """The same windows' logits (training's validation scores its loss on them)."""
        fmap = self.model.features(x)[0]  # (D, F', T'); the model expands channels itself
        last = torch.ones_like(starts) * (fmap.shape[-1] - self.steps)
        first = torch.round(starts.to(torch.float32) / self.reduction).to(torch.int64)
        first = torch.clamp(torch.minimum(first, last), min=0)
        idx = first[:, None] + torch.arange(self.steps, device=starts.device)[None, :]  # (n, w')
        windows = fmap[:, :, idx].permute(2, 0, 1, 3)  # (D, F', n, w') → (n, D, F', w')
        head = self.model.head
        return head.classify(head.pool(windows))


def folded(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` with each batch norm that directly follows a convolution in an
    ``nn.Sequential`` folded into that convolution's weights and bias (the same function up to float
    rounding): fewer passes over the activations, so faster members (benchmarks/README.md). The
    caller's model is left as it was."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for seq in model.modules():
        if isinstance(seq, nn.Sequential):
            for i in range(len(seq) - 1):
                conv, bn = seq[i], seq[i + 1]
                if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                    seq[i], seq[i + 1] = fuse_conv_bn_eval(conv, bn), nn.Identity()
    return model


class TorchMember:
    """One PyTorch model behind the member interface (eval mode, inference mode, sigmoid outputs).

    It runs a :func:`folded` copy of the model on ``device``; on the CPU the copy's weights are also in
    the channels-last layout, which oneDNN convolutions run faster.
    """

    def __init__(self, model, device: str = "cpu", name: str = ""):
        self.model = folded(model).to(device)
        if torch.device(device).type == "cpu":
            self.model.to(memory_format=torch.channels_last)
        self.device = device
        self.name = name or model.spec.get("name", "model")
        self.n_classes = int(model.spec["n_classes"])
        self._probs = ProbsModel(self.model).eval()
        self._fast: dict[int, WindowedHead] = {}

    def _tensor(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(x)).to(self.device)

    def probs(self, x: np.ndarray) -> np.ndarray:
        """(B, 1, F, W) normalised windows → (B, K) sigmoid probabilities."""
        with torch.inference_mode():
            return self._probs(self._tensor(x.astype(np.float32, copy=False))).float().cpu().numpy()

    def fast_probs(self, x: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
        """(1, 1, F, T) whole clip + (n,) start frames → (n, K) via :class:`WindowedHead`."""
        if width not in self._fast:
            self._fast[width] = WindowedHead(self.model, width).eval()
        with torch.inference_mode():
            out = self._fast[width](self._tensor(x.astype(np.float32, copy=False)), self._tensor(starts))
            return out.float().cpu().numpy()


def session(path: str | Path, threads: int = 0):
    """An onnxruntime CPU session with full graph optimisation (``threads`` 0 = onnxruntime's default)."""
    import onnxruntime as ort  # heavy and optional: only the onnx backend needs it

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # Idle intra-op threads sleep instead of spinning: a server's request threads and the front end's
    # workers share the cores with them, and spinning threads starve those (see benchmarks/README.md).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


PRECISIONS = ("float32", "int8")  # graphs of an export directory: float, or int8 (``noisytag export --int8``)
# The int8 recipe (noisytag.infer.quantize): activation ranges from the (100 - p)th to the pth percentile
# of the calibration values, the output layer in float (graphs before it quantised their probabilities).
# int8 graphs an export index records with another method are stale and remade.
INT8_PERCENTILE = 99.999
INT8_METHOD = f"percentile {INT8_PERCENTILE}, float output"


def int8_current(entry: dict, source: str | None = None, activation: str | None = None) -> bool:
    """Whether export index member ``entry`` has int8 graphs of its current weights (made from calibration
    ``source`` with ``activation`` types, when given)."""
    int8 = entry.get("int8") or {}
    return (
        bool(int8)
        and int8.get("weights_sha256") == entry.get("weights_sha256")
        and source in (None, int8.get("calibration"))
        and activation in (None, int8.get("activations"))
        and int8.get("method") == INT8_METHOD
    )


class OnnxMember:
    """One exported member (``model.onnx`` + ``fast.onnx`` of an index entry) run by onnxruntime (CPU).

    ``entry``: the member's export index entry (``name``, ``n_classes``, ``model``, ``fast`` paths relative to
    ``root``); ``window``: the window width ``fast.onnx`` was traced for. ``precision="int8"`` runs the
    quantised graphs of the entry's ``int8`` section instead (same inputs and outputs; ExportError when the
    member has none). Sessions open on first use.
    """

    def __init__(self, root: Path, entry: dict, window: int, threads: int = 0, precision: str = "float32"):
        files = self.graphs(entry, precision)
        if files is None:
            raise ExportError(
                f"{Path(root) / entry['name']}: no {precision} graphs (run `noisytag export` with --int8)"
            )
        self.name = entry["name"]
        self.precision = precision
        self.n_classes = int(entry["n_classes"])
        self.window = int(window)
        self._paths = {"model": Path(root) / files["model"], "fast": Path(root) / files["fast"]}
        self._sessions: dict = {}
        self._threads = threads

    @staticmethod
    def graphs(entry: dict, precision: str = "float32") -> dict | None:
        """The fields of an export index entry for ``precision``: ``model``, ``fast`` (paths) and
        ``weights_sha256`` (of the weights they were made from); None when not exported at that precision."""
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision '{precision}' (expected {' or '.join(PRECISIONS)})")
        return entry if precision == "float32" else entry.get("int8")

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


def as_members(models, device: str = "cpu") -> list:
    """Wrap ``nn.Module``s as :class:`TorchMember`; members (anything with ``probs``) pass through."""
    if not isinstance(models, list | tuple):
        models = [models]
    return [m if hasattr(m, "probs") else TorchMember(m, device) for m in models]
