"""Model registry and architectures (SPEC §3): exact parameter counts, any number of frames, contract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from noisytag.config import ConfigError
from noisytag.models import MODELS, available, build, options_of, register
from noisytag.registry import Registry


def n_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_registry_lists_builtins():
    assert {"cnn1", "mobilenet", "vgg16"} <= set(available())
    assert isinstance(MODELS, Registry) and available() == sorted(MODELS.names())  # the one list
    assert options_of("cnn1") == {"width": 1.0, "freq_channel": False, "pool": "default"}
    assert options_of("mobilenet") == {"width": 1.0, "hidden": 256, "freq_channel": False, "pool": "default"}


@pytest.mark.parametrize(
    ("name", "count"), [("cnn1", 5_258_128), ("vgg16", 15_292_048), ("mobilenet", 1_386_144)]
)
def test_parameter_counts_match_spec(name, count):
    assert n_trainable(build(name, n_classes=80, in_channels=3)) == count


@pytest.mark.parametrize(("width", "count"), [(1.0, 1_385_632), (0.5, 454_352)])
def test_mobilenet_parameter_counts(width, count):
    assert n_trainable(build("mobilenet", 80, width=width)) == count  # 1 input channel, hidden 256


@pytest.fixture(scope="module", params=["cnn1", "mobilenet", "vgg16"])
def full_model(request):
    torch.manual_seed(0)
    return build(request.param, n_classes=7, in_channels=1).eval()


@pytest.mark.parametrize("frames", [128, 500])
def test_any_number_of_frames(full_model, frames):
    model = full_model
    x = torch.rand(1, 1, 128, frames)
    with torch.no_grad():
        fmap = model.body(x)
        pooled = model.head.pool(fmap)
        logits = model(x)
    r = model.time_reduction
    assert fmap.shape == (1, 512, 128 // r, frames // r)
    assert pooled.shape == (1, 1024)
    assert logits.shape == (1, 7)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits, model.head.classify(pooled))


def test_time_reduction_values():
    assert build("cnn1", 3).time_reduction == 16
    assert build("vgg16", 3).time_reduction == 32
    assert build("mobilenet", 3).time_reduction == 32


def test_pool_is_max_then_mean():
    model = build("cnn1", 3, width=0.125)
    fmap = torch.arange(2 * 3 * 2 * 4, dtype=torch.float32).reshape(2, 3, 2, 4)
    pooled = model.head.pool(fmap)
    torch.testing.assert_close(pooled[:, :3], fmap.amax(dim=(2, 3)))
    torch.testing.assert_close(pooled[:, 3:], fmap.mean(dim=(2, 3)))


@pytest.mark.parametrize("name", ["cnn1", "vgg16"])
def test_width_multiplier_and_spec_round_trip(name):
    slim = build(name, n_classes=10, in_channels=1, width=0.25)
    assert slim.spec == {"name": name, "n_classes": 10, "in_channels": 1, "options": {"width": 0.25}}
    again = build(**slim.spec)
    assert [p.shape for p in again.parameters()] == [p.shape for p in slim.parameters()]
    assert n_trainable(slim) < n_trainable(build(name, 10)) / 10
    assert slim.body(torch.rand(1, 1, 128, 128)).shape[1] == 128  # 512 * 0.25
    slim.train()
    loss = slim(torch.rand(3, 1, 128, 160)).sum()
    loss.backward()  # trains on odd lengths too


def test_mobilenet_options_and_spec_round_trip():
    slim = build("mobilenet", n_classes=10, in_channels=1, width=0.5, hidden=64)
    assert slim.spec == {
        "name": "mobilenet",
        "n_classes": 10,
        "in_channels": 1,
        "options": {"width": 0.5, "hidden": 64},
    }
    again = build(**slim.spec)
    assert [p.shape for p in again.parameters()] == [p.shape for p in slim.parameters()]
    assert slim.body(torch.rand(1, 1, 128, 128)).shape[1] == 256  # last width 512 * 0.5
    assert slim.head.classify[2].out_features == 64
    assert n_trainable(slim) < n_trainable(build("mobilenet", 10)) / 2
    slim.train()
    slim(torch.rand(2, 1, 128, 100)).sum().backward()  # trains on odd lengths too
    with pytest.raises(ValueError, match="hidden"):
        build("mobilenet", 10, hidden=0)


def test_mobilenet_channels_are_multiples_of_8():
    model = build("mobilenet", 10, width=0.3)
    widths = {m.out_channels for m in model.body.modules() if isinstance(m, nn.Conv2d)}
    assert min(widths) >= 8 and all(c % 8 == 0 for c in widths)


def assert_kaiming_zero_biases(model: nn.Module, conv: nn.Conv2d, fan_in: int) -> None:
    """Every conv/linear bias is zero; ``conv``'s weights have Kaiming's std for ``fan_in``."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            assert m.bias is not None and torch.count_nonzero(m.bias) == 0
    assert conv.weight.std().item() == pytest.approx((2.0 / fan_in) ** 0.5, rel=0.05)


def test_init_kaiming_and_zero_biases():
    torch.manual_seed(0)
    model = build("cnn1", 80, 1)
    assert_kaiming_zero_biases(model, model.body[-2][0], 512 * 9)  # last 3×3 conv, 512 channels in


def test_bad_names_and_options_are_reported():
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        build("resnet", 80)
    with pytest.raises(ValueError, match="unknown option"):
        build("cnn1", 80, depth=3)
    with pytest.raises(ValueError, match="width"):
        build("cnn1", 80, width=0)


def test_register_new_model():
    from noisytag.models.blocks import init_weights, make_body
    from noisytag.models.heads import Head, TaggingNet

    @register("tiny_test_net")
    def tiny(n_classes, in_channels=1):
        body = make_body((4, "M"), in_channels)
        spec = {"name": "tiny_test_net", "n_classes": n_classes, "in_channels": in_channels, "options": {}}
        net = TaggingNet(body, Head(4, n_classes, hidden=8), spec, 2)
        init_weights(net)
        return net

    try:
        assert "tiny_test_net" in available()
        assert build("tiny_test_net", 5).eval()(torch.rand(2, 1, 16, 20)).shape == (2, 5)
    finally:  # keep the registry clean for tests that iterate available()
        MODELS.unregister("tiny_test_net")
    assert "tiny_test_net" not in available()


def test_models_are_one_registry_filled_by_importing_the_package():
    """No second list: a fresh interpreter that imports only the package has every architecture
    registered, and an unknown name is the registry's one-line error naming the config key."""
    import subprocess
    import sys

    code = "from noisytag.models import MODELS; print(','.join(MODELS.names()))"
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert set(names.stdout.strip().split(",")) == {"cnn1", "mobilenet", "vgg16"}
    with pytest.raises(
        ConfigError, match=r"^config key 'pipeline.architectures': unknown model 'resnet' \(known: "
    ):
        options_of("resnet")


def test_mobilenet_init_kaiming_zero_biases_and_identity_residuals():
    from noisytag.models.mobile import InvertedResidual

    torch.manual_seed(0)
    model = build("mobilenet", 80, 1)
    assert_kaiming_zero_biases(model, model.body[-1][0], 160)  # last 1×1 conv, 160 → 512
    blocks = [m for m in model.body if isinstance(m, InvertedResidual)]
    assert sum(b.residual for b in blocks) == 6
    for block in blocks:  # residual blocks start as the identity: the last BN scale is zero
        assert (torch.count_nonzero(block.block[-1][1].weight) == 0) == block.residual


# frequency awareness: model.freq_channel, model.pool ------------------------------------------

SMALL = {"cnn1": 0.125, "vgg16": 0.125, "mobilenet": 0.25}


@pytest.mark.parametrize("name", sorted(SMALL))
def test_frequency_options_keep_output_shapes_and_record_themselves(name):
    torch.manual_seed(0)
    model = build(name, 5, width=SMALL[name], freq_channel=True, pool="maxtime_meanfreq").eval()
    x = torch.rand(2, 1, 64, 150)
    with torch.no_grad():
        fmap = model.features(x)
        pooled = model.head.pool(fmap)
        logits = model(x)
    assert logits.shape == (2, 5) and pooled.shape == (2, fmap.shape[1])  # D features, not 2D
    torch.testing.assert_close(pooled, fmap.mean(dim=2).amax(dim=2))
    assert (
        model.spec["options"]["freq_channel"] is True and model.spec["options"]["pool"] == "maxtime_meanfreq"
    )
    again = build(**model.spec)
    assert [p.shape for p in again.parameters()] == [p.shape for p in model.parameters()]
    plain = build(name, 5, width=SMALL[name])
    assert "freq_channel" not in plain.spec["options"] and "pool" not in plain.spec["options"]


def test_freq_channel_is_a_mel_position_ramp_added_inside_the_model():
    from noisytag.models.heads import with_freq_channel

    x = torch.rand(2, 3, 5, 7)
    out = with_freq_channel(x)
    assert out.shape == (2, 4, 5, 7) and torch.equal(out[:, :3], x)
    ramp = torch.tensor([0.0, 0.25, 0.5, 0.75, 1.0]).view(1, 5, 1).expand(2, 5, 7)
    assert torch.equal(out[:, 3], ramp)
    model = build("cnn1", 3, in_channels=3, width=0.125, freq_channel=True).eval()
    seen = []
    model.body.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    with torch.no_grad():
        model(torch.rand(2, 1, 16, 40))  # one channel in: repeated to 3, then the ramp
    ramp = (torch.arange(16) / 15).view(1, 16, 1).expand(2, 16, 40)
    assert seen[0].shape == (2, 4, 16, 40) and torch.equal(seen[0][:, 3], ramp)
    assert torch.equal(seen[0][:, 0], seen[0][:, 2])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_frequency_options_change_only_the_parameters_they_concern(name):
    base = {k: v.shape for k, v in build(name, 6, width=SMALL[name]).state_dict().items()}
    with_channel = {
        k: v.shape for k, v in build(name, 6, width=SMALL[name], freq_channel=True).state_dict().items()
    }
    pooled = {
        k: v.shape for k, v in build(name, 6, width=SMALL[name], pool="maxtime_meanfreq").state_dict().items()
    }
    assert set(with_channel) == set(base) == set(pooled)
    first = next(k for k in base if k.startswith("body.") and len(base[k]) == 4)  # the first conv weight
    assert [k for k in base if with_channel[k] != base[k]] == [first]
    out, c_in, *kernel = base[first]
    assert with_channel[first] == (out, c_in + 1, *kernel)
    changed = sorted(k for k in base if pooled[k] != base[k])
    bn = [f"head.classify.0.{p}" for p in ("bias", "running_mean", "running_var", "weight")]
    assert changed == [*bn, "head.classify.2.weight"]  # the pooled width halves: 2D → D
    assert pooled["head.classify.0.weight"][0] * 2 == base["head.classify.0.weight"][0]


def test_unknown_pool_names_the_key():
    from noisytag.config import ModelConfig, RunConfig
    from noisytag.runs.validate import validate_plugins

    with pytest.raises(
        ConfigError, match=r"config key 'model.pool': unknown pooling 'maxfreq' \(known: default"
    ):
        build("cnn1", 3, pool="maxfreq")
    with pytest.raises(ConfigError, match="model.pool"):
        validate_plugins(RunConfig(model=ModelConfig(pool="maxfreq")))
    validate_plugins(RunConfig(model=ModelConfig(freq_channel=True, pool="maxtime_meanfreq")))


def test_training_builds_the_configured_frequency_options():
    from noisytag.config import ModelConfig, RunConfig
    from noisytag.learn.train import build_module

    cfg = RunConfig(model=ModelConfig(width=0.125, freq_channel=True, pool="maxtime_meanfreq"))
    spec = build_module(cfg, "cnn1", 3, 1e-3, 0).model.spec
    assert spec["options"] == {"width": 0.125, "freq_channel": True, "pool": "maxtime_meanfreq"}
    assert build_module(RunConfig(), "cnn1", 3, 1e-3, 0).model.spec["options"] == {"width": 1.0}


def test_frequency_options_survive_save_and_load(tmp_path):
    from noisytag.models.weights import load_model, read_meta, save_model

    torch.manual_seed(1)
    model = build("mobilenet", 4, width=0.25, freq_channel=True, pool="maxtime_meanfreq").eval()
    save_model(tmp_path, model, {"arch": "mobilenet"})
    options = read_meta(tmp_path)["model"]["options"]
    assert options["freq_channel"] is True and options["pool"] == "maxtime_meanfreq"
    loaded, _ = load_model(tmp_path)
    x = torch.rand(2, 1, 128, 130)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_fast_mode_runs_with_frequency_options():
    """The windowed head (body once over the clip, head per window slice) needs nothing new: the ramp
    does not depend on time and both poolings reduce a slice's mel and time axes."""
    from noisytag.infer.members import WindowedHead

    torch.manual_seed(2)
    model = build("cnn1", 3, width=0.125, freq_channel=True, pool="maxtime_meanfreq").eval()
    clip, starts = torch.rand(1, 1, 128, 512), torch.tensor([0, 128, 384])
    with torch.no_grad():
        fast = WindowedHead(model, 128).logits(clip, starts)
        fmap = model.features(clip)
        slices = torch.stack([fmap[0, :, :, s // 16 : s // 16 + 8] for s in starts.tolist()])
        torch.testing.assert_close(fast, model.head.classify(slices.mean(dim=2).amax(dim=2)))


@pytest.mark.slow
def test_onnx_export_parity_with_frequency_options(tmp_path):
    """One small model with both switches: exported (exact and fast graphs) and compared with PyTorch by
    the exporter itself (it refuses a member that differs by more than 1e-4), then on clips through
    onnxruntime."""
    import dataclasses

    import numpy as np

    from noisytag.config import FrontendConfig
    from noisytag.infer.export import export_models
    from noisytag.infer.members import OnnxMember, TorchMember
    from noisytag.models.record import FoldRecord
    from noisytag.models.weights import save_model

    torch.manual_seed(3)
    model = build("cnn1", 3, width=0.125, freq_channel=True, pool="maxtime_meanfreq").train()
    with torch.no_grad():
        model(torch.randn(8, 1, 128, 160))  # batch-norm statistics that are not trivial
    directory = tmp_path / "cnn1" / "stage1" / "fold0"
    record = FoldRecord("cnn1", 1, 0, ("a", "b", "c"), dataclasses.asdict(FrontendConfig()), "minmax")
    save_model(directory, model.eval(), record.to_json())
    index = export_models([directory], tmp_path / "onnx")
    (entry,) = index["members"]
    assert entry["spec"]["options"]["freq_channel"] is True and entry["parity_max_abs_diff"] <= 1e-4
    onnx_member, torch_member = OnnxMember(tmp_path / "onnx", entry, 128), TorchMember(model)
    x = np.random.default_rng(0).random((4, 1, 128, 200), dtype=np.float32)
    np.testing.assert_allclose(onnx_member.probs(x), torch_member.probs(x), atol=1e-4, rtol=0)
