"""Model weights on disk: ``weights.safetensors`` + a ``model.json`` sidecar (no pickle anywhere).

A fold-model directory holds::

    weights.safetensors   the state dict (tensors only; safetensors cannot run code on load)
    model.json            the fold record (noisytag.models.record.FoldRecord: arch, stage, fold,
                          classes, frontend, normalize, config_hash, n_train, teacher)
                          + "model": model.spec (what noisytag.models.build(**spec) needs: its
                            options include model.freq_channel and model.pool when not default)
                          + "weights_sha256": checksum of the weights file (detects corruption)

Both files are written through :func:`noisytag.fileio.atomic_path` (temporary name, fsync, rename), the
weights first and the sidecar last, so a killed process never leaves a half-written file under the final
name. :func:`load_model` rebuilds the model through the registry, checks that every key and shape matches
(strict) and returns it in eval mode.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from noisytag import models
from noisytag.fileio import atomic_path, write_json

WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"
FORMAT = "noisytag-weights/1"


class WeightsError(ValueError):
    """A model directory is missing, corrupt or does not match its sidecar; the message names the file."""


def _plain(obj: Any) -> Any:
    """JSON-ready copy: tuples → lists, paths → str, numpy scalars → Python numbers."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 1) == 0:
        return obj.item()
    return obj


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_model(directory: str | Path, model, meta: dict) -> None:
    """Write ``model``'s state dict and ``meta`` + ``{"model": model.spec}`` into ``directory``.

    ``model`` must carry ``model.spec`` (the registry's build arguments). ``meta``: the fold record
    (:meth:`noisytag.models.record.FoldRecord.to_json`; inference reads it back through that class).
    Writes are atomic per file (temporary name, fsync, rename); the weights go first, the sidecar last.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    spec = getattr(model, "spec", None)
    if not isinstance(spec, dict) or "name" not in spec:
        raise WeightsError(f"{directory}: model has no registry spec (model.spec); cannot save it")
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    record = dict(_plain(meta))
    record.update(
        format=FORMAT,
        model=_plain(spec),
        weights_sha256=None,  # filled in once the weights are written
        n_parameters=int(sum(p.numel() for p in model.parameters())),
    )
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"format": FORMAT})
        record["weights_sha256"] = _sha256(tmp)
    write_json(directory / META_FILE, record)


def read_meta(directory: str | Path) -> dict:
    """The parsed ``model.json`` of a model directory (raises :class:`WeightsError` naming the file)."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: missing (not a saved model directory)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"{path}: corrupt JSON ({err})") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("model"), dict) or "name" not in meta["model"]:
        raise WeightsError(f"{path}: no 'model' spec with a 'name' (not written by noisytag.models.weights)")
    return meta


def _describe_mismatch(expected: dict, found: dict) -> str:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [
        f"{k} {tuple(found[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sorted(set(expected) & set(found))
        if tuple(found[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    for label, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shapes", shapes)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{label}: {', '.join(items[:3])}{more}")
    return "; ".join(parts)


def load_model(directory: str | Path, device: str = "cpu", verify: bool = True, meta: dict | None = None):
    """Rebuild the model of ``directory`` through ``noisytag.models.build`` and load its weights.

    Returns ``(model, meta)`` with the model in eval mode on ``device``. Every key and shape must
    match the rebuilt model exactly; ``verify`` also checks the weights file's sha256 against the
    sidecar. Any problem raises :class:`WeightsError` naming the file and the reason.
    """
    directory = Path(directory)
    meta = read_meta(directory) if meta is None else meta  # a caller that read model.json passes it
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: missing")
    if verify and meta.get("weights_sha256") and _sha256(path) != meta["weights_sha256"]:
        raise WeightsError(f"{path}: checksum differs from {META_FILE} (corrupt or replaced file)")
    try:
        state = load_file(str(path), device="cpu")
    except Exception as err:  # safetensors raises its own error types for bad headers and truncation
        raise WeightsError(f"{path}: corrupt safetensors file ({err})") from None
    try:
        model = models.build(**meta["model"])
    except Exception as err:
        raise WeightsError(f"{directory / META_FILE}: cannot rebuild model {meta['model']} ({err})") from None
    expected = model.state_dict()
    problem = _describe_mismatch(expected, state)
    if problem:
        raise WeightsError(
            f"{path}: does not match model {meta['model'].get('name')} of {META_FILE}: {problem}"
        )
    model.load_state_dict(state, strict=True)
    return model.to(device).eval(), meta
