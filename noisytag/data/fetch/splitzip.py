"""Read split zip archives (``name.z01 … name.zNN, name.zip``, as ``zip -s`` writes them) in place.

Python's :mod:`zipfile` refuses archives that span several disks. :func:`open_zip` lays the parts end to
end as one read-only stream and rewrites the central directory for it (local-header offsets become
``start of their disk + offset on it``, disk numbers 0, zip64 fields rebuilt where the numbers outgrow
32 bits), which is what ``zip -s 0`` does, without writing a joined copy to disk.
"""

from __future__ import annotations

import bisect
import contextlib
import io
import struct
import zipfile
from collections.abc import Iterator, Sequence
from itertools import accumulate
from pathlib import Path

CHUNK = 1 << 20

_EOCD = struct.Struct("<4s4H2LH")  # end of central directory
_LOC64 = struct.Struct("<4sLQL")  # zip64 end-of-directory locator
_EOCD64 = struct.Struct("<4sQ2H2L4Q")  # zip64 end of central directory
_CDH = struct.Struct("<4s6H3L5HLL")  # central directory file header
_U32, _U16 = 0xFFFFFFFF, 0xFFFF


class _Joined(io.RawIOBase):
    """Read-only, seekable view of pieces laid end to end: (path, offset, length) or (bytes, 0, length)."""

    def __init__(self, pieces: list[tuple[Path | bytes, int, int]]):
        self.pieces = [p for p in pieces if p[2] > 0]
        self.ends = list(accumulate(p[2] for p in self.pieces))
        self.size, self.pos, self.files = (self.ends[-1] if self.ends else 0), 0, {}

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self.pos

    def seek(self, offset: int, whence: int = 0) -> int:
        self.pos = max(0, offset + (0, self.pos, self.size)[whence])
        return self.pos

    def readinto(self, buffer) -> int:
        i = bisect.bisect_right(self.ends, self.pos)
        if i >= len(self.pieces):
            return 0
        source, offset, length = self.pieces[i]
        inner = self.pos - (self.ends[i] - length)
        n = min(len(buffer), length - inner)
        view = memoryview(buffer)[:n]
        if isinstance(source, bytes):
            view[:] = source[offset + inner : offset + inner + n]
        else:
            if source not in self.files:
                self.files[source] = open(source, "rb")  # noqa: SIM115 - closed by close()
            self.files[source].seek(offset + inner)
            n = self.files[source].readinto(view)
        self.pos += n
        return n

    def read_at(self, offset: int, n: int) -> bytes:
        self.seek(offset)
        out = bytearray()
        while len(out) < n and (data := self.read(n - len(out))):
            out += data
        return bytes(out)

    def close(self) -> None:
        for fh in self.files.values():
            fh.close()
        super().close()


def _end_records(raw: _Joined, starts: list[int]) -> tuple[int, int, int, bytes]:
    """(absolute offset of the central directory, its size, its entries, archive comment) of a split zip."""
    tail_len = min(raw.size, _EOCD.size + _U16)
    tail = raw.read_at(raw.size - tail_len, tail_len)
    i = len(tail)
    while (i := tail.rfind(b"PK\x05\x06", 0, i)) >= 0:
        end = _EOCD.unpack_from(tail, i)
        if i + _EOCD.size + end[7] == len(tail):
            break
    else:
        raise zipfile.BadZipFile("no end of central directory record")
    end_pos = raw.size - tail_len + i
    disk, cd_disk, count, cd_size, cd_offset = end[1], end[2], end[4], end[5], end[6]
    locator = raw.read_at(end_pos - _LOC64.size, _LOC64.size) if end_pos >= _LOC64.size else b""
    if locator[:4] == b"PK\x06\x07":  # zip64: the real numbers are in the zip64 record
        _, loc_disk, loc_offset, _ = _LOC64.unpack(locator)
        end64 = _EOCD64.unpack(raw.read_at(starts[loc_disk] + loc_offset, _EOCD64.size))
        if end64[0] != b"PK\x06\x06":
            raise zipfile.BadZipFile("bad zip64 end of central directory record")
        disk, cd_disk, count, cd_size, cd_offset = end64[4], end64[5], end64[7], end64[8], end64[9]
    if disk + 1 != len(starts):
        raise zipfile.BadZipFile(f"the archive has {disk + 1} parts, {len(starts)} found")
    return starts[cd_disk] + cd_offset, cd_size, count, tail[i + _EOCD.size :]


def _rebased_entry(cd: bytes, pos: int, starts: list[int]) -> tuple[bytes, int]:
    """The central-directory entry at ``pos`` on disk 0 with an absolute local-header offset; next ``pos``.

    The zip64 extra field holds, in this order, whichever of uncompressed size, compressed size, offset
    (8 bytes each) and disk (4) have the all-ones value in the fixed header; it is rebuilt to match.
    """
    if cd[pos : pos + 4] != b"PK\x01\x02" or pos + _CDH.size > len(cd):
        raise zipfile.BadZipFile("bad central directory entry")
    h = list(_CDH.unpack_from(cd, pos))
    name_end = pos + _CDH.size + h[10]
    extra_end = name_end + h[11]
    fields, j = {}, name_end
    while j + 4 <= extra_end:
        tag, size = struct.unpack_from("<HH", cd, j)
        fields[tag], j = cd[j + 4 : j + 4 + size], j + 4 + size
    z64, values, k = fields.pop(1, b""), {}, 0
    for index, fmt, full in ((9, "<Q", _U32), (8, "<Q", _U32), (16, "<Q", _U32), (13, "<L", _U16)):
        values[index] = h[index]
        if h[index] == full:
            (values[index],) = struct.unpack_from(fmt, z64, k)
            k += struct.calcsize(fmt)
    absolute = starts[values[13]] + values[16]
    new64 = b"".join(struct.pack("<Q", values[i]) for i in (9, 8) if h[i] == _U32)
    new64 += struct.pack("<Q", absolute) if absolute >= _U32 else b""
    if new64:
        fields[1] = new64
    extra = b"".join(struct.pack("<HH", tag, len(data)) + data for tag, data in fields.items())
    comment = cd[extra_end : extra_end + h[12]]
    h[11], h[13], h[16] = len(extra), 0, min(absolute, _U32)
    return _CDH.pack(*h) + cd[pos + _CDH.size : name_end] + extra + comment, extra_end + h[12]


def _one_disk_directory(raw: _Joined, starts: list[int]) -> tuple[int, bytes]:
    """The central directory and end records of a split archive, rewritten for its parts laid end to end.

    Returns (absolute offset of the central directory, the bytes to put there instead): local-header
    offsets become ``start of their disk + offset on it``, disk numbers 0, and the end records describe
    one disk (with zip64 records when the numbers outgrow 16/32 bits).
    """
    cd_pos, cd_size, count, comment = _end_records(raw, starts)
    cd, pos, out = raw.read_at(cd_pos, cd_size), 0, bytearray()
    for _ in range(count):
        entry, pos = _rebased_entry(cd, pos, starts)
        out += entry
    size = len(out)
    if count >= _U16 or size >= _U32 or cd_pos >= _U32:
        out += _EOCD64.pack(b"PK\x06\x06", _EOCD64.size - 12, 45, 45, 0, 0, count, count, size, cd_pos)
        out += _LOC64.pack(b"PK\x06\x07", 0, cd_pos + size, 1)
    n16, size32, pos32 = min(count, _U16), min(size, _U32), min(cd_pos, _U32)
    out += _EOCD.pack(b"PK\x05\x06", 0, 0, n16, n16, size32, pos32, len(comment)) + comment
    return cd_pos, bytes(out)


@contextlib.contextmanager
def open_zip(parts: Sequence[Path]) -> Iterator[zipfile.ZipFile]:
    """Open a zip archive for reading: one file, or a split archive's parts in disk order (.z01 … .zip).

    A split archive is read in place, with no joined copy on disk: the parts are laid end to end and its
    central directory is rebased to that single stream (see :func:`_one_disk_directory`).
    """
    if len(parts) == 1:
        with zipfile.ZipFile(parts[0]) as zf:
            yield zf
        return
    pieces: list[tuple[Path | bytes, int, int]] = [(Path(p), 0, Path(p).stat().st_size) for p in parts]
    starts = [0, *accumulate(p[2] for p in pieces)][:-1]
    with _Joined(pieces) as raw:
        cd_pos, directory = _one_disk_directory(raw, starts)
    kept = [
        (src, 0, max(0, min(length, cd_pos - start)))
        for (src, _, length), start in zip(pieces, starts, strict=True)
    ]
    with (
        _Joined([*kept, (directory, 0, len(directory))]) as joined,
        zipfile.ZipFile(io.BufferedReader(joined, CHUNK)) as zf,
    ):
        yield zf
