"""The command-line flags that shadow a config key, as one table, and the one way they apply.

A flag such as ``train --devices 2`` means exactly ``--set train.devices=2``: :func:`flag_overrides`
turns the flags a user gave (not None) into those ``--set`` overrides, which go through the same
config loading and validation as ``--set`` (:func:`noisytag.config.with_overrides`). A flag is one
row of :data:`FLAGS`; a flag the user left out leaves the config's value alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from noisytag.config import ConfigError, RunConfig, with_overrides


def _text(value: Any) -> str:
    """A string value, quoted so YAML reads it back as that string (a path, ``auto``, ``onnx``)."""
    return json.dumps(str(value))


def _number(value: Any) -> str:
    return str(value)


def stage_numbers(value: Any) -> tuple[int, ...]:
    """``"2,3,4"`` (or a sequence of numbers) → ``(2, 3, 4)``: the one reading of a ``--stages`` value."""
    items = value.replace(" ", "").split(",") if isinstance(value, str) else list(value)
    try:
        return tuple(int(s) for s in items if s != "")
    except ValueError:
        raise ConfigError(
            f"--stages: expected comma-separated stage numbers like 2,3,4, got '{value}'"
        ) from None


def _stage_list(value: Any) -> str:
    """``"2,3,4"`` (or a sequence of numbers) → ``[2, 3, 4]``."""
    return json.dumps(list(stage_numbers(value)))


@dataclass(frozen=True)
class Flag:
    """One flag of one or more commands that sets a config key."""

    commands: tuple[str, ...]  # the commands that have the flag
    flag: str  # as typed, e.g. "--num-nodes"; the command's parameter is its snake_case name
    key: str  # the config key it sets, e.g. "train.num_nodes"
    fmt: Callable[[Any], str] = _number  # the flag's value → the value text of --set KEY=VALUE

    @property
    def param(self) -> str:
        return self.flag.removeprefix("--").replace("-", "_")

    def override(self, value: Any) -> str:
        return f"{self.key}={self.fmt(value)}"


INFER_COMMANDS = ("predict", "tag", "serve", "info")
FLAGS: tuple[Flag, ...] = (
    Flag(("train",), "--devices", "train.devices", _text),
    Flag(("train",), "--num-nodes", "train.num_nodes"),
    Flag(("features",), "--cache-dir", "data.cache_dir", _text),
    Flag(("features",), "--workers", "data.workers"),
    Flag(INFER_COMMANDS, "--mode", "infer.mode", _text),
    Flag(INFER_COMMANDS, "--backend", "infer.backend", _text),
    Flag(INFER_COMMANDS, "--batch-size", "infer.batch_size"),
    Flag(INFER_COMMANDS, "--stages", "infer.stages", _stage_list),
)


def flags_of(command: str) -> tuple[Flag, ...]:
    return tuple(f for f in FLAGS if command in f.commands)


def flag_overrides(command: str, **given: Any) -> list[str]:
    """``--set``-style overrides (``["train.devices=\\"2\\""]``) for the flags of ``command`` that the
    user gave: ``given`` maps each flag's parameter name to its value, None when left out."""
    flags = {f.param: f for f in flags_of(command)}
    unknown = sorted(set(given) - set(flags))
    if unknown:
        raise TypeError(f"{command}: no flag table row for {', '.join(unknown)}")
    return [flags[name].override(value) for name, value in given.items() if value is not None]


def apply_flags(cfg: RunConfig, command: str, **given: Any) -> RunConfig:
    """``cfg`` with the flags of ``command`` the user gave (for a config read from a run directory)."""
    return with_overrides(cfg, flag_overrides(command, **given))


def with_flags(sets: Sequence[str] | None, command: str, **given: Any) -> list[str]:
    """The ``--set`` overrides followed by the given flags' (a flag wins over a ``--set`` of its key)."""
    return [*(sets or []), *flag_overrides(command, **given)]


def given_fields(command: str, section: str, **given: Any) -> dict[str, Any]:
    """The fields of config section ``section`` that the user set by flag, as the config reads them
    (``tag --stages 2,3`` → ``{"stages": [2, 3]}``): what :func:`noisytag.settings.resolve_infer`
    lays over a run's saved config, through the same table and value formats as :func:`flag_overrides`."""
    import yaml

    fields = {}
    for text in flag_overrides(command, **given):
        key, value = text.split("=", 1)
        head, field = key.split(".", 1)
        if head == section:
            fields[field] = yaml.safe_load(value)
    return fields
