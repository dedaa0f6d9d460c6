"""Training commands: one stage for chosen folds, the whole warm-up pipeline, the end-to-end demo."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from noisytag.cli import ConfigOpt, SetOpt, app, console, fail, load_planned
from noisytag.cli.flags import with_flags
from noisytag.data.dataset import SUBMISSION, DataError
from noisytag.rundir import RunConfigMismatch

# Heavy (torch, lightning, ray): imported inside the commands so `noisytag --help` stays instant.
# noisytag.runs.context, noisytag.runs.executors, noisytag.runs.pipeline, noisytag.report.page, noisytag.report.summary, noisytag.data.synth


def run_config(config: Path | None, out: Path) -> Path | None:
    """Without --config, an existing run directory continues with the config it was made with."""
    if config is None and (out / "config.yaml").is_file():
        return out / "config.yaml"
    return config


@app.command(rich_help_panel="Training")
def train(
    data_dir: Annotated[
        Path, typer.Argument(help="Data set: a folder in the competition layout, or a manifest CSV.")
    ],
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
    sets = with_flags(set_, "train", devices=devices, num_nodes=num_nodes)
    cfg, plan = load_planned(run_config(config, out), sets)
    from noisytag.runs.context import open_run
    from noisytag.runs.pipeline import run_stage

    archs = arch or list(cfg.pipeline.architectures)
    try:
        ctx = open_run(data_dir, out, cfg, force=force, progress=progress, plan=plan)
        for name in archs:
            run_stage(ctx, name, stage, fold)
    except (DataError, RunConfigMismatch, ValueError, RuntimeError) as err:
        fail(str(err))
    console.print(f"[green]stage {stage} of {', '.join(archs)} trained[/] -> {out}")


def print_plan(plan, cfg=None) -> None:
    """A run plan as the article's stage table (SPEC §6), one row per stage; with ``cfg``, also the
    inference settings that predict/tag/serve will resolve from it (each from the config)."""
    from rich.table import Table

    rows = plan.table()
    table = Table(title=f"run plan: {plan.kind}, {plan.folds} folds, {', '.join(plan.architectures)}")
    for column in rows[0]:
        table.add_column(column)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)
    console.print("fold f of a stage: the clips of the other folds, from fold f of its start")
    console.print(f"ensemble: stages {', '.join(map(str, plan.ensemble))} x folds x architectures")
    if cfg is not None:
        from noisytag.report.tables import infer_table
        from noisytag.settings import resolve_infer

        console.print(infer_table(resolve_infer(cfg.infer)))


@app.command(name="plan", rich_help_panel="Training")
def plan_command(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run: Annotated[
        Path | None, typer.Option(help="Print the plan saved in this run directory instead.")
    ] = None,
) -> None:
    """Print what a config means: per stage, what it trains on, where it starts, epochs, learning rate,
    what it selects from, and which stages form the ensemble. Nothing is trained."""
    if run is not None:
        config = run_config(config, run)
    print_plan(*reversed(load_planned(config, set_)))


@app.command(rich_help_panel="Training")
def pipeline(
    data_dir: Annotated[
        Path, typer.Argument(help="Data set: a folder in the competition layout, or a manifest CSV.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Run directory (created or resumed).")] = Path(
        "runs/run"
    ),
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Continue a run directory made with another config.")] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    report: Annotated[bool, typer.Option(help="Write report.html at the end.")] = True,
    dry_run: Annotated[
        bool, typer.Option(help="Print the run plan and stop: nothing is read or trained.")
    ] = False,
    executor: Annotated[
        str,
        typer.Option(
            help="Where folds train (a name of noisytag.runs.executors.EXECUTORS). local: one after "
            "another in this process (or DDP job); ray: the folds of a stage at once, each a Ray task "
            "(pip install 'noisytag\\[ray]').",
            rich_help_panel="Scale-out (--executor ray)",
        ),
    ] = "local",
    ray_address: Annotated[
        str | None,
        typer.Option(
            help="Ray cluster to join: auto (the one `ray start` made here) or HOST:PORT; default: a "
            "local Ray instance for this run. The run directory must be on storage every node sees.",
            rich_help_panel="Scale-out (--executor ray)",
        ),
    ] = None,
    gpus_per_task: Annotated[
        float | None,
        typer.Option(
            help="GPUs per fold task, at most 1 (0.5: two folds per GPU); default 1 when Ray sees GPUs, else 0.",
            rich_help_panel="Scale-out (--executor ray)",
        ),
    ] = None,
    cpus_per_task: Annotated[
        int | None,
        typer.Option(
            help="CPUs (and torch threads) per fold task; default: CPUs per GPU, or the CPUs shared "
            "out over the tasks that run at once.",
            rich_help_panel="Scale-out (--executor ray)",
        ),
    ] = None,
    max_tasks: Annotated[
        int | None,
        typer.Option(
            help="Fold tasks running at once; default: as many as the resources allow.",
            rich_help_panel="Scale-out (--executor ray)",
        ),
    ] = None,
    keep_stages_from: Annotated[
        Path | None,
        typer.Option(
            help="A finished run of the same audio (e.g. the one a review corrected): keep its stages 1-2 "
            "(fold models, out-of-fold rows re-indexed by clip; every clip must keep its fold) and train "
            "stages 3-4 from them. Recorded in kept_stages.json.",
        ),
    ] = None,
) -> None:
    """Run the four-stage warm-up pipeline (stages 1-4 x folds x architectures).

    Resumable: run the same command again after an interruption and it continues from the last finished
    epoch; finished folds and stages are not redone. Without --config an existing run directory keeps
    the config it was made with. Prints the article's stage table at the end.

    With --executor ray the folds of each stage (of every architecture) train at once as Ray tasks, on
    this machine's GPUs or on a cluster; a task whose worker dies is retried from its fold checkpoint.
    """
    from rich.markup import escape

    from noisytag.report.page import write_report
    from noisytag.report.summary import print_results
    from noisytag.runs import executors
    from noisytag.runs.context import is_global_zero
    from noisytag.runs.pipeline import run_pipeline

    try:  # the choices are the registry's names: an unknown one fails naming --executor and them
        runner = executors.build(
            executor,
            address=ray_address,
            gpus_per_task=gpus_per_task,
            cpus_per_task=cpus_per_task,
            max_tasks=max_tasks,
        )
    except ValueError as err:
        fail(escape(str(err)))
    cfg, plan = load_planned(run_config(config, out), set_)
    if dry_run:
        print_plan(plan, cfg)
        return
    try:
        if keep_stages_from is not None and is_global_zero():  # other ranks wait for its .prepared marker
            from noisytag.runs.warmstart import seed_from_run

            for line in seed_from_run(keep_stages_from, out, data_dir, cfg):
                console.print(f"kept {escape(line)}")
        with runner:  # every executor is a context manager (local: nothing to start)
            results = run_pipeline(
                data_dir, out, cfg, force=force, progress=progress, executor=runner, plan=plan
            )
    except (DataError, RunConfigMismatch, executors.ExecutorError, ValueError, RuntimeError) as err:
        fail(escape(str(err)))  # messages quote paths and extras ("noisytag[ray]") that are not markup
    if not is_global_zero():
        return  # under DDP the other ranks leave the report and the printout to rank zero
    if report:
        results["report"] = write_report(out, data_dir=data_dir)
    print_results(console, results, out)


@app.command(rich_help_panel="Training")
def distill(
    run: Annotated[Path, typer.Argument(help="The finished run whose ensemble teaches (the teacher).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Student run directory (created or resumed).")],
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: Annotated[
        bool, typer.Option(help="Continue a student directory made with another config.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
    report: Annotated[bool, typer.Option(help="Write report.html at the end.")] = True,
) -> None:
    """Distil a run's ensemble into one compact student trained on every clip, selected or not.

    The teacher scores every window of every clip once (a clip of fold f only by fold f's models,
    which never trained on it); the student (distill.arch, default mobilenet) learns those window
    probabilities, mixed with the given labels of curated clips (distill.label_weight). Audio without
    labels can teach too: --set distill.unlabelled=FOLDER. The student directory is a normal run:
    predict, tag, serve, export and report work on it. Resumable after a kill.
    """
    from rich.markup import escape

    from noisytag.config import ConfigError
    from noisytag.report.page import write_report
    from noisytag.report.summary import print_results
    from noisytag.runs.distill import load_student_config, run_distill
    from noisytag.runs.validate import checked_plan

    try:
        cfg = load_student_config(run, out, config, set_ or [])
        plan = checked_plan(cfg)  # the whole config, in one line, before the teacher is read
        results = run_distill(run, out, cfg, force=force, progress=progress, plan=plan)
    except (ConfigError, DataError, RunConfigMismatch, ValueError, RuntimeError) as err:
        fail(escape(str(err)))
    if report:
        results["report"] = write_report(out)
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
    test_domain: Annotated[
        str, typer.Option("--test-domain", help="Recording domain of the test clips: mixed or clean.")
    ] = "mixed",
) -> None:
    """The main job end to end: make the synthetic demo data set, run the pipeline, score the test set.

    The data set is (re)generated when it is missing or is a synth data set of another scale or test domain.
    """
    from noisytag.data.synth import generate, synth_mismatch
    from noisytag.report.page import write_report
    from noisytag.report.summary import print_results
    from noisytag.runs.pipeline import run_pipeline

    started = time.perf_counter()
    cfg, plan = load_planned(config, set_)
    stale = synth_mismatch(data, scale=scale, test_domain=test_domain)
    if stale or not (data / SUBMISSION).is_file():
        console.print(f"generating the demo data set in {data}{f' ({stale})' if stale else ''} ...")
        summary = generate(data, scale=scale, seed=0, test_domain=test_domain)
        console.print(
            f"noisy-label rate of the noisy set: {summary.get('noisy_label_rate', float('nan')):.1%}"
        )
    try:
        results = run_pipeline(data, out, cfg, force=force, progress=True, plan=plan)
    except (DataError, RunConfigMismatch, ValueError, RuntimeError) as err:
        fail(str(err))
    results["report"] = write_report(out, data_dir=data)
    print_results(console, results, out)
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")
