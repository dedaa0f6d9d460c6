import numpy as np
import pytest
import torch
from conftest import tiny_config
from lightning.pytorch.callbacks import Callback

from noisytag.audio.cache import FeatureCache
from noisytag.config import FrontendConfig
from noisytag.data.dataset import load_dataset, multi_hot
from noisytag.learn.averaging import ema_share
from noisytag.learn.loader import ClipSet
from noisytag.learn.train import fit_fold, read_metrics, score_validation
from noisytag.metrics import lwlrap


def test_score_validation_averages_per_clip_and_drops_padded_duplicates():
    logits = torch.tensor([[2.0, -1.0], [0.0, 1.0], [-3.0, 3.0]])
    targets = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    window = torch.tensor([0, 1, 2])
    row = torch.tensor([0, 0, 1])
    loss, score = score_validation(logits, targets, window, row)
    probs = torch.sigmoid(logits)
    clip0 = probs[:2].mean(0)
    expected = lwlrap(np.array([[1, 0], [0, 1]], bool), torch.stack([clip0, probs[2]]).numpy())
    assert score == pytest.approx(expected)
    # a distributed sampler pads by repeating windows: the repeats must not count twice
    dup = score_validation(
        torch.cat([logits, logits[:1]]),
        torch.cat([targets, targets[:1]]),
        torch.cat([window, window[:1]]),
        torch.cat([row, row[:1]]),
    )
    assert dup == pytest.approx((loss, score))


@pytest.fixture(scope="module")
def curated_clips(tiny_data, tiny_cache):
    cfg = FrontendConfig()
    data = load_dataset(tiny_data)
    cache = FeatureCache.open(tiny_cache, cfg, "curated")
    positions = np.array([cache.position(f) for f in data.curated["fname"]])
    clips = ClipSet(
        np.full(len(positions), "curated", dtype=object),
        positions,
        multi_hot(data.curated["labels"], data.classes),
    )
    return {"curated": cache}, clips, len(data.classes)


def _fit(tmp, caches, clips, n_classes, epochs, callbacks=(), **sets):
    cfg = tiny_config(**{"train.batch_size": 8, **sets})
    return fit_fold(
        cfg,
        arch="cnn1",
        n_classes=n_classes,
        caches=caches,
        train=clips,
        val=clips,
        fold_dir=tmp,
        epochs=epochs,
        lr=3e-3,
        seed=5,
        progress=False,
        callbacks=callbacks,
    )


@pytest.mark.slow
def test_training_learns_the_training_set(tmp_path, curated_clips):
    caches, clips, n_classes = curated_clips
    off = {
        "augment.mixup_p": 0,
        "augment.specmix_p": 0,
        "augment.zoom_p": 0,
        "augment.brightness_p": 0,
        "augment.contrast_p": 0,
    }
    _fit(tmp_path, caches, clips, n_classes, epochs=12, **{"train.batch_size": 4, **off})
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == list(range(12))
    val_loss = [float(r["val_loss"]) for r in rows]
    val_lwlrap = [float(r["val_lwlrap"]) for r in rows]
    assert val_loss[-1] < 0.9 * val_loss[0], val_loss
    assert val_lwlrap[-1] > val_lwlrap[0] + 0.15, val_lwlrap
    assert (tmp_path / "last.ckpt").is_file()


class StopAtEpoch(Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("simulated interruption")


@pytest.mark.slow
def test_interrupted_fit_resumes_to_the_same_weights(tmp_path, curated_clips):
    caches, clips, n_classes = curated_clips
    whole = _fit(tmp_path / "whole", caches, clips, n_classes, epochs=3)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _fit(tmp_path / "cut", caches, clips, n_classes, epochs=3, callbacks=[StopAtEpoch(2)])
    assert (tmp_path / "cut" / "last.ckpt").is_file()
    resumed = _fit(tmp_path / "cut", caches, clips, n_classes, epochs=3)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    rows = read_metrics(tmp_path / "cut" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]


class StepStates(Callback):
    """The model's state after each optimizer step."""

    def __init__(self):
        self.states = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()})


@pytest.mark.slow
def test_ema_fit_returns_the_averaged_model(tmp_path, curated_clips):
    """The model fit_fold returns (the one the pipeline saves and predicts with) is the EMA of the
    weights and batch-norm buffers after each step, not the last step's weights."""
    caches, clips, n_classes = curated_clips
    steps, d = StepStates(), 0.7
    module = _fit(tmp_path, caches, clips, n_classes, epochs=2, callbacks=[steps],
                  **{"train.average": "ema", "train.ema_decay": d})  # fmt: skip
    expected, share = dict(steps.states[0]), ema_share(d)  # with its warm-up: d_n = min(d, (1+n)/(10+n))
    for n, w in enumerate(steps.states[1:], start=1):
        s = share(n)
        expected = {k: (1 - s) * expected[k] + s * v if v.is_floating_point() else v for k, v in w.items()}
    got = module.model.state_dict()
    assert len(steps.states) > 2 and not torch.equal(
        got["head.classify.6.weight"], w["head.classify.6.weight"]
    )
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("average", ["ema", "swa"])
def test_interrupted_averaged_fit_resumes_to_the_same_weights(tmp_path, curated_clips, average):
    """The average is checkpointed: a fit killed after averaging began resumes to the same model, and
    one resumed from the last checkpoint with nothing left to train still returns the average."""
    caches, clips, n_classes = curated_clips
    sets = {"train.average": average, "train.ema_decay": 0.8, "train.swa_start": 0.5}
    whole = _fit(tmp_path / "whole", caches, clips, n_classes, epochs=3, **sets)
    with pytest.raises(RuntimeError, match="simulated interruption"):
        _fit(tmp_path / "cut", caches, clips, n_classes, epochs=3, callbacks=[StopAtEpoch(2)], **sets)
    resumed = _fit(tmp_path / "cut", caches, clips, n_classes, epochs=3, **sets)
    again = _fit(tmp_path / "cut", caches, clips, n_classes, epochs=3, **sets)  # last.ckpt of a done fit
    for model in (resumed, again):
        a, b = whole.model.state_dict(), model.model.state_dict()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
