"""Clip → model input, the one owner: every path from audio to what a model sees goes through here.

The steps: decode, resample, trim, pad (:mod:`noisytag.audio.decode`) → log-mel dB (:mod:`noisytag.audio.features`)
→ float16 rounding (the feature cache stores float16; a file tagged directly is rounded the same way, so
a file and its cached clip give bit-identical inputs) → ``width``-frame windows (frames past a clip's end
hold the clip's ``lo``) → normalisation by name (:data:`NORMALIZERS`, the config key ``data.normalize``).

Callers: the feature cache's extraction (:func:`extract_clip`), the training loader (:func:`cache_windows`),
and predict for cached clips (:func:`cached_clips`) and audio files (:func:`file_clip`, which tag and serve
use); both predict paths end in :func:`model_input` and :func:`take_windows`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from noisytag.audio.decode import LoadedClip, decode, load_clip, prepare
from noisytag.audio.features import LogMel, log_mel_frames
from noisytag.audio.features import normalize as minmax
from noisytag.config import ConfigError, FrontendConfig


def _unscaled(db, lo, hi):
    """The ``none`` normalisation: the dB values as they are."""
    return db


# data.normalize → f(db, lo, hi) with lo/hi per clip, aligned with the leading axes of db.
NORMALIZERS = {"minmax": minmax, "none": _unscaled}


def check_normalize(name: str) -> str:
    """``name`` if it is a known normalisation, else a one-line :class:`ConfigError` (a ValueError)
    naming ``data.normalize`` and the allowed names. The one check: config validation
    (:func:`noisytag.runs.validate.checked_plan`) and the run-time readers all ask here."""
    if name not in NORMALIZERS:
        known = " or ".join(NORMALIZERS)
        raise ConfigError(f"config key 'data.normalize': unknown normalisation '{name}' (expected {known})")
    return name


def normalize(db, lo, hi, name: str) -> np.ndarray:
    """float32 dB (…, F, W) and per-clip ``lo``/``hi`` (scalars or aligned with the leading axes) → the
    float32 model input under the normalisation ``name`` (``minmax``: each clip scaled to [0, 1])."""
    scale = NORMALIZERS[check_normalize(name)]
    out = scale(np.asarray(db, dtype=np.float32), np.float32(lo), np.float32(hi))
    return np.asarray(out, dtype=np.float32)


@dataclass
class Clip:
    """One clip's float16-rounded log-mel, float32 dB ``(F, T)``, with its min/max; ``key`` names it."""

    key: object
    db: np.ndarray
    lo: float
    hi: float


# ----------------------------------------------------------------------------------------------
# audio → rounded log-mel


def rounded_log_mel(
    samples: np.ndarray, cfg: FrontendConfig = FrontendConfig(), module: LogMel | None = None
) -> tuple[np.ndarray, float, float]:
    """A prepared clip (N,) → (dB float16 (T, n_mels), time-major as the cache stores it; lo; hi).

    ``lo``/``hi`` are the min/max of the float16 values: rounding is monotonic, so they are the rounded
    float32 min/max. torch converts with F16C, much faster than numpy's astype(float16) (same
    round-to-nearest-even). ``module``: a ready :class:`~noisytag.audio.features.LogMel` for ``cfg``.
    """
    db = log_mel_frames(samples, cfg, module)
    lo, hi = float(np.float16(db.min())), float(np.float16(db.max()))
    return torch.from_numpy(db).half().numpy(), lo, hi


def widen(frames: np.ndarray) -> np.ndarray:
    """float16 (B, T, n_mels) → float32 (B, n_mels, T) in one pass (torch's F16C copy; numpy's float16
    casts are several times slower). Exact: every float16 is a float32."""
    if not frames.flags.writeable or not frames.flags.c_contiguous:  # torch wants a writable buffer
        frames = np.array(frames)
    src = torch.from_numpy(frames)
    out = torch.empty(src.shape[0], src.shape[2], src.shape[1], dtype=torch.float32)
    out.copy_(src.transpose(1, 2))
    return out.numpy()


def extract_clip(path: str | Path, cfg: FrontendConfig = FrontendConfig(), module: LogMel | None = None):
    """Audio file → (dB float16 (T, n_mels), lo, hi, seconds of decoded audio before trimming): what the
    feature cache stores per clip. Raises :class:`noisytag.audio.decode.AudioError` for a file that
    cannot be used."""
    y, sr = decode(path)
    return (*rounded_log_mel(prepare(y, sr, cfg), cfg, module), len(y) / sr)


def file_clip(path: str | Path, cfg: FrontendConfig, key: object = None) -> tuple[Clip, float, float]:
    """Audio file → (its :class:`Clip`, duration s, offset s): the same values its cached clip holds.

    ``offset``: file time of the clip's first sample (see :class:`noisytag.audio.decode.LoadedClip`).
    Raises :class:`noisytag.audio.decode.AudioError` for a file that cannot be used.
    """
    loaded = load_clip(path, cfg)
    return loaded_clip(loaded, cfg, key), loaded.duration, loaded.offset


def loaded_clip(loaded: LoadedClip, cfg: FrontendConfig, key: object = None) -> Clip:
    """A clip of :func:`~noisytag.audio.decode.load_clip` → its :class:`Clip` (the torch half of
    :func:`file_clip`: a caller that decodes in another thread runs this one in its own, see
    :func:`noisytag.infer.predict.iter_files`)."""
    db16, lo, hi = rounded_log_mel(loaded.samples, cfg)
    return Clip(key, widen(db16[None])[0], lo, hi)


# ----------------------------------------------------------------------------------------------
# cached clips


def cached_clips(cache, positions: Sequence[int]) -> Iterator[Clip]:
    """Whole clips of a ``FeatureCache`` at ``positions`` (keyed 0, 1, … in that order), with the lo/hi of
    its index."""
    lo = cache.index["lo"].to_numpy()
    hi = cache.index["hi"].to_numpy()
    for row, i in enumerate(positions):
        yield Clip(row, cache.clip(int(i)), float(lo[i]), float(hi[i]))


def cache_windows(cache, positions, starts, width: int, name: str) -> np.ndarray:
    """Model input of windows read from a ``FeatureCache`` → float32 (B, n_mels, width).

    Window b = frames ``[starts[b], starts[b] + width)`` of clip ``positions[b]`` (frames past its end hold
    its ``lo``), normalised by ``name`` with that clip's lo/hi: equal to :func:`take_windows` of
    :func:`model_input` of the whole clip.
    """
    positions = np.asarray(positions, dtype=np.int64).ravel()
    db = cache.windows(positions, starts, width)
    lo = cache.index["lo"].to_numpy(np.float32)[positions]
    hi = cache.index["hi"].to_numpy(np.float32)[positions]
    return normalize(db, lo, hi, name)


# ----------------------------------------------------------------------------------------------
# whole clip → windows


def model_input(db: np.ndarray, lo: float, hi: float, width: int, name: str = "minmax") -> np.ndarray:
    """(F, T) dB → (F, max(T, width)) float32 model input: right-padded with ``lo`` (as
    ``FeatureCache.windows``), then normalised by ``name``."""
    db = np.asarray(db, dtype=np.float32)
    if db.shape[1] < width:
        db = np.pad(db, ((0, 0), (0, width - db.shape[1])), constant_values=np.float32(lo))
    return normalize(db, lo, hi, name)


def take_windows(x: np.ndarray, starts: np.ndarray, width: int) -> np.ndarray:
    """(F, T) → (n, F, width) copies of the windows starting at ``starts``."""
    view = np.lib.stride_tricks.sliding_window_view(x, width, axis=1)  # (F, T − width + 1, width)
    return np.ascontiguousarray(view[:, starts].transpose(1, 0, 2))
