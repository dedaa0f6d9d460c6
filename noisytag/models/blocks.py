"""Building blocks of the convolutional bodies: layer lists as data, turned into modules.

A body is described by a list of tokens (timm's VGG config style): an int is a 3×3 convolution
(padding 1, with bias) → batch norm → ReLU producing that many channels; ``"A"`` is a 2×2 average
pooling, ``"M"`` a 2×2 max pooling. Every pooling halves both the mel and the time axis, so the
body maps (B, C, F, T) → (B, D, F // 2**p, T // 2**p) for ``p`` poolings.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from noisytag.models.heads import Head, TaggingNet, frequency_options

Token = int | str


def scaled(channels: int, width: float) -> int:
    """Channel count after the width multiplier (rounded, at least 1)."""
    return max(1, int(round(channels * width)))


def conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    """3×3 convolution (padding 1, bias) → BatchNorm2d → ReLU; keeps F and T."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=True),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def make_body(layers: Sequence[Token], in_channels: int, width: float = 1.0) -> nn.Sequential:
    """Build the convolutional body of a layer list; channel counts are scaled by ``width``."""
    modules: list[nn.Module] = []
    channels = in_channels
    for token in layers:
        if token == "A":
            modules.append(nn.AvgPool2d(kernel_size=2, stride=2))
        elif token == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        elif isinstance(token, int) and token > 0:
            out = scaled(token, width)
            modules.append(conv_bn_relu(channels, out))
            channels = out
        else:
            raise ValueError(f"layer list token {token!r}: expected a channel count, 'A' or 'M'")
    return nn.Sequential(*modules)


def out_channels(layers: Sequence[Token], width: float = 1.0) -> int:
    """Channels D of the feature map produced by ``make_body(layers, ..., width)``."""
    return scaled([t for t in layers if isinstance(t, int)][-1], width)


def time_reduction(layers: Sequence[Token]) -> int:
    """Input frames per feature-map step: 2 ** (number of poolings)."""
    return 2 ** sum(1 for t in layers if t in ("A", "M"))


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal (fan-in, ReLU gain) for every conv and linear weight, zero biases.

    Batch norms keep PyTorch's defaults (weight 1, bias 0).
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def layer_list_net(
    name: str,
    layers: Sequence,
    n_classes: int,
    in_channels: int,
    width: float,
    freq_channel: bool = False,
    pool: str = "default",
):
    """A layer-list body (channels scaled by ``width``) + the shared head, initialised: every
    architecture of the registry is this with its own list. ``freq_channel``, ``pool``: the frequency
    options of :mod:`noisytag.models.heads` (the body reads one channel more with the first)."""
    extra = frequency_options(freq_channel, pool)
    body = make_body(layers, in_channels + int(bool(freq_channel)), width)
    head = Head(out_channels(layers, width), n_classes, hidden=scaled(512, width), pool=pool)
    spec = {
        "name": name,
        "n_classes": n_classes,
        "in_channels": in_channels,
        "options": {"width": float(width), **extra},
    }
    model = TaggingNet(body, head, spec, time_reduction(layers), freq_channel=bool(freq_channel))
    init_weights(model)
    return model
