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
import sys
from pathlib import Path

from audit_writes import watch_writes

from noisytag.config import load_config
from noisytag.runs.context import is_global_zero, open_run


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
