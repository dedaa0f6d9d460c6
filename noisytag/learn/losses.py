"""Base training losses (``train.loss``): what a treatment's loss applies where BCE used to be fixed.

A base loss maps logits (B, K) and soft targets (B, K) in [0, 1] to a loss. ``reduction="mean"``
gives the scalar; ``"none"`` gives a tensor that broadcasts against (B, K) and has that scalar as
its mean: per element for BCE, per example, (B, 1), for a ranking loss. The "none" form lets a
treatment weight each example's share (:func:`noisytag.learn.treatments.head_loss`). The noisy-clip
treatments (:mod:`noisytag.learn.treatments`) call the module's base loss wherever they used to
call BCE, so every treatment composes with every loss. Validation's ``val_loss`` stays BCE, so the
column reads the same under every loss.

LSEP (log-sum-exp pairwise ranking, Li et al. 2017; FAT2019's 3rd place) is, per example,
``log(1 + Σ_{i pos, j neg} exp(s_j − s_i))``, averaged over examples. It is smooth and has no
threshold, and it only asks that every true label outscore every false one, which is what lwlrap
scores. It is computed with logsumexp over the pairs and a fixed 0 term, so it cannot overflow. An
example with no positive or no negative has no pairs and contributes log(1) = 0.

Soft targets (mixup, SpecMix, relabelling, soft bootstrapping, teacher probabilities) weight the
pair (i, j) by ``t_i·(1 − t_j)`` (i ≠ j) instead of thresholding at 0.5. On hard targets the two
give the same value: the weight is 1 for a (positive, negative) pair and 0 otherwise. On soft
targets the weight keeps what a threshold throws away: a mixup partner's labels at weight
1 − λ ≤ 0.5, or a teacher's 0.3. It is also continuous, so a target interpolated across 0.5 between
two teacher windows does not flip a class from positive to negative. Two classes with equal soft
targets get equal weights both ways, which pulls their scores together rather than ordering them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from noisytag.registry import Registry, in_range

LOSSES = Registry("training loss", "train.loss")

# (logits (B, K), y (B, K), reduction "mean" | "none") → loss (scalar, or broadcastable to (B, K))
BaseLoss = Callable[..., torch.Tensor]


def lsep_per_example(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(B, K) logits and targets → (B,) ``log(1 + Σ_{i≠j} t_i(1 − t_j) exp(s_j − s_i))``."""
    k = logits.shape[-1]
    gap = logits[:, None, :] - logits[:, :, None]  # gap[b, i, j] = s_j − s_i
    weight = y[:, :, None] * (1 - y[:, None, :])  # t_i (1 − t_j): i should outscore j
    weight = weight * ~torch.eye(k, dtype=torch.bool, device=logits.device)
    # log of the weights, −inf where a pair does not count (log of a safe 1 there: no NaN gradients)
    has = weight > 0
    terms = torch.where(has, gap + torch.log(torch.where(has, weight, torch.ones_like(weight))), -torch.inf)
    one = torch.zeros(len(logits), 1, dtype=terms.dtype, device=terms.device)  # the "1 +": exp(0)
    return torch.logsumexp(torch.cat([one, terms.flatten(1)], 1), 1)


def bce(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """BCE-with-logits (the default; exactly the call the treatments made before ``train.loss``)."""
    return F.binary_cross_entropy_with_logits(logits, y, reduction=reduction)


def lsep(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """LSEP averaged over examples ("none": (B, 1), one value per example)."""
    per_example = lsep_per_example(logits, y)
    return per_example.mean() if reduction == "mean" else per_example[:, None]


@LOSSES.register("bce")
def _bce(lsep_weight: float = 1.0) -> BaseLoss:
    return bce


@LOSSES.register("lsep")
def _lsep(lsep_weight: float = 1.0) -> BaseLoss:
    return lsep


@LOSSES.register("bce+lsep", options={"train.lsep_weight": in_range(0, open_low=True)})
def _bce_lsep(lsep_weight: float = 1.0) -> BaseLoss:
    weight = float(lsep_weight)

    def bce_lsep(logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
        """BCE + ``train.lsep_weight`` · LSEP (each averaged as alone)."""
        return bce(logits, y, reduction) + weight * lsep(logits, y, reduction)

    return bce_lsep


def base_loss(name: str, lsep_weight: float = 1.0) -> BaseLoss:
    """The base loss ``name`` (ConfigError naming ``train.loss`` if unknown)."""
    return LOSSES.build(name, lsep_weight)
