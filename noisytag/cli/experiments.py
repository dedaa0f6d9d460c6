"""Experiment commands: ablations of the pipeline over config variants and seeds."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisytag.cli import ConfigOpt, SetOpt, app, console, fail, load_cfg

VariantOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--variant",
        help=(
            "NAME=KEY=VALUE[,KEY=VALUE...] (repeatable): a variant of the base config with --set-style "
            "overrides, e.g. lr3=train.lr=0.003,augment.specmix_p=0. List values keep their commas "
            "(pipeline.stage_epochs=[10,10]): a comma splits only before the next dotted KEY=, and ';' "
            "always splits. A bare NAME (e.g. --variant seed) is the base config."
        ),
    ),
]


@app.command(rich_help_panel="Experiments")
def ablate(
    data_dir: Annotated[
        Path, typer.Argument(help="Data set: a folder in the competition layout, or a manifest CSV.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Ablation directory (created or continued).")],
    variant: VariantOpt = None,
    seeds: Annotated[
        int | None,
        typer.Option(help="Runs per variant; seed i adds i to train.seed. Default: OUT's, else 1.", min=1),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    dry_run: Annotated[
        bool, typer.Option(help="List the runs and what they would reuse; run nothing.")
    ] = False,
    progress: Annotated[bool, typer.Option(help="Progress bars inside each run.")] = False,
    jobs: Annotated[
        int,
        typer.Option(
            help="Runs at once, each in its own process with an equal share of the cores "
            "(many-core or GPU machines; the runs share the GPU).",
            min=1,
        ),
    ] = 1,
) -> None:
    """Run the pipeline once per (variant, seed); tabulate mean and spread per variant.

    Writes OUT/ablation.csv, .md and .html (ensemble and per-stage test lwlrap,
    curated CV lwlrap, selection size and precision, wall time: mean, sample std,
    min, max over seeds) and one run directory per (variant, seed) in OUT/runs/.

    Resumable: the same command again skips finished runs and continues
    interrupted ones; new variants on an existing OUT are added. Stages that
    another run of the ablation trained with identical settings are reused, not
    retrained. Without --variant the variants saved in OUT/ablation.yaml run;
    without --config, its base config.
    """
    import yaml

    from noisytag.ablate import describe_plan, parse_variant, run_ablation
    from noisytag.config import ConfigError, config_from_dict, with_overrides

    saved_path = out / "ablation.yaml"
    saved = yaml.safe_load(saved_path.read_text()) if saved_path.is_file() else {}
    if config is None and saved.get("base") is not None:
        try:
            cfg = with_overrides(config_from_dict(saved["base"]), set_ or [])
        except ConfigError as err:
            fail(str(err))
    else:
        cfg = load_cfg(config, set_)
    variants: dict[str, list[str]] = {}
    try:
        for text in variant or []:
            name, overrides = parse_variant(text)
            if name in variants:
                fail(f"variant '{name}' is given twice")
            variants[name] = overrides
    except ValueError as err:
        fail(str(err))
    if not variants:
        variants = {k: list(v) for k, v in (saved.get("variants") or {}).items()}
        if not variants:
            fail("no --variant given and no ablation to continue in " + str(out))
    seeds = seeds or int(saved.get("seeds") or 1)
    try:
        if dry_run:
            plan = describe_plan(out, cfg, variants, seeds)
            for row in plan.itertuples():
                line = f"{row.variant}/seed{row.seed}: {row.state}"
                console.print(
                    line + (f"; reuse {row.reuse}" if row.reuse else ""), markup=False, highlight=False
                )
            return
        table = run_ablation(
            data_dir,
            out,
            cfg,
            variants,
            seeds,
            progress=progress and jobs == 1,
            jobs=jobs,
            echo=lambda line: console.print(line, markup=False, highlight=False),
        )
    except (ConfigError, ValueError) as err:
        fail(str(err))
    _print_table(table)
    console.print(f"ablation table: [bold]{out / 'ablation.md'}[/] (also .csv, .html)")
    failed = int(table["n_failed"].sum()) if len(table) else 0
    if failed:
        fail(
            f"{failed} run(s) failed (see {out / 'ablation_runs.csv'}); run the command again to retry them",
            1,
        )


def _print_table(table) -> None:
    """The headline columns (the full table is in ablation.md / .html)."""
    from rich.table import Table
    from rich.text import Text

    from noisytag.ablate.tables import display_table

    shown = display_table(table)
    curated = [c for c in shown.columns if c.startswith("CV curated")]
    keep = ["variant", "runs ok", "ensemble test", *curated[-1:]]
    keep += [c for c in shown.columns if c.startswith("precision") or c == "wall min"]
    out = Table(title="Ablation: mean ± std over seeds", title_justify="left")
    for col in [c for c in keep if c in shown.columns]:
        out.add_column(col, justify="left" if col == "variant" else "right")
    for _, row in shown.iterrows():
        out.add_row(*[Text(str(row[c])) for c in keep if c in shown.columns])
    console.print(out)
