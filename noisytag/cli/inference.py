"""Inference commands: submissions, evaluation, tagging anyone's audio, ONNX export.

The library modules (torch, onnx, pandas) are imported inside each command, so ``--help`` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisytag.cli import ConfigOpt, SetOpt, app, console, err_console, fail, load_cfg  # noqa: F401


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


def check_model_options(run_dir: Path, mode: str | None, backend: str | None) -> None:
    """The one-line refusals predict, tag and serve share (None: the run's own setting)."""
    if mode is not None and mode not in ("exact", "fast"):
        fail(f"--mode: expected exact or fast, got '{mode}'")
    if backend is not None:
        from noisytag.infer.ensemble import BACKENDS  # the registry names the backends

        if backend not in BACKENDS.names():
            fail(f"--backend: expected {', '.join(BACKENDS.names())}, got '{backend}'")
    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")


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
    str | None,
    typer.Option(
        "--backend",
        help="torch, onnx (onnxruntime; exports to RUN_DIR/onnx once) or onnx-int8 (also quantises there once).",
    ),
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

    from noisytag.infer.ensemble import run_infer_config  # heavy (torch): imported when the command runs
    from noisytag.infer.tag import predict_run

    check_model_options(run_dir, mode or None, backend or None)
    if not test_dir.exists():
        fail(f"test folder or manifest '{test_dir}' does not exist")
    cfg = run_infer_config(run_dir)
    changes = {k: v for k, v in {"mode": mode, "backend": backend, "batch_size": batch_size}.items() if v}
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
    mode: Annotated[
        str, typer.Option(help="exact (SPEC §7 windows) or fast (conv body once per clip).")
    ] = "exact",
    backend: Annotated[str, typer.Option(help="torch, onnx or onnx-int8 (onnxruntime).")] = "torch",
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
    check_model_options(run_dir, mode, backend)
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
    """Export the ensemble members as ONNX (dynamic batch and time axes) + manifest.json.

    Each member gets model.onnx (normalised log-mel windows -> probabilities) and fast.onnx (whole clip +
    window starts -> probabilities); every member is checked against PyTorch (max difference <= 1e-4).
    With --int8 also model.int8.onnx and fast.int8.onnx (int8 weights per channel, uint8 activations),
    calibrated on a few hundred windows and compared with the float graphs on other clips (largest
    probability difference; lwlrap of both when those clips have labels), recorded in manifest.json.
    """
    from noisytag.infer.export import export_run  # heavy (torch, onnx): imported when the command runs

    if not run_dir.is_dir():
        fail(f"run directory '{run_dir}' does not exist")
    if calibration is not None and not int8:
        fail("--calibration only applies with --int8")
    try:
        manifest = export_run(
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
    if int8 and manifest.get("int8"):
        info = manifest["int8"]
        console.print(
            f"[green]int8[/] {info['format']}\n  calibrated on {info['calibration']['source']} "
            f"({info['calibration']['windows']} windows)\n  parity on {info['heldout']['source']}:",
            highlight=False,
        )
        for m in manifest["members"]:
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
