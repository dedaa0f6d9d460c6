"""One registry per plug-in axis (detectors, augmentations, executors, ...): the names, how to build
each one, and what each one accepts.

Why: a plug-in chosen by if/elif on strings repeats its valid names and option ranges in the code that
dispatches, in the config check and in the CLI, and they drift apart. Here each entry is registered
once, beside its code, with the config keys it reads and a check for each; so ``build(name, ...)`` is the
only way to make one, ``names()`` gives CLI choices and parametrised tests, and ``validate(cfg)`` fails
before any work starts with a one-line :class:`~noisytag.config.ConfigError` naming the key. Models use
the same class (:data:`noisytag.models.registry.MODELS`; their options are call arguments, not config
keys). An entry's ``meta`` carries what other code needs to know of it (an augmentation's gallery title
and forced-on fields), so a new plug-in is its entry and nothing else; ``unregister`` removes a test's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from noisytag.config import ConfigError

Check = Callable[[Any], str | None]  # an option's value → what is wrong with it (None: fine)


def in_range(
    low: float | None = None, high: float | None = None, *, open_low: bool = False, open_high: bool = False
) -> Check:
    """A check that a number lies in [low, high] (an open end excludes its bound; None: unbounded)."""
    if high is None:
        text = f"{'>' if open_low else '≥'} {low:g}"
    elif low is None:
        text = f"{'<' if open_high else '≤'} {high:g}"
    else:
        text = f"in {'(' if open_low else '['}{low:g}, {high:g}{')' if open_high else ']'}"

    def check(value: Any) -> str | None:
        above = low is None or (value > low if open_low else value >= low)  # NaN fails both
        below = high is None or (value < high if open_high else value <= high)
        return None if above and below else f"must be {text}"

    return check


def option_error(key: str, why: str, value: Any) -> ConfigError:
    """The one-line error of a bad option: ``config key 'augment.zoom_max': must be ≥ 1, got 0.9``."""
    return ConfigError(f"config key '{key}': {why}, got {value}")


def lookup(cfg: Any, key: str) -> Any:
    """The value at a dotted key of a config (dataclasses or plain dicts): ``lookup(cfg, "selection.method")``."""
    value = cfg
    for part in key.split("."):
        value = value[part] if isinstance(value, Mapping) else getattr(value, part)
    return value


@dataclass(frozen=True)
class Entry:
    """One plug-in: its factory, its options (config key → check), a whole-config check, other facts."""

    name: str
    factory: Callable[..., Any]
    options: Mapping[str, Check]
    validate: Callable[[Any], None] | None  # raises ConfigError (e.g. checks that depend on two keys)
    meta: Mapping[str, Any]


class Registry:
    """The plug-ins of one axis, in registration order.

    ``config_key`` says how a config chooses among them: a dotted config key holding the name
    (``"selection.method"``); a command-line option (``"--executor"``, starts with ``--``): the config does
    not choose, so ``validate(cfg)`` checks only a ``name`` it is given; or, with ``chain=True``, the
    config section the entries read (``"augment"``): every entry is used, in registration order.
    """

    def __init__(self, axis: str, config_key: str, *, chain: bool = False):
        self.axis, self.config_key, self.chain = axis, config_key, chain
        self._entries: dict[str, Entry] = {}

    def register(
        self,
        name: str,
        *,
        options: Mapping[str, Check] | None = None,
        validate: Callable[[Any], None] | None = None,
        **meta: Any,
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: make the class or factory buildable as ``name``, reading the ``options`` keys."""

        def decorate(factory: Callable[..., Any]) -> Callable[..., Any]:
            old = self._entries.get(name)
            if old is not None and old.factory is not factory:
                raise ValueError(f"{self.axis} '{name}' is already registered")
            self._entries[name] = Entry(name, factory, dict(options or {}), validate, meta)
            return factory

        return decorate

    def unregister(self, name: str) -> None:
        """Remove the entry ``name`` if there is one (a test's temporary plug-in)."""
        self._entries.pop(name, None)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def get(self, name: str) -> Entry:
        if name not in self._entries:
            where = self.config_key if self.config_key.startswith("--") else f"config key '{self.config_key}'"
            known = ", ".join(self._entries) or "none"
            raise ConfigError(f"{where}: unknown {self.axis} {name!r} (known: {known})")
        return self._entries[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """``factory(*args, **kwargs)`` of the entry ``name`` (ConfigError naming the key if unknown)."""
        return self.get(name).factory(*args, **kwargs)

    def chosen(self, cfg: Any) -> tuple[str, ...]:
        """The names ``cfg`` uses: every entry of a chain, the one at the config key, none for an option."""
        if self.chain:
            return self.names()
        return () if self.config_key.startswith("--") else (lookup(cfg, self.config_key),)

    def validate(self, cfg: Any, name: str | None = None) -> None:
        """Check the chosen name(s) (or ``name``) and each one's options; ConfigError naming the key."""
        for entry in [self.get(n) for n in ((name,) if name is not None else self.chosen(cfg))]:
            for key, check in entry.options.items():
                value = lookup(cfg, key)
                if (why := check(value)) is not None:
                    raise option_error(key, why, value)
            if entry.validate is not None:
                entry.validate(cfg)
