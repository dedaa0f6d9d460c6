"""Window arithmetic shared by training (random crops) and inference (evenly spread windows).

Frames are counted along the time axis of a (n_mels, T) log-mel; a window is ``width`` frames wide.
"""

from __future__ import annotations

import math

import numpy as np


def n_windows(n_frames: int, width: int = 128, max_stride: int = 48) -> int:
    """SPEC §7: ceil((T − width) / max_stride) + 1 windows; one window for a clip of ≤ width frames."""
    if n_frames <= width:
        return 1
    return math.ceil((n_frames - width) / max_stride) + 1


def window_offsets(n_frames: int, width: int = 128, max_stride: int = 48) -> np.ndarray:
    """Start frames of the inference windows, evenly spread from the first to the last frame.

    The first window starts at 0 and the last ends at the clip's last frame; the stride between
    consecutive starts is at most ``max_stride`` (rounded to whole frames).
    """
    count = n_windows(n_frames, width, max_stride)
    if count == 1:
        return np.zeros(1, dtype=np.int64)
    return np.round(np.linspace(0, n_frames - width, count)).astype(np.int64)


def random_offsets(n_frames: np.ndarray, width: int, rng: np.random.Generator) -> np.ndarray:
    """One uniformly random window start per clip (0 for clips of ≤ width frames).

    ``n_frames``: (B,) frame counts → (B,) int64 starts in [0, T − width].
    """
    n_frames = np.asarray(n_frames, dtype=np.int64)
    room = np.maximum(n_frames - width, 0)
    return np.floor(rng.random(len(n_frames)) * (room + 1)).astype(np.int64)
