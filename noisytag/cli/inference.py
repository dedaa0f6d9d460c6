"""Inference commands: submissions, evaluation, tagging anyone's audio, ONNX export, a run's settings.

The library modules (torch, onnx, pandas) are imported inside each command, so ``--help`` stays instant.
``predict``, ``tag`` and ``serve`` run with the run's ``infer`` settings; only the flags given replace
them (``info`` shows each value and where it came from). With an onnxruntime backend they first run the
export build step when the run's ONNX files are missing or stale (:func:`onnx_ready`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from noisytag.cli import ConfigOpt, SetOpt, app, console, err_console, fail, load_cfg  # noqa: F401


def _stage_list(text: str | None) -> tuple[int, ...] | None:
    """'2,3,4' → (2, 3, 4); None stays None (the run's infer.stages)."""
    from noisytag.cli.flags import stage_numbers

    if not text:
        return None
    try:
        return stage_numbers(text)
    except ValueError as err:  # ConfigError naming --stages
        fail(str(err))


def _names(values: list[str] | None) -> list[str] | None:
    """Repeatable and/or comma-separated names → list (None when not given)."""
    return [n for v in values for n in v.split(",") if n] if values else None


def check_run_dir(run_dir: Path) -> None:
    """The one-line refusal predict, tag, serve and info share (values are checked as they resolve)."""
    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")


def given_settings(command: str, stages, mode, backend, batch_size) -> dict[str, Any]:
    """The inference settings the user gave by flag (field → value, through the flag table of
    :mod:`noisytag.cli.flags`; ``stages`` already read by :func:`_stage_list`); the run's config
    supplies the rest."""
    from noisytag.cli.flags import given_fields

    return given_fields(command, "infer", stages=stages, mode=mode, backend=backend, batch_size=batch_size)


def resolve_or_fail(run_dir: Path, given: dict[str, Any]):
    """:func:`noisytag.infer.ensemble.resolved_infer`, or exit with its one-line reason."""
    from noisytag.infer.ensemble import resolved_infer  # heavy (torch): imported when the command runs

    check_run_dir(run_dir)
    try:
        return resolved_infer(run_dir, given)
    except (ValueError, OSError) as err:
        fail(str(err))


@contextlib.contextmanager
def onnx_ready(run_dir: Path, backend: str, stages, archs) -> Iterator[Path | None]:
    """The build step before an onnxruntime backend loads: export (and quantise) the run's members when
    missing or stale, say so in one line, yield the folder to read them from (None for torch); a
    temporary folder (read-only run directory) is removed afterwards."""
    import shutil

    from noisytag.infer.build import ensure_onnx  # heavy (torch, onnx): imported when the command runs

    try:
        build = ensure_onnx(run_dir, stages, archs, backend)
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        fail(str(err))
    if build.exported or build.quantised:
        note = " (temporary: the run directory is read-only)" if build.temporary else ""
        err_console.print(
            f"[yellow]onnx:[/] exported {build.exported}, quantised {build.quantised} model(s) for the "
            f"{backend} backend -> {build.folder}{note}",
            highlight=False,
            soft_wrap=True,
        )
    try:
        yield build.folder
    finally:
        if build.temporary:
            shutil.rmtree(build.folder, ignore_errors=True)


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
    typer.Option(
        "--mode",
        help="exact: one forward per window (SPEC §7); fast: conv body once per clip "
        "(default: config infer.mode).",
    ),
]
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        help="torch, onnx (onnxruntime; exports to RUN_DIR/onnx once) or onnx-int8 (also quantises there "
        "once); default: config infer.backend.",
    ),
]
BatchOpt = Annotated[
    int | None, typer.Option(help="Windows per forward pass (default: config infer.batch_size).", min=1)
]


@app.command(rich_help_panel="Inference")
def predict(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with finished fold models.")],
    test_dir: Annotated[
        Path,
        typer.Argument(
            help="Folder of audio clips to predict (e.g. DATA/test), or a manifest CSV (its test clips)."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Submission CSV to write.")] = Path(
        "submission.csv"
    ),
    stages: StagesOpt = None,
    arch: ArchOpt = None,
    mode: ModeOpt = None,
    backend: BackendOpt = None,
    batch_size: BatchOpt = None,
    device: Annotated[str, typer.Option(help="torch device (cpu, cuda).")] = "cpu",
    progress: Annotated[bool, typer.Option(help="Progress bar.")] = True,
) -> None:
    """Predict every clip of TEST_DIR with the run's ensemble and write a submission CSV.

    Windows of SPEC §7, sigmoid probabilities averaged over the chosen stages x folds x architectures,
    then over each clip's windows. Columns: fname + one per class, in the order of
    TEST_DIR/../sample_submission.csv when it exists, else the models' class order.
    """
    from noisytag.infer.tag import predict_run  # heavy (torch): imported when the command runs

    chosen, archs = _stage_list(stages), _names(arch)
    resolved = resolve_or_fail(run_dir, given_settings("predict", chosen, mode, backend, batch_size))
    if not test_dir.exists():
        fail(f"test folder or manifest '{test_dir}' does not exist")
    with onnx_ready(run_dir, resolved.cfg.backend, chosen, archs) as onnx_dir:
        try:
            frame, failures = predict_run(
                run_dir, test_dir, out, chosen, archs, resolved.cfg, device, progress, onnx_dir
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

    from noisytag.fileio import write_csv  # heavy (pandas): imported when the command runs
    from noisytag.infer.submission import evaluate_submission

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
        write_csv(csv, table)
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
    mode: ModeOpt = None,
    backend: BackendOpt = None,
    batch_size: BatchOpt = None,
    device: Annotated[str, typer.Option(help="torch device (cpu, cuda).")] = "cpu",
) -> None:
    """Tag audio files (WAV/FLAC/OGG/MP3, any rate) with a run's ensemble: top-k labels per file.

    Unreadable files are reported (in the output and on stderr) and skipped. With --frames, each
    128-frame window's best label and its time span in the file are listed too.
    """
    import sys

    from noisytag.infer.tag import Tagger, to_csv, to_json, to_table  # heavy (torch): imported when run

    if json_ and csv_:
        fail("choose one of --json and --csv")
    chosen, archs = _stage_list(stages), _names(arch)
    resolved = resolve_or_fail(run_dir, given_settings("tag", chosen, mode, backend, batch_size))
    with onnx_ready(run_dir, resolved.cfg.backend, chosen, archs) as onnx_dir:
        try:
            tagger = Tagger(run_dir, chosen, backend, mode, archs, device, batch_size, onnx_dir)
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
    onnx: Annotated[Path, typer.Option("--onnx", help="Output folder for the ONNX graphs and export.json.")],
    stages: StagesOpt = None,
    arch: ArchOpt = None,
    with_frontend: Annotated[
        bool,
        typer.Option(help="Also write waveform.onnx: mono 44.1 kHz waveform -> ensemble probabilities."),
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="Also write int8 graphs (static QDQ quantisation), checked on held-out clips."
        ),
    ] = False,
    calibration: Annotated[
        Path | None,
        typer.Option(
            "--calibration",
            help="With --int8: clips to calibrate on, a data set or a folder of audio files "
            "(default: the run's data set).",
        ),
    ] = None,
) -> None:
    """Export the ensemble members as ONNX (dynamic batch and time axes) + an index, export.json.

    Each member gets model.onnx (normalised log-mel windows -> probabilities) and fast.onnx (whole clip +
    window starts -> probabilities); every member is checked against PyTorch (max difference <= 1e-4).
    With --int8 also model.int8.onnx and fast.int8.onnx (int8 weights per channel, uint8 activations),
    calibrated on a few hundred windows and compared with the float graphs on other clips (largest
    probability difference; lwlrap of both when those clips have labels), recorded in export.json.
    """
    from noisytag.infer.export import export_run  # heavy (torch, onnx): imported when the command runs

    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")
    if calibration is not None and not int8:
        fail("--calibration only applies with --int8")
    try:
        index = export_run(
            run_dir,
            onnx,
            _stage_list(stages),
            _names(arch),
            with_frontend,
            progress=True,
            int8=int8,
            calibration=calibration,
        )
    except (FileNotFoundError, ValueError, RuntimeError, OSError) as err:
        fail(str(err))
    worst = max(m["parity_max_abs_diff"] for m in index["members"])
    console.print(
        f"[green]exported[/] {len(index['members'])} member(s) -> {onnx} (max |ONNX - PyTorch| = {worst:.1e})"
    )
    if index.get("waveform"):
        t = index["waveform"]
        console.print(
            f"waveform graph: {onnx / t['file']} (max |diff| vs PyTorch path = {t['parity_max_abs_diff']:.1e})"
        )
    if int8 and index.get("int8"):
        info = index["int8"]
        console.print(
            f"[green]int8[/] {info['format']}\n  calibrated on {info['calibration']['source']} "
            f"({info['calibration']['windows']} windows)\n  parity on {info['heldout']['source']}:",
            highlight=False,
        )
        for m in index["members"]:
            p = (m.get("int8") or {}).get("parity")
            if p is None:
                continue
            line = (
                f"  {m['name']}: max |int8 - float| {p['max_abs_diff']:.4f} (windows), "
                f"{p['clip_max_abs_diff']:.4f} (clips), {p['fast_max_abs_diff']:.4f} (fast)"
            )
            if "lwlrap_float" in p:
                line += f"; lwlrap {p['lwlrap_float']:.4f} float, {p['lwlrap_int8']:.4f} int8"
            console.print(line, highlight=False)
        ens = info.get("ensemble") or {}
        if ens.get("members", 0) > 1:
            line = (
                f"  ensemble of {ens['members']}: max |int8 - float| {ens['clip_max_abs_diff']:.4f} (clips)"
            )
            if "lwlrap_float" in ens:
                line += f"; lwlrap {ens['lwlrap_float']:.4f} float, {ens['lwlrap_int8']:.4f} int8"
            console.print(line, highlight=False)


@app.command(rich_help_panel="Inference")
def info(
    run_dir: Annotated[Path, typer.Argument(help="Run directory.")],
    stages: StagesOpt = None,
    mode: ModeOpt = None,
    backend: BackendOpt = None,
    batch_size: BatchOpt = None,
) -> None:
    """Show the inference settings predict, tag and serve use for RUN_DIR, and where each comes from.

    Each value is the run's config (config.yaml, infer section) unless the same flag is given here, as it
    would be to those commands. The ensemble's stages follow the run plan.
    """
    from noisytag.infer.ensemble import ensemble_stages, select_model_dirs  # heavy (torch): imported here
    from noisytag.report.tables import infer_table

    chosen = _stage_list(stages)
    resolved = resolve_or_fail(run_dir, given_settings("info", chosen, mode, backend, batch_size))
    console.print(infer_table(resolved))
    try:
        shown = chosen or ensemble_stages(run_dir)
        found = len(select_model_dirs(run_dir, chosen))
    except (ValueError, OSError) as err:  # FileNotFoundError: no finished models for those stages
        fail(str(err))
    where = "--stages" if chosen else "run plan"
    console.print(f"ensemble: stages {','.join(map(str, shown))} ({where}), {found} finished model(s)")
