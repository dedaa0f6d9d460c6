"""The model registry: ``build(name, n_classes, in_channels, **options)`` is the only way to make a model.

One :class:`~noisytag.registry.Registry`, the same as every other plug-in axis: each architecture's
module registers its factory with ``@register("name")`` when it is imported, and the package
(:mod:`noisytag.models`) imports its architecture modules once, so the registry is the only list of
models. A model's options are call arguments of its factory (their defaults are :func:`options_of`),
not config keys; the config chooses architectures by name in ``pipeline.architectures``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from noisytag.registry import Registry

MODELS = Registry("model", "pipeline.architectures")


def register(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: make ``factory(n_classes, in_channels, **options)`` buildable as ``name``."""
    return MODELS.register(name)


def available() -> list[str]:
    """Names of the registered models, sorted."""
    return sorted(MODELS.names())


def options_of(name: str) -> dict[str, Any]:
    """The options model ``name`` accepts, with their defaults (ValueError naming the known models)."""
    params = inspect.signature(MODELS.get(name).factory).parameters
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
    return MODELS.build(name, int(n_classes), int(in_channels), **opts)
