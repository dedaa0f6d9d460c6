"""Weight averaging (``train.average``): EMA and SWA of a known weight sequence, batch-norm statistics,
which weights validation sees, and the config keys' checks."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from noisytag.config import ConfigError
from noisytag.learn.averaging import AVERAGINGS, build_averaging, ema_share, recompute_batch_norm
from noisytag.runs.validate import validate_plugins


class Toy(L.LightningModule):
    """Linear → batch norm, trained by SGD: its weights after each step are the known sequence."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
        self.seen: list[dict] = []

    def augment(self, x, y):
        return x, y

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.model(x), y)

    def validation_step(self, batch, batch_idx):
        self.seen.append(_state(self))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Recorder(Callback):
    def __init__(self):
        self.states: list[dict] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append(_state(pl_module))


def _state(module) -> dict:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


def _data(n=8, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.randn(n, 4, generator=g), torch.randn(n, 3, generator=g))


def _fit(average: str, epochs: int = 2, val: bool = False, **sets):
    """Toy fit (4 steps an epoch) with the averaging of ``train.average`` → (module, recorder, averaging)."""
    cfg = tiny_config(**{"train.average": average, **sets})
    averaging, recorder, module = build_averaging(cfg), Recorder(), Toy()
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
        callbacks=[recorder, averaging],
    )  # fmt: skip
    loader = DataLoader(_data(), batch_size=2)
    trainer.fit(module, loader, DataLoader(_data(2), batch_size=2) if val else None)
    averaging.finish(module, loader, "cpu", seed=0)
    return module, recorder, averaging


@pytest.mark.parametrize("d", [0.6, 0.999])
def test_ema_of_a_known_weight_sequence_follows_the_formula(d):
    module, recorder, _ = _fit("ema", **{"train.ema_decay": d})
    assert len(recorder.states) == 8
    expected = dict(recorder.states[0])  # a_1 = w_1, then a_{n+1} = d_n a_n + (1 - d_n) w_{n+1}
    for n, w in enumerate(recorder.states[1:], start=1):
        d_n = min(d, (1 + n) / (10 + n))  # the warm-up: early states are forgotten on a short run
        expected = {
            k: d_n * expected[k] + (1 - d_n) * w[k] if v.is_floating_point() else w[k] for k, v in w.items()
        }
    got = _state(module)
    assert not torch.equal(got["0.weight"], recorder.states[-1]["0.weight"])  # not the last step's
    for k, v in expected.items():  # batch-norm running statistics are averaged like the weights
        torch.testing.assert_close(got[k], v, msg=k)


def test_ema_forgets_the_initial_weights_on_a_short_run():
    """With the default decay the first state's weight in the average after a 360-step fold is nil with the
    warm-up; a constant 0.999 would keep 70 % of it (the screened EMA model was then near chance)."""
    share = ema_share(0.999)
    kept = 1.0
    for n in range(1, 360):
        kept *= 1 - share(n)
    assert kept < 1e-6
    assert share(1) == pytest.approx(1 - 2 / 11)
    assert share(100_000) == pytest.approx(0.001)


def test_swa_is_the_mean_after_its_start_with_batch_norm_recomputed():
    module, recorder, averaging = _fit("swa", **{"train.swa_start": 0.5})
    assert averaging.averaged == 4  # steps 5 to 8 of 8
    got = _state(module)
    for k in ("0.weight", "0.bias", "1.weight", "1.bias"):
        mean = torch.stack([s[k] for s in recorder.states[4:]]).mean(0)
        torch.testing.assert_close(got[k], mean, msg=k)
    # the statistics of the averaged weights: the mean of each training batch's mean and variance
    with torch.no_grad():
        h = [module.model[0](x) for x, _ in DataLoader(_data(), batch_size=2)]
    torch.testing.assert_close(got["1.running_mean"], torch.stack([b.mean(0) for b in h]).mean(0))
    torch.testing.assert_close(got["1.running_var"], torch.stack([b.var(0) for b in h]).mean(0))
    assert module.model[1].momentum == 0.1 and not module.training


def test_validation_scores_the_average_once_there_is_one():
    module, recorder, _ = _fit("swa", val=True, **{"train.swa_start": 0.5})
    first, second = module.seen  # one validation batch per epoch
    assert torch.equal(first["0.weight"], recorder.states[3]["0.weight"])  # no average yet: current
    mean = torch.stack([s["0.weight"] for s in recorder.states[4:]]).mean(0)
    torch.testing.assert_close(second["0.weight"], mean)


def test_recompute_batch_norm_leaves_the_random_state_alone():
    module = Toy()
    before = torch.random.get_rng_state()
    recompute_batch_norm(module, DataLoader(_data(), batch_size=4), "cpu", seed=3)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert int(module.model[1].num_batches_tracked) == 2


def test_no_averaging_by_default_and_config_checks():
    assert tiny_config().train.average == "none" and build_averaging(tiny_config()) is None
    assert set(AVERAGINGS.names()) == {"none", "ema", "swa"}
    with pytest.raises(ConfigError, match="'train.ema_decay'"):
        validate_plugins(tiny_config(**{"train.average": "ema", "train.ema_decay": 1.0}))
    with pytest.raises(ConfigError, match="'train.swa_start'"):
        validate_plugins(tiny_config(**{"train.average": "swa", "train.swa_start": 1.0}))
    with pytest.raises(ConfigError, match="train.average"):
        validate_plugins(tiny_config(**{"train.average": "polyak"}))
