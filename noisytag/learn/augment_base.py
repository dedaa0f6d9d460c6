"""The base of every batch augmentation: ``forward(x, y) = apply(x, y, sample(x))`` on whole batches.

Apart from :mod:`noisytag.learn.augment` (the registry and the SPEC §4 augmentations) so that modules of
further augmentations (:mod:`noisytag.learn.recording`) can subclass it while the registry imports them:
one direction, no cycle. The random draws are made on the CPU (from ``generator`` or torch's global RNG)
and moved to the device; they are B numbers per draw, so the copy is negligible.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

Params = dict[str, torch.Tensor]


class BatchAugment(nn.Module):
    """Base class: ``forward(x, y) = apply(x, y, sample(x))``; randomness from ``generator``.

    ``generator`` must be a CPU ``torch.Generator`` (or None for torch's global RNG).
    """

    def __init__(self, generator: torch.Generator | None = None):
        super().__init__()
        self.generator = generator

    # random draws (CPU, float32) --------------------------------------------------------------
    def _uniform(self, n: int, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=self.generator)

    def _coin(self, n: int, p: float) -> torch.Tensor:
        """(n,) bool: True with probability p (p = 1 always True, p = 0 always False)."""
        return torch.rand(n, generator=self.generator) < p

    def _start(self, room: torch.Tensor) -> torch.Tensor:
        """(n,) int64 uniform in [0, room] (inclusive) for an int64 tensor ``room`` ≥ 0."""
        u = torch.rand(room.shape, generator=self.generator, dtype=torch.float64)
        return torch.minimum((u * (room + 1)).floor().long(), room)

    def _perm(self, n: int) -> torch.Tensor:
        return torch.randperm(n, generator=self.generator)

    def _beta(self, n: int, alpha: float) -> torch.Tensor:
        """(n,) float32 draws of Beta(alpha, alpha). torch's Beta sampler takes no generator: a NumPy
        one is seeded from the torch stream instead (as mixup does)."""
        seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).float()

    # interface ---------------------------------------------------------------------------------
    def sample(self, x: torch.Tensor) -> Params:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, x: torch.Tensor, y: torch.Tensor, params: Params) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        params = {k: v.to(x.device) for k, v in self.sample(x).items()}
        return self.apply(x, y, params)


def per_example(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) → broadcastable against ``like`` (B, ...) in its dtype."""
    return v.to(like.dtype).reshape(-1, *([1] * (like.dim() - 1)))


def band_mask(start: torch.Tensor, width: torch.Tensor, size: int) -> torch.Tensor:
    """(B,) starts and widths → (B, size) bool mask of positions in [start, start + width)."""
    pos = torch.arange(size, device=start.device)
    return (pos >= start[:, None]) & (pos < (start + width)[:, None])
