"""Training commands: one stage for chosen folds, the whole warm-up pipeline, the end-to-end demo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from noisytag.cli import ConfigOpt, SetOpt, app, console, fail, load_cfg
from noisytag.config import with_overrides
from noisytag.data import DataError
from noisytag.rundir import RunConfigMismatch

# Heavy (torch, lightning): imported inside the commands so `noisytag --help` stays instant.
# noisytag.context, noisytag.pipeline, noisytag.report, noisytag.summary, noisytag.synth


def run_config(config: Path | None, out: Path) -> Path | None:
    """Without --config, an existing run directory continues with the config it was made with."""
    if config is None and (out / "config.yaml").is_file():
        return out / "config.yaml"
    return config


@app.command(rich_help_panel="Training")
def train(
    data_dir: Annotated[Path, typer.Argument(help="Data set: a folder in the competition layout, or a manifest CSV.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (created or resumed).")] = Path(
        "runs/run"
    ),
    stage: Annotated[int, typer.Option(help="Pipeline stage to train (1-4).", min=1, max=4)] = 1,
    fold: Annotated[
        list[int] | None, typer.Option(help="Fold(s) to train (repeatable); default: all.")
    ] = None,
    arch: Annotated[
        list[str] | None, typer.Option(help="Architecture(s) (repeatable); default: pipeline.architectures.")
    ] = None,
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
    cfg = load_cfg(run_config(config, out), set_)
    extra = []
    if devices is not None:
        extra.append(f"train.devices={devices}")
    if num_nodes is not None:
        extra.append(f"train.num_nodes={num_nodes}")
    if extra:
        cfg = with_overrides(cfg, extra)
    from noisytag.context import open_run
    from noisytag.pipeline import check_config, run_stage

    archs = arch or list(cfg.pipeline.architectures)
    try:
        check_config(cfg)
        ctx = open_run(data_dir, out, cfg, force=force, progress=progress)
        for name in archs:
            run_stage(ctx, name, stage, fold)
    except (DataError, RunConfigMismatch, ValueError, RuntimeError) as err:
        fail(str(err))
    console.print(f"[green]stage {stage} of {', '.join(archs)} trained[/] -> {out}")


@app.command(rich_help_panel="Training")
def pipeline(
    data_dir: Annotated[Path, typer.Argument(help="Data set: a folder in the competition layout, or a manifest CSV.")],
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
    epoch; finished folds and stages are not redone. Without --config an existing run directory keeps
    the config it was made with. Prints the article's stage table at the end.
    """
    from noisytag.pipeline import run_pipeline
    from noisytag.report import write_report
    from noisytag.summary import print_results

    cfg = load_cfg(run_config(config, out), set_)
    try:
        results = run_pipeline(data_dir, out, cfg, force=force, progress=progress)
    except (DataError, RunConfigMismatch, ValueError, RuntimeError) as err:
        fail(str(err))
    if report:
        results["report"] = write_report(out, data_dir=data_dir)
    print_results(console, results, out)


@app.command(rich_help_panel="Training")
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
    from noisytag.pipeline import run_pipeline
    from noisytag.report import write_report
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
    except (DataError, RunConfigMismatch, ValueError, RuntimeError) as err:
        fail(str(err))
    results["report"] = write_report(out, data_dir=data)
    print_results(console, results, out)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
