"""How the noisy clips that the selection does not trust still train (SPEC §6b): one registry entry each.

A treatment says four things: the untrusted flag those clips carry into the loss (0: like any clip,
1: through the treatment's loss), whether their targets are relabelled between the given labels and the
earlier stages' out-of-fold ensemble, the loss that reads the flag (a function: the plain base loss, a
separate noisy-label head, or soft bootstrapping) and whether the model needs that noisy-label layer.
Each loss applies the module's base loss (``module.criterion``, ``train.loss``: BCE by default, or
LSEP, :mod:`noisytag.learn.losses`) where it used to apply BCE, so treatments and losses compose. The
training-set assembly (:mod:`noisytag.runs.pipeline`) and the loss
(:class:`noisytag.learn.train.TrainingModule`) both ask the entry, never the name, so a new treatment (or
a new loss) is one entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from noisytag.registry import Registry, in_range

TREATMENTS = Registry("noisy-clip treatment", "noisy.treatment")

# (module, x, y, w) → loss: ``module`` the TrainingModule (its ``model``, ``criterion``, ``noisy_head``,
# ``lsoft_beta``),
# x (B, 1, n_mels, T) inputs, y (B, K) soft targets, w (B, 1) each example's untrusted share in [0, 1].
Loss = Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def plain_loss(module: Any, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The base loss on every example (the untrusted share is not read)."""
    return module.criterion(module(x).float(), y)


def head_loss(module: Any, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The noisy-label layer takes the untrusted share of each example's loss, the clean layer the rest."""
    embedding = module.model.embed(x)
    clean = module.model.head.classify[-1](embedding).float()
    noisy = module.noisy_head(embedding).float()
    loss = module.criterion
    per_example = (1 - w) * loss(clean, y, reduction="none") + w * loss(noisy, y, reduction="none")
    return per_example.mean()


def lsoft_loss(module: Any, x: torch.Tensor, y: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Soft bootstrapping: target ``β·y + (1 − β)·sigmoid(logit)`` (detached), β = 1 − w·(1 − lsoft_beta)."""
    logits = module(x).float()
    beta = 1 - w * (1 - module.lsoft_beta)
    y = beta * y + (1 - beta) * torch.sigmoid(logits).detach()
    return module.criterion(logits, y)


@dataclass(frozen=True)
class Treatment:
    name: str
    untrusted: float  # the flag of the untrusted clips: the share of their loss the treatment takes
    relabel: bool  # targets α·given + (1 − α)·OOF of the earlier stages
    loss: Loss = plain_loss  # the training loss of a batch (reads the flag)
    noisy_head: bool = False  # the model gets a separate noisy-label output layer (head_loss reads it)


@TREATMENTS.register("drop")
def drop() -> Treatment:
    """The seed: only the selected noisy clips train."""
    return Treatment("drop", 0.0, False)


@TREATMENTS.register("given")
def given() -> Treatment:
    """The untrusted clips train with their given labels, as if trusted."""
    return Treatment("given", 0.0, False)


@TREATMENTS.register("head")
def head() -> Treatment:
    """A separate noisy-label output layer on the shared embedding takes their loss."""
    return Treatment("head", 1.0, False, head_loss, noisy_head=True)


@TREATMENTS.register("lsoft", options={"noisy.lsoft_beta": in_range(0, 1)})
def lsoft() -> Treatment:
    """Soft bootstrapping: target β·y + (1 − β)·prediction for their share of each example."""
    return Treatment("lsoft", 1.0, False, lsoft_loss)


@TREATMENTS.register("relabel", options={"noisy.relabel_alpha": in_range(0, 1)})
def relabel() -> Treatment:
    """Soft targets between the given labels and the earlier stages' out-of-fold ensemble."""
    return Treatment("relabel", 0.0, True)


def treatment(name: str) -> Treatment:
    """The entry ``name`` (ConfigError naming ``noisy.treatment`` if unknown)."""
    return TREATMENTS.build(name)
