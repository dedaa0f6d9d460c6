"""Report command: the run's self-contained HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisytag.cli import ConfigOpt, SetOpt, app, console, err_console, fail, load_cfg  # noqa: F401


@app.command(rich_help_panel="Reports")
def report(
    run_dir: Annotated[Path, typer.Argument(help="Run directory (made by `noisytag pipeline`).")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="HTML file to write; default RUN_DIR/report.html.")
    ] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="Data set of the run (gallery, example log-mels, truth/); default: run.json."),
    ] = None,
) -> None:
    """Write the run's self-contained HTML report (works offline; partial runs too).

    Sections: stage table beside SPEC §6, training curves, per-class lwlrap,
    selections of stages 3-4, least-trusted noisy clips (also least_trusted.csv),
    augmentation gallery and example log-mels, config, versions and timings.
    """
    from noisytag.report.page import write_report

    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")
    if data is not None and not data.is_dir():
        fail(f"data set '{data}' does not exist")
    path = write_report(run_dir, out=out, data_dir=data)
    console.print(f"report written to {path}")
