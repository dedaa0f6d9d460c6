"""How the noisy clips that the selection does not trust still train (SPEC §6b): one registry entry each.

A treatment says three things: the untrusted flag those clips carry into the loss (0: like any clip,
1: through the treatment's loss), whether their targets are relabelled between the given labels and the
earlier stages' out-of-fold ensemble, and which loss reads the flag (plain BCE, a separate noisy-label
head, or soft bootstrapping). The training-set assembly (:mod:`noisytag.runs.pipeline`) and the loss
(:class:`noisytag.learn.train.TaggerModule`) both ask the entry, never the name.
"""

from __future__ import annotations

from dataclasses import dataclass

from noisytag.registry import Registry, in_range

TREATMENTS = Registry("noisy-clip treatment", "noisy.treatment")


@dataclass(frozen=True)
class Treatment:
    name: str
    untrusted: float  # the flag of the untrusted clips: the share of their loss the treatment takes
    relabel: bool  # targets α·given + (1 − α)·OOF of the earlier stages
    loss: str  # "bce" | "head" (noisy-label output layer) | "lsoft" (soft bootstrapping)


@TREATMENTS.register("drop")
def drop() -> Treatment:
    """The seed: only the selected noisy clips train."""
    return Treatment("drop", 0.0, False, "bce")


@TREATMENTS.register("given")
def given() -> Treatment:
    """The untrusted clips train with their given labels, as if trusted."""
    return Treatment("given", 0.0, False, "bce")


@TREATMENTS.register("head")
def head() -> Treatment:
    """A separate noisy-label output layer on the shared embedding takes their loss."""
    return Treatment("head", 1.0, False, "head")


@TREATMENTS.register("lsoft", options={"noisy.lsoft_beta": in_range(0, 1)})
def lsoft() -> Treatment:
    """Soft bootstrapping: target β·y + (1 − β)·prediction for their share of each example."""
    return Treatment("lsoft", 1.0, False, "lsoft")


@TREATMENTS.register("relabel", options={"noisy.relabel_alpha": in_range(0, 1)})
def relabel() -> Treatment:
    """Soft targets between the given labels and the earlier stages' out-of-fold ensemble."""
    return Treatment("relabel", 0.0, True, "bce")


def treatment(name: str) -> Treatment:
    """The entry ``name`` (ConfigError naming ``noisy.treatment`` if unknown)."""
    return TREATMENTS.build(name)
