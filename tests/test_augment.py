"""Batch augmentations (SPEC §4): defining properties, identity when off, reproducibility."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from noisytag.config import AugmentConfig, ConfigError, DataConfig, RunConfig
from noisytag.learn.augment import (
    AUGMENTATIONS,
    BatchAugment,
    Lighting,
    Masking,
    Mixup,
    SpecMix,
    ZoomCrop,
    build_chain,
    check_config,
    zoom_theta,
)
from noisytag.learn.recording import RANGE_DB, BandGain, FreqMixStyle
from noisytag.report.gallery import gallery, gallery_columns, gallery_figure

OFF = AugmentConfig(mixup_p=0, specmix_p=0, zoom_p=0, brightness_p=0, contrast_p=0, mask_p=0)
# the gallery's columns: the original, one per registered augmentation, the whole chain
COLUMNS = (
    "original",
    "mixup",
    "SpecMix",
    "zoom",
    "lighting",
    "band gains",
    "Freq-MixStyle",
    "masking",
    "full chain",
)
ON = AugmentConfig(
    mixup_p=1, specmix_p=1, zoom_p=1, brightness_p=1, contrast_p=1, bandgain_p=1, freqmix_p=1, mask_p=1
)
UNBOUNDED = {"freqmix"}  # augmentations whose output may leave [0, 1] (statistics of the original)


def batch(b=16, k=6, f=32, t=40, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 1, f, t, generator=g, dtype=dtype)
    y = (torch.rand(b, k, generator=g) < 0.3).to(dtype)
    return x, y


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def labelled_batch(b=12, f=32, t=40):
    """Example i is the constant image i (so every pixel tells where it came from), one-hot target i."""
    x = torch.arange(b, dtype=torch.float32).reshape(b, 1, 1, 1).expand(b, 1, f, t).contiguous()
    return x, torch.eye(b)


# mixup ----------------------------------------------------------------------------------------


def test_mixup_lambda_at_least_half_and_mixes_inputs_and_targets():
    x, y = batch(b=64)
    mix = Mixup(alpha=0.4, p=1.0, generator=gen())
    params = mix.sample(x)
    lam, perm = params["lam"], params["perm"]
    assert (lam >= 0.5).all() and (lam <= 1).all()
    assert sorted(perm.tolist()) == list(range(64))
    xo, yo = mix.apply(x, y, params)
    lx = lam.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(xo, lx * x + (1 - lx) * x[perm])
    torch.testing.assert_close(yo, lam[:, None] * y + (1 - lam[:, None]) * y[perm])
    assert yo.min() >= 0 and yo.max() <= 1


def test_mixup_beta_is_u_shaped():
    x, _ = batch(b=4000, f=2, t=2)
    lam = Mixup(alpha=0.4, generator=gen(1)).sample(x)["lam"]
    # Beta(0.4, 0.4) folded to [0.5, 1] puts most mass near 1: P(λ > 0.9) ≈ 0.44, mean ≈ 0.83
    assert 0.78 < lam.mean().item() < 0.88
    assert 0.38 < (lam > 0.9).float().mean().item() < 0.50


def test_mixup_probability_gives_neutral_lambda():
    x, y = batch()
    lam = Mixup(p=0.0, generator=gen()).sample(x)["lam"]
    assert (lam == 1).all()
    xo, yo = Mixup(p=0.0, generator=gen())(x, y)
    assert torch.equal(xo, x) and torch.equal(yo, y)


def test_mixup_target_rules_on_a_known_pair():
    """Clips 0 and 1 mixed with each other at λ = 0.75; clip 2 unmixed (λ = 1, partner clip 0).
    Last column: soft (teacher-like) targets; the union takes the max of both soft values."""
    x, _ = labelled_batch(b=3)
    y = torch.tensor([[1.0, 0.0, 0.0, 0.2], [0.0, 1.0, 0.0, 0.6], [0.0, 0.0, 1.0, 0.1]])
    params = {"lam": torch.tensor([0.75, 0.75, 1.0]), "perm": torch.tensor([1, 0, 0])}
    xm, ym = Mixup(target="mix").apply(x, y, params)
    xu, yu = Mixup(target="union").apply(x, y, params)
    mixed = [[0.75, 0.25, 0.0, 0.3], [0.25, 0.75, 0.0, 0.5], [0.0, 0.0, 1.0, 0.1]]
    torch.testing.assert_close(ym, torch.tensor(mixed))
    union = [[1.0, 1.0, 0.0, 0.6], [1.0, 1.0, 0.0, 0.6], [0.0, 0.0, 1.0, 0.1]]
    assert torch.equal(yu, torch.tensor(union))
    assert torch.equal(xu, xm)  # the inputs mix alike under both rules
    torch.testing.assert_close(xm[:, 0, 0, 0], torch.tensor([0.25, 0.75, 2.0]))


def test_mixup_target_comes_from_the_config_and_is_checked():
    from noisytag.config import RunConfig
    from noisytag.learn.train import build_module

    assert build_chain(AugmentConfig(mixup_target="union")).steps["mixup"].target == "union"
    assert build_chain(AugmentConfig()).steps["mixup"].target == "mix"
    with pytest.raises(ConfigError, match="config key 'augment.mixup_target': must be one of"):
        check_config(AugmentConfig(mixup_target="max"))
    # the training module (pipeline folds and distillation's student alike) reads it from the config
    cfg = dataclasses.replace(RunConfig(), augment=AugmentConfig(mixup_target="union"))
    module = build_module(cfg, "cnn1", 4, lr=1e-3, seed=0)
    assert module.augment.steps["mixup"].target == "union"


# SpecMix --------------------------------------------------------------------------------------


def test_specmix_bands_come_from_partner_and_target_weight():
    x, y = labelled_batch()
    b, _, f, t = x.shape
    sm = SpecMix(max_size=0.25, p=1.0, generator=gen(3))
    params = sm.sample(x)
    xo, yo = sm.apply(x, y, params)
    h, w, perm = params["h"], params["w"], params["perm"]
    assert ((h >= 0) & (h < 0.25) & (w >= 0) & (w < 0.25)).all()
    assert torch.equal(params["fh"], (h.double() * f).floor().long())
    assert torch.equal(params["tw"], (w.double() * t).floor().long())
    for i in range(b):  # checking the result, not computing it: a loop is fine here
        f0, fh, t0, tw = (int(params[k][i]) for k in ("f0", "fh", "t0", "tw"))
        assert 0 <= f0 <= f - fh and 0 <= t0 <= t - tw
        cross = torch.zeros(f, t, dtype=torch.bool)
        cross[f0 : f0 + fh, :] = True
        cross[:, t0 : t0 + tw] = True
        img = xo[i, 0]
        assert (img[cross] == perm[i]).all()  # replaced bands hold the partner's pixels
        assert (img[~cross] == i).all()  # the rest is the example's own
    a = h + w - h * w
    expected = (1 - a)[:, None] * y + a[:, None] * y[perm]
    torch.testing.assert_close(yo, expected)
    assert yo.min() >= 0 and yo.max() <= 1
    torch.testing.assert_close(yo.sum(1), torch.ones(b))  # one-hot in → a mixture summing to 1


def test_specmix_on_soft_targets_stays_in_unit_interval():
    x, y = batch(b=64)
    xm, ym = Mixup(generator=gen())(x, y)
    _, yo = SpecMix(generator=gen(1))(xm, ym)
    assert yo.min() >= 0 and yo.max() <= 1


def test_specmix_disabled_is_identity():
    x, y = batch()
    xo, yo = SpecMix(p=0.0, generator=gen())(x, y)
    assert torch.equal(xo, x) and torch.equal(yo, y)


# zoom and crop --------------------------------------------------------------------------------


def test_zoom_scales_a_ramp_about_its_fixed_point():
    b, f, t = 4, 8, 64
    ramp = torch.linspace(0, 1, t).expand(b, 1, f, t).contiguous()
    zoom = ZoomCrop(max_zoom=1.05, p=1.0)
    params = {
        "on": torch.ones(b, dtype=torch.bool),
        "scale": torch.tensor([1.0, 1.02, 1.05, 1.04]),
        "cy": torch.zeros(b),
        "cx": torch.tensor([0.0, 0.0, 0.0, -1.0]),
    }
    out, _ = zoom.apply(ramp, torch.zeros(b, 2), params)
    torch.testing.assert_close(out[0], ramp[0], atol=1e-5, rtol=0)
    interior = slice(8, 56)  # away from the border
    slope_in = (ramp[0, 0, 0, interior].diff()).mean()
    for i in range(1, 4):
        slope = out[i, 0, 0, interior].diff().mean()
        assert slope.item() == pytest.approx((slope_in / params["scale"][i]).item(), rel=1e-3)
    assert out[1, 0, 0, 31:33].mean().item() == pytest.approx(0.5, abs=1e-3)  # centre fixed
    assert out[3, 0, 0, 0].item() == pytest.approx(0.0, abs=1e-3)  # left edge fixed
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("channels", [1, 3])
def test_zoom_equals_one_affine_grid_sample(channels):
    g = gen(4)
    x = torch.rand(32, channels, 24, 40, generator=g)
    zoom = ZoomCrop(max_zoom=1.3, p=1.0, generator=g)
    params = zoom.sample(x)
    grid = F.affine_grid(zoom_theta(params), list(x.shape), align_corners=False)
    expected = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out, _ = zoom.apply(x, torch.zeros(32, 2), params)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_zoom_untouched_examples_are_exact():
    x, y = batch(b=64)
    zoom = ZoomCrop(max_zoom=1.05, p=0.5, generator=gen())
    params = zoom.sample(x)
    out, yo = zoom.apply(x, y, params)
    on = params["on"]
    assert 0 < on.sum() < 64
    assert ((params["scale"] >= 1) & (params["scale"] <= 1.05)).all()
    assert torch.equal(out[~on], x[~on]) and torch.equal(yo, y)
    assert not torch.equal(out[on], x[on])


# lighting -------------------------------------------------------------------------------------


def test_lighting_matches_fastai_formula():
    x, y = batch(b=64)
    light = Lighting(brightness=0.2, contrast=0.2, p_brightness=1.0, p_contrast=1.0, generator=gen())
    params = light.sample(x)
    change = torch.sigmoid(params["shift"])
    assert ((change >= 0.4 - 1e-6) & (change <= 0.6 + 1e-6)).all()
    assert ((params["scale"] >= 0.8 - 1e-6) & (params["scale"] <= 1.25 + 1e-6)).all()
    out, yo = light.apply(x, y, params)
    logit = torch.log(x / (1 - x))
    expected = torch.sigmoid((logit + params["shift"].view(-1, 1, 1, 1)) * params["scale"].view(-1, 1, 1, 1))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
    assert out.min() > 0 and out.max() < 1 and torch.equal(yo, y)


def test_brightness_is_monotone_and_contrast_keeps_order_and_midpoint():
    x = torch.tensor([0.05, 0.3, 0.5, 0.7, 0.95]).reshape(1, 1, 1, 5).repeat(2, 1, 1, 1)
    y = torch.zeros(2, 1)
    light = Lighting(brightness=0.2, contrast=0.2)
    brighter, _ = light.apply(
        x, y, {"shift": torch.full((2,), 0.4), "scale": torch.ones(2), "on": torch.ones(2, dtype=torch.bool)}
    )
    assert (brighter > x).all()
    stronger, _ = light.apply(
        x,
        y,
        {"shift": torch.zeros(2), "scale": torch.full((2,), 1.25), "on": torch.ones(2, dtype=torch.bool)},
    )
    flat = stronger[0, 0, 0]
    assert (flat.diff() > 0).all() and flat[2].item() == pytest.approx(0.5)
    assert flat[0] < x[0, 0, 0, 0] and flat[4] > x[0, 0, 0, 4]  # contrast spreads values apart


def test_lighting_off_is_identity():
    x, y = batch()
    out, _ = Lighting(p_brightness=0.0, p_contrast=0.0, generator=gen())(x, y)
    assert torch.equal(out, x)


# masking --------------------------------------------------------------------------------------


def test_masking_zeroes_bands_only():
    x, y = batch(b=32)
    x = x + 1.0  # no zeros before masking
    mask = Masking(max_freq=6, max_time=7, p=1.0, generator=gen())
    params = mask.sample(x)
    out, yo = mask.apply(x, y, params)
    assert (params["fh"] <= 6).all() and (params["tw"] <= 7).all() and params["fh"].max() > 0
    zeros = out == 0
    rows_zero = zeros.all(dim=3).squeeze(1).sum(1)  # mel rows entirely zero
    cols_zero = zeros.all(dim=2).squeeze(1).sum(1)
    full_t, full_f = x.shape[-1], x.shape[-2]
    expected = params["fh"] * full_t + params["tw"] * full_f - params["fh"] * params["tw"]
    assert torch.equal(zeros.sum(dim=(1, 2, 3)), expected)
    assert (rows_zero >= params["fh"]).all() and (cols_zero >= params["tw"]).all()
    assert torch.equal(out[~zeros], x[~zeros]) and torch.equal(yo, y)


# recording conditions: band gains, Freq-MixStyle ----------------------------------------------


def test_bandgain_known_gain_on_a_known_input():
    """g dB is g / 80 input units (the min-max range of a clip spanning top_db); a peak lifted above 1
    shifts the whole window down (the front end rescales the clip's peak to 1), floored at 0."""
    x = torch.full((3, 1, 8, 5), 0.5)
    x[1] = 0.98
    gain = torch.tensor([[8.0] * 4 + [-4.0] * 4] * 3)
    params = {"gain": gain, "bands": torch.tensor([2, 2, 0])}
    out, yo = BandGain().apply(x, torch.ones(3, 2), params)
    torch.testing.assert_close(out[0, 0, :4], torch.full((4, 5), 0.5 + 8 / RANGE_DB))
    torch.testing.assert_close(out[0, 0, 4:], torch.full((4, 5), 0.5 - 4 / RANGE_DB))
    excess = 0.98 + 8 / RANGE_DB - 1  # the boosted band of example 1 would pass 1
    torch.testing.assert_close(out[1, 0, :4], torch.ones(4, 5))
    torch.testing.assert_close(out[1, 0, 4:], torch.full((4, 5), 0.98 - 4 / RANGE_DB - excess))
    assert torch.equal(out[2], x[2]) and torch.equal(yo, torch.ones(3, 2))  # skipped: exact
    low, _ = BandGain().apply(
        torch.full((1, 1, 8, 5), 0.02), None, {"gain": gain[:1], "bands": torch.ones(1)}
    )
    assert (low[0, 0, 4:] == 0).all()  # pushed below the floor: 0


def test_bandgain_draws_bands_and_gains_per_example():
    x, y = batch(b=64, f=40)
    aug = BandGain(max_db=6.0, bands=6, p=0.5, generator=gen())
    params = aug.sample(x)
    gain, bands = params["gain"], params["bands"]
    on = bands > 0
    assert 0 < on.sum() < 64 and ((bands[on] >= 3) & (bands[on] <= 6)).all()
    assert gain.shape == (64, 40) and (gain.abs() <= 6).all() and (gain[~on] == 0).all()
    runs = 1 + (gain[:, 1:] != gain[:, :-1]).sum(1)  # contiguous bands of equal gain
    assert (runs[on] <= bands[on]).all() and (runs[on] >= 2).any()
    out, yo = aug.apply(x, y, params)
    assert torch.equal(out[~on], x[~on]) and torch.equal(yo, y) and not torch.equal(out[on], x[on])
    assert out.min() >= 0 and out.max() <= 1


def test_bandgain_needs_minmax_input():
    check_config(AugmentConfig(bandgain_p=0.5))
    bad = RunConfig(augment=AugmentConfig(bandgain_p=0.5), data=DataConfig(normalize="none"))
    with pytest.raises(ConfigError, match="config key 'augment.bandgain_p': band gains need min-max"):
        AUGMENTATIONS.validate(bad)


def test_freqmix_output_has_the_mixed_per_frequency_statistics():
    x, y = batch(b=16, f=12, t=30)
    x = x * torch.linspace(0.2, 1.0, 12).view(1, 1, 12, 1)  # a spectral colour per bin
    aug = FreqMixStyle(alpha=0.3, p=0.75, generator=gen(3))
    params = aug.sample(x)
    out, yo = aug.apply(x, y, params)
    on, lam, perm = params["on"], params["lam"].view(-1, 1), params["perm"]
    assert 0 < on.sum() < 16 and (lam[~on] == 1).all() and ((lam > 0) & (lam <= 1)).all()
    mu, sigma = x.mean(dim=(1, 3)), x.std(dim=(1, 3), correction=0)  # (B, F)
    mixed_mu = lam * mu + (1 - lam) * mu[perm]
    mixed_sigma = lam * sigma + (1 - lam) * sigma[perm]
    torch.testing.assert_close(out.mean(dim=(1, 3))[on], mixed_mu[on], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(dim=(1, 3), correction=0)[on], mixed_sigma[on], atol=1e-3, rtol=0)
    moved = on & (perm != torch.arange(16)) & (lam[:, 0] < 0.9)
    assert moved.any() and not torch.allclose(out.mean(dim=(1, 3))[moved], mu[moved], atol=1e-3)
    assert torch.equal(out[~on], x[~on]) and torch.equal(yo, y)


def test_recording_conditions_are_off_by_default_and_in_the_chain_when_on():
    assert AugmentConfig().bandgain_p == 0 and AugmentConfig().freqmix_p == 0
    steps = list(build_chain(AugmentConfig(bandgain_p=0.5, freqmix_p=0.5, mask_p=0.5)).steps)
    assert steps == ["mixup", "specmix", "zoom", "lighting", "bandgain", "freqmix", "masking"]
    assert isinstance(AUGMENTATIONS.build("bandgain", ON, gen()), BandGain)


# chain ----------------------------------------------------------------------------------------


def test_chain_order_and_switches():
    assert list(build_chain(AugmentConfig()).steps) == ["mixup", "specmix", "zoom", "lighting"]
    assert list(build_chain(AugmentConfig(mask_p=0.5)).steps)[-1] == "masking"
    assert list(build_chain(dataclasses.replace(OFF, zoom_p=0.5)).steps) == ["zoom"]
    assert len(build_chain(OFF)) == 0


def test_disabled_chain_is_identity():
    x, y = batch()
    xo, yo = build_chain(OFF, gen())(x, y)
    assert torch.equal(xo, x) and torch.equal(yo, y)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_chain_keeps_shape_dtype_device_and_ranges(dtype):
    x, y = batch(b=24, dtype=dtype)
    xo, yo = build_chain(AugmentConfig(mask_p=0.5), gen())(x, y)
    assert xo.shape == x.shape and yo.shape == y.shape
    assert xo.dtype == dtype and yo.dtype == dtype and xo.device == x.device
    assert xo.min() >= 0 and xo.max() <= 1 and yo.min() >= 0 and yo.max() <= 1
    assert not torch.equal(xo, x)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_chain_runs_on_cuda():  # pragma: no cover - CPU CI
    x, y = batch()
    xo, yo = build_chain(AugmentConfig(mask_p=0.5), gen())(x.cuda(), y.cuda())
    assert xo.is_cuda and yo.is_cuda


def test_chain_is_reproducible():
    x, y = batch(b=32)
    cfg = AugmentConfig(mask_p=0.5)
    a = build_chain(cfg, gen(7))(x, y)
    b = build_chain(cfg, gen(7))(x, y)
    c = build_chain(cfg, gen(8))(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    torch.manual_seed(5)
    d = build_chain(cfg)(x, y)
    torch.manual_seed(5)
    e = build_chain(cfg)(x, y)
    assert torch.equal(d[0], e[0]) and torch.equal(d[1], e[1])


def test_bad_config_names_the_key():
    with pytest.raises(ValueError, match="augment.zoom_max"):
        check_config(AugmentConfig(zoom_max=0.9))
    with pytest.raises(ValueError, match="augment.mixup_p"):
        build_chain(AugmentConfig(mixup_p=1.5))
    with pytest.raises(ValueError, match="augment.contrast"):
        build_chain(AugmentConfig(contrast=1.0))


# the registry ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_each_augmentation_alone_keeps_shapes_and_ranges(name):
    entry = AUGMENTATIONS.get(name)
    assert entry.meta["enabled"](ON) and not entry.meta["enabled"](OFF)
    x, y = batch(b=8, f=16, t=20)
    xo, yo = AUGMENTATIONS.build(name, ON, gen())(x, y)
    assert xo.shape == x.shape and yo.shape == y.shape and xo.dtype == x.dtype
    assert yo.min() >= 0 and yo.max() <= 1
    assert name in UNBOUNDED or (xo.min() >= 0 and xo.max() <= 1)
    assert not torch.equal(xo, x)
    xo, yo = AUGMENTATIONS.build(name, OFF, gen())(x, y)  # probability 0: the neutral values
    assert torch.equal(xo, x) and torch.equal(yo, y)
    fields = [key.removeprefix("augment.") for key in entry.options]
    alone = dataclasses.replace(OFF, **{f: getattr(ON, f) for f in fields})  # its own keys on, the rest off
    assert list(build_chain(alone).steps) == [name]


OPTIONS = [(name, key) for name in AUGMENTATIONS.names() for key in AUGMENTATIONS.get(name).options]


@pytest.mark.parametrize("name, key", OPTIONS, ids=[key for _, key in OPTIONS])
def test_each_option_out_of_range_names_its_key(name, key):
    assert key.startswith("augment.")
    bad = dataclasses.replace(AugmentConfig(), **{key.removeprefix("augment."): -1})
    with pytest.raises(ConfigError, match=f"config key '{key}': must be"):
        check_config(bad)


def test_every_config_key_belongs_to_one_augmentation():
    declared = [key for _, key in OPTIONS] + ["augment.mixup_alpha"]  # alpha: mixup's two-key check
    assert sorted(declared) == sorted(f"augment.{f.name}" for f in dataclasses.fields(AugmentConfig))
    with pytest.raises(ConfigError, match="augment.mixup_alpha"):
        check_config(AugmentConfig(mixup_alpha=0.0))
    check_config(AugmentConfig(mixup_alpha=0.0, mixup_p=0.0))  # alpha unused when mixup is off


def test_gallery_columns():
    x, y = labelled_batch(b=4)
    panels = gallery(x / 4, y, AugmentConfig(), seed=0)
    assert tuple(panels) == gallery_columns()
    assert gallery_columns() == COLUMNS
    for xs, ys, _ in panels.values():
        assert xs.shape == x.shape and ys.shape == y.shape
    # the single-augmentation mixup never mixes a clip with itself
    _, ym, params = panels["mixup"]
    assert (params["lam"] >= 0.5).all()
    assert ((ym > 0).sum(1) == 2).all()


class TimeFlip(BatchAugment):
    """A test augmentation: reverse time with probability p. params: ``flip`` (B,) bool."""

    def __init__(self, p: float, generator: torch.Generator | None = None):
        super().__init__(generator)
        self.p = float(p)

    def sample(self, x):
        return {"flip": self._coin(x.shape[0], self.p)}

    def apply(self, x, y, params):
        flip = params["flip"].reshape(-1, *([1] * (x.dim() - 1)))
        return torch.where(flip, x.flip(-1), x), y


@pytest.fixture
def time_flip():
    """TimeFlip registered as one more augmentation (reading mask_p, forced on in the gallery), then removed."""
    AUGMENTATIONS.register(
        "time_flip",
        enabled=lambda a: a.mask_p > 0,
        title="time flip",
        forced={"mask_p": 1.0},
        note=lambda p: "flipped" if p["flip"] else "",
    )(lambda a, generator: TimeFlip(a.mask_p, generator))
    yield "time_flip"
    AUGMENTATIONS.unregister("time_flip")


def test_a_new_augmentation_is_one_registry_entry_and_a_gallery_column(time_flip):
    x, y = batch(b=3, k=3, f=8, t=10)
    fig = gallery_figure(x[:, 0].numpy(), torch.eye(3).numpy(), ["a", "b", "c"], OFF, seed=0)
    titles = [ax.get_title() for ax in fig.get_axes()[:10]]
    assert titles == [*COLUMNS[:-1], "time flip", COLUMNS[-1]]
    assert [t.get_text() for t in fig.get_axes()[8].texts] == ["flipped"]  # its note, in the corner
    xs, ys, params = gallery(x, y, OFF, seed=0)["time flip"]  # forced on although the config has it off
    assert params["flip"].all() and torch.equal(xs, x.flip(-1)) and torch.equal(ys, y)
    assert list(build_chain(dataclasses.replace(OFF, mask_p=1.0)).steps) == ["masking", "time_flip"]


def test_an_unregistered_augmentation_leaves_the_chain():
    assert "time_flip" not in AUGMENTATIONS.names() and "time flip" not in gallery_columns()
