"""Data commands: make the demo data set, check a data set, build the feature cache, draw the augmentation gallery."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisytag.cli import ConfigOpt, SetOpt, app, console, err_console, fail, load_cfg  # noqa: F401
from noisytag.cli.flags import with_flags


@app.command(rich_help_panel="Data")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write (new, or an earlier synth data set).")],
    scale: Annotated[str, typer.Option(help="Size: tiny, demo, small or medium.")] = "demo",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
    sample_rate: Annotated[int, typer.Option("--sample-rate", help="Sample rate of the files (Hz).")] = 44100,
    fmt: Annotated[str, typer.Option("--format", help="Audio format: wav (16-bit), flac or ogg.")] = "wav",
    layout: Annotated[
        str,
        typer.Option(help="competition (split folders + CSVs) or manifest (nested folders + manifest.csv)."),
    ] = "competition",
    test_domain: Annotated[
        str,
        typer.Option(
            "--test-domain",
            help="mixed (half the test clips in the noisy clips' recording domain, the default) "
            "or clean (all in the curated domain: the version-1 demo set).",
        ),
    ] = "mixed",
) -> None:
    """Generate the synthetic demo data set, with its truth kept apart.

    Competition layout: OUT/{train_curated,train_noisy,test}/, train_curated.csv, train_noisy.csv,
    sample_submission.csv and OUT/truth/{test,noisy}.csv (true labels; ~35 % of the noisy clips carry a
    wrong label set in train_noisy.csv). Manifest layout: the same clips under OUT/audio/<xx>/, listed in
    OUT/manifest.csv (path, labels, subset, true_labels) with OUT/classes.txt; pass OUT/manifest.csv
    wherever a data set is asked for. Prints clip counts, hours, multi-label share and the actual
    noisy-label rate.
    """
    from rich.table import Table

    from noisytag.data.synth import generate

    try:
        s = generate(
            out,
            scale=scale,
            seed=seed,
            sample_rate=sample_rate,
            fmt=fmt,
            progress=True,
            layout=layout,
            test_domain=test_domain,
        )
    except (ValueError, FileExistsError, OSError) as err:
        fail(str(err))
    table = Table(
        title=f"synthetic data set -> {out}  ({s['scale']}, seed {s['seed']}, test domain {s['test_domain']})"
    )
    for column in ("split", "clips", "hours", "multi-label share"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, n in s["clips"].items():
        share = s["multi_label_share"][split]
        table.add_row(split, str(n), f"{s['hours'][split]:.3f}", f"{share:.1%}")
    console.print(table)
    kinds = ", ".join(f"{k} {v}" for k, v in s["corruptions"].items())
    console.print(
        f"{s['classes']} classes, {s['sample_rate']} Hz {s['format']}; noisy-label rate "
        f"[bold]{s['noisy_label_rate']:.1%}[/] ({kinds}); generated in {s['seconds']:.1f} s"
    )


@app.command(rich_help_panel="Data")
def check(
    data_dir: Annotated[
        Path, typer.Argument(help="Data set: a folder in the competition layout, or a manifest CSV.")
    ],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Report bad rows and count the rest instead of failing.")
    ] = False,
    max_lines: Annotated[int, typer.Option(help="Problem lines to print at most.")] = 50,
    config: ConfigOpt = None,
    set_: SetOpt = None,
) -> None:
    """Validate a data set (CSVs, class list, audio files and their headers) and print its counts.

    Every problem is one line naming the file and CSV line: missing audio file, unknown label, duplicate
    file name, empty label field, malformed CSV, unreadable audio; for a manifest also the same file
    listed twice, a clip in two subsets, an unknown subset or fold. Exit code 1 when the data set is
    invalid (unless --skip-invalid). With --config or --set the run config is checked first: a wrong
    value is one line naming its key (exit code 2), before any file is read.
    """
    from rich.table import Table

    if config is not None or set_:
        load_cfg(config, set_)

    from noisytag.data.dataset import DataError, describe
    from noisytag.data.manifest import load_data

    def show(problems: list[str]) -> None:
        for line in problems[:max_lines]:
            err_console.print(f"- {line}", style="red", highlight=False, markup=False, soft_wrap=True)
        if len(problems) > max_lines:
            err_console.print(f"... and {len(problems) - max_lines} more")

    try:
        dataset = load_data(data_dir, skip_invalid=skip_invalid, probe_audio=True)
    except DataError as err:
        show(err.problems)
        fail(f"{data_dir}: {len(err.problems)} problem(s); fix them or use --skip-invalid", code=1)
    d = describe(dataset)
    table = Table(title=f"{data_dir}: {d['classes']} classes")
    for column in ("split", "clips", "hours", "labels/clip", "multi-label"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split, v in d["splits"].items():
        per_clip = "-" if v["labels_per_clip"] is None else f"{v['labels_per_clip']:.2f}"
        multi = "-" if v["multi_label_share"] is None else f"{v['multi_label_share']:.1%}"
        table.add_row(
            split, str(v["clips"]), f"{v['hours']:.2f}" if v["hours"] is not None else "-", per_clip, multi
        )
    console.print(table)
    counts = Table(title="clips per class")
    for column in ("class", "curated", "noisy"):
        counts.add_column(column, justify="left" if column == "class" else "right")
    for name, v in d["per_class"].items():
        counts.add_row(name, str(v["curated"]), str(v["noisy"]))
    console.print(counts)
    if dataset.problems:
        show(dataset.problems)
        console.print(f"[yellow]skipped {len(dataset.problems)} invalid row(s) or file(s)[/]")
    else:
        console.print("[green]data set is valid[/]")


@app.command(rich_help_panel="Data")
def features(
    data_dir: Annotated[
        Path, typer.Argument(help="Data set: a folder in the competition layout, or a manifest CSV.")
    ],
    cache_dir: Annotated[
        Path | None, typer.Option(help="Cache root; default: data.cache_dir or DATA_DIR/.noisytag-cache.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Extraction processes (0 = all cores); default: data.workers.")
    ] = None,
    split: Annotated[
        list[str] | None,
        typer.Option(help="Split to extract: curated, noisy or test (repeatable); default: all."),
    ] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    progress: Annotated[bool, typer.Option(help="Progress bars.")] = True,
) -> None:
    """Extract the log-mel features of every clip into the feature cache, once.

    Each split folder goes to CACHE/<front-end key>/<folder>/ (float16 frames + index + cache.json); the
    clips of a manifest go to CACHE/<front-end key>/files/, keyed by resolved path (manifests over the same
    files share it).

    Safe to interrupt (even kill -9): run it again and it continues where it stopped. An up-to-date cache returns at once; changing any front-end parameter builds a new cache; unreadable files are listed and skipped.
    """
    from noisytag.audio.cache import CacheError, build_cache, default_cache_dir, split_folder
    from noisytag.data.dataset import DataError
    from noisytag.report.tables import print_cache

    cfg = load_cfg(config, with_flags(set_, "features", cache_dir=cache_dir, workers=workers))
    splits = tuple(split or ("curated", "noisy", "test"))
    try:
        for s in splits:
            split_folder(s)
        root = Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(data_dir)
        out = build_cache(
            data_dir, root, cfg.frontend, splits=splits, workers=cfg.data.workers, progress=progress
        )
    except (CacheError, DataError) as err:
        fail(str(err))
    print_cache(console, data_dir, root, cfg.frontend, splits, out)


@app.command("augment-gallery", rich_help_panel="Data")
def augment_gallery(
    data_dir: Annotated[
        Path, typer.Argument(help="Data set: a folder in the competition layout, or a manifest CSV.")
    ],
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
    from noisytag.report.gallery import save_gallery

    try:
        path = save_gallery(data_dir, output, n_clips=n_clips, seed=seed, cfg=cfg)
    except (OSError, ValueError) as err:  # DataError is a ValueError
        fail(str(err))
    console.print(f"[green]gallery written[/] -> {path}")
