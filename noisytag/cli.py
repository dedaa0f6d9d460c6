"""Command-line interface: each command parses options, loads the config and calls one library function.

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


def load_cfg(config: Path | None, overrides: list[str] | None):
    """Load the run config or exit with the one-line reason."""
    from noisytag.config import ConfigError, load_config

    try:
        return load_config(config, overrides or [])
    except ConfigError as err:
        fail(str(err))


def fail(message: str, code: int = 2) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
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


# Commands are added below, one function each; insert new ones above the end marker.


@app.command()
def pipeline(
    data_dir: Annotated[Path, typer.Argument(help="Data set in the competition layout.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (created or resumed).")] = Path(
        "runs/run"
    ),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Continue a run directory made with another config.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    report: Annotated[bool, typer.Option(help="Write report.html at the end.")] = True,
) -> None:
    """Run the four-stage warm-up pipeline (stages 1-4 x folds x architectures).

    Resumable: run the same command again after an interruption and it continues from the last finished
    epoch; finished folds and stages are not redone. Prints the article's stage table at the end.
    """
    from noisytag.context import RunConfigMismatch
    from noisytag.data import DataError
    from noisytag.pipeline import run_pipeline
    from noisytag.summary import print_results

    cfg = load_cfg(config, set_)
    try:
        results = run_pipeline(data_dir, out, cfg, force=force, progress=progress, report=report)
    except (DataError, RunConfigMismatch, ValueError, RuntimeError) as err:
        fail(str(err))
    print_results(console, results, out)


@app.command()
def train(
    data_dir: Annotated[Path, typer.Argument(help="Data set in the competition layout.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (created or resumed).")] = Path(
        "runs/run"
    ),
    stage: Annotated[int, typer.Option(help="Pipeline stage to train (1-4).", min=1, max=4)] = 1,
    fold: Annotated[
        list[int] | None, typer.Option(help="Fold(s) to train (repeatable); default: all.")
    ] = None,
    arch: Annotated[str | None, typer.Option(help="Architecture; default: model.name.")] = None,
    devices: Annotated[str | None, typer.Option(help="Devices per node (e.g. 2, or auto).")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Number of nodes (DDP).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Continue a run directory made with another config.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Train one stage for all or chosen folds, so folds can be spread over machines or GPUs.

    Stages 2-4 start from the previous stage's fold models in the same run directory; stages 3 and 4
    select noisy clips from the earlier stages' out-of-fold scores. With --devices/--num-nodes the same
    command runs under Lightning's DDP (or launch it with torchrun / SLURM).
    """
    from noisytag.config import with_overrides
    from noisytag.context import RunConfigMismatch, prepare
    from noisytag.data import DataError
    from noisytag.pipeline import run_stage

    cfg = load_cfg(config, set_)
    extra = []
    if devices is not None:
        extra.append(f"train.devices={devices}")
    if num_nodes is not None:
        extra.append(f"train.num_nodes={num_nodes}")
    if extra:
        cfg = with_overrides(cfg, extra)
    arch = arch or cfg.model.name
    try:
        ctx = prepare(data_dir, out, cfg, force=force, progress=progress)
        run_stage(ctx, arch, stage, fold)
    except (DataError, RunConfigMismatch, ValueError, RuntimeError) as err:
        fail(str(err))
    console.print(f"[green]stage {stage} of {arch} trained[/] -> {out}")


@app.command()
def demo(
    data: Annotated[Path, typer.Option(help="Where the demo data set is (generated if missing).")] = Path(
        "data/demo"
    ),
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory.")] = Path("runs/demo"),
    config: ConfigOpt = Path("configs/demo.yaml"),
    set_: SetOpt = None,
    scale: Annotated[str, typer.Option(help="Demo data-set scale (demo, small, medium).")] = "demo",
    force: Annotated[bool, typer.Option(help="Continue a run directory made with another config.")] = False,
) -> None:
    """The main job end to end: make the synthetic demo data set, run the pipeline, score the test set."""
    import time

    from noisytag.context import RunConfigMismatch
    from noisytag.pipeline import run_pipeline
    from noisytag.summary import print_results
    from noisytag.synth import generate

    started = time.perf_counter()
    cfg = load_cfg(config, set_)
    if not (data / "sample_submission.csv").is_file():
        console.print(f"generating the demo data set in {data} ...")
        summary = generate(data, scale=scale, seed=0)
        console.print(
            f"noisy-label rate of the noisy set: {summary.get('noisy_label_rate', float('nan')):.1%}"
        )
    try:
        results = run_pipeline(data, out, cfg, force=force, progress=True)
    except (RunConfigMismatch, ValueError, RuntimeError) as err:
        fail(str(err))
    print_results(console, results, out)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")


@app.command()
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

    Sections: the article's stage table beside SPEC §6, training curves, per-class lwlrap of the
    ensemble, stage 3/4 selections, the least-trusted noisy clips (also RUN_DIR/least_trusted.csv),
    augmentation gallery with example log-mels, config, versions and timings.
    """
    from noisytag.report import write_report

    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")
    if data is not None and not data.is_dir():
        fail(f"data set '{data}' does not exist")
    path = write_report(run_dir, out=out, data_dir=data)
    console.print(f"report written to {path}")


@app.command("augment-gallery")
def augment_gallery(
    data_dir: Annotated[Path, typer.Argument(help="Data set in the competition layout.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG file to write.")] = Path("gallery.png"),
    n_clips: Annotated[int, typer.Option("--n-clips", min=1, max=16, help="Clips (rows) to show.")] = 4,
    seed: Annotated[int, typer.Option(help="Seed of the clip choice, windows and augmentations.")] = 0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Draw a grid of a few clips' log-mel windows and each batch augmentation applied to them.

    Columns: original, mixup, SpecMix, zoom, lighting, masking (each forced on) and the full chain
    as configured (augment.* keys); the training target is written under each panel as a label
    mixture, e.g. "0.62 Bell + 0.38 Siren".
    """
    cfg = load_cfg(config, set_)
    from noisytag.gallery import save_gallery

    try:
        path = save_gallery(data_dir, output, n_clips=n_clips, seed=seed, cfg=cfg)
    except (OSError, ValueError) as err:  # DataError is a ValueError
        fail(str(err))
    console.print(f"[green]gallery written[/] -> {path}")


# --- end of commands ---
