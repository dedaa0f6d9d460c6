"""Review command: listen to the clips the detectors distrust, fix their labels, measure and retrain."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from noisytag.cli import app, console, err_console, fail

POLICIES = ("top", "random", "disagree", "oracle")


def _serve(
    run: Path,
    data: Path | None,
    reviewer: str,
    host: str,
    port: int,
    mode: str,
    browser: bool,
    test_truth: Path | None = None,
) -> None:
    """Hand over to the review page (helper WEB's ``serve_review``), passing only the options it takes."""
    import inspect

    from noisytag.review.app import serve_review

    wanted = {
        "data": data,
        "reviewer": reviewer,
        "host": host,
        "port": port,
        "mode": mode,
        "open_browser": browser,
        "test_truth": test_truth,
    }
    params = inspect.signature(serve_review).parameters.values()
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)
    accepted = {p.name for p in params} if not takes_any else set(wanted)
    if host not in ("127.0.0.1", "localhost", "::1"):
        err_console.print(f"[yellow]warning:[/] the review page listens on {host}", highlight=False)
    serve_review(run, **{k: v for k, v in wanted.items() if k in accepted})


def _curve_table(title: str, points) -> Table:
    table = Table(title=title)
    for column in ("clips reviewed", "wrong label sets found", "fixed", "found per clip"):
        table.add_column(column, justify="right")
    for row in points.itertuples():
        table.add_row(
            str(row.n_reviewed), f"{row.wrong_found:g}", f"{row.fixed:g}", f"{row.found_per_clip:.3f}"
        )
    return table


def _measure_curves(queue, truth: Path, budget: int, seed: int):
    """Every policy's cleaning curve in a scratch log (RUN/review/events.jsonl is not touched); random's is
    its exact expectation (:func:`noisytag.review.simulate.random_curve`), not one noisy draw."""
    import tempfile

    import pandas as pd

    from noisytag.review.events import EventLog
    from noisytag.review.simulate import POLICIES as SIM_POLICIES
    from noisytag.review.simulate import cleaning_curve, random_curve, simulate

    curves = []
    with tempfile.TemporaryDirectory() as scratch:
        for policy in SIM_POLICIES:
            if policy == "random":
                curve = random_curve(queue, truth, budget)
            else:
                log = EventLog(Path(scratch) / f"{policy}.jsonl")
                frame = simulate(
                    queue, truth, budget, policy, reviewer=f"simulator-{policy}", seed=seed, log=log
                )
                curve = cleaning_curve(frame, truth)
            curves.append(curve.assign(policy=policy))
    return pd.concat(curves, ignore_index=True)


@app.command(rich_help_panel="Review")
def review(
    run_dir: Annotated[Path, typer.Argument(help="Run directory with selection audits (stage 3 or 4).")],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Data set (folder or manifest); default: the run's, from run.json."),
    ] = None,
    reviewer: Annotated[str, typer.Option("--reviewer", help="Your name in the events log.")] = "me",
    host: Annotated[str, typer.Option(help="Address the page listens on (keep 127.0.0.1).")] = "127.0.0.1",
    port: Annotated[
        int, typer.Option(help="TCP port of the page (0: any free port).", min=0, max=65535)
    ] = 8765,
    mode: Annotated[
        str, typer.Option("--mode", help="Queue the page opens with: suspect, disagree, class, pair, random.")
    ] = "suspect",
    simulate_truth: Annotated[
        Path | None,
        typer.Option(
            "--simulate",
            help="Truth CSV (fname,labels; e.g. truth/noisy.csv or realdev's noisy_true_labels.csv): a simulated "
            "reviewer answers the queue from it instead of the page.",
        ),
    ] = None,
    budget: Annotated[
        int, typer.Option("--budget", help="Clips the simulated reviewer reviews.", min=1)
    ] = 100,
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="Simulated review order: top (most suspect), random, disagree, or oracle (exactly the wrong clips, from the truth: the ceiling of a review).",
        ),
    ] = "top",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the random order.")] = 0,
    curve: Annotated[
        bool,
        typer.Option(
            "--curve",
            help="With --simulate: measure the cleaning curve of every policy in a scratch log "
            "(RUN/review/curve.csv; random: its exact expectation, n x wrong share); no decisions are written.",
        ),
    ] = False,
    retrain: Annotated[
        bool, typer.Option("--retrain", help="Train on the corrected manifest afterwards (stages 3-4 again).")
    ] = False,
    whole: Annotated[bool, typer.Option("--whole", help="With --retrain: train every stage again.")] = False,
    test_truth: Annotated[
        Path | None,
        typer.Option(
            "--test-truth",
            help="Test clips' true labels (fname,labels) for the retrain's before/after comparison, where the "
            "data set keeps none inside it (e.g. realdev's DATA_truth/test_labels.csv); default: the data "
            "set's own (truth/test.csv, a manifest's test labels).",
        ),
    ] = None,
    no_browser: Annotated[bool, typer.Option("--no-browser", help="Do not open a browser tab.")] = False,
) -> None:
    """Review the noisy labels a run distrusts: a local page with the queue, audio, pictures and keys.

    Decisions go to RUN/review/events.jsonl (append-only); RUN/review/corrections.csv and manifest.csv (the
    corrected data set: reviewed clips become curated and keep their folds) are written from them. With
    --simulate a reviewer who knows the truth answers the queue and the cleaning curve (wrong label sets found
    per clip reviewed) is printed; --retrain then trains on the corrected manifest as a separate process.
    """
    from noisytag.review.queue import MODES, ReviewError, ReviewQueue

    if policy not in POLICIES:
        fail(f"unknown policy {policy!r}; choose from {', '.join(POLICIES)}")
    if mode not in MODES:
        fail(f"unknown queue mode {mode!r}; choose from {', '.join(MODES)}")
    if curve and simulate_truth is None:
        fail("--curve needs --simulate TRUTH.csv (the curve counts wrong labels against the truth)")
    if whole and not retrain:
        fail("--whole goes with --retrain")
    if not run_dir.is_dir():
        fail(f"{run_dir}: run directory not found")
    for truth_file in (simulate_truth, test_truth):
        if truth_file is not None and not truth_file.is_file():
            fail(f"{truth_file}: truth file not found")
    if simulate_truth is None and not retrain:
        try:
            _serve(run_dir, data, reviewer, host, port, mode, not no_browser, test_truth)
        except ReviewError as err:
            fail(str(err))
        return
    try:
        queue = ReviewQueue.from_run(run_dir, data)
        if simulate_truth is not None:
            _simulate(queue, simulate_truth, budget, policy, seed, curve, reviewer)
        if retrain or (simulate_truth is not None and not curve):
            manifest = _write(queue)
        if retrain:
            _retrain(run_dir, manifest, whole, test_truth)
    except ReviewError as err:
        fail(str(err))


def _simulate(queue, truth: Path, budget: int, policy: str, seed: int, curve: bool, reviewer: str) -> None:
    from noisytag.fileio import write_csv
    from noisytag.review.events import review_dir
    from noisytag.review.simulate import cleaning_curve, curve_points, simulate

    out = review_dir(queue.run) / "curve.csv"
    if curve:
        curves = _measure_curves(queue, truth, budget, seed)
        for name, one in curves.groupby("policy", sort=False):
            console.print(_curve_table(f"cleaning curve: {name}", curve_points(one, budget)))
        write_csv(out, curves[["policy", "n_reviewed", "wrong_found", "fixed", "found_per_clip"]])
        console.print(f"[green]wrote[/] {out}", highlight=False)
        return
    name = reviewer if reviewer != "me" else "simulator"
    frame = simulate(queue, truth, budget, policy, reviewer=name, seed=seed)
    one = cleaning_curve(frame, truth).assign(policy=policy)
    console.print(
        _curve_table(f"cleaning curve: {policy} ({len(frame)} clips reviewed)", curve_points(one, budget))
    )
    write_csv(out, one[["policy", "n_reviewed", "wrong_found", "fixed", "found_per_clip"]])
    console.print(f"[green]wrote[/] {out}", highlight=False)


def _write(queue) -> Path:
    from noisytag.review.corrections import write_corrections
    from noisytag.review.events import EventLog, events_path

    corrections, manifest = write_corrections(queue, EventLog(events_path(queue.run)).state())
    console.print(f"[green]wrote[/] {corrections} and {manifest}", highlight=False)
    return manifest


def _retrain(run_dir: Path, manifest: Path, whole: bool, test_truth: Path | None = None) -> None:
    from noisytag.review import retrain as retraining

    try:
        out = retraining.start_retrain(run_dir, manifest, whole=whole)
    except (ValueError, OSError) as err:
        fail(str(err))
    status = retraining.retrain_status(out)
    state = status.get("state", "?")
    if state == "failed":
        fail(f"retrain in {out} failed: {status.get('error', 'see its log')}", code=1)
    console.print(f"[green]retrain {state}[/]: {out}", highlight=False)
    if state != "done":
        return
    from noisytag.report.review import write_review_report

    try:
        comparison = retraining.compare(run_dir, out, truth_csv=test_truth)
    except retraining.RetrainError as err:
        fail(f"retrain done in {out}, but not compared: {err}", code=1)
    retraining.write_comparison(comparison)
    c = comparison
    console.print(
        f"test lwlrap {c['before']:.4f} -> {c['after']:.4f}: {c['delta']:+.4f} "
        f"(95 % interval [{c['lo']:+.4f}, {c['hi']:+.4f}], {c['n_test']} test clips)",
        highlight=False,
    )
    console.print(f"[green]report[/]: {write_review_report(run_dir, comparison)}", highlight=False)
