"""Fetch command: download a public data set and arrange it in the competition layout."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from noisytag.cli import app, console, err_console, fail  # noqa: F401


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


@app.command(rich_help_panel="Data")
def fetch(
    dataset: Annotated[str, typer.Argument(help="Data set to fetch: fsdkaggle2019.")],
    data_dir: Annotated[Path, typer.Argument(help="Folder to write the data set into (created if needed).")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List the files, their sizes and state; download nothing.")
    ] = False,
    record: Annotated[
        int | None, typer.Option(help="Zenodo record id; default: the data set's (3612637).")
    ] = None,
    api_url: Annotated[str, typer.Option("--api-url", help="Records API the file list comes from.")] = (
        "https://zenodo.org/api/records"
    ),
    keep_archives: Annotated[
        bool,
        typer.Option(
            "--keep-archives/--remove-archives",
            help="Keep the verified zip archives in DATA_DIR/.downloads/, or delete each once unpacked.",
        ),
    ] = True,
    retries: Annotated[
        int,
        typer.Option(
            min=0,
            help="Tries again after a network error, per file and for the file list; the count starts over "
            "whenever a try received data. Waits 2, 4, 8 … s, or as long as the server asks (HTTP 429).",
        ),
    ] = 3,
    progress: Annotated[bool, typer.Option(help="Progress bars (bytes, speed, time left).")] = True,
) -> None:
    """Download a public data set and write it in the competition layout, ready for check and pipeline.

    fsdkaggle2019: the FSDKaggle2019 set of DCASE 2019 Task 2 / Kaggle's Freesound Audio Tagging 2019 (Zenodo record 3612637): 80 classes; 4970 curated, 19815 noisy and 4481 test clips. About 24 GB of zip archives to download, about 33 GB of WAV once unpacked (~57 GB with the archives kept).

    Archives go to DATA_DIR/.downloads/ and are md5-verified; the audio to DATA_DIR/train_curated/, train_noisy/ and test/. train_curated.csv, train_noisy.csv and sample_submission.csv are written from the record's metadata; the published test labels with their Public/Private leaderboard part go to DATA_DIR/truth/test.csv, the original metadata (licenses, Freesound ids) to DATA_DIR/meta/.

    Safe to interrupt: run the same command again and it resumes (partial downloads continue with HTTP range requests from the record page's links, which Zenodo lets resume; verified archives and unpacked folders are not fetched again). A dropped connection resumes within the run; rate limits (HTTP 429) are waited out as the server asks.
    """
    from rich.table import Table

    from noisytag.data.fetch import FetchError, RetryPolicy, dataset_spec, plan, record_files
    from noisytag.data.fetch import fetch as fetch_dataset

    policy = RetryPolicy(retries=retries)
    try:
        spec = dataset_spec(dataset)
        if dry_run:
            planned = plan(data_dir, record_files(api_url, record or spec.record, policy=policy), spec)
    except FetchError as err:
        fail(str(err))
    if dry_run:
        import shutil

        table = Table(
            "file", "size", "state", title=f"{spec.name} (record {record or spec.record}) -> {data_dir}"
        )
        for p in planned:
            state = f"partial ({p.have / max(p.file.size, 1):.0%})" if p.state == "partial" else p.state
            table.add_row(p.file.name, _gb(p.file.size), state)
        console.print(table)
        total = sum(p.file.size for p in planned)
        left = sum(p.file.size - p.have for p in planned if p.state in ("missing", "partial"))
        where = next((d for d in (data_dir, *data_dir.resolve().parents) if d.exists()), Path("."))
        free = shutil.disk_usage(where).free
        console.print(
            f"{len(planned)} files, {_gb(total)} in all; {_gb(left)} to download; {_gb(free)} free at {where}",
            highlight=False,
        )
        return
    try:
        summary = fetch_dataset(
            data_dir,
            dataset,
            record=record,
            api_url=api_url,
            keep_archives=keep_archives,
            progress=progress,
            policy=policy,
        )
    except FetchError as err:
        fail(str(err))
    except KeyboardInterrupt:
        fail("interrupted; run the same command again to resume", code=130)
    table = Table("split", "clips", title=f"{spec.name} -> {data_dir}: {summary.classes} classes")
    for split, n in summary.clips.items():
        table.add_row(split, str(n))
    console.print(table)
    for note in summary.notes:
        console.print(f"[yellow]note[/] {note}", highlight=False)
    console.print(
        f"[green]done[/] ({_gb(summary.downloaded)} downloaded); next: noisytag check {data_dir}",
        highlight=False,
    )
