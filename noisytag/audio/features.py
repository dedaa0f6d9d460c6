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

PCEN (``frontend.kind: pcen``, :class:`PCEN`): the same mel power E goes through per-channel energy
normalisation instead of dB, (E / (eps + M)^alpha + delta)^r − delta^r, M = E smoothed along time. The
smoother is defined once, as a causal FIR (:func:`pcen_kernel`), and used by the cache and the ONNX
waveform graph alike, so both compute the same values.
"""

from __future__ import annotations

import functools
import math
import threading

import numpy as np
import torch
from torch import nn

from noisytag.config import ConfigError, FrontendConfig

AMIN = 1e-10  # power floor before the log (librosa's amin)
_GROUP = 16  # mel filters per band-limited matrix product
KINDS = ("logmel", "pcen")  # frontend.kind
PCEN_TAIL = 1e-6  # share of the smoother's exponential kernel left out by the FIR's truncation


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


def check_frontend(cfg: FrontendConfig) -> FrontendConfig:
    """``cfg`` if its kind and PCEN keys can run, else a one-line :class:`ConfigError` naming the key
    (config validation, :func:`noisytag.runs.validate.validate_plugins`, asks here)."""
    if cfg.kind not in KINDS:
        raise ConfigError(
            f"config key 'frontend.kind': unknown front end '{cfg.kind}' (expected {' or '.join(KINDS)})"
        )
    if cfg.kind == "pcen":
        for key, ok, why in (
            ("pcen_alpha", 0 <= cfg.pcen_alpha <= 1, "must be in [0, 1]"),
            ("pcen_delta", cfg.pcen_delta >= 0, "must be ≥ 0"),
            ("pcen_r", 0 < cfg.pcen_r <= 1, "must be in (0, 1]"),
            ("pcen_time_constant", cfg.pcen_time_constant > 0, "must be > 0 seconds"),
            ("pcen_eps", cfg.pcen_eps > 0, "must be > 0"),
        ):
            if not ok:
                raise ConfigError(f"config key 'frontend.{key}': {why}, got {getattr(cfg, key)!r}")
    return cfg


def pcen_smoothing(cfg: FrontendConfig) -> float:
    """The smoother's coefficient s of M[t] = (1 − s)·M[t − 1] + s·E[t]: librosa's, from the time
    constant in frames T = time_constant · sr / hop, s = (√(1 + 4T²) − 1) / (2T²) (0.0386 at 44.1 kHz, hop 694)."""
    t = cfg.pcen_time_constant * cfg.sample_rate / cfg.hop_length
    return (math.sqrt(1 + 4 * t * t) - 1) / (2 * t * t)


def pcen_kernel(cfg: FrontendConfig) -> np.ndarray:
    """The smoother as a causal FIR, float64 (L,): h[k] = s·(1 − s)^k for k < L, the weight of E[t − k].

    L is the shortest length whose dropped tail (1 − s)^L is below :data:`PCEN_TAIL` of the mass (352
    frames, 5.5 s, at the defaults); the kernel is rescaled to sum to 1, so a constant energy is
    smoothed to itself. Frames before a clip count as its first frame (the recursive filter's
    steady state at the first frame, as librosa's default initial state): within 1e-6 of the recursive
    IIR (tests/test_pcen.py). A recursion is awkward in ONNX; a convolution is not.
    """
    s = pcen_smoothing(cfg)
    length = max(1, math.ceil(math.log(PCEN_TAIL) / math.log1p(-s))) if s < 1 else 1
    h = s * (1 - s) ** np.arange(length, dtype=np.float64)
    return h / h.sum()


class PCEN(nn.Module):
    """Mel power (B, T, n_mels), time-major → PCEN (B, T, n_mels): (E / (eps + M)^alpha + delta)^r − delta^r.

    M is E filtered along time by :func:`pcen_kernel` (a 1-D convolution; the first frame repeated
    before the clip). The one implementation: the feature cache (through :class:`LogMel`) and the
    ONNX waveform graph (:class:`noisytag.infer.onnx_frontend.WaveformEnsemble`) both call it.
    """

    def __init__(self, cfg: FrontendConfig = FrontendConfig(), dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.cfg = cfg
        taps = torch.from_numpy(pcen_kernel(cfg)[::-1].copy())  # conv1d correlates: oldest frame first
        self.register_buffer("taps", taps.to(dtype).view(1, 1, -1), persistent=False)

    def smooth(self, energy: torch.Tensor) -> torch.Tensor:
        """(B, T, F) → M (B, T, F): each channel's causal FIR smoothing along time."""
        batch, frames, bands = energy.shape
        x = energy.transpose(1, 2).reshape(batch * bands, 1, frames)
        x = nn.functional.pad(x, (self.taps.shape[-1] - 1, 0), mode="replicate")
        m = nn.functional.conv1d(x, self.taps.to(energy.dtype))
        return m.reshape(batch, bands, frames).transpose(1, 2)

    def forward(self, energy: torch.Tensor) -> torch.Tensor:
        cfg = self.cfg
        gain = (self.smooth(energy) + cfg.pcen_eps).pow(-cfg.pcen_alpha)
        return (energy * gain + cfg.pcen_delta).pow(cfg.pcen_r) - cfg.pcen_delta**cfg.pcen_r


class LogMel(nn.Module):
    """Waveforms (B, N) at ``cfg.sample_rate`` → log-mel dB (B, n_mels, 1 + N // hop), or its PCEN
    (:class:`PCEN`) when ``cfg.kind`` is "pcen" (then the dB floor ``top_db`` is not used).

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
        self.pcen = PCEN(cfg, dtype) if check_frontend(cfg).kind == "pcen" else None

    def frames_db(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) → dB (or PCEN) as (B, T, n_mels): time-major, one row per frame, as the feature cache stores it."""
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
        if self.pcen is not None:
            return self.pcen(mel)
        db = torch.log10(mel.clamp_min_(AMIN)).mul_(10.0)
        floor = db.amax(dim=(1, 2), keepdim=True) - cfg.top_db
        return torch.maximum(db, floor, out=db)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, N) waveforms → (B, n_mels, T) dB or PCEN (a transposed view of :meth:`frames_db`)."""
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
    """One clip (N,) → float32 dB or PCEN (``cfg.kind``) (T, n_mels), time-major (the cache's row layout)."""
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
