"""Console tables: the feature cache of each split folder; the inference settings an entry resolves.

Presentation only: the commands call these after the work, so the CLI parses options and the
library computes, and what a table shows is decided here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from rich.console import Console
from rich.table import Table

from noisytag.audio.cache import CacheError, FeatureCache, cache_folder
from noisytag.config import FrontendConfig

SHOWN_FAILURES = 20  # failed files listed under the table; the rest are counted


def _audio(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 360 else f"{seconds / 60:.1f} min"


def cache_table(
    data_dir: Path, root: Path, frontend: FrontendConfig, splits: Sequence[str], title: str
) -> tuple[Table, list[tuple[str, str, str]]]:
    """One row per cache folder of ``splits`` (a manifest's splits share one): clips, failed files,
    hours of audio, frames, MB of float16 frames; and the failures as (folder, file, reason)."""
    table = Table("split", "clips", "failed", "audio", "frames", "MB", title=title)
    failures: list[tuple[str, str, str]] = []
    for folder in dict.fromkeys(cache_folder(data_dir, s) for s in splits):
        try:
            cache = FeatureCache.open(root, frontend, folder)
        except CacheError:
            continue  # split folder missing (already warned)
        m = cache.info
        size = f"{m['total_frames'] * m['n_mels'] * 2 / 2**20:.1f}"
        table.add_row(
            folder,
            str(len(cache)),
            str(len(cache.failed)),
            _audio(m["seconds"]),
            str(m["total_frames"]),
            size,
        )
        failures += [(folder, f, r) for f, r in cache.failed]
    return table, failures


def print_cache(
    console: Console, data_dir: Path, root: Path, frontend: FrontendConfig, splits: Sequence[str], built: Path
) -> None:
    """The cache table of ``built`` (the front end's folder under ``root``) and its first failures."""
    table, failures = cache_table(data_dir, root, frontend, splits, f"feature cache {built}")
    console.print(table)
    for folder, fname, reason in failures[:SHOWN_FAILURES]:
        console.print(f"[yellow]failed[/] {folder}/{fname}: {reason}", highlight=False)
    if len(failures) > SHOWN_FAILURES:
        console.print(f"... and {len(failures) - SHOWN_FAILURES} more (see manifest.json of each split)")


def infer_table(resolved) -> Table:
    """A :class:`~noisytag.settings.ResolvedInfer` as key, value and where it came from (config or flag)."""
    table = Table(title="inference settings")
    for name in ("key", "value", "from"):
        table.add_column(name)
    for key, value, source in resolved.rows():
        shown = ",".join(map(str, value)) if isinstance(value, tuple) else str(value)
        table.add_row(key, shown, source)
    return table
