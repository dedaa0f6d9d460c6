"""mobilenet: a compact student for fast CPU inference (MobileNetV2-style inverted residuals).

Body: a 3×3 stride-2 stem → BN → ReLU, then the rows of :data:`BLOCKS` (MobileNetV2's table as
data), each ``repeats`` inverted residual blocks [1×1 expand → BN → ReLU → 3×3 depthwise (stride on
the first block of the row) → BN → ReLU → 1×1 project → BN, + the input when the shape is kept], and
a 1×1 conv → BN → ReLU to :data:`LAST` channels; then the shared head. Channel counts are scaled by
``width`` and rounded to multiples of 8 (at least 8).

Choices for distillation into one fast CPU model: ReLU everywhere (no hardswish) and only conv, batch
norm, ReLU, add and zero padding, which onnxruntime's static int8 QDQ quantisation handles well; no
squeeze-excitation, whose global pooling would make a window's features depend on the whole clip in
the fast inference mode (and costs latency for little at this size). Stride-2 convolutions pad by one
on the bottom/right only (TensorFlow's "same" for even sizes), so the body maps T frames to exactly
``T // 32`` steps, step k seeing frames from 32·k onwards, as the pooled bodies of cnn1 and vgg16 do.

With 1 input channel and 80 classes: 1,004,512 trainable parameters and ≈ 30 M multiply-adds per
128×128 window at width 1 (385,128 and ≈ 9 M at width 0.5).
"""

from __future__ import annotations

from torch import nn
from torch import Tensor

from noisytag.models import register
from noisytag.models.blocks import init_weights
from noisytag.models.heads import Head, TaggingNet

STEM = 32
# (expand ratio, out channels, repeats, stride of the first block)
BLOCKS = (
    (1, 16, 1, 1),
    (4, 24, 2, 2),
    (4, 32, 3, 2),
    (4, 64, 3, 2),
    (4, 96, 2, 1),
    (4, 160, 2, 2),
)
LAST = 512


def divisible(channels: int, width: float, divisor: int = 8) -> int:
    """``channels * width`` rounded to a multiple of ``divisor`` (at least ``divisor``, and never more
    than 10 % below the exact value, as MobileNet's ``make_divisible``)."""
    value = channels * width
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn(
    in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    """Conv (no bias) → BatchNorm2d (→ ReLU): (B, C_in, F, T) → (B, C_out, F // stride, T // stride).

    A 3×3 kernel pads by one on each side at stride 1, and by one on the bottom/right only at stride 2,
    so that odd sizes are floored like a 2×2 pooling's.
    """
    layers: list[nn.Module] = []
    padding = kernel // 2
    if stride == 2 and kernel == 3:
        layers.append(nn.ZeroPad2d((0, 1, 0, 1)))
        padding = 0
    elif stride != 1:
        raise ValueError(f"stride {stride} with kernel {kernel}: only 3×3 convolutions may stride (by 2)")
    layers += [
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """(B, C_in, F, T) → (B, C_out, F // s, T // s): 1×1 expand (skipped at ratio 1) → 3×3 depthwise
    (stride s) → 1×1 linear projection; the input is added when s = 1 and C_in = C_out."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, stride: int):
        super().__init__()
        hidden = in_channels * expand
        layers = [conv_bn(in_channels, hidden)] if expand != 1 else []
        layers += [
            conv_bn(hidden, hidden, kernel=3, stride=stride, groups=hidden),
            conv_bn(hidden, out_channels, relu=False),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


def mobile_body(in_channels: int, width: float = 1.0) -> tuple[nn.Sequential, int]:
    """The body for ``width`` and the channel count D of its feature map."""
    channels = divisible(STEM, width)
    modules: list[nn.Module] = [conv_bn(in_channels, channels, kernel=3, stride=2)]
    for expand, out, repeats, stride in BLOCKS:
        out = divisible(out, width)
        for i in range(repeats):
            modules.append(InvertedResidual(channels, out, expand, stride if i == 0 else 1))
            channels = out
    last = divisible(LAST, width)
    modules.append(conv_bn(channels, last))
    return nn.Sequential(*modules), last


def time_reduction() -> int:
    """Input frames per feature-map step: 2 for the stem and each striding row."""
    return 2 ** (1 + sum(1 for *_, stride in BLOCKS if stride == 2))


@register("mobilenet")
def mobilenet(n_classes: int, in_channels: int = 1, width: float = 1.0, hidden: int = 256) -> TaggingNet:
    """The inverted-residual body (channels scaled by ``width``) + the shared head with ``hidden``
    units (not scaled)."""
    body, channels = mobile_body(in_channels, width)
    head = Head(channels, n_classes, hidden=int(hidden))
    spec = {
        "name": "mobilenet",
        "n_classes": n_classes,
        "in_channels": in_channels,
        "options": {"width": float(width), "hidden": int(hidden)},
    }
    model = TaggingNet(body, head, spec, time_reduction())
    init_weights(model)
    return model
