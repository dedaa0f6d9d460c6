"""A clip's log-mel as a small picture: time max-pooled to a bounded width, 8-bit grayscale PNG.

What ``noisytag serve`` sends its page (the page colours it); zlib only, no imaging library.
"""

from __future__ import annotations

import math
import struct
import zlib

import numpy as np

MAX_COLUMNS = 600  # the image is at most this wide (time max-pooled), whatever the clip's length


def gray_image(
    db: np.ndarray, lo: float, hi: float, max_columns: int = MAX_COLUMNS
) -> tuple[np.ndarray, int]:
    """(F, T) dB → ((F, C) uint8 image, high bands on top, lo → 0 and hi → 255; frames per column),
    C = ceil(T / frames per column) ≤ ``max_columns``."""
    n_mels, n_frames = db.shape
    per = max(math.ceil(n_frames / max_columns), 1)
    cols = math.ceil(n_frames / per)
    padded = np.full((n_mels, cols * per), lo, dtype=np.float32)
    padded[:, :n_frames] = db
    pooled = padded[:, ::per].copy()  # max keeps short events visible; strided maxima, not a
    for k in range(1, per):  # reduction over a short last axis (several times slower in numpy)
        np.maximum(pooled, padded[:, k::per], out=pooled)
    scaled = (pooled - lo) / max(hi - lo, 1e-6) * 255.0
    return np.clip(np.round(scaled), 0, 255).astype(np.uint8)[::-1], per


def png_gray(img: np.ndarray) -> bytes:
    """(H, W) uint8 → an 8-bit grayscale PNG."""
    h, w = img.shape
    raw = np.zeros((h, w + 1), dtype=np.uint8)  # each row: filter byte 0 ("none"), then the pixels
    raw[:, 1:] = img

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))  # 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(raw.tobytes(), 6)) + chunk(b"IEND", b"")
    )
