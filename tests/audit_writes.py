"""An audit hook that records a process's file writes under given folders; the multi-process test
scripts (ddp_pipeline.py, ranks_open_run.py) use it to show that only rank zero writes."""

import os
import sys
from pathlib import Path

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
FILE_EVENTS = ("os.rename", "os.replace", "os.remove", "os.truncate")


def watch_writes(*roots: Path, dirs: bool = True) -> list[str]:
    """Record this process's file writes under ``roots`` (open for writing, rename, replace, remove,
    truncate and, with ``dirs``, mkdir), from now on, into the returned list."""
    prefixes = tuple(str(Path(r).resolve()) for r in roots)
    events = FILE_EVENTS + (("os.mkdir",) if dirs else ())
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
        elif event in events and under(args[0]):
            seen.append(f"{event} {args[0]}")

    sys.addaudithook(hook)
    return seen
