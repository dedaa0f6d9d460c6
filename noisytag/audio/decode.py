"""Audio front end of SPEC §2 steps 1–3: decode → mono → 44.1 kHz → trim silence → pad to 2 s.

Everything after :func:`decode` is a pure function on a 1-D float32 array. The steps reproduce the
librosa reference exactly:

- ``decode`` + resampling equals ``librosa.load(path, sr=44100, mono=True)`` (soundfile decode,
  channel mean, soxr "HQ" resampling, output length ``ceil(n · 44100 / sr)``);
- :func:`trim_silence` equals ``librosa.effects.trim(y, top_db=60, frame_length=2048,
  hop_length=512)`` but is several times faster: frame energies are sums of per-block energies
  (block = gcd of frame, hop and half-frame), so no (frame_length, n_frames) matrix is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from noisytag.config import FrontendConfig
from noisytag.data.files import AUDIO_SUFFIXES, audio_files  # noqa: F401  (re-exported: callers list files here)

_AMIN = 1e-10  # librosa's power floor in power_to_db (amplitude 1e-5)


class AudioError(Exception):
    """An audio file cannot be used; ``str(err)`` is one line ``"PATH: reason"``."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def decode(path: str | Path) -> tuple[np.ndarray, int]:
    """Read an audio file (WAV/FLAC/OGG/MP3, any channel count) → (mono float32 (N,), sample rate).

    Channels are averaged (librosa's ``to_mono``). Raises :class:`AudioError` for a missing,
    unreadable, corrupt or empty file, or one holding non-finite samples.
    """
    import soundfile as sf

    path = Path(path)
    if not path.exists():
        raise AudioError(path, "file not found")
    if not path.is_file():
        raise AudioError(path, "not a regular file")
    try:
        with sf.SoundFile(str(path)) as f:
            sr, subtype = f.samplerate, f.subtype
            if subtype == "PCM_16":  # reading int16 and scaling here is faster, and bit-identical
                data = f.read(dtype="int16", always_2d=True) * np.float32(1 / 32768)
            else:
                data = f.read(dtype="float32", always_2d=True)
    except (sf.SoundFileError, RuntimeError, OSError, ValueError) as err:
        if path.stat().st_size == 0:
            raise AudioError(path, "empty file (0 bytes)") from None
        reason = " ".join(str(getattr(err, "error_string", err)).split()) or type(err).__name__
        raise AudioError(path, f"cannot decode audio ({reason})") from None
    if data.shape[0] == 0 or data.shape[1] == 0:
        raise AudioError(path, "no audio samples")
    y = data[:, 0] if data.shape[1] == 1 else data.mean(axis=1, dtype=np.float32)
    if not subtype.startswith("PCM") and not np.isfinite(y).all():  # integer PCM is always finite
        raise AudioError(path, "non-finite (NaN or infinite) samples")
    return np.ascontiguousarray(y), int(sr)


def resample(y: np.ndarray, sr: int, target_sr: int) -> np.ndarray:
    """soxr "HQ" resampling to ``target_sr``; length ``ceil(N · target / sr)`` like ``librosa.resample``."""
    if sr == target_sr:
        return y
    import soxr

    out = soxr.resample(y, sr, target_sr, quality="HQ")
    size = int(math.ceil(len(y) * float(target_sr) / sr))
    if len(out) >= size:
        return np.ascontiguousarray(out[:size], dtype=np.float32)
    return np.pad(out, (0, size - len(out))).astype(np.float32, copy=False)


def frame_power(y: np.ndarray, frame_length: int, hop_length: int) -> np.ndarray:
    """Mean square of each centred, zero-padded frame (librosa ``feature.rms(...)**2``) → (1 + N // hop,).

    Frames start every ``hop_length`` samples of the signal padded with ``frame_length // 2`` zeros on
    each side. Squares are summed once per block of ``g`` samples (g divides frame, hop and the
    padding); a frame's energy is then the sum of its ``frame_length / g`` blocks, in float64.
    """
    n = len(y)
    half = frame_length // 2
    g = math.gcd(math.gcd(frame_length, hop_length), half) if half else math.gcd(frame_length, hop_length)
    n_frames = 1 + (n + 2 * half - frame_length) // hop_length
    sq = np.square(y, dtype=np.float32)
    full = n // g
    body = sq[: full * g].reshape(full, g).sum(axis=1, dtype=np.float64)
    n_blocks = -(-(n + 2 * half) // g)
    blocks = np.zeros(n_blocks, dtype=np.float64)
    lead = half // g
    blocks[lead : lead + full] = body
    if n % g:
        blocks[lead + full] = sq[full * g :].sum(dtype=np.float64)
    per_frame = frame_length // g
    starts = np.arange(n_frames) * (hop_length // g)
    csum = np.concatenate([[0.0], np.cumsum(blocks)])
    # Sums over per_frame consecutive blocks; cancellation is ≈1e-16 of the total, far below the
    # −60 dB decision threshold, and the cumulative sum runs over N / g values only.
    energy = csum[starts + per_frame] - csum[starts]
    return np.maximum(energy, 0.0) / frame_length


def trim_bounds(y: np.ndarray, cfg: FrontendConfig = FrontendConfig()) -> tuple[int, int]:
    """``(start, end)`` samples that :func:`trim_silence` keeps: ``start = first_loud_frame · hop``,
    ``end = min(N, (last_loud_frame + 1) · hop)``; ``(0, N)`` for an empty or all-quiet clip."""
    if len(y) == 0:
        return 0, 0
    power = frame_power(y, cfg.trim_frame, cfg.trim_hop)
    db = 10.0 * np.log10(np.maximum(power, _AMIN)) - 10.0 * np.log10(max(power.max(), _AMIN))
    loud = np.flatnonzero(db > -cfg.trim_db)
    if loud.size == 0:  # cannot happen (the loudest frame is at 0 dB); kept as a guard
        return 0, len(y)
    start = int(loud[0]) * cfg.trim_hop
    end = min(len(y), (int(loud[-1]) + 1) * cfg.trim_hop)
    return (start, end) if end > start else (0, len(y))


def trim_silence(y: np.ndarray, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Drop leading and trailing frames more than ``cfg.trim_db`` dB below the loudest frame.

    ``y``: (N,) → a view ``y[start:end]`` of :func:`trim_bounds` (librosa.effects.trim). A silent clip
    keeps all its samples (every frame is then 0 dB relative to its all-silent peak), so the result is
    never empty.
    """
    start, end = trim_bounds(y, cfg)
    return y[start:end]


def min_samples(cfg: FrontendConfig = FrontendConfig()) -> int:
    """Samples of the shortest clip after padding (2 s at 44.1 kHz = 88,200)."""
    return int(round(cfg.min_seconds * cfg.sample_rate))


def pad_to_min(y: np.ndarray, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Zero-pad a clip shorter than ``cfg.min_seconds`` to exactly that length, half on each side.

    With an odd padding the extra zero goes to the end (left = pad // 2). Longer clips are returned
    unchanged (same object).
    """
    missing = min_samples(cfg) - len(y)
    if missing <= 0:
        return y
    left = missing // 2
    return np.pad(y, (left, missing - left)).astype(np.float32, copy=False)


@dataclass(frozen=True)
class LoadedClip:
    """A clip of :func:`load_clip` and where it lies in its file.

    ``samples``: float32 (N ≥ min_samples,) after resampling, trimming and padding; ``duration``: seconds of
    the decoded file; ``offset``: file time (s) of ``samples[0]`` (negative when zero-padded on the left).
    """

    samples: np.ndarray
    duration: float
    offset: float


def prepare(y: np.ndarray, sr: int, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Steps 1–3 on a decoded mono signal: resample to ``cfg.sample_rate``, trim, pad → float32 (N,)."""
    return _prepare(y, sr, cfg)[0]


def _prepare(y: np.ndarray, sr: int, cfg: FrontendConfig) -> tuple[np.ndarray, int]:
    """:func:`prepare` and the index of its first sample in the resampled signal (negative if padded)."""
    y = resample(np.asarray(y, dtype=np.float32), sr, cfg.sample_rate)
    start, end = trim_bounds(y, cfg)
    left = max(min_samples(cfg) - (end - start), 0) // 2
    return np.ascontiguousarray(pad_to_min(y[start:end], cfg), dtype=np.float32), start - left


def load(path: str | Path, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """Decode, mix to mono, resample to 44.1 kHz, trim silence and pad to 2 s → float32 (N ≥ 88,200,).

    Raises :class:`AudioError` ("PATH: reason") for files that cannot be used.
    """
    y, sr = decode(path)
    return prepare(y, sr, cfg)


def load_clip(path: str | Path, cfg: FrontendConfig = FrontendConfig()) -> LoadedClip:
    """:func:`load` plus the file's duration and the clip's offset in it (to place windows in file time)."""
    y, sr = decode(path)
    samples, first = _prepare(y, sr, cfg)
    return LoadedClip(samples, len(y) / sr, first / cfg.sample_rate)
