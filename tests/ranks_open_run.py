"""One rank of several started at once, opening a fresh run (``open_run``); run by test_ranks.py.

The rank comes from the launcher's environment (RANK, WORLD_SIZE, LOCAL_RANK), as under torchrun or
SLURM. Ranks other than zero record every file they create, replace or delete under RUN_DIR and
CACHE_DIR (an audit hook). Prints one JSON line of what this rank saw: {"writer", "folds" (sha256 of
the folds table), "caches" ({split: [clips, sha256 of the index]}), "splits" ({split: clips}),
"writes"}.
usage: python ranks_open_run.py DATA_DIR RUN_DIR CACHE_DIR
"""

import hashlib
import json
import os
import sys
from pathlib import Path

from noisytag.config import load_config
from noisytag.runs.context import is_global_zero, open_run

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def watch_writes(*roots: Path) -> list[str]:
    """Record this process's file writes under ``roots`` (open for writing, rename, remove, mkdir)."""
    prefixes = tuple(str(r.resolve()) for r in roots)
    seen: list[str] = []

    def under(path) -> bool:
        if not isinstance(path, str | bytes | os.PathLike):
            return False  # a file descriptor
        return os.path.abspath(os.fsdecode(path)).startswith(prefixes)

    def hook(event: str, args: tuple) -> None:
        if event == "open" and len(args) >= 3 and under(args[0]):
            mode, flags = args[1] or "", args[2] or 0
            if any(c in mode for c in "wax+") or flags & WRITE_FLAGS:
                seen.append(f"open {args[0]} {mode or flags}")
        elif event in ("os.rename", "os.replace", "os.remove", "os.truncate", "os.mkdir") and under(args[0]):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def main(data_dir: str, run_dir: str, cache_dir: str) -> None:
    writer = is_global_zero()
    writes = [] if writer else watch_writes(Path(run_dir), Path(cache_dir))
    sets = {"train.folds": 2, "data.cache_dir": cache_dir, "data.workers": 1}
    cfg = load_config(None, [f"{k}={v}" for k, v in sets.items()])
    ctx = open_run(data_dir, run_dir, cfg, progress=False)
    folds = ctx.run.folds.read_text()
    seen = {
        "writer": writer,
        "folds": sha(folds),
        "caches": {s: [len(c), sha(c.index.to_csv(index=False))] for s, c in ctx.caches.items()},
        "splits": {s: len(split.fnames) for s, split in ctx.splits.items()},
        "writes": list(writes),
    }
    print(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3])
