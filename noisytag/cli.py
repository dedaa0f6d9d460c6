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


# Commands are added below, one function each; insert new ones above the end marker.


@app.command(rich_help_panel="Data")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write (new, or an earlier synth data set).")],
    scale: Annotated[str, typer.Option(help="Size: tiny, demo, small or medium.")] = "demo",
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives byte-identical files.")] = 0,
    sample_rate: Annotated[int, typer.Option("--sample-rate", help="Sample rate of the files (Hz).")] = 44100,
    fmt: Annotated[str, typer.Option("--format", help="Audio format: wav (16-bit), flac or ogg.")] = "wav",
) -> None:
    """Generate the synthetic demo data set in the competition layout, with its truth kept apart.

    Writes OUT/{train_curated,train_noisy,test}/, train_curated.csv, train_noisy.csv, sample_submission.csv
    and OUT/truth/{test,noisy}.csv (true labels; ~35 % of the noisy clips carry a wrong label set in
    train_noisy.csv). Prints clip counts, hours, multi-label share and the actual noisy-label rate.
    """
    from rich.table import Table

    from noisytag.synth import generate

    try:
        s = generate(out, scale=scale, seed=seed, sample_rate=sample_rate, fmt=fmt, progress=True)
    except (ValueError, FileExistsError, OSError) as err:
        fail(str(err))
    table = Table(title=f"synthetic data set -> {out}  ({s['scale']}, seed {s['seed']})")
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
    data_dir: Annotated[Path, typer.Argument(help="Data set in the competition layout.")],
    skip_invalid: Annotated[
        bool, typer.Option("--skip-invalid", help="Report bad rows and count the rest instead of failing.")
    ] = False,
    max_lines: Annotated[int, typer.Option(help="Problem lines to print at most.")] = 50,
) -> None:
    """Validate a data set (CSVs, class list, audio files and their headers) and print its counts.

    Every problem is one line naming the file and CSV line: missing audio file, unknown label, duplicate
    file name, empty label field, malformed CSV, unreadable audio. Exit code 1 when the data set is
    invalid (unless --skip-invalid).
    """
    from rich.table import Table

    from noisytag.data import DataError, describe, load_dataset

    def show(problems: list[str]) -> None:
        for line in problems[:max_lines]:
            err_console.print(f"- {line}", style="red", highlight=False, markup=False, soft_wrap=True)
        if len(problems) > max_lines:
            err_console.print(f"... and {len(problems) - max_lines} more")

    try:
        dataset = load_dataset(data_dir, skip_invalid=skip_invalid, probe_audio=True)
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
    data_dir: Annotated[Path, typer.Argument(help="Data set in the competition layout.")],
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

    Each split folder goes to CACHE/<front-end key>/<folder>/ (float16 frames + index + manifest).

    Safe to interrupt (even kill -9): run it again and it continues where it stopped. An up-to-date cache returns at once; changing any front-end parameter builds a new cache; unreadable files are listed and skipped.
    """
    from rich.table import Table

    from noisytag.cache import CacheError, FeatureCache, build_cache, default_cache_dir, split_folder

    cfg = load_cfg(config, set_)
    splits = tuple(split or ("curated", "noisy", "test"))
    try:
        for s in splits:
            split_folder(s)
        root = cache_dir or (Path(cfg.data.cache_dir) if cfg.data.cache_dir else default_cache_dir(data_dir))
        n_workers = cfg.data.workers if workers is None else workers
        out = build_cache(data_dir, root, cfg.frontend, splits=splits, workers=n_workers, progress=progress)
    except CacheError as err:
        fail(str(err))
    table = Table("split", "clips", "failed", "audio", "frames", "MB", title=f"feature cache {out}")
    failures = []
    for s in splits:
        try:
            cache = FeatureCache.open(root, cfg.frontend, s)
        except CacheError:
            continue  # split folder missing (already warned)
        m = cache.manifest
        size = f"{m['total_frames'] * m['n_mels'] * 2 / 2**20:.1f}"
        audio = f"{m['seconds'] / 3600:.2f} h" if m["seconds"] >= 360 else f"{m['seconds'] / 60:.1f} min"
        table.add_row(s, str(len(cache)), str(len(cache.failed)), audio, str(m["total_frames"]), size)
        failures += [(s, f, r) for f, r in cache.failed]
    console.print(table)
    for s, fname, reason in failures[:20]:
        console.print(f"[yellow]failed[/] {s}/{fname}: {reason}", highlight=False)
    if len(failures) > 20:
        console.print(f"... and {len(failures) - 20} more (see manifest.json of each split)")


@app.command("augment-gallery", rich_help_panel="Data")
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


def _stage_list(text: str | None) -> tuple[int, ...] | None:
    """'2,3,4' → (2, 3, 4); None stays None (the run's infer.stages)."""
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError:
        fail(f"--stages: expected comma-separated stage numbers like 2,3,4, got '{text}'")


def _names(values: list[str] | None) -> list[str] | None:
    """Repeatable and/or comma-separated names → list (None when not given)."""
    return [n for v in values for n in v.split(",") if n] if values else None


StagesOpt = Annotated[
    str | None,
    typer.Option("--stages", help="Stages of the ensemble, e.g. 2,3,4 (default: config infer.stages)."),
]
ArchOpt = Annotated[
    list[str] | None,
    typer.Option("--arch", help="Architecture(s) of the ensemble (repeatable); default: all."),
]
ModeOpt = Annotated[
    str | None,
    typer.Option("--mode", help="exact: one forward per window (SPEC §7); fast: conv body once per clip."),
]
BackendOpt = Annotated[
    str | None, typer.Option("--backend", help="torch, or onnx (onnxruntime; exports to RUN_DIR/onnx once).")
]


@app.command(rich_help_panel="Training")
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


@app.command(rich_help_panel="Training")
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


@app.command(rich_help_panel="Inference")
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with finished fold models.")],
    test_dir: Annotated[Path, typer.Argument(help="Folder of audio clips to predict (e.g. DATA/test).")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Submission CSV to write.")] = Path(
        "submission.csv"
    ),
    stages: StagesOpt = None,
    arch: ArchOpt = None,
    mode: ModeOpt = None,
    backend: BackendOpt = None,
    batch_size: Annotated[int | None, typer.Option(help="Windows per forward pass.", min=1)] = None,
    device: Annotated[str, typer.Option(help="torch device (cpu, cuda).")] = "cpu",
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Predict every clip of TEST_DIR with the run's ensemble and write a submission CSV.

    Windows of SPEC §7, sigmoid probabilities averaged over the chosen stages x folds x architectures,
    then over each clip's windows. Columns: fname + one per class, in the order of
    TEST_DIR/../sample_submission.csv when it exists, else the models' class order.
    """
    import dataclasses

    from noisytag.infer import predict_run, run_infer_config

    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")
    if not test_dir.is_dir():
        fail(f"test folder '{test_dir}' does not exist")
    cfg = run_infer_config(run_dir)
    changes = {k: v for k, v in {"mode": mode, "backend": backend, "batch_size": batch_size}.items() if v}
    if changes.get("mode", "exact") not in ("exact", "fast"):
        fail(f"--mode: expected exact or fast, got '{mode}'")
    if changes.get("backend", "torch") not in ("torch", "onnx"):
        fail(f"--backend: expected torch or onnx, got '{backend}'")
    cfg = dataclasses.replace(cfg, **changes)
    try:
        frame, failures = predict_run(
            run_dir, test_dir, out, _stage_list(stages), _names(arch), cfg, device=device, progress=progress
        )
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        fail(str(err))
    for reason in failures:
        err_console.print(f"[yellow]skipped[/] {reason} (all-zero row)", highlight=False)
    console.print(
        f"[green]submission written[/] -> {out} ({len(frame)} clips x {frame.shape[1] - 1} classes)"
    )


@app.command(rich_help_panel="Inference")
def evaluate(
    submission: Annotated[Path, typer.Argument(help="Submission CSV (fname + one column per class).")],
    truth_csv: Annotated[Path, typer.Argument(help="Truth CSV (fname,labels), e.g. DATA/truth/test.csv.")],
    csv: Annotated[Path | None, typer.Option("--csv", help="Also save the per-class table here.")] = None,
    worst: Annotated[int, typer.Option(help="Rows of the per-class table to print (0 = all).", min=0)] = 0,
) -> None:
    """Score a submission: overall lwlrap and per-class lwlrap (worst class first)."""
    from rich.table import Table

    from noisytag.infer import evaluate_submission

    for path in (submission, truth_csv):
        if not path.is_file():
            fail(f"'{path}' does not exist")
    try:
        overall, table = evaluate_submission(submission, truth_csv)
    except (ValueError, KeyError, OSError) as err:
        fail(str(err))
    shown = table if not worst else table.head(worst)
    out = Table(title=f"per-class lwlrap (worst first; {len(table)} classes with labels)")
    for name, justify in (
        ("class", "left"),
        ("lwlrap", "right"),
        ("positives", "right"),
        ("weight", "right"),
    ):
        out.add_column(name, justify=justify)
    for row in shown.itertuples(index=False):
        out.add_row(row[0], f"{row[1]:.4f}", str(int(row[2])), f"{row[3]:.4f}")
    console.print(out)
    console.print(f"[bold]overall lwlrap: {overall:.5f}[/]")
    if csv is not None:
        table.to_csv(csv, index=False)
        console.print(f"per-class table written to {csv}")


@app.command(rich_help_panel="Inference")
def tag(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with finished fold models.")],
    paths: Annotated[list[Path], typer.Argument(help="Audio files or folders (searched recursively).")],
    top_k: Annotated[int, typer.Option("--top-k", help="Labels per file.", min=1)] = 5,
    json_: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    csv_: Annotated[bool, typer.Option("--csv", help="Print CSV instead of a table.")] = False,
    frames: Annotated[
        bool, typer.Option("--frames", help="Add a per-window timeline (which label when).")
    ] = False,
    stages: StagesOpt = None,
    arch: ArchOpt = None,
    mode: Annotated[
        str, typer.Option(help="exact (SPEC §7 windows) or fast (conv body once per clip).")
    ] = "exact",
    backend: Annotated[str, typer.Option(help="torch or onnx (onnxruntime).")] = "torch",
    device: Annotated[str, typer.Option(help="torch device (cpu, cuda).")] = "cpu",
) -> None:
    """Tag audio files (WAV/FLAC/OGG/MP3, any rate) with a run's ensemble: top-k labels per file.

    Unreadable files are reported (in the output and on stderr) and skipped. With --frames, each
    128-frame window's best label and its time span in the file are listed too.
    """
    import sys

    from noisytag.tag import Tagger, to_csv, to_json, to_table

    if json_ and csv_:
        fail("choose one of --json and --csv")
    if mode not in ("exact", "fast"):
        fail(f"--mode: expected exact or fast, got '{mode}'")
    if backend not in ("torch", "onnx"):
        fail(f"--backend: expected torch or onnx, got '{backend}'")
    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")
    try:
        tagger = Tagger(
            run_dir, _stage_list(stages), backend=backend, mode=mode, archs=_names(arch), device=device
        )
        records = tagger.tag(paths, top_k=top_k, frames=frames, progress=not (json_ or csv_))
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        fail(str(err))
    if not records:
        fail("no audio files found in " + ", ".join(map(str, paths)))
    if json_:
        sys.stdout.write(to_json(records) + "\n")
    elif csv_:
        sys.stdout.write(to_csv(records, frames=frames))
    else:
        console.print(to_table(records, frames=frames))


@app.command(rich_help_panel="Inference")
def export(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with finished fold models.")],
    onnx: Annotated[
        Path, typer.Option("--onnx", help="Output folder for the ONNX graphs and manifest.json.")
    ],
    stages: StagesOpt = None,
    arch: ArchOpt = None,
    with_frontend: Annotated[
        bool,
        typer.Option(help="Also write tagger.onnx: mono 44.1 kHz waveform -> ensemble probabilities."),
    ] = False,
) -> None:
    """Export the ensemble members as ONNX (dynamic batch and time axes) + manifest.json.

    Each member gets model.onnx (normalised log-mel windows -> probabilities) and fast.onnx (whole clip +
    window starts -> probabilities); every member is checked against PyTorch (max difference <= 1e-4).
    """
    from noisytag.export import export_run

    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")
    try:
        manifest = export_run(run_dir, onnx, _stage_list(stages), _names(arch), with_frontend, progress=True)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        fail(str(err))
    worst = max(m["parity_max_abs_diff"] for m in manifest["members"])
    console.print(
        f"[green]exported[/] {len(manifest['members'])} member(s) -> {onnx} "
        f"(max |ONNX - PyTorch| = {worst:.1e})"
    )
    if manifest.get("tagger"):
        t = manifest["tagger"]
        console.print(
            f"waveform tagger: {onnx / t['file']} (max |diff| vs PyTorch path = {t['parity_max_abs_diff']:.1e})"
        )


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
    from noisytag.report import write_report

    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")
    if data is not None and not data.is_dir():
        fail(f"data set '{data}' does not exist")
    path = write_report(run_dir, out=out, data_dir=data)
    console.print(f"report written to {path}")


# --- end of commands ---
