"""Console summary of a pipeline run: the article's stage table, selection precision, test lwlrap."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

# SPEC §6: the article's numbers on the real data (CV lwlrap noisy, curated; public LB).
ARTICLE_TABLE = pd.DataFrame(
    [
        ("stage 1", 0.65057, 0.41096, None),
        ("stage 2", 0.38142, 0.86222, 0.723),
        ("stage 3", 0.56716, 0.87930, 0.724),
        ("stage 4", 0.57590, 0.87718, 0.724),
        ("mean of stages 2-4", None, None, 0.733),
        ("+ VGG-16 trained the same way", None, None, 0.738),
    ],
    columns=["model", "lwlrap_noisy", "lwlrap_curated", "public_lb"],
)


STAGE_COLUMNS = [
    "arch",
    "stage",
    "lwlrap_noisy",
    "lwlrap_curated",
    "lwlrap_noisy_truth",
    "test_lwlrap",
    "n_train",
    "seconds",
]


# Short console headers, so the stage table fits an 80-column terminal.
HEADERS = {
    "lwlrap_noisy": "CV noisy",
    "lwlrap_curated": "CV curated",
    "lwlrap_noisy_truth": "CV noisy (true labels)",
    "test_lwlrap": "test",
    "n_train": "train clips",
}


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def frame_table(frame: pd.DataFrame, title: str, columns: list[str] | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    columns = columns or list(frame.columns)
    for col in columns:
        table.add_column(HEADERS.get(col, col), justify="left" if frame[col].dtype == object else "right")
    for _, row in frame.iterrows():
        table.add_row(*[_fmt(row[c]) for c in columns])
    return table


def print_results(console: Console, results: dict, run_dir: str | Path) -> None:
    """Print the tables ``run_pipeline`` returns; the test lwlrap comes last."""
    stages = results.get("stage_table")
    if stages is not None and len(stages):
        console.print(
            frame_table(
                stages,
                "CV lwlrap per stage (the article's table, this run)",
                [c for c in STAGE_COLUMNS if c in stages and stages[c].notna().any()],
            )
        )
        console.print(frame_table(ARTICLE_TABLE, "The article's numbers on the real data (for reference)"))
    selection = results.get("selection")
    if selection is not None and len(selection):
        console.print(
            frame_table(selection, "Noisy-clip selection: precision of the kept labels vs base rate")
        )
    test = results.get("test")
    if test is not None and len(test):
        console.print(frame_table(test, "Test lwlrap (against the data set's truth)"))
    console.print(f"run directory: [bold]{run_dir}[/]")
    if results.get("report"):
        console.print(f"report: [bold]{results['report']}[/]")
