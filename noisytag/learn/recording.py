"""Recording-condition augmentations: a clip as another microphone, room or device would have heard it.

Test recordings made unlike the training clips lose most where a device colours the spectrum; two
batch augmentations (entries of :data:`noisytag.learn.augment.AUGMENTATIONS`, both off by default) train
a model not to rely on that colour:

* :class:`BandGain`: random band gains (FilterAugment, Nam et al. 2022, its "step" type): each
  example's mel axis is cut into a few bands at random boundaries, each band raised or lowered by a
  random number of dB (``augment.bandgain_*``).
* :class:`FreqMixStyle`: Freq-MixStyle (Schmid et al. 2022): each example's per-frequency mean and
  standard deviation are replaced by a mix of its own and a random partner's (``augment.freqmix_*``).

Both keep the targets, and like every augmentation draw one set of values per example as tensors: a
skipped example keeps its exact values.
"""

from __future__ import annotations

import torch

from noisytag.learn.augment_base import BatchAugment, Params, per_example

# dB spanned by the min-max input's [0, 1]: the log-mel front end floors each clip at its maximum −
# frontend.top_db (80 dB), so a clip that reaches the floor (the usual case) spans exactly this range.
RANGE_DB = 80.0


class BandGain(BatchAugment):
    """Random band gains (FilterAugment, step type) on min-max scaled log-mels.

    Each example is cut into n bands, n ~ U{⌈m/2⌉, …, m} for m = ``bands`` (FilterAugment's 3–6 for m = 6),
    at n − 1 boundaries uniform over the mel bins (sorted; equal ones make empty bands); each band
    gets a gain ~ U[−max_db, max_db] dB. The input is a clip's dB values scaled so that its range is
    [0, 1], so g dB is g / :data:`RANGE_DB` input units (exact for a clip that spans top_db; one with a
    smaller range gets a proportionally smaller gain). The front end would rescale a clip recorded
    through this filter: its peak maps to 1 and values top_db below it to 0. The window's peak stands
    in for the clip's: gains that lift it above 1 shift the window down by the excess, and values
    pushed below 0 are floored there, so the output stays in [0, 1]. An example skipped with
    probability 1 − p keeps its exact values. params: ``gain`` (B, F) dB of each mel bin, ``bands``
    (B,) int64 (0: skipped).
    """

    def __init__(
        self, max_db: float = 6.0, bands: int = 6, p: float = 1.0, generator: torch.Generator | None = None
    ):
        super().__init__(generator)
        self.max_db, self.bands, self.p = float(max_db), int(bands), float(p)

    def sample(self, x: torch.Tensor) -> Params:
        n, n_f, m = x.shape[0], x.shape[-2], self.bands
        low = (m + 1) // 2
        count = low + self._start(torch.full((n,), m - low))  # (n,) bands of each example
        cuts = 1 + self._start(torch.full((n, m - 1), max(n_f - 2, 0)))  # boundaries in [1, F − 1]
        cuts = torch.where(torch.arange(m - 1) < (count - 1)[:, None], cuts, n_f).sort(dim=1).values
        band = (torch.arange(n_f)[None, :, None] >= cuts[:, None, :]).sum(-1)  # (n, F) band of each bin
        gains = self._uniform(n * m, -self.max_db, self.max_db).view(n, m)
        on = self._coin(n, self.p)
        return {"gain": gains.gather(1, band) * on[:, None], "bands": count * on}

    def apply(self, x, y, params):
        shape = (x.shape[0], *([1] * (x.dim() - 3)), x.shape[-2], 1)
        out = x + params["gain"].to(x.dtype).view(shape) / RANGE_DB
        excess = (out.flatten(1).amax(1) - 1).clamp(min=0)
        out = (out - per_example(excess, out)).clamp(min=0)
        return torch.where(per_example(params["bands"] > 0, x).bool(), out, x), y


class FreqMixStyle(BatchAugment):
    """Freq-MixStyle: ``x ← (x − μ) / σ · σ_mix + μ_mix`` with per-frequency statistics.

    μ, σ: each example's mean and standard deviation of each mel bin over channels and frames (σ with
    ``eps`` added to the variance); ``μ_mix = λ·μ + (1 − λ)·μ[perm]`` and the same for σ, λ ~
    Beta(alpha, alpha), the partner a shuffled example of the same batch. So each mel bin of the
    output has the mixed mean exactly, and the mixed deviation up to eps: the spectral colour (the
    device, the room) moves towards the partner's while the events stay. Targets are unchanged.
    Values may leave [0, 1] (the statistics of the original, unbounded). An example skipped with
    probability 1 − p keeps its exact values (λ = 1). params: ``lam`` (B,), ``perm`` (B,), ``on`` (B,) bool.
    """

    def __init__(
        self, alpha: float = 0.3, p: float = 1.0, generator: torch.Generator | None = None, eps: float = 1e-6
    ):
        super().__init__(generator)
        self.alpha, self.p, self.eps = float(alpha), float(p), float(eps)

    def sample(self, x: torch.Tensor) -> Params:
        n = x.shape[0]
        on = self._coin(n, self.p)
        lam = torch.where(on, self._beta(n, self.alpha), torch.ones(n))
        return {"lam": lam, "perm": self._perm(n), "on": on}

    def apply(self, x, y, params):
        dims = tuple(d for d in range(1, x.dim()) if d != x.dim() - 2)  # all but batch and mel
        mu = x.mean(dim=dims, keepdim=True)
        sigma = (x.var(dim=dims, keepdim=True, correction=0) + self.eps).sqrt()
        lam, perm = per_example(params["lam"], x), params["perm"]
        mixed = (x - mu) / sigma * torch.lerp(sigma[perm], sigma, lam) + torch.lerp(mu[perm], mu, lam)
        return torch.where(per_example(params["on"], x).bool(), mixed, x), y
