"""One torch module from mono waveform to ensemble probabilities, made for export as one ONNX graph.

:class:`WaveformEnsemble` re-states the whole inference path with export-friendly tensor operations, so a
deployment needs only an audio decoder (to mono float32 at 44.1 kHz) and onnxruntime:

1. trim silence (SPEC §2.3; frame energies from a float64 cumulative sum, as ``audio.frame_power``),
2. zero-pad to 2 s, half on each side,
3. STFT as a matrix product with a fixed Hann-windowed DFT basis (reflect-padded centred frames; the
   ONNX DFT operator has no fast path for n_fft = 2560), power, librosa's Slaney mel filter bank,
4. dB with the (max − top_db) floor — or PCEN (``frontend.kind: pcen``) by the cache's own
   :class:`noisytag.audio.features.PCEN` module (its smoother a 1-D convolution) — per-clip min-max normalisation,
5. the windows of SPEC §7 (numpy ``linspace`` arithmetic in float64, rounded half to even),
6. every member's sigmoid probabilities, mean over members, then over windows.

Outputs: ``probs`` (1, K), ``window_probs`` (n, K) and ``starts`` (n,) window start frames (of the
trimmed, padded clip). Data-dependent sizes (trim bounds, window count) are exported through
``torch.export`` unbacked sizes. ``noisytag.infer.export.export_waveform`` writes it as ``waveform.onnx``
(``noisytag export --with-frontend``) and checks it against the PyTorch path.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from noisytag.audio.features import PCEN, check_frontend, mel_filters
from noisytag.config import FrontendConfig
from noisytag.infer.members import ProbsModel


def dft_basis(n_fft: int) -> np.ndarray:
    """(n_fft, 2 · (n_fft // 2 + 1)) float32: periodic-Hann-windowed [cos | −sin] DFT columns."""
    n = np.arange(n_fft)
    k = np.arange(n_fft // 2 + 1)
    window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # torch.hann_window(periodic=True)
    angle = 2 * np.pi * np.outer(n, k) / n_fft
    return np.concatenate([window[:, None] * np.cos(angle), -window[:, None] * np.sin(angle)], axis=1).astype(
        np.float32
    )


class WaveformEnsemble(nn.Module):
    """(1, N) mono float32 waveform at ``frontend.sample_rate`` → (probs (1, K), window_probs (n, K), starts (n,))."""

    def __init__(
        self,
        models: Sequence[nn.Module],
        frontend: FrontendConfig = FrontendConfig(),
        width: int = 128,
        max_stride: int = 48,
        normalize: str = "minmax",
    ):
        super().__init__()
        if normalize not in ("minmax", "none"):
            raise ValueError(f"unknown normalisation '{normalize}'")
        self.members = nn.ModuleList(ProbsModel(m).eval() for m in models)
        self.cfg, self.width, self.max_stride, self.normalize = frontend, width, max_stride, normalize
        self.min_samples = int(round(frontend.min_seconds * frontend.sample_rate))
        self.register_buffer("basis", torch.from_numpy(dft_basis(frontend.n_fft)))
        self.register_buffer("mel", torch.from_numpy(np.ascontiguousarray(mel_filters(frontend).T)))
        self.pcen = PCEN(frontend) if check_frontend(frontend).kind == "pcen" else None

    def trim(self, y: torch.Tensor) -> torch.Tensor:
        """(N,) → y[start:end]: frames more than trim_db below the loudest frame dropped at both ends."""
        cfg = self.cfg
        n = y.shape[0]
        half = cfg.trim_frame // 2
        sq = nn.functional.pad(y.to(torch.float64).square(), (half + 1, half))  # leading 0 = cumsum origin
        csum = torch.cumsum(sq, dim=0)
        starts = torch.arange(n // cfg.trim_hop + 1, device=y.device) * cfg.trim_hop
        power = (csum[starts + cfg.trim_frame] - csum[starts]).clamp_min(0) / cfg.trim_frame
        db = 10.0 * torch.log10(power.clamp_min(1e-10)) - 10.0 * torch.log10(power.max().clamp_min(1e-10))
        loud = db > -cfg.trim_db
        idx = torch.arange(loud.shape[0], device=y.device)
        first = torch.where(loud, idx, loud.shape[0]).min()
        last = torch.where(loud, idx, -1).max()
        begin = torch.where(last >= 0, first * cfg.trim_hop, 0)
        end = torch.where(last >= 0, torch.clamp((last + 1) * cfg.trim_hop, max=n), n)
        end = torch.where(end > begin, end, n)
        begin = torch.where(end > begin, begin, 0)
        b, e = int(begin.item()), int(end.item())
        torch._check(b >= 0)
        torch._check(e <= n)
        torch._check(e > b)
        return y[b:e]

    def pad_to_min(self, y: torch.Tensor) -> torch.Tensor:
        """Zero-pad to ``min_samples`` (half each side, extra zero at the end); longer clips unchanged."""
        missing = torch.clamp(self.min_samples - torch.ones((), dtype=torch.int64) * y.shape[0], min=0)
        left = missing // 2
        padded = torch.cat([torch.zeros(self.min_samples, dtype=y.dtype), y, torch.zeros(self.min_samples)])
        start = int((self.min_samples - left).item())
        length = int(torch.clamp(torch.ones((), dtype=torch.int64) * y.shape[0], min=self.min_samples).item())
        torch._check(start >= 0)
        torch._check(start <= self.min_samples)
        torch._check(length >= self.min_samples)
        torch._check(start + length <= padded.shape[0])
        return padded[start : start + length]

    def log_mel(self, y: torch.Tensor) -> torch.Tensor:
        """(N,) → (n_mels, 1 + N // hop) dB with the per-clip (max − top_db) floor, or PCEN."""
        cfg = self.cfg
        pad = cfg.n_fft // 2
        padded = nn.functional.pad(y[None, None], (pad, pad), mode="reflect")[0, 0]
        frames = padded.unfold(0, cfg.n_fft, cfg.hop_length)  # (T, n_fft)
        spec = frames @ self.basis  # (T, 2 · bins)
        bins = self.basis.shape[1] // 2
        power = spec[:, :bins].square() + spec[:, bins:].square()
        mel = power @ self.mel  # (T, n_mels)
        if self.pcen is not None:
            return self.pcen(mel[None])[0].transpose(0, 1)
        db = 10.0 * torch.log10(mel.clamp_min(1e-10))
        db = torch.maximum(db, db.max() - cfg.top_db)
        return db.transpose(0, 1)

    def windows(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(F, T) → ((n, 1, F, width) windows, (n,) starts) as ``noisytag.audio.windows.window_offsets``."""
        frames = torch.ones((), dtype=torch.int64) * x.shape[1]
        span = torch.clamp(frames - self.width, min=0)
        count = (span + self.max_stride - 1) // self.max_stride + 1
        n = int(count.item())
        torch._check(n >= 1)
        i = torch.arange(n, dtype=torch.float64)
        step = span.to(torch.float64) / torch.clamp(count - 1, min=1).to(torch.float64)
        starts = torch.where(i == (count - 1).to(torch.float64), span.to(torch.float64), i * step)
        starts = torch.round(starts).to(torch.int64)
        padded = torch.cat([x, torch.zeros(x.shape[0], self.width, dtype=x.dtype)], dim=1)
        idx = starts[:, None] + torch.arange(self.width)[None, :]  # (n, width)
        return padded[:, idx].permute(1, 0, 2)[:, None], starts

    def forward(self, wave: torch.Tensor):
        y = self.pad_to_min(self.trim(wave[0]))
        db = self.log_mel(y)
        if self.normalize == "minmax":
            lo, hi = db.min(), db.max()
            span = hi - lo
            x = torch.where(span > 0, (db - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(db))
        else:
            x = db
        wins, starts = self.windows(x)
        total = self.members[0](wins)
        for member in self.members[1:]:
            total = total + member(wins)
        window_probs = total / len(self.members)
        return window_probs.mean(dim=0, keepdim=True), window_probs, starts


__all__ = ["WaveformEnsemble", "dft_basis"]
