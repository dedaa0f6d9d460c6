"""Weight averaging of a fold model as it trains (``train.average``): one registry entry each.

``"none"`` (the default) adds nothing. ``"ema"`` keeps an exponential moving average of the weights,
updated after every optimizer step: ``a₁ = w₁``, ``aₜ₊₁ = dₜ·aₜ + (1 − dₜ)·wₜ₊₁`` with
``dₜ = min(train.ema_decay, (1 + t) / (10 + t))``, t the states averaged so far (TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``). The warm-up matters on short runs: with a constant
d = 0.999 (memory ≈ 1,000 steps) a 360-step fold kept 0.999³⁶⁰ = 70 % of its random initial weights in
the average, and the screened model scored 0.19 lwlrap instead of 0.64; with the warm-up the first
weights are forgotten within tens of steps and d reaches 0.999 after about 9,000. ``"swa"`` keeps the
plain mean of the weights after each step from ``train.swa_start`` × the run's steps on (FAT2019's 5th
place averaged the last quarter; with the one-cycle schedule those are the low learning-rate steps).

Both are Lightning's :class:`~lightning.pytorch.callbacks.WeightAveraging` (a torch ``AveragedModel`` of
the training module), which checkpoints the average and the current weights in ``last.ckpt``, so a
killed fit resumes both; validation epochs score the average once it exists (``metrics.csv`` then
describes the averaged model). :meth:`Averaging.finish` (called by ``fit_fold`` once fitting ends, also
when a resumed fit had nothing left to train) puts the average into the module, which is what the
pipeline saves and predicts with.

Batch-norm statistics: the running mean and variance are buffers, averaged with the weights (as timm's
model EMA does). That is right for EMA, whose average follows the recent weights. An SWA mean spans
weights a quarter of a run apart, whose activations differ, so SWA then recomputes the statistics of the
averaged weights with one pass over training batches (:func:`recompute_batch_norm`: the training
loader's next epoch, augmented as in training, seeded; the exact mean over the pass, not a running one).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.nn.modules.batchnorm import _BatchNorm

from noisytag.registry import Registry, in_range

log = logging.getLogger(__name__)

AVERAGINGS = Registry("weight averaging", "train.average")


def lerp_average(share):
    """An ``AveragedModel`` ``multi_avg_fn``: ``a ← a + share(n)·(w − a)`` for float tensors, where n
    models are averaged so far; integer buffers (batch norm's step counter) follow the current model."""

    @torch.no_grad()
    def update(averaged: list, current: list, n_averaged: torch.Tensor) -> None:
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, float(share(n_averaged)))
        else:
            for a, w in zip(averaged, current, strict=True):
                a.copy_(w)

    return update


class Averaging(WeightAveraging):
    """EMA or SWA of a training module's parameters and buffers, updated after each optimizer step from
    step ``start`` × the run's steps on; ``recompute_bn``: recompute batch-norm statistics in
    :meth:`finish` (SWA)."""

    def __init__(self, kind: str, share, start: float = 0.0, recompute_bn: bool = False):
        super().__init__(use_buffers=True, multi_avg_fn=lerp_average(share))
        self.kind, self.start, self.recompute_bn = kind, float(start), recompute_bn
        self._start_step = 0
        self._swapped = False

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_step = int(self.start * trainer.estimated_stepping_batches)

    def should_update(self, step_idx: int | None = None, epoch_idx: int | None = None) -> bool:
        return step_idx is not None and step_idx >= self._start_step

    @property
    def averaged(self) -> int:
        """How many weight states the average holds (0 before its first update)."""
        return 0 if self._average_model is None else int(self._average_model.n_averaged)

    # Before the first update the average holds the initial weights: validate the current ones then.
    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._swapped = self.averaged > 0
        if self._swapped:
            self._swap_models(pl_module)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._swapped:
            self._swap_models(pl_module)
            self._swapped = False

    def on_train_end(self, trainer, pl_module) -> None:
        """Nothing here: :meth:`finish` runs after every fit, also one that resumed with nothing to train
        (Lightning then skips this hook)."""

    def finish(self, module, batches: Iterable, device: str | torch.device, seed: int) -> None:
        """Put the average into ``module`` (in place); with ``recompute_bn``, then recompute its
        batch-norm statistics on ``batches`` (see :func:`recompute_batch_norm`)."""
        if not self.averaged:
            log.warning("%s: no weights averaged (too few steps after train.swa_start)", self.kind)
            return
        self._copy_average_to_current(module)
        if self.recompute_bn:
            recompute_batch_norm(module, batches, device, seed)


@torch.no_grad()
def recompute_batch_norm(module, batches: Iterable, device: str | torch.device, seed: int) -> None:
    """Batch-norm statistics of ``module.model`` from scratch: the exact mean of the batch means and
    (unbiased) variances over ``batches`` of (x, targets), each through ``module.augment`` with its own
    seed, in training mode as during training. The module comes back where it was, in eval mode; the
    global random state is left as it was."""
    norms = [m for m in module.model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not norms:
        return
    place = next(module.parameters()).device
    device = torch.device(device)
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average: each batch counts equally
    module.to(device).train()
    dtype = next(module.parameters()).dtype
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        for i, (x, y) in enumerate(batches):
            torch.manual_seed(seed * 1_000_003 + 104_729 + i)
            x, y = module.augment(x.to(device, dtype), y.to(device))
            module.model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    module.to(place).eval()


@AVERAGINGS.register("none")
def no_averaging(cfg) -> None:
    """No averaging: the fold model is the last step's weights."""
    return None


@AVERAGINGS.register("ema", options={"train.ema_decay": in_range(0, 1, open_low=True, open_high=True)})
def ema(cfg) -> Averaging:
    return Averaging("ema", ema_share(float(cfg.train.ema_decay)))


def ema_share(decay: float):
    """n (states averaged so far) → the new weights' share ``1 − min(decay, (1 + n) / (10 + n))``."""
    return lambda n: 1.0 - min(decay, (1.0 + float(n)) / (10.0 + float(n)))


@AVERAGINGS.register("swa", options={"train.swa_start": in_range(0, 1, open_high=True)})
def swa(cfg) -> Averaging:
    return Averaging("swa", lambda n: 1 / (n + 1), start=cfg.train.swa_start, recompute_bn=True)


def build_averaging(cfg) -> Averaging | None:
    """The callback of ``cfg.train.average`` (None for "none")."""
    return AVERAGINGS.build(cfg.train.average, cfg)
