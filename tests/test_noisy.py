"""SPEC §6b: every noisy clip contributes; each treatment changes training as intended."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_config

from noisytag.config import ConfigError
from noisytag.learn.train import build_module
from noisytag.plan import joint_epochs
from noisytag.runs import pipeline
from noisytag.runs.context import open_run
from noisytag.runs.scoring import stage_oof
from noisytag.runs.validate import checked_plan

K = 5


def _module(treatment: str, beta: float = 0.7):
    cfg = tiny_config(**{"noisy.treatment": treatment, "noisy.lsoft_beta": beta})
    torch.manual_seed(0)
    return build_module(cfg, "cnn1", K, lr=1e-3, seed=0).train()


def _batch(untrusted: list[float]):
    torch.manual_seed(1)
    x = torch.rand(len(untrusted), 1, 128, 128)
    y = (torch.rand(len(untrusted), K) < 0.3).float()
    return x, torch.cat([y, torch.tensor(untrusted)[:, None]], dim=1)


def _grads(module, untrusted):
    module.zero_grad()
    module.loss(*_batch(untrusted)).backward()
    clean = module.model.head.classify[-1].weight.grad
    noisy = module.noisy_head.weight.grad
    return clean.abs().sum().item(), noisy.abs().sum().item()


def test_noisy_head_learns_only_from_untrusted_examples():
    module = _module("head")
    clean, noisy = _grads(module, [0.0, 0.0, 0.0, 0.0])
    assert clean > 0 and noisy == 0
    clean, noisy = _grads(module, [1.0, 1.0, 1.0, 1.0])
    assert clean == 0 and noisy > 0
    clean, noisy = _grads(module, [0.0, 1.0, 0.3, 0.0])  # mixed examples share by their untrusted part
    assert clean > 0 and noisy > 0


def test_noisy_head_starts_as_a_copy_of_the_clean_layer():
    module = _module("head")
    torch.testing.assert_close(module.noisy_head.weight, module.model.head.classify[-1].weight)


def test_lsoft_with_beta_one_is_plain_bce():
    module = _module("lsoft", beta=1.0).eval()
    x, y = _batch([1.0, 1.0, 0.0, 1.0])
    expected = F.binary_cross_entropy_with_logits(module(x), y[:, :-1])
    torch.testing.assert_close(module.loss(x, y), expected)


def test_lsoft_pulls_untrusted_targets_towards_the_prediction():
    module = _module("lsoft", beta=0.7).eval()
    x, y = _batch([1.0, 1.0, 1.0, 1.0])
    logits = module(x)
    soft = 0.7 * y[:, :-1] + 0.3 * torch.sigmoid(logits)
    torch.testing.assert_close(module.loss(x, y), F.binary_cross_entropy_with_logits(logits, soft))
    trusted = y.clone()
    trusted[:, -1] = 0
    torch.testing.assert_close(module.loss(x, trusted), F.binary_cross_entropy_with_logits(logits, y[:, :-1]))


@pytest.mark.slow
@pytest.mark.parametrize("treatment", ["head", "lsoft", "given"])
def test_treated_stages_train_on_every_noisy_clip_of_the_other_folds(
    treatment, run_copy, tiny_data, tiny_cache
):
    cfg = {"data.cache_dir": str(tiny_cache), "noisy.treatment": treatment}
    ctx = open_run(tiny_data, run_copy, tiny_config(**cfg), force=True, progress=False)
    for stage in (3, 4):
        clips = pipeline.training_clips(ctx, "cnn1", stage, 0)
        noisy = clips.split == "noisy"
        expected = ctx.noisy.clips.position[ctx.noisy.fold != 0]
        assert sorted(clips.position[noisy]) == sorted(expected)
        assert (clips.weights[~noisy] == 0).all()  # curated clips stay trusted
        selected = set(pipeline.select_for(ctx, "cnn1", stage).query("fold != 0")["fname"])
        by_position = dict(zip(ctx.noisy.clips.position, ctx.noisy.fnames, strict=True))
        for position, weight in zip(clips.position[noisy], clips.weights[noisy], strict=True):
            trusted = by_position[position] in selected or treatment == "given"
            assert weight == (0.0 if trusted else 1.0)
    # the seed's behaviour stays: without a treatment, unselected noisy clips are dropped
    seed = open_run(
        tiny_data, run_copy, tiny_config(**{"data.cache_dir": str(tiny_cache)}), force=True, progress=False
    )
    assert len(pipeline.training_clips(seed, "cnn1", 3, 0)) < len(pipeline.training_clips(ctx, "cnn1", 3, 0))


@pytest.mark.slow
def test_relabelled_targets_lie_between_given_labels_and_predictions(run_copy, tiny_data, tiny_cache):
    cfg = {"data.cache_dir": str(tiny_cache), "noisy.treatment": "relabel", "noisy.relabel_alpha": 0.5}
    ctx = open_run(tiny_data, run_copy, tiny_config(**cfg), force=True, progress=False)
    clips = pipeline.training_clips(ctx, "cnn1", 3, 0)
    oof = np.mean([stage_oof(ctx, "cnn1", s, "noisy") for s in (1, 2)], axis=0)
    given = ctx.noisy.clips.targets
    row_of = {int(p): i for i, p in enumerate(ctx.noisy.clips.position)}
    selected = set(pipeline.select_for(ctx, "cnn1", 3)["fname"])
    relabelled = 0
    for position, target in zip(
        clips.position[clips.split == "noisy"], clips.targets[clips.split == "noisy"], strict=True
    ):
        i = row_of[int(position)]
        if ctx.noisy.fnames[i] in selected:
            np.testing.assert_array_equal(target, given[i])
            continue
        relabelled += 1
        low, high = np.minimum(given[i], oof[i]), np.maximum(given[i], oof[i])
        assert np.all(target >= low - 1e-6) and np.all(target <= high + 1e-6)
        np.testing.assert_allclose(target, 0.5 * given[i] + 0.5 * oof[i], atol=1e-6)
    assert relabelled > 0


@pytest.mark.slow
def test_joint_baseline_is_one_stage_on_curated_and_all_noisy(tiny_data, tiny_cache, tmp_path):
    cfg = tiny_config(**{"data.cache_dir": str(tiny_cache), "pipeline.mode": "joint"})
    results = pipeline.run_pipeline(tiny_data, tmp_path / "joint", cfg, progress=False)
    assert list(results["stage_table"]["stage"]) == [1]
    ctx = open_run(tiny_data, tmp_path / "joint", cfg, progress=False)
    clips = pipeline.training_clips(ctx, "cnn1", 1, 0)
    assert (clips.split == "curated").sum() == (ctx.curated.fold != 0).sum()
    assert (clips.split == "noisy").sum() == (ctx.noisy.fold != 0).sum()
    assert results["test"]["model"].iloc[-1].startswith("ensemble cnn1/stage1")


def test_joint_epochs_match_the_warmup_budget():
    cfg = tiny_config(**{"pipeline.stage_epochs": "[12, 15, 10, 10]"})
    # 12·480 + 15·120 + 10·120 + 10·120 = 9,960 examples over 600 clips ≈ 17 epochs
    assert joint_epochs(cfg, 120, 480) == 17
    assert joint_epochs(tiny_config(**{"pipeline.joint_epochs": 5}), 120, 480) == 5


def test_stage_keys_change_only_from_the_first_stage_a_setting_touches():
    base = tiny_config()
    later = tiny_config(**{"noisy.treatment": "head"})  # treats stages 3 and 4
    assert [
        pipeline.stage_key(base, "cnn1", k) == pipeline.stage_key(later, "cnn1", k) for k in (1, 2, 3, 4)
    ] == [
        True,
        True,
        False,
        False,
    ]
    assert pipeline.stage_key(base, "cnn1", 1) != pipeline.stage_key(
        tiny_config(**{"train.lr": 0.1}), "cnn1", 1
    )


def test_unknown_treatment_names_the_key():
    with pytest.raises(ConfigError, match="noisy.treatment"):
        checked_plan(tiny_config(**{"noisy.treatment": "ignore"}))


@pytest.fixture
def halved_treatment():
    """A test treatment whose loss is its own function: half the plain BCE, registered then removed."""
    from noisytag.learn.treatments import TREATMENTS, Treatment, plain_loss

    def half_bce(module, x, y, w):
        return 0.5 * plain_loss(module, x, y, w)

    TREATMENTS.register("halved")(lambda: Treatment("halved", 1.0, False, half_bce))
    yield "halved"
    TREATMENTS.unregister("halved")


def test_a_new_loss_treatment_is_one_registry_entry(halved_treatment):
    module = _module(halved_treatment).eval()
    x, y = _batch([1.0, 0.0, 1.0, 0.0])
    with torch.no_grad():
        expected = 0.5 * F.binary_cross_entropy_with_logits(module(x).float(), y[:, :-1])
        torch.testing.assert_close(module.loss(x, y), expected)
    assert module.noisy_head is None


def test_every_training_set_part_of_the_pipeline_plans_has_a_builder():
    from noisytag.plan import PART_TEXT

    assert set(pipeline.TRAINING_PARTS) == set(PART_TEXT) - {"teacher", "unlabelled"}  # those: distill's
