"""Results do not move: the tiny pipeline's tables match files written by the code of commit 3770d69.

A refactor that changes what a run computes (a seed, a window, a summation order) fails here, byte for
byte. Only the wall-clock column ``seconds`` is left out. If a change is *meant* to move results, write
the new files from a tiny run with :func:`golden_files` and say why in the commit.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest

GOLDEN = Path(__file__).parent / "golden" / "tiny_run"
TABLES = ["submission.csv", "stage_table.csv", "selection.csv", "test_scores.csv", "per_class.csv"]


def without_seconds(text: str) -> str:
    """The CSV ``text`` without its wall-clock ``seconds`` column, rewritten with ``\\n`` line ends."""
    rows = list(csv.reader(io.StringIO(text)))
    keep = [i for i, name in enumerate(rows[0]) if name != "seconds"]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    for row in rows:
        writer.writerow([row[i] for i in keep])
    return out.getvalue()


def golden_files(run_dir: Path) -> dict[str, str]:
    """Golden name → the run's table (``metrics_stage{k}_fold{f}.csv`` for each fold's metrics.csv)."""
    files = {name: run_dir / name for name in TABLES}
    for path in sorted(run_dir.glob("cnn1/stage*/fold*/metrics.csv")):
        files[f"metrics_{path.parts[-3]}_{path.parts[-2]}.csv"] = path
    return {name: without_seconds(path.read_text()) for name, path in files.items()}


def test_golden_names_cover_every_table(tiny_run):
    assert set(golden_files(Path(tiny_run))) == {p.name for p in GOLDEN.glob("*.csv")}


@pytest.mark.parametrize("name", sorted(p.name for p in GOLDEN.glob("*.csv")))
def test_tiny_pipeline_tables_are_byte_identical_to_3770d69(tiny_run, name):
    assert golden_files(Path(tiny_run))[name] == (GOLDEN / name).read_text()
