"""Command-line interface: each command parses options, loads the config and calls one library function.

The commands live in ``data``, ``fetching``, ``training``, ``experiments``, ``inference``, ``serving``,
``review`` and ``reports``; this module holds the app and the helpers they share.

Heavy libraries (torch, lightning, librosa) are imported inside the commands, so ``--help`` is instant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from noisytag import __version__

app = typer.Typer(
    name="noisytag",
    help="Audio tagging from a few clean and many noisy labels (FSDKaggle2019 8th-place system, rebuilt).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config file (see configs/).")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key, e.g. --set train.epochs=5 (repeatable)."),
]


def load_planned(config: Path | None, overrides: list[str] | None):
    """The run config and its validated run plan, built once for the command to pass down, or exit
    (code 2) with the one-line reason naming the key. ``overrides``: ``--set``s, then the flags the
    user gave (:func:`noisytag.cli.flags.with_flags`)."""
    from noisytag.config import ConfigError, load_config
    from noisytag.runs.validate import checked_plan

    try:
        cfg = load_config(config, overrides or [])
        return cfg, checked_plan(cfg)  # every range and plug-in option, before any work starts
    except ConfigError as err:
        fail(str(err))


def load_cfg(config: Path | None, overrides: list[str] | None):
    """Load the run config and validate it (:func:`load_planned`, for commands that need no plan)."""
    return load_planned(config, overrides)[0]


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _version(value: bool) -> None:
    if value:
        console.print(f"noisytag {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Audio tagging from a few clean and many noisy labels."""
    from rich.logging import RichHandler

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=err_console, show_path=False, show_time=False)],
    )


def _register_commands() -> None:
    """Each module adds its commands to ``app``; imported in the order of the --help panels."""
    import importlib

    for module in (
        "data",
        "fetching",
        "training",
        "experiments",
        "inference",
        "serving",
        "review",
        "reports",
    ):
        importlib.import_module(f"noisytag.cli.{module}")


_register_commands()
