"""Procedural sounds of the demo data set: twelve sound classes and two recording domains, pure numpy.

Each class generator maps ``(rng, n_samples, sample_rate) -> float64 (n_samples,)`` of roughly unit level.
The classes differ in their spectro-temporal pattern in a log-mel spectrogram (tonal or noisy, rising or
falling, rhythmic or continuous, low or high) while pitch, timing and level vary within a class.
:func:`render_clip` mixes the classes of one clip and applies a recording domain ("clean" for curated and
test clips; "noisy": other noise floor, mains hum, band-limiting, clipping or compression).
All frequencies stay below 0.45 × the sample rate, so any rate ≥ 8 kHz works.
(Over ~400 lines on purpose: twelve small generators, one per class, read best side by side.)
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

# ---------------------------------------------------------------- signal helpers


def _fast_len(n: int) -> int:
    """Smallest 2^a·3^b·5^c ≥ n: FFTs of prime-ish lengths are many times slower."""
    best, p5 = 1 << (n - 1).bit_length(), 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            best = min(best, p35 << (-(-n // p35) - 1).bit_length())
            p35 *= 3
        p5 *= 5
    return best


def _fft_filter(x: np.ndarray, sr: int, gain: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Zero-phase filter of a whole signal: multiply its (zero-padded) spectrum by ``gain(freqs_hz)``."""
    size = _fast_len(len(x))
    spec = np.fft.rfft(x, n=size)
    spec *= gain(np.fft.rfftfreq(size, 1.0 / sr))
    return np.fft.irfft(spec, n=size)[: len(x)]


def _stft_filter(x: np.ndarray, sr: int, gains: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """Time-varying filter: ``gains(times (F,), freqs (B,)) -> (F, B)`` applied per 1024-sample frame.

    sqrt-Hann analysis and synthesis windows at hop N/2 reconstruct the input exactly when the gain is 1.
    """
    n_fft, hop = 1024, 512
    win = np.sqrt(0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft))
    n_frames = (len(x) + hop) // hop + 1
    padded = np.concatenate([np.zeros(hop), x, np.zeros(n_fft + hop)])
    idx = np.arange(n_fft)[None, :] + hop * np.arange(n_frames)[:, None]
    spec = np.fft.rfft(padded[idx] * win, axis=1)
    times = (np.arange(n_frames) * hop) / sr
    spec *= gains(times, np.fft.rfftfreq(n_fft, 1.0 / sr))
    out = np.fft.irfft(spec, n=n_fft, axis=1) * win
    seg = np.zeros((n_frames + 1, hop))
    seg[:n_frames] += out[:, :hop]
    seg[1:] += out[:, hop:]
    return seg.ravel()[hop : hop + len(x)]


def _ipow(x: np.ndarray, k: int) -> np.ndarray:
    """x**k for a small integer k by repeated multiplication (float ** is much slower)."""
    out = x
    for _ in range(k - 1):
        out = out * x
    return out


def _band(lo: float, hi: float, order: int = 4) -> Callable[[np.ndarray], np.ndarray]:
    """Smooth band-pass magnitude response (Butterworth-like) between lo and hi Hz."""

    def gain(f: np.ndarray) -> np.ndarray:
        f = np.maximum(f, 1e-3)
        return 1.0 / np.sqrt((1 + _ipow((lo / f) ** 2, order)) * (1 + _ipow((f / hi) ** 2, order)))

    return gain


def _shaped_noise(
    rng: np.random.Generator, n: int, sr: int, gain: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """Gaussian noise with magnitude response ``gain(freqs_hz)``, drawn as a spectrum (one FFT), unit RMS."""
    size = _fast_len(n)
    shape = gain(np.fft.rfftfreq(size, 1.0 / sr))
    x = np.fft.irfft(
        (rng.standard_normal(len(shape)) + 1j * rng.standard_normal(len(shape))) * shape, n=size
    )[:n]
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _colored_noise(rng: np.random.Generator, n: int, sr: int, exponent: float) -> np.ndarray:
    """Noise with power ∝ 1/f**exponent (0 white, 1 pink, 2 brown), unit RMS."""
    return _shaped_noise(rng, n, sr, lambda f: 1.0 / np.maximum(f, 20.0) ** (exponent / 2))


def _fade(n: int, sr: int, attack: float, release: float) -> np.ndarray:
    """Linear attack/release envelope of length n (seconds clipped to the length)."""
    a = max(1, min(int(attack * sr), n // 2))
    r = max(1, min(int(release * sr), n // 2))
    env = np.ones(n)
    env[:a] = np.arange(1, a + 1) / a
    env[n - r :] = np.minimum(env[n - r :], np.arange(r, 0, -1) / r)
    return env


def _time(n: int, sr: int) -> np.ndarray:
    """Sample times in seconds, float32 (slow LFOs only; np.sin on float32 is much faster)."""
    return np.arange(n, dtype=np.float32) / np.float32(sr)


def _phase(freq: np.ndarray, sr: int) -> np.ndarray:
    """Instantaneous phase (radians, wrapped to [0, 2π), float32 so that np.sin is fast) of a track in Hz."""
    cycles = np.cumsum(freq) * (1.0 / sr)
    cycles -= np.floor(cycles)
    return (cycles * (2 * np.pi)).astype(np.float32)


def _harmonics(phase: np.ndarray, amps: list[float]) -> np.ndarray:
    return sum(a * np.sin((k + 1) * phase) for k, a in enumerate(amps))


def _hits(rng: np.random.Generator, n: int, sr: int, interval: float, jitter: float) -> np.ndarray:
    """Sample positions of roughly periodic events filling n samples (at least one)."""
    step = interval * sr
    pos = np.arange(rng.uniform(0, 0.3) * step, n, step)
    pos = pos + rng.normal(0, jitter * step, len(pos))
    pos = np.clip(pos, 0, n - 1).astype(np.int64)
    return pos if len(pos) else np.array([0])


def _place(n: int, starts: np.ndarray, grain: np.ndarray, amps: np.ndarray) -> np.ndarray:
    """Sum of copies of ``grain`` at ``starts`` (scaled by ``amps``), cut at n samples."""
    out = np.zeros(n + len(grain))
    idx = starts[:, None] + np.arange(len(grain))[None, :]
    np.add.at(out, idx.ravel(), (amps[:, None] * grain[None, :]).ravel())
    return out[:n]


# ---------------------------------------------------------------- the twelve sound classes
# Each maps (rng, n samples, sample rate) -> float64 (n,) of roughly unit level.


def _whistle(rng, n, sr):
    out = np.zeros(n)
    n_notes = int(rng.integers(1, 4))
    bounds = np.linspace(0, n, n_notes + 1).astype(int)
    t = _time(n, sr)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        f0 = np.exp(rng.uniform(np.log(700), np.log(2500)))
        glide = rng.uniform(-0.08, 0.08) * np.linspace(0, 1, b - a)
        vib = rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * rng.uniform(4, 8) * t[a:b])
        f = np.minimum(f0 * (1 + glide + vib), 0.45 * sr)
        length = b - a - int(min(0.3 * (b - a), rng.uniform(0.02, 0.15) * sr))  # a short gap between notes
        tone = _harmonics(_phase(f[:length], sr), [1.0, 0.15, 0.05]) * _fade(length, sr, 0.04, 0.08)
        out[a : a + length] = tone
    return out


def _sweep(rng, n, sr, rising: bool):
    out = np.zeros(n)
    pos = 0
    while pos < n:
        length = min(n - pos, int(rng.uniform(0.15, 1.0) * sr))
        f_lo = np.exp(rng.uniform(np.log(200), np.log(1200)))
        f_hi = min(f_lo * rng.uniform(2.5, 6.0), 0.4 * sr)
        ramp = np.linspace(0, 1, length) if rising else np.linspace(1, 0, length)
        f = f_lo * (f_hi / f_lo) ** ramp
        amps = [1.0, rng.uniform(0, 0.4), rng.uniform(0, 0.2)]
        out[pos : pos + length] = _harmonics(_phase(f, sr), amps) * _fade(length, sr, 0.01, 0.02)
        pos += length + int(rng.uniform(0.05, 0.5) * sr)
    return out


def _rising(rng, n, sr):
    return _sweep(rng, n, sr, rising=True)


def _falling(rng, n, sr):
    return _sweep(rng, n, sr, rising=False)


def _bell(rng, n, sr):
    ratios = np.array([0.5, 1.0, 1.183, 1.506, 2.0, 2.514, 2.662, 3.011], np.float32)
    t = np.arange(n, dtype=np.float32) / np.float32(sr)
    out = np.zeros(n)
    n_strikes = int(rng.integers(1, 4))
    for s in np.sort(rng.integers(0, max(1, int(0.6 * n)), n_strikes)):
        f0 = np.exp(rng.uniform(np.log(250), np.log(1500)))
        freqs = (f0 * ratios * rng.uniform(0.99, 1.01, len(ratios))).astype(np.float32)
        amps = (rng.uniform(0.2, 1.0, len(ratios)) * (freqs < 0.45 * sr)).astype(np.float32)
        t60 = (rng.uniform(0.6, 2.5) / np.sqrt(ratios)).astype(np.float32)
        phases = rng.uniform(0, 6.3, 8).astype(np.float32)
        for f, a, d, p in zip(freqs, amps, t60, phases, strict=True):
            tt = t[: min(n - s, int(d * sr))]  # until the partial has decayed by 60 dB
            out[s : s + len(tt)] += a * np.exp(-6.9 / d * tt) * np.sin(2 * np.pi * f * tt + p)
    return out


def _drum(rng, n, sr):
    length = int(0.5 * sr)
    t = np.arange(length) / sr
    f_start, f_end = rng.uniform(120, 250), rng.uniform(40, 80)
    decay = rng.uniform(0.08, 0.35)
    f = f_end + (f_start - f_end) * np.exp(-t / 0.03)
    grain = np.sin(_phase(f, sr)) * np.exp(-t / decay)
    click = rng.standard_normal(length) * np.exp(-t / 0.004) * 0.3
    grain += _fft_filter(click, sr, _band(100, 4000))
    starts = _hits(rng, n, sr, rng.uniform(0.25, 0.7), 0.03)
    return _place(n, starts, grain, rng.uniform(0.6, 1.0, len(starts)))


def _hihat(rng, n, sr):
    length = int(0.25 * sr)
    t = np.arange(length) / sr
    lo = min(rng.uniform(5000, 8000), 0.3 * sr)
    noise = _shaped_noise(rng, length, sr, _band(lo, 0.48 * sr, 3))
    starts = _hits(rng, n, sr, rng.uniform(0.08, 0.3), 0.02)
    decay = rng.uniform(0.01, 0.06)
    closed = noise * np.exp(-t / decay)
    opened = noise * np.exp(-t / (4 * decay))
    is_open = rng.random(len(starts)) < 0.15
    amps = rng.uniform(0.5, 1.0, len(starts))
    return _place(n, starts[~is_open], closed, amps[~is_open]) + _place(
        n, starts[is_open], opened, amps[is_open]
    )


def _engine(rng, n, sr):
    f0 = np.exp(rng.uniform(np.log(30), np.log(110)))
    drift = np.cumsum(rng.standard_normal(n // 2000 + 2))
    drift = np.interp(np.arange(n), np.arange(len(drift)) * 2000, drift / (np.abs(drift).max() + 1e-9))
    f = f0 * (1 + rng.uniform(0.03, 0.15) * drift)
    saw = 2 * ((_phase(f, sr) / (2 * np.pi)) % 1.0) - 1
    buzz = _fft_filter(saw, sr, _band(25, rng.uniform(800, 3000), 2))
    t = _time(n, sr)
    am = 1 + rng.uniform(0.3, 0.8) * np.sin(2 * np.pi * rng.uniform(4, 25) * t)
    return buzz * am


def _rain(rng, n, sr):
    density = rng.uniform(80, 400)
    count = max(1, rng.poisson(density * n / sr))
    impulses = np.zeros(n)
    np.add.at(impulses, rng.integers(0, n, count), rng.uniform(0.2, 1.0, count) * rng.choice([-1, 1], count))
    lo, hi = rng.uniform(800, 2000), min(rng.uniform(6000, 14000), 0.45 * sr)
    drops = _fft_filter(impulses, sr, _band(lo, hi, 2))
    return drops + 0.1 * np.std(drops) * _colored_noise(rng, n, sr, 1.0)


def _babble(rng, n, sr):
    out = np.zeros(n)
    t = _time(n, sr)
    for _ in range(int(rng.integers(1, 4))):
        f0 = rng.uniform(90, 250) * (
            1 + 0.15 * np.sin(2 * np.pi * rng.uniform(0.3, 1.5) * t + rng.uniform(0, 6))
        )
        saw = 2 * ((_phase(f0, sr) / (2 * np.pi)) % 1.0) - 1
        rate = rng.uniform(3, 6)  # syllables per second
        n_syl = int(n / sr * rate) + 2
        centres = np.arange(n_syl) / rate
        formants = np.stack(
            [rng.uniform(300, 800, n_syl), rng.uniform(900, 2500, n_syl), rng.uniform(2500, 3300, n_syl)]
        )

        def gains(times, freqs, formants=formants, centres=centres):
            tracks = [np.interp(times, centres, fm)[:, None] for fm in formants]
            return sum(
                a / (1 + ((freqs - fm) / bw) ** 2)
                for fm, a, bw in zip(tracks, (1, 0.6, 0.3), (90, 120, 160), strict=True)
            )

        voice = _stft_filter(saw, sr, gains)
        syllables = np.clip(np.sin(np.pi * rate * t + rng.uniform(0, 3)) * 1.5, 0, 1) ** 2
        out += voice * syllables
    return out


def _siren(rng, n, sr):
    t = _time(n, sr)
    fc = np.exp(rng.uniform(np.log(500), np.log(1000)))
    lfo = np.sin(2 * np.pi * rng.uniform(0.2, 1.5) * t + rng.uniform(0, 6.3))
    f = fc * (1 + rng.uniform(0.25, 0.5) * lfo)
    return _harmonics(_phase(f, sr), [1.0, rng.uniform(0.1, 0.4), rng.uniform(0.05, 0.3)])


def _knock(rng, n, sr):
    length = int(0.15 * sr)
    t = np.arange(length) / sr
    freqs = rng.uniform(150, 900, 3)
    decays = rng.uniform(0.01, 0.04, 3)
    grain = (np.exp(-t[:, None] / decays) * np.sin(2 * np.pi * freqs * t[:, None])).sum(axis=1)
    grain += _fft_filter(rng.standard_normal(length) * np.exp(-t / 0.003), sr, _band(1000, 3000, 2))
    starts = []
    pos = rng.uniform(0, 0.2) * sr
    while pos < n:
        group = int(rng.integers(2, 5))
        starts.extend(pos + np.arange(group) * rng.uniform(0.1, 0.25) * sr)
        pos += group * 0.25 * sr + rng.uniform(0.5, 1.5) * sr
    starts = np.clip(np.array(starts), 0, n - 1).astype(np.int64)
    return _place(n, starts, grain, rng.uniform(0.6, 1.0, len(starts)))


def _wind(rng, n, sr):
    n_ctrl = int(n / sr * 2) + 3
    centre = np.exp(np.interp(np.arange(n_ctrl), [0, n_ctrl - 1], rng.uniform(np.log(200), np.log(1500), 2)))
    centre *= np.exp(0.3 * np.cumsum(rng.standard_normal(n_ctrl)) / np.sqrt(n_ctrl))
    width = rng.uniform(0.4, 0.9)  # in octaves
    ctrl_t = np.arange(n_ctrl) / 2.0

    def gains(times, freqs):
        c = np.interp(times, ctrl_t, centre)[:, None]
        return np.exp(-0.5 * (np.log2(np.maximum(freqs, 1.0) / c) / width) ** 2)

    gust = np.interp(_time(n, sr), ctrl_t, rng.uniform(0.3, 1.0, n_ctrl))
    return _stft_filter(rng.standard_normal(n), sr, gains) * gust


# The class names of the demo data set, in the column order of its sample_submission.csv.
SOUNDS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "Whistle": _whistle,
    "Rising_sweep": _rising,
    "Falling_sweep": _falling,
    "Bell": _bell,
    "Drum": _drum,
    "Hi-hat": _hihat,
    "Engine": _engine,
    "Rain": _rain,
    "Babble": _babble,
    "Siren": _siren,
    "Knock": _knock,
    "Wind": _wind,
}


# ---------------------------------------------------------------- clips and recording domains


def _loudness(x: np.ndarray) -> float:
    """Loudness of the active part: 90th percentile of the RMS of 1024-sample frames."""
    frames = x[: len(x) // 1024 * 1024].reshape(-1, 1024) if len(x) >= 1024 else x[None, :]
    return float(np.percentile(np.sqrt(np.mean(frames**2, axis=1)), 90)) + 1e-9


def _distractor(rng: np.random.Generator, n: int, sr: int) -> np.ndarray:
    """An unlabelled sound (real clips hold those too): steady tone blips or band-noise bursts, (n,)."""
    t = _time(n, sr)[:, None]
    starts = np.sort(rng.uniform(0, max(n / sr - 0.1, 0.0), int(rng.integers(1, 4))))
    ends = starts + rng.uniform(0.08, 0.5, len(starts))
    ramp = np.float32(0.02)  # 20 ms linear attack and release
    gate = np.clip(np.minimum(t - starts, ends - t) / ramp, 0, 1).max(axis=1)
    if rng.random() < 0.5:
        f = np.exp(rng.uniform(np.log(200), np.log(min(4000, 0.4 * sr))))
        return gate * _harmonics(_phase(np.full(n, f), sr), [1.0, rng.uniform(0, 0.5)])
    centre = np.exp(rng.uniform(np.log(200), np.log(min(8000, 0.3 * sr))))
    width = 2 ** rng.uniform(0.15, 0.5)
    return gate * _shaped_noise(rng, n, sr, _band(centre / width, centre * width, 3))


def render_clip(
    rng: np.random.Generator, labels: tuple[str, ...], n: int, sr: int, domain: str
) -> np.ndarray:
    """One clip of n samples holding the given classes, in the "clean" or "noisy" recording domain.

    Each class occupies a random region of at least half the clip (so two or three classes overlap), at a
    random relative level; an unlabelled distractor sound joins some clips (35 % clean, 50 % noisy);
    background noise, band-limiting and saturation follow the domain. Returns float32 in [-1, 1] with a
    random peak level.
    """
    mix = np.zeros(n)
    for k, label in enumerate(labels):
        length = max(min(n, int(0.4 * sr)), int(n * rng.uniform(0.5, 1.0)))
        onset = int(rng.integers(0, n - length + 1))
        event = SOUNDS[label](rng, length, sr) * _fade(length, sr, 0.005, 0.01)
        gain_db = 0.0 if k == 0 else rng.uniform(-10, 0)
        mix[onset : onset + length] += event / _loudness(event) * 10 ** (gain_db / 20)
    if rng.random() < (0.35 if domain == "clean" else 0.5):
        length = max(min(n, int(0.3 * sr)), int(n * rng.uniform(0.2, 0.8)))
        onset = int(rng.integers(0, n - length + 1))
        event = _distractor(rng, length, sr)
        mix[onset : onset + length] += event / _loudness(event) * 10 ** (rng.uniform(-15, -3) / 20)
    # Background noise is drawn directly as a spectrum and added to the mix's spectrum; the noisy domain's
    # band-limiting multiplies the same spectrum: two FFTs per clip in all.
    clean = domain == "clean"
    exponent = rng.uniform(0.0, 1.0) if clean else rng.uniform(1.0, 2.0)
    snr_db = rng.uniform(12, 40) if clean else rng.uniform(5, 25)
    if not clean and rng.random() < 0.4:  # mains hum
        hum_phase = np.float32(2 * np.pi * rng.choice([50.0, 60.0])) * _time(n, sr)
        mix += _harmonics(hum_phase, [1.0, 0.5, 0.3, 0.2]) * 10 ** (rng.uniform(-26, -12) / 20)
    size = _fast_len(n)
    freqs = np.fft.rfftfreq(size, 1.0 / sr)
    spec = np.fft.rfft(mix, n=size)
    shape = np.maximum(freqs, 20.0) ** (-exponent / 2)
    re, im = rng.standard_normal(len(freqs)) * shape, rng.standard_normal(len(freqs)) * shape
    noise_rms = np.sqrt(2 * np.sum(re * re + im * im)) / size  # Parseval (ignoring the end bins' weight)
    scale = 10 ** (-snr_db / 20) / noise_rms
    spec.real += re * scale
    spec.imag += im * scale
    if not clean:
        lo = rng.uniform(100, 400) if rng.random() < 0.3 else 1.0
        hi = np.exp(rng.uniform(np.log(3000), np.log(10000))) if rng.random() < 0.6 else 0.49 * sr
        spec *= _band(lo, min(hi, 0.49 * sr), 3)(freqs)
    mix = np.fft.irfft(spec, n=size)[:n]
    if not clean:
        mix /= np.abs(mix).max() + 1e-12
        effect = rng.random()
        if effect < 0.3:  # hard clipping
            mix = np.clip(mix * rng.uniform(2, 8), -1, 1)
        elif effect < 0.6:  # compression
            drive = rng.uniform(2, 8)
            mix = np.tanh(drive * mix) / np.tanh(drive)
    peak_db = rng.uniform(-20, -1) if clean else rng.uniform(-30, -0.5)
    mix *= 10 ** (peak_db / 20) / (np.abs(mix).max() + 1e-12)
    return mix.astype(np.float32)
