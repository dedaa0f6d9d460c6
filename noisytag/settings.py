"""Inference settings, one owner: the run's ``infer`` config, then only the flags the user gave.

Why: ``tag``, ``serve`` and ``predict`` each took ``--mode``/``--backend`` with their own defaults, so a run
whose config says ``infer.backend: onnx`` predicted with onnxruntime and tagged with torch. Every entry now
resolves its settings here, keeps where each value came from (``noisytag info`` shows it), and checks the
allowed values in one place (:func:`check_mode`, :func:`check_backend`; the plan's validation calls the
first, the entries that know the backend registry pass its names).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from noisytag.config import ConfigError, InferConfig

MODES = ("exact", "fast")  # exact: one forward per window (SPEC §7); fast: conv body once per clip
FIELDS = tuple(f.name for f in dataclasses.fields(InferConfig))
FLAG = "flag"
CONFIG = "config"


def _where(key: str, source: str) -> str:
    """How an error names a value: the flag the user typed, else the config key."""
    return f"--{key.replace('_', '-')}" if source == FLAG else f"config key 'infer.{key}'"


def check_mode(mode: str, source: str = CONFIG) -> None:
    """ConfigError unless ``mode`` is an inference mode (``source``: where the value came from)."""
    if mode not in MODES:
        raise ConfigError(f"{_where('mode', source)}: 'exact' or 'fast', got {mode!r}")


def check_backend(backend: str, known: Sequence[str], source: str = CONFIG) -> None:
    """ConfigError unless ``backend`` is one of the ``known`` (registered) backends."""
    if backend not in known:
        where = _where("backend", source)
        raise ConfigError(f"{where}: unknown inference backend {backend!r} (known: {', '.join(known)})")


@dataclass(frozen=True)
class ResolvedInfer:
    """The inference settings an entry runs with (``cfg``) and where each field came from
    (``sources``: field → "flag" or "config")."""

    cfg: InferConfig
    sources: dict[str, str]

    def rows(self) -> list[tuple[str, Any, str]]:
        """``(config key, value, source)`` per field, in the config's order: what ``noisytag info`` shows."""
        return [(f"infer.{name}", getattr(self.cfg, name), self.sources[name]) for name in FIELDS]


def resolve_infer(
    cfg: InferConfig, given: Mapping[str, Any] | None = None, backends: Sequence[str] = ()
) -> ResolvedInfer:
    """The run's ``cfg`` with the fields in ``given`` (only those the user set by flag; None values are
    ignored) replacing its own; mode checked, and the backend too when ``backends`` names the known ones."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    unknown = sorted(set(given) - set(FIELDS))
    if unknown:
        raise ValueError(f"not inference settings: {', '.join(unknown)} (known: {', '.join(FIELDS)})")
    if "stages" in given:
        given["stages"] = tuple(int(s) for s in given["stages"])
    sources = {name: FLAG if name in given else CONFIG for name in FIELDS}
    resolved = dataclasses.replace(cfg, **given)
    check_mode(resolved.mode, sources["mode"])
    if backends:
        check_backend(resolved.backend, backends, sources["backend"])
    return ResolvedInfer(resolved, sources)
