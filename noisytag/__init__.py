"""noisytag: audio tagging from a few clean and many noisy labels.

The public surface is imported lazily, so ``import noisytag`` (and ``noisytag --help``) stays fast.
"""

from __future__ import annotations

__version__ = "0.4.0.dev0"

# public name → "module:attribute"
_LAZY = {
    "load_config": "noisytag.config:load_config",
    "RunConfig": "noisytag.config:RunConfig",
    "build_model": "noisytag.models:build",
    "lwlrap": "noisytag.metrics:lwlrap",
    "Tagger": "noisytag.infer.tag:Tagger",
    "run_pipeline": "noisytag.runs.pipeline:run_pipeline",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name].split(":")
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'noisytag' has no attribute {name!r}")
