"""Log-mel front end of SPEC §2 steps 4–5 as a torch module (CPU or GPU, batched); math only.

``LogMel`` reproduces ``librosa.power_to_db(librosa.feature.melspectrogram(y=y, sr=44100, n_fft=2560,
hop_length=694, n_mels=128, fmin=20, fmax=22050, pad_mode='reflect'))`` with librosa's own
(float32, Slaney) mel filter bank.

Precision: librosa multiplies float32 frames by a float64 window, so its FFT runs in float64. Ours
runs in float32, which is faster; its rounding error, largest on pure tones in bins just above the
(max − 80 dB) floor, stays well inside the 0.01 dB budget (tests/test_audio.py checks it against
librosa; the measured figures are in benchmarks/README.md, "Figures the code relies on").
``LogMel(dtype=torch.float64)`` matches librosa's float64 path when wanted.

Speed: only the few frames that reach into the reflect padding are copied (the rest are a strided
view of the signal); frames are transformed in chunks of ``chunk_frames`` through a per-thread reused
buffer (fresh megabyte tensors page-fault); and the mel product only multiplies the non-zero band of
each group of 16 filters (each FFT bin lies in at most two adjacent triangles), a fraction of the
multiply-adds of the dense (n_mels × bins) product. ``benchmarks/bench_features.py`` measures it.
"""

from __future__ import annotations

import functools
import threading

import numpy as np
import torch
from torch import nn

from noisytag.config import FrontendConfig

AMIN = 1e-10  # power floor before the log (librosa's amin)
_GROUP = 16  # mel filters per band-limited matrix product


def n_frames(n_samples: int, cfg: FrontendConfig = FrontendConfig()) -> int:
    """Frames of a centred STFT: 1 + n_samples // hop (2 s at 44.1 kHz → 128)."""
    return 1 + int(n_samples) // cfg.hop_length


@functools.lru_cache(maxsize=8)
def mel_filters(cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """librosa's Slaney mel filter bank, float32 (n_mels, n_fft // 2 + 1) — the reference's own weights."""
    import librosa

    fb = librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.fmin, fmax=cfg.fmax, dtype=np.float32
    )
    fb.setflags(write=False)
    return fb


def _band_groups(fb: np.ndarray, size: int) -> list[tuple[int, int, int, int]]:
    """(first filter, end filter, first bin, end bin) of each group of ``size`` filters' non-zero band."""
    groups = []
    for m0 in range(0, fb.shape[0], size):
        m1 = min(m0 + size, fb.shape[0])
        bins = np.flatnonzero((fb[m0:m1] != 0).any(axis=0))
        lo, hi = (int(bins[0]), int(bins[-1]) + 1) if bins.size else (0, 1)
        groups.append((m0, m1, lo, hi))
    return groups


def frame_segments(x: torch.Tensor, n_fft: int, hop: int) -> list[tuple[int, torch.Tensor]]:
    """Centred STFT frames of (B, N) signals with reflect padding, as (first frame, (B, t, n_fft) view) pieces.

    Only the few frames that reach into the padding are built from small reflect-padded copies of the
    signal's ends; the interior frames are a strided view of ``x`` itself (no copy of the signal).
    Together the pieces are exactly ``pad(x, reflect).unfold(-1, n_fft, hop)``, frames 0 … N // hop.
    """
    pad = n_fft // 2
    n = x.shape[-1]
    total = 1 + n // hop
    head = -(-pad // hop)  # frames starting before sample 0
    body_end = (n + pad - n_fft) // hop + 1  # frames ending at or before sample N
    if hop >= n_fft - pad or body_end <= head or n < 2 * n_fft:  # short or unusual: pad everything
        padded = nn.functional.pad(x.unsqueeze(1), (pad, pad), mode="reflect").squeeze(1)
        return [(0, padded.unfold(-1, n_fft, hop))]
    left = nn.functional.pad(x[:, : (head - 1) * hop - pad + n_fft].unsqueeze(1), (pad, 0), mode="reflect")
    tail_start = body_end * hop - pad
    right = nn.functional.pad(x[:, tail_start:].unsqueeze(1), (0, pad), mode="reflect")
    body = x[:, head * hop - pad : (body_end - 1) * hop - pad + n_fft]
    return [
        (0, left.squeeze(1).unfold(-1, n_fft, hop)[:, :head]),
        (head, body.unfold(-1, n_fft, hop)),
        (body_end, right.squeeze(1).unfold(-1, n_fft, hop)[:, : total - body_end]),
    ]


class LogMel(nn.Module):
    """Waveforms (B, N) at ``cfg.sample_rate`` → log-mel dB (B, n_mels, 1 + N // hop).

    dB = 10·log10(max(S, 1e-10)), floored per example at its maximum − ``cfg.top_db``. N must exceed
    n_fft // 2 (reflect padding); clips from :func:`noisytag.audio.decode.load` always do. ``chunk_frames``
    bounds the frames transformed at once (memory and cache locality); ``None`` does all at once (GPU).
    ``filters`` (n_mels, n_fft // 2 + 1) skips computing :func:`mel_filters` (worker processes get them
    from their parent instead of importing librosa's filter code).
    """

    def __init__(
        self,
        cfg: FrontendConfig = FrontendConfig(),
        dtype: torch.dtype = torch.float32,
        chunk_frames: int | None = 128,
        filters: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.chunk_frames = chunk_frames
        fb = mel_filters(cfg) if filters is None else np.asarray(filters, dtype=np.float32)
        if fb.shape != (cfg.n_mels, cfg.n_fft // 2 + 1):
            raise ValueError(
                f"mel filters of shape {fb.shape} do not fit n_mels={cfg.n_mels}, n_fft={cfg.n_fft}"
            )
        self.groups = _band_groups(fb, _GROUP)
        window = torch.hann_window(cfg.n_fft, periodic=True, dtype=torch.float64)
        self.register_buffer("window", window.to(dtype), persistent=False)
        self.register_buffer("filters", torch.from_numpy(fb.copy()).to(dtype), persistent=False)
        # Each weight twice, for the squared real and imaginary parts, which the rfft output holds
        # interleaved: power and mel sum become one product over contiguous squares (no strided add).
        self.register_buffer("filters2", self.filters.repeat_interleave(2, dim=1), persistent=False)

    def frames_db(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) → dB as (B, T, n_mels): time-major, one row per frame, as the feature cache stores it."""
        if x.dim() != 2:
            raise ValueError(f"LogMel expects waveforms of shape (B, N), got {tuple(x.shape)}")
        cfg = self.cfg
        pad = cfg.n_fft // 2
        if x.shape[1] <= pad:
            raise ValueError(
                f"LogMel needs more than {pad} samples per clip (reflect padding), got {x.shape[1]}"
            )
        x = x.to(self.window.dtype)
        batch, total = x.shape[0], n_frames(x.shape[1], cfg)
        step = total if self.chunk_frames is None else max(1, min(total, self.chunk_frames // max(batch, 1)))
        mel = torch.empty(batch, total, cfg.n_mels, dtype=x.dtype, device=x.device)
        windowed = _scratch(batch, step, cfg.n_fft, x.dtype, x.device, keep=self.chunk_frames is not None)
        for first, frames in frame_segments(x, cfg.n_fft, cfg.hop_length):
            for f0 in range(0, frames.shape[1], step):
                c = min(step, frames.shape[1] - f0)
                w = windowed[:, :c]
                torch.mul(frames[:, f0 : f0 + c], self.window, out=w)
                spec = torch.fft.rfft(w, dim=-1)  # (rfft with out= copies: slower)
                squares = torch.view_as_real(spec).reshape(batch * c, -1).square_()  # re², im², … per bin
                chunk = torch.empty(batch * c, cfg.n_mels, dtype=x.dtype, device=x.device)
                for m0, m1, b0, b1 in self.groups:
                    band = self.filters2[m0:m1, 2 * b0 : 2 * b1].T
                    torch.mm(squares[:, 2 * b0 : 2 * b1], band, out=chunk[:, m0:m1])
                mel[:, first + f0 : first + f0 + c] = chunk.view(batch, c, cfg.n_mels)
        db = torch.log10(mel.clamp_min_(AMIN)).mul_(10.0)
        floor = db.amax(dim=(1, 2), keepdim=True) - cfg.top_db
        return torch.maximum(db, floor, out=db)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) waveforms → (B, n_mels, T) dB (a transposed view of :meth:`frames_db`)."""
        return self.frames_db(x).transpose(1, 2)


_SCRATCH = threading.local()


def _scratch(batch: int, step: int, n_fft: int, dtype: torch.dtype, device: torch.device, keep: bool):
    """Per-thread (B, step, n_fft) buffer for the windowed frames of a chunk, reused across calls.

    A fresh multi-megabyte tensor page-faults on every allocation, which costs more than the FFT of a
    short clip. Buffers are per thread (callers may extract in several threads) and only kept for bounded
    chunk sizes (``keep``); at most a few shapes are held.
    """
    key = (batch, step, n_fft, dtype, str(device))
    cache = getattr(_SCRATCH, "buffers", None)
    if cache is None:
        cache = _SCRATCH.buffers = {}
    if key not in cache:
        buffer = torch.empty(batch, step, n_fft, dtype=dtype, device=device)
        if not keep:
            return buffer
        if len(cache) >= 4:
            cache.clear()
        cache[key] = buffer
    return cache[key]


@functools.lru_cache(maxsize=4)
def _module(cfg: FrontendConfig) -> LogMel:
    return LogMel(cfg)


def log_mel_frames(
    y: np.ndarray, cfg: FrontendConfig = FrontendConfig(), module: LogMel | None = None
) -> np.ndarray:
    """One clip (N,) → float32 dB (T, n_mels), time-major (the cache's row layout)."""
    x = torch.from_numpy(np.ascontiguousarray(y, dtype=np.float32)).unsqueeze(0)
    with torch.inference_mode():
        return (module or _module(cfg)).frames_db(x)[0].numpy().astype(np.float32, copy=False)


def log_mel(y: np.ndarray, cfg: FrontendConfig = FrontendConfig()) -> np.ndarray:
    """One clip (N,) float → float32 dB (n_mels, 1 + N // hop), the librosa reference within 0.01 dB."""
    return np.ascontiguousarray(log_mel_frames(y, cfg).T)


def normalize(db, lo, hi):
    """Per-clip min-max scaling of dB values to [0, 1] (SPEC §2.6), for numpy arrays or torch tensors.

    ``lo``/``hi`` are per-clip values aligned with the LEADING axes of ``db`` (shape (), (B,) or
    (B, C)…) and broadcast over the rest: db (B, n_mels, T) with lo (B,) scales each clip by its own
    range. A clip with hi == lo (e.g. digital silence) gives zeros.
    """
    if isinstance(db, torch.Tensor):
        lo = torch.as_tensor(lo, dtype=db.dtype, device=db.device)
        hi = torch.as_tensor(hi, dtype=db.dtype, device=db.device)
        lo = lo.reshape(lo.shape + (1,) * (db.dim() - lo.dim()))
        hi = hi.reshape(hi.shape + (1,) * (db.dim() - hi.dim()))
        span = hi - lo
        ok = span > 0
        return torch.where(ok, (db - lo) / torch.where(ok, span, torch.ones_like(span)), torch.zeros_like(db))
    db = np.asarray(db)
    dtype = db.dtype if np.issubdtype(db.dtype, np.floating) and db.dtype.itemsize >= 4 else np.float32
    db = db.astype(dtype, copy=False)
    lo = np.asarray(lo, dtype=dtype)
    hi = np.asarray(hi, dtype=dtype)
    lo = lo.reshape(lo.shape + (1,) * (db.ndim - lo.ndim))
    hi = hi.reshape(hi.shape + (1,) * (db.ndim - hi.ndim))
    span = hi - lo
    ok = span > 0
    return np.where(ok, (db - lo) / np.where(ok, span, 1), 0).astype(dtype, copy=False)
