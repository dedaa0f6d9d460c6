"""Unpack a zip archive (one file or a split one) flat into a folder, resumably.

A member goes to ``target/<its file name>`` whatever its folder inside the archive; junk (``__MACOSX/``,
dot files) never does. Work happens in a hidden ``.<target>.partial`` folder renamed into place at the
end, one file at a time by temporary name + rename, so a killed unpacking continues where it stopped.
"""

from __future__ import annotations

import os
import shutil
import struct
import zipfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

from noisytag.data.fetch.download import CHUNK, FetchError, reason
from noisytag.data.fetch.splitzip import open_zip
from noisytag.data.files import AUDIO_SUFFIXES


def wanted(kind: str, member: str) -> bool:
    """Whether an archive member of this kind ("audio", "csv" or "any") goes to the folder."""
    parts = member.replace("\\", "/").split("/")
    if member.endswith("/") or "__MACOSX" in parts or parts[-1].startswith("."):
        return False
    suffix = Path(parts[-1]).suffix.lower()
    return (
        kind == "any"
        or (kind == "audio" and suffix in AUDIO_SUFFIXES)
        or (kind == "csv" and suffix == ".csv")
    )


def _chosen(zf: zipfile.ZipFile, kind: str, name: str) -> dict[str, zipfile.ZipInfo]:
    """The members to extract, by file name; two members of one name are refused."""
    chosen: dict[str, zipfile.ZipInfo] = {}
    for info in zf.infolist():
        if wanted(kind, info.filename):
            base = info.filename.replace("\\", "/").rsplit("/", 1)[-1]
            if base in chosen:
                raise FetchError(f"{name}: two files named {base} ({chosen[base].filename}, {info.filename})")
            chosen[base] = info
    if not chosen:
        raise FetchError(f"{name}: no {'audio ' if kind == 'audio' else ''}files in the archive")
    return chosen


def unpack(
    parts: Sequence[Path],
    target: Path,
    kind: str,
    report: Callable[[int, int], None] = lambda done, total: None,
) -> int:
    """Extract the chosen members of an archive flat (by file name, any nesting) into ``target``; resumable.

    Files already in the partial folder with the right size are not extracted again; ``report(done,
    total)`` follows the bytes written. Returns the number of files; an unreadable archive raises
    :class:`FetchError` naming it.
    """
    name, partial = parts[-1].name, target.with_name(f".{target.name}.partial")
    if target.exists():
        if partial.exists():
            raise FetchError(f"{target} and {partial} both exist; remove one and run again")
        target.rename(partial)  # an unmarked folder: check it against the archive like a partial one
    partial.mkdir(parents=True, exist_ok=True)
    try:
        with open_zip(parts) as zf:
            chosen = _chosen(zf, kind, name)
            done, total = 0, sum(info.file_size for info in chosen.values())
            for base, info in sorted(chosen.items(), key=lambda kv: kv[1].header_offset):
                dest = partial / base
                if not (dest.is_file() and dest.stat().st_size == info.file_size):
                    tmp = partial / f".{base}.tmp"
                    with zf.open(info) as src, open(tmp, "wb") as dst:
                        shutil.copyfileobj(src, dst, CHUNK)
                    os.replace(tmp, dest)
                done += info.file_size
                report(done, total)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, struct.error, IndexError) as err:
        raise FetchError(f"{name}: unreadable zip archive ({reason(err)})") from err
    except OSError as err:
        raise FetchError(f"{name}: could not unpack into {partial} ({reason(err)})") from err
    for stale in partial.glob(".*.tmp"):  # left by a killed run
        stale.unlink()
    os.replace(partial, target)
    return len(chosen)
