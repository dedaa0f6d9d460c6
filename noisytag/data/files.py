"""Which files are audio: the suffixes the front end decodes, and listing them in a folder.

Lives in the data layer because listing a data set's files needs it before any audio is decoded.
"""

from __future__ import annotations

from pathlib import Path

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


def audio_files(root: str | Path, recursive: bool = False) -> list[Path]:
    """Supported audio files (by suffix, any case; hidden files skipped) in ``root``, sorted by path.

    ``recursive`` also walks sub-folders; a file given as ``root`` is returned as itself.
    """
    root = Path(root)
    if root.is_file():
        return [root]
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(
        p for p in found if p.suffix.lower() in AUDIO_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )
