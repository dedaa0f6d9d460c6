"""Batch augmentations of SPEC §4: torch modules mapping (x, y) → (x, y) on whole batches.

``x`` is a (B, C, F, T) batch of log-mels (min-max scaled to [0, 1] by default), ``y`` a (B, K)
float batch of (soft) targets in [0, 1]. Every module draws all of its randomness at once, one
value per example, held as tensors: an example the augmentation skips gets a neutral value
(mixup weight 1, band width 0, zoom 1, brightness shift 0, contrast 1) instead of a Python branch,
so a batch costs a few tensor operations on whatever device ``x`` lives on, with no loop over
examples. The random draws are made on the CPU (from ``generator`` or torch's global RNG, so
``torch.manual_seed``/Lightning's ``seed_everything`` make runs reproducible) and moved to the
device; they are B numbers, so the copy is negligible.

Each module splits into ``sample(x) -> params`` (dict of (B,) tensors) and ``apply(x, y, params)``;
``forward`` is ``apply(x, y, sample(x))``. Tests check defining properties through the params, and
the gallery and benchmarks reuse them. The chain (:func:`build_chain`) is the registry
:data:`AUGMENTATIONS` in registration order, SPEC §4: mixup → SpecMix → zoom-and-crop →
brightness/contrast → (optional) band gains and Freq-MixStyle (:mod:`noisytag.learn.recording`) →
(optional) SpecAugment masking. Each entry declares the ``augment.*`` keys it
reads and their valid ranges (checked by :func:`validate`) and when it is switched on; a probability
of 0 leaves the module out of the chain. An entry's meta also says how the gallery
(:mod:`noisytag.report.gallery`) shows it: ``title`` (its column; default the name), ``forced`` (the
``AugmentConfig`` fields that switch it fully on in its panel) and ``note`` (one example's draws →
the panel's corner text), so a new augmentation is one registry entry and nothing else.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from noisytag.config import AugmentConfig, RunConfig
from noisytag.learn.augment_base import BatchAugment, Params
from noisytag.learn.augment_base import band_mask as _band
from noisytag.learn.augment_base import per_example as _per_example
from noisytag.learn.recording import BandGain, FreqMixStyle
from noisytag.registry import Registry, in_range, option_error

MIXUP_TARGETS = ("mix", "union")  # augment.mixup_target


class Mixup(BatchAugment):
    """mixup: ``x ← λ·x + (1−λ)·x[perm]``; the target follows ``target`` (``augment.mixup_target``).

    "mix": ``y ← λ·y + (1−λ)·y[perm]``. "union": ``y ← max(y, y[perm])`` element-wise for every mixed
    example (λ < 1). Both clips are audible, so each one's labels are fully true of the mix; this is the
    FAT2019 1st and 3rd places' rule. An unmixed example (λ = 1) keeps its own target. On soft targets
    (relabelling, a distillation teacher's probabilities) the union is the max of both soft targets,
    the same rule. The max also applies to the last column that training appends, the untrusted share
    (:class:`noisytag.learn.train.TrainingModule`): the union carries the untrusted partner's labels at
    full strength, so the whole example is untrusted.

    λ ~ Beta(alpha, alpha), then λ ← max(λ, 1−λ), so each example keeps at least half of itself;
    the partner is a shuffled example of the same batch (possibly itself). With probability 1 − p
    an example keeps λ = 1. params: ``lam`` (B,), ``perm`` (B,) int64.
    """

    def __init__(
        self,
        alpha: float = 0.4,
        p: float = 1.0,
        generator: torch.Generator | None = None,
        target: str = "mix",
    ):
        super().__init__(generator)
        if target not in MIXUP_TARGETS:
            raise ValueError(f"augment.mixup_target: one of {MIXUP_TARGETS}, got {target!r}")
        self.alpha, self.p, self.target = float(alpha), float(p), target

    def sample(self, x: torch.Tensor) -> Params:
        n = x.shape[0]
        # torch's Beta sampler takes no generator: seed a NumPy one from the torch stream instead.
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        lam = torch.from_numpy(np.random.default_rng(seed).beta(self.alpha, self.alpha, n)).float()
        lam = torch.maximum(lam, 1.0 - lam)
        lam = torch.where(self._coin(n, self.p), lam, torch.ones(n))
        return {"lam": lam, "perm": self._perm(n)}

    def apply(self, x, y, params):
        perm = params["perm"]
        lx, ly = _per_example(params["lam"], x), _per_example(params["lam"], y)
        # lerp(partner, own, λ) = λ·own + (1−λ)·partner in one pass
        if self.target == "union":
            return torch.lerp(x[perm], x, lx), torch.where(ly < 1, torch.maximum(y, y[perm]), y)
        return torch.lerp(x[perm], x, lx), torch.lerp(y[perm], y, ly)


class SpecMix(BatchAugment):
    """SpecMix: a mel band and a time band of each example are replaced by a shuffled partner's.

    h, w ~ U[0, max_size); the band of ``int(h·F)`` consecutive mel bins and the band of ``int(w·T)``
    consecutive frames (each at a uniformly random start) are copied from the same region of the
    partner (the union of the two bands, a cross). Target: ``(1−a)·y + a·y[perm]`` with
    ``a = h + w − h·w`` (SPEC §4: from the drawn h and w, not the rounded band sizes). An example
    skipped with probability 1 − p has h = w = 0. params: ``h``, ``w`` (B,) float; ``f0``, ``fh``,
    ``t0``, ``tw`` (B,) int64 band starts and widths; ``perm``.
    """

    def __init__(self, max_size: float = 0.25, p: float = 1.0, generator: torch.Generator | None = None):
        super().__init__(generator)
        self.max_size, self.p = float(max_size), float(p)

    def sample(self, x: torch.Tensor) -> Params:
        n, n_f, n_t = x.shape[0], x.shape[-2], x.shape[-1]
        keep = self._coin(n, self.p).float()
        h = self._uniform(n, 0.0, self.max_size) * keep
        w = self._uniform(n, 0.0, self.max_size) * keep
        fh = (h.double() * n_f).floor().long()
        tw = (w.double() * n_t).floor().long()
        f0, t0 = self._start(n_f - fh), self._start(n_t - tw)
        return {"h": h, "w": w, "f0": f0, "fh": fh, "t0": t0, "tw": tw, "perm": self._perm(n)}

    def apply(self, x, y, params):
        perm = params["perm"]
        rows = _band(params["f0"], params["fh"], x.shape[-2])  # (B, F)
        cols = _band(params["t0"], params["tw"], x.shape[-1])  # (B, T)
        region = (rows[:, :, None] | cols[:, None, :]).reshape(
            x.shape[0], *([1] * (x.dim() - 3)), *x.shape[-2:]
        )
        h, w = params["h"], params["w"]
        a = _per_example(h + w - h * w, y)
        return torch.where(region, x[perm], x), (1 - a) * y + a * y[perm]


def _source_pixels(n: int, scale: torch.Tensor, centre: torch.Tensor):
    """Bilinear source positions of one axis for a zoom by ``scale`` about ``centre`` (in [−1, 1]).

    Output pixel i (centre at normalised (2i+1)/n − 1, align_corners=False) reads the input at pixel
    ``p = i + (c − i)(1 − 1/scale)``, c the fixed point in pixels, clamped to [0, n − 1] (border
    padding). Returns (B, n) int64 ``lo``, ``hi`` and the float weight of ``hi``; scale = 1 gives
    p = i exactly (weight 0), so unzoomed examples keep their exact values.
    """
    i = torch.arange(n, dtype=scale.dtype, device=scale.device)
    fixed = (centre[:, None] + 1) * (n / 2) - 0.5
    pos = (i + (fixed - i) * (1 - 1 / scale)[:, None]).clamp(0, n - 1)
    lo = pos.floor().long()
    return lo, (lo + 1).clamp(max=n - 1), pos - lo


def zoom_theta(params: Params) -> torch.Tensor:
    """(B, 2, 3) ``F.affine_grid`` matrices of ZoomCrop draws (reference for tests and benchmarks)."""
    inv = 1.0 / params["scale"]
    zero = torch.zeros_like(inv)
    cx, cy = params["cx"], params["cy"]
    # theta maps output (x = time, y = mel) coordinates to input coordinates
    return torch.stack(
        [torch.stack([inv, zero, cx * (1 - inv)], 1), torch.stack([zero, inv, cy * (1 - inv)], 1)], 1
    )


class ZoomCrop(BatchAugment):
    """Zoom by s ~ U[1, max_zoom] about a random point, keeping the size (one affine resampling).

    Output pixel u (normalised to [−1, 1]) reads the input at ``c + (u − c)/s``, c ~ U[−1, 1]² the
    fixed point, so the crop always stays inside the input; bilinear, border padding. Examples
    skipped with probability 1 − p get s = 1 and keep their exact values. Targets are unchanged.

    The result equals ``F.grid_sample(x, F.affine_grid(zoom_theta(params)), bilinear, border,
    align_corners=False)`` (to float rounding); because a zoom without rotation is separable, it is
    computed as linear interpolation along mel then along time (row gathers + lerp), faster
    on a CPU than grid_sample. params: ``on`` (B,) bool, ``scale`` (B,), ``cy``, ``cx`` (B,) fixed
    point (mel, time) in [−1, 1].
    """

    def __init__(self, max_zoom: float = 1.05, p: float = 0.75, generator: torch.Generator | None = None):
        super().__init__(generator)
        self.max_zoom, self.p = float(max_zoom), float(p)

    def sample(self, x: torch.Tensor) -> Params:
        n = x.shape[0]
        on = self._coin(n, self.p)
        scale = torch.where(on, self._uniform(n, 1.0, self.max_zoom), torch.ones(n))
        return {"on": on, "scale": scale, "cy": self._uniform(n, -1, 1), "cx": self._uniform(n, -1, 1)}

    def apply(self, x, y, params):
        b, n_f, n_t = x.shape[0], x.shape[-2], x.shape[-1]
        scale = params["scale"].to(x.dtype)
        lead = [1] * (x.dim() - 3)  # channel axes
        lo, hi, frac = _source_pixels(n_f, scale, params["cy"].to(x.dtype))
        shape = (b, *lead, n_f, 1)
        lo, hi = lo.view(shape).expand(x.shape), hi.view(shape).expand(x.shape)
        x = torch.lerp(x.gather(-2, lo), x.gather(-2, hi), frac.view(shape))
        lo, hi, frac = _source_pixels(n_t, scale, params["cx"].to(x.dtype))
        shape = (b, *lead, 1, n_t)
        lo, hi = lo.view(shape).expand(x.shape), hi.view(shape).expand(x.shape)
        return torch.lerp(x.gather(-1, lo), x.gather(-1, hi), frac.view(shape)), y


class Lighting(BatchAugment):
    """fastai's brightness and contrast, in logit space for inputs in [0, 1].

    ``x ← sigmoid((logit(x) + logit(b)) · s)`` with brightness b ~ U[0.5(1−m_b), 0.5(1+m_b)] (with
    probability p_b, else b = 0.5, no change) and contrast s = exp(U[log(1−m_c), −log(1−m_c)]) (with
    probability p_c, else s = 1), as fastai v1's ``brightness``/``contrast`` of ``get_transforms(
    max_lighting=m)``. Values stay in (0, 1); untouched examples keep their exact values. Inputs
    outside [0, 1] (``data.normalize: none``) are clamped first: switch lighting off for them.
    params: ``shift`` (B,) = logit(b), ``scale`` (B,), ``on`` (B,) bool.
    """

    def __init__(
        self,
        brightness: float = 0.2,
        contrast: float = 0.2,
        p_brightness: float = 0.75,
        p_contrast: float = 0.75,
        generator: torch.Generator | None = None,
    ):
        super().__init__(generator)
        self.brightness, self.contrast = float(brightness), float(contrast)
        self.p_brightness, self.p_contrast = float(p_brightness), float(p_contrast)

    def sample(self, x: torch.Tensor) -> Params:
        n = x.shape[0]
        b_on, c_on = self._coin(n, self.p_brightness), self._coin(n, self.p_contrast)
        mb, mc = self.brightness, self.contrast
        change = self._uniform(n, 0.5 * (1 - mb), 0.5 * (1 + mb))
        shift = torch.where(b_on, torch.log(change) - torch.log1p(-change), torch.zeros(n))
        log_c = -math.log(1 - mc) if mc > 0 else 0.0
        scale = torch.where(c_on, torch.exp(self._uniform(n, -log_c, log_c)), torch.ones(n))
        return {"shift": shift, "scale": scale, "on": b_on | c_on}

    def apply(self, x, y, params):
        shift, scale = _per_example(params["shift"], x), _per_example(params["scale"], x)
        lit = torch.logit(x, eps=1e-6)  # one fresh tensor, then in place: fewer passes over memory
        lit.add_(shift).mul_(scale).sigmoid_()
        return torch.where(_per_example(params["on"], x).bool(), lit, x), y


class Masking(BatchAugment):
    """SpecAugment-style masking: one mel band and one time band set to zero (the min-max floor).

    Widths ~ U{0, …, max_freq} and U{0, …, max_time} (clipped to the input), random starts; with
    probability 1 − p both widths are 0. Targets are unchanged. params: ``f0``, ``fh``, ``t0``, ``tw``.
    """

    def __init__(
        self, max_freq: int = 16, max_time: int = 16, p: float = 1.0, generator: torch.Generator | None = None
    ):
        super().__init__(generator)
        self.max_freq, self.max_time, self.p = int(max_freq), int(max_time), float(p)

    def sample(self, x: torch.Tensor) -> Params:
        n, n_f, n_t = x.shape[0], x.shape[-2], x.shape[-1]
        keep = self._coin(n, self.p).long()
        fh = self._start(torch.full((n,), min(self.max_freq, n_f))) * keep
        tw = self._start(torch.full((n,), min(self.max_time, n_t))) * keep
        return {"f0": self._start(n_f - fh), "fh": fh, "t0": self._start(n_t - tw), "tw": tw}

    def apply(self, x, y, params):
        rows = _band(params["f0"], params["fh"], x.shape[-2])
        cols = _band(params["t0"], params["tw"], x.shape[-1])
        region = (rows[:, :, None] | cols[:, None, :]).reshape(
            x.shape[0], *([1] * (x.dim() - 3)), *x.shape[-2:]
        )
        return x.masked_fill(region, 0.0), y


class AugmentChain(nn.Module):
    """Apply named batch augmentations in order: (x, y) → (x, y). Empty chain = identity."""

    def __init__(self, steps: dict[str, BatchAugment] | None = None):
        super().__init__()
        self.steps = nn.ModuleDict(steps or {})

    def __len__(self) -> int:
        return len(self.steps)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for step in self.steps.values():
            x, y = step(x, y)
        return x, y


# ----------------------------------------------------------------------------------------------
# the registry: the chain is its entries, in registration order (SPEC §4); meta: enabled(cfg), and the
# gallery's title, forced (fields set to switch it fully on) and note(draws of one example) → text

AUGMENTATIONS = Registry("augmentation", "augment", chain=True)
PROBABILITY = in_range(0, 1)


def _mixup_alpha(cfg: RunConfig) -> None:
    a = cfg.augment
    if a.mixup_p > 0 and not a.mixup_alpha > 0:
        raise option_error("augment.mixup_alpha", "must be > 0 when augment.mixup_p > 0", a.mixup_alpha)


@AUGMENTATIONS.register(
    "mixup",
    options={
        "augment.mixup_p": PROBABILITY,
        "augment.mixup_target": lambda v: None if v in MIXUP_TARGETS else f"must be one of {MIXUP_TARGETS}",
    },
    validate=_mixup_alpha,
    enabled=lambda a: a.mixup_p > 0,
    forced={"mixup_p": 1.0},
    note=lambda p: f"λ={p['lam']:.2f}",
)
def _mixup(a: AugmentConfig, generator: torch.Generator | None) -> Mixup:
    return Mixup(a.mixup_alpha, a.mixup_p, generator, a.mixup_target)


@AUGMENTATIONS.register(
    "specmix",
    options={"augment.specmix_p": PROBABILITY, "augment.specmix_max": in_range(0, 1)},
    enabled=lambda a: a.specmix_p > 0 and a.specmix_max > 0,
    title="SpecMix",
    forced={"specmix_p": 1.0},
    note=lambda p: f"h={p['h']:.2f} w={p['w']:.2f}",
)
def _specmix(a: AugmentConfig, generator: torch.Generator | None) -> SpecMix:
    return SpecMix(a.specmix_max, a.specmix_p, generator)


@AUGMENTATIONS.register(
    "zoom",
    options={"augment.zoom_p": PROBABILITY, "augment.zoom_max": in_range(1)},
    enabled=lambda a: a.zoom_p > 0 and a.zoom_max > 1,
    forced={"zoom_p": 1.0},
    note=lambda p: f"×{p['scale']:.3f}",
)
def _zoom(a: AugmentConfig, generator: torch.Generator | None) -> ZoomCrop:
    return ZoomCrop(a.zoom_max, a.zoom_p, generator)


@AUGMENTATIONS.register(
    "lighting",
    options={
        "augment.brightness_p": PROBABILITY,
        "augment.brightness": in_range(0, 1, open_high=True),
        "augment.contrast_p": PROBABILITY,
        "augment.contrast": in_range(0, 1, open_high=True),
    },
    enabled=lambda a: (a.brightness_p > 0 and a.brightness > 0) or (a.contrast_p > 0 and a.contrast > 0),
    forced={"brightness_p": 1.0, "contrast_p": 1.0},
    note=lambda p: f"b={1 / (1 + math.exp(-p['shift'])):.2f} c={p['scale']:.2f}",
)
def _lighting(a: AugmentConfig, generator: torch.Generator | None) -> Lighting:
    return Lighting(a.brightness, a.contrast, a.brightness_p, a.contrast_p, generator)


def _bandgain_input(cfg: RunConfig) -> None:
    a = cfg.augment
    if a.bandgain_p > 0 and cfg.data.normalize != "minmax":
        raise option_error(
            "augment.bandgain_p", "band gains need min-max input (data.normalize)", a.bandgain_p
        )


@AUGMENTATIONS.register(
    "bandgain",
    options={
        "augment.bandgain_p": PROBABILITY,
        "augment.bandgain_db": in_range(0),
        "augment.bandgain_bands": in_range(1),
    },
    validate=_bandgain_input,
    enabled=lambda a: a.bandgain_p > 0 and a.bandgain_db > 0,
    title="band gains",
    forced={"bandgain_p": 1.0},
    note=lambda p: f"{p['bands']} bands {min(p['gain']):+.1f}…{max(p['gain']):+.1f} dB",
)
def _bandgain(a: AugmentConfig, generator: torch.Generator | None) -> BandGain:
    return BandGain(a.bandgain_db, a.bandgain_bands, a.bandgain_p, generator)


@AUGMENTATIONS.register(
    "freqmix",
    options={"augment.freqmix_p": PROBABILITY, "augment.freqmix_alpha": in_range(0, open_low=True)},
    enabled=lambda a: a.freqmix_p > 0,
    title="Freq-MixStyle",
    forced={"freqmix_p": 1.0},
    note=lambda p: f"λ={p['lam']:.2f}",
)
def _freqmix(a: AugmentConfig, generator: torch.Generator | None) -> FreqMixStyle:
    return FreqMixStyle(a.freqmix_alpha, a.freqmix_p, generator)


@AUGMENTATIONS.register(
    "masking",
    options={
        "augment.mask_p": PROBABILITY,
        "augment.mask_freq": in_range(0),
        "augment.mask_time": in_range(0),
    },
    enabled=lambda a: a.mask_p > 0 and (a.mask_freq > 0 or a.mask_time > 0),
    forced={"mask_p": 1.0},  # shown even when the config leaves it off
    note=lambda p: f"{p['fh']} bins, {p['tw']} frames",
)
def _masking(a: AugmentConfig, generator: torch.Generator | None) -> Masking:
    return Masking(a.mask_freq, a.mask_time, a.mask_p, generator)


def validate(cfg: RunConfig) -> None:
    """Raise ConfigError naming the ``augment.*`` key whose value is out of range (every augmentation)."""
    AUGMENTATIONS.validate(cfg)


def check_config(cfg: AugmentConfig) -> None:
    """:func:`validate` for the ``augment`` section alone (what :func:`build_chain` is given)."""
    validate(RunConfig(augment=cfg))


def build_steps(cfg: AugmentConfig, generator: torch.Generator | None = None) -> dict[str, BatchAugment]:
    """Every augmentation of the registry (including those switched off), in SPEC §4 order."""
    check_config(cfg)
    return {name: AUGMENTATIONS.build(name, cfg, generator) for name in AUGMENTATIONS.names()}


def build_chain(cfg: AugmentConfig | None = None, generator: torch.Generator | None = None) -> AugmentChain:
    """The training augmentation chain of SPEC §4 (switched-off augmentations left out).

    All steps share ``generator`` (a CPU ``torch.Generator``; None = torch's global RNG), so the same
    seed and input give the same output.
    """
    cfg = cfg or AugmentConfig()
    steps = build_steps(cfg, generator)
    return AugmentChain({k: v for k, v in steps.items() if AUGMENTATIONS.get(k).meta["enabled"](cfg)})
