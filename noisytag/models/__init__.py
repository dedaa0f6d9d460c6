"""Model registry: ``build(name, n_classes, in_channels, **options)`` is the only way to make a model.

Every model is a :class:`~noisytag.models.heads.TaggingNet` (convolutional body + the shared head),
so parameter counts, fast windowed inference and ONNX export work alike for all of them. A new
architecture is one file with a function decorated by ``@register("name")`` that takes
``(n_classes, in_channels, **options)`` and returns a TaggingNet; add its module to ``_BUILTIN``.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

_REGISTRY: dict[str, Callable[..., Any]] = {}
_BUILTIN = ("noisytag.models.cnn1", "noisytag.models.mobile", "noisytag.models.vgg")


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make ``factory(n_classes, in_channels, **options)`` buildable as ``name``."""

    def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
        if name in _REGISTRY and _REGISTRY[name] is not factory:
            raise ValueError(f"model '{name}' is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorate


def _load_builtins() -> None:
    for module in _BUILTIN:
        importlib.import_module(module)


def available() -> list[str]:
    """Names of the registered models, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def options_of(name: str) -> dict[str, Any]:
    """The options model ``name`` accepts, with their defaults."""
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model '{name}' (available: {', '.join(sorted(_REGISTRY))})")
    params = inspect.signature(_REGISTRY[name]).parameters
    return {k: p.default for k, p in params.items() if k not in ("n_classes", "in_channels")}


def build(
    name: str,
    n_classes: int,
    in_channels: int = 1,
    options: dict[str, Any] | None = None,
    **kwargs: Any,
):
    """Build a freshly initialised model.

    ``options`` (a dict, as stored in ``model.spec``) and keyword options are merged, so both
    ``build("cnn1", 80, width=0.25)`` and ``build(**model.spec)`` work. Unknown names or options
    raise ``ValueError`` naming them.
    """
    opts = {**(options or {}), **kwargs}
    known = options_of(name)
    unknown = sorted(set(opts) - set(known))
    if unknown:
        raise ValueError(
            f"model '{name}': unknown option(s) {', '.join(unknown)} (known: {', '.join(known) or 'none'})"
        )
    if int(n_classes) < 1:
        raise ValueError(f"model '{name}': n_classes must be ≥ 1, got {n_classes}")
    if int(in_channels) < 1:
        raise ValueError(f"model '{name}': in_channels must be ≥ 1, got {in_channels}")
    if "width" in opts and not float(opts["width"]) > 0:
        raise ValueError(f"model '{name}': width must be > 0, got {opts['width']}")
    return _REGISTRY[name](int(n_classes), int(in_channels), **opts)


__all__ = ["available", "build", "options_of", "register"]
