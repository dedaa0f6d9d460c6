"""Console summary of a pipeline run: the article's stage table, selection precision, test lwlrap."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
from pandas.api.types import is_numeric_dtype
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


STAGE_COLUMNS = ["arch", "stage", "lwlrap_noisy", "lwlrap_curated", "lwlrap_noisy_truth", "test_lwlrap", "n_train",
                 "seconds"]  # fmt: skip
SELECTION_COLUMNS = ["arch", "stage", "method", "selected", "precision", "base_rate"]
DETECTOR_COLUMNS = ["arch", "stage", "agreement", "lwlrap_precision", "lwlrap_recall", "cleanlab_precision",
                    "cleanlab_recall", "kappa"]  # fmt: skip

# Short console headers, so the tables fit an 80-column terminal.
HEADERS = {
    "lwlrap_noisy": "CV noisy",
    "lwlrap_curated": "CV curated",
    "lwlrap_noisy_truth": "CV noisy (true labels)",
    "test_lwlrap": "test",
    "test_lwlrap_public": "test public",
    "test_lwlrap_private": "test private",
    "n_train": "train clips",
    "base_rate": "base rate",
    "lwlrap_precision": "OOF lwlrap P",
    "lwlrap_recall": "OOF lwlrap R",
    "cleanlab_precision": "cleanlab P",
    "cleanlab_recall": "cleanlab R",
}


def _fmt(value, column: str = "") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.1f}" if abs(value) >= 10 or column == "seconds" else f"{value:.4f}"
    return str(value)


def frame_table(frame: pd.DataFrame, title: str, columns: list[str] | None = None) -> Table:
    table = Table(title=title, title_justify="left")
    columns = columns or list(frame.columns)
    for col in columns:
        table.add_column(HEADERS.get(col, col), justify="right" if is_numeric_dtype(frame[col]) else "left")
    for _, row in frame.iterrows():
        table.add_row(*[_fmt(row[c], c) for c in columns])
    return table


def _present(frame: pd.DataFrame | None, columns: list[str]) -> list[str]:
    """The ``columns`` of ``frame`` that hold a value; [] without a frame or with no data columns."""
    if frame is None or not len(frame):
        return []
    shown = [c for c in columns if c in frame and frame[c].notna().any()]
    return shown if set(shown) - {"arch", "stage", "model"} else []


def print_results(console: Console, results: dict, run_dir: str | Path) -> None:
    """Print the tables ``run_pipeline`` returns (stage table beside the article's, selection and its
    detector audit, the ensemble's test lwlrap last), then where the run and its report are."""
    stages, selection, test = (results.get(k) for k in ("stage_table", "selection", "test"))
    if columns := _present(stages, STAGE_COLUMNS):
        console.print(frame_table(stages, "CV lwlrap per stage (the article's table, this run)", columns))
        console.print(frame_table(ARTICLE_TABLE, "The article's numbers on the real data (for reference)"))
    if columns := _present(selection, SELECTION_COLUMNS):
        console.print(
            frame_table(selection, "Noisy-clip selection: precision of the kept labels vs base rate", columns)
        )
    if columns := _present(selection, DETECTOR_COLUMNS):
        title = "Detectors of wrong label sets: agreement, precision (P) and recall (R)"
        console.print(frame_table(selection, title, columns))
    if test is not None and len(test):
        ensemble = test[test["model"].astype(str).str.startswith("ensemble")]
        shown = ensemble if len(ensemble) else test
        parts = [c for c in ("test_lwlrap_public", "test_lwlrap_private") if c in shown.columns]
        console.print(
            frame_table(shown, "Test lwlrap (against the data set's truth)", ["model", "test_lwlrap", *parts])
        )
    console.print(f"run directory: [bold]{run_dir}[/]")
    if results.get("report"):
        console.print(f"report: [bold]{results['report']}[/]")
