"""Base losses (``train.loss``): LSEP's value, limits and gradients; BCE unchanged; treatments compose."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from noisytag.config import ConfigError
from noisytag.learn.losses import LOSSES, base_loss, lsep, lsep_per_example
from noisytag.learn.train import build_module
from noisytag.runs import pipeline
from noisytag.runs.validate import checked_plan

K = 5


def test_lsep_on_a_hand_computed_batch():
    logits = torch.tensor([[2.0, 0.0, 1.0], [0.0, 1.0, 0.5], [3.0, -1.0, 0.0], [3.0, -1.0, 0.0]])
    y = torch.tensor([[1.0, 0, 0], [1, 0, 1], [0, 0, 0], [1, 1, 1]])
    # pairs (positive i, negative j) → exp(s_j − s_i); rows 3 and 4 have no pair: log(1) = 0
    first = math.log(1 + math.exp(0 - 2) + math.exp(1 - 2))
    second = math.log(1 + math.exp(1 - 0) + math.exp(1 - 0.5))
    per = lsep_per_example(logits, y)
    torch.testing.assert_close(per, torch.tensor([first, second, 0.0, 0.0]))
    torch.testing.assert_close(lsep(logits, y), torch.tensor((first + second) / 4))
    assert lsep(logits, y, reduction="none").shape == (4, 1)


def test_lsep_weights_soft_pairs_by_t_i_times_one_minus_t_j():
    """Soft targets weight both orders of a pair (hand-computed); hard targets: plain LSEP."""
    logits = torch.tensor([[1.0, -0.5]])
    y = torch.tensor([[0.8, 0.2]])
    expected = math.log(1 + 0.8 * 0.8 * math.exp(-0.5 - 1) + 0.2 * 0.2 * math.exp(1 + 0.5))
    torch.testing.assert_close(lsep_per_example(logits, y), torch.tensor([expected]))
    # equal soft targets weigh both orders alike, so equal scores are the minimum (zero gradient)
    scores = torch.zeros(1, 2, requires_grad=True)
    lsep(scores, torch.tensor([[0.5, 0.5]])).backward()
    torch.testing.assert_close(scores.grad, torch.zeros(1, 2))


def test_lsep_is_near_zero_when_every_positive_outscores_every_negative_widely():
    y = (torch.rand(8, 20, generator=torch.Generator().manual_seed(0)) < 0.3).float()
    logits = torch.where(y > 0, 20.0, -20.0)
    assert lsep(logits, y) < 1e-12
    assert lsep(-logits, y) > 30  # the reverse order costs about the margin


def test_lsep_gradient_raises_positives_and_lowers_negatives():
    logits = torch.randn(6, K, generator=torch.Generator().manual_seed(1), requires_grad=True)
    y = torch.tensor([[1.0, 0, 0, 1, 0]] * 3 + [[0, 1, 1, 1, 0]] * 2 + [[0.0] * K])
    lsep(logits, y).backward()
    grad = logits.grad
    assert (grad[:5][y[:5] > 0] < 0).all() and (grad[:5][y[:5] == 0] > 0).all()
    assert torch.equal(grad[5], torch.zeros(K))  # no positive: no pair, no gradient


def test_lsep_is_finite_on_huge_logits():
    logits = torch.tensor([[-1e4, 1e4, 0.0]], requires_grad=True)
    loss = lsep(logits, torch.tensor([[1.0, 0.0, 0.0]]))
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(2e4))
    assert torch.isfinite(logits.grad).all()


def test_bce_plus_lsep_is_their_weighted_sum():
    logits = torch.randn(4, K, generator=torch.Generator().manual_seed(2))
    y = torch.rand(4, K, generator=torch.Generator().manual_seed(3))
    both = base_loss("bce+lsep", 0.25)
    bce = F.binary_cross_entropy_with_logits(logits, y)
    torch.testing.assert_close(both(logits, y), bce + 0.25 * lsep(logits, y))
    torch.testing.assert_close(both(logits, y, reduction="none").mean(), both(logits, y))


# the training module: BCE unchanged, every treatment composes with every loss ---------------------


def _module(treatment: str, loss: str = "bce", weight: float = 1.0):
    cfg = tiny_config(**{"noisy.treatment": treatment, "train.loss": loss, "train.lsep_weight": weight})
    torch.manual_seed(0)
    return build_module(cfg, "cnn1", K, lr=1e-3, seed=0).train()


def _batch():
    torch.manual_seed(1)
    x = torch.rand(4, 1, 128, 128)
    y = (torch.rand(4, K) < 0.4).float()
    return x, torch.cat([y, torch.tensor([[1.0], [0.0], [1.0], [0.0]])], dim=1)


def _old_loss(module, treatment, x, y, w):
    """The loss as computed before ``train.loss`` (commit 3770d69's treatments)."""
    if treatment == "head":
        embedding = module.model.embed(x)
        clean = module.model.head.classify[-1](embedding).float()
        noisy = module.noisy_head(embedding).float()
        per_example = (1 - w) * F.binary_cross_entropy_with_logits(
            clean, y, reduction="none"
        ) + w * F.binary_cross_entropy_with_logits(noisy, y, reduction="none")
        return per_example.mean()
    logits = module(x).float()
    if treatment == "lsoft":
        beta = 1 - w * (1 - module.lsoft_beta)
        y = beta * y + (1 - beta) * torch.sigmoid(logits).detach()
    return F.binary_cross_entropy_with_logits(logits, y)


def _loss_and_grads(module, compute):
    module.zero_grad()
    torch.manual_seed(5)  # dropout draws
    loss = compute()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in module.parameters() if p.grad is not None]


@pytest.mark.parametrize("treatment", ["drop", "head", "lsoft"])
def test_bce_leaves_the_loss_and_its_gradients_bit_identical(treatment):
    module = _module(treatment)
    x, targets = _batch()
    y, w = targets[:, :-1], targets[:, -1:]
    new, new_grads = _loss_and_grads(module, lambda: module.loss(x, targets))
    old, old_grads = _loss_and_grads(module, lambda: _old_loss(module, treatment, x, y, w))
    assert torch.equal(new, old)
    assert len(new_grads) == len(old_grads) and all(map(torch.equal, new_grads, old_grads))


@pytest.mark.parametrize("loss", ["lsep", "bce+lsep"])
def test_treatments_apply_the_base_loss_where_they_applied_bce(loss):
    x, targets = _batch()
    y, w = targets[:, :-1], targets[:, -1:]
    criterion = base_loss(loss, 0.5)
    with torch.no_grad():
        plain = _module("drop", loss, 0.5).eval()
        torch.testing.assert_close(plain.loss(x, targets), criterion(plain(x).float(), y))
        head = _module("head", loss, 0.5).eval()
        head.noisy_head.weight.add_(0.1)  # the two layers differ, so the untrusted share matters
        embedding = head.model.embed(x)
        clean = criterion(head.model.head.classify[-1](embedding).float(), y, reduction="none")
        noisy = criterion(head.noisy_head(embedding).float(), y, reduction="none")
        torch.testing.assert_close(head.loss(x, targets), ((1 - w) * clean + w * noisy).mean())
        soft = _module("lsoft", loss, 0.5).eval()
        logits = soft(x).float()
        beta = 1 - w * (1 - soft.lsoft_beta)
        expected = criterion(logits, beta * y + (1 - beta) * torch.sigmoid(logits))
        torch.testing.assert_close(soft.loss(x, targets), expected)


# config ------------------------------------------------------------------------------------------


def test_unknown_loss_names_its_key_in_one_line():
    with pytest.raises(ConfigError, match="config key 'train.loss': unknown training loss 'hinge'") as err:
        checked_plan(tiny_config(**{"train.loss": "hinge"}))
    assert "\n" not in str(err.value) and "bce+lsep" in str(err.value)
    with pytest.raises(ConfigError, match="train.loss"):
        _module("drop", "hinge")


def test_lsep_weight_is_checked_when_it_is_read():
    with pytest.raises(ConfigError, match="config key 'train.lsep_weight': must be > 0"):
        checked_plan(tiny_config(**{"train.loss": "bce+lsep", "train.lsep_weight": 0}))
    checked_plan(tiny_config(**{"train.loss": "lsep", "train.lsep_weight": 0}))  # unused: any value


def test_every_loss_is_valid_and_changes_the_stage_keys():
    keys = {pipeline.stage_key(checked_plan_config(name), "cnn1", 1) for name in LOSSES.names()}
    assert len(keys) == len(LOSSES.names())
    assert pipeline.stage_key(tiny_config(), "cnn1", 1) != pipeline.stage_key(
        tiny_config(**{"train.loss": "bce+lsep", "train.lsep_weight": 2}), "cnn1", 1
    )


def checked_plan_config(loss: str):
    cfg = tiny_config(**{"train.loss": loss})
    checked_plan(cfg)
    return cfg
