"""mobilenet: a compact student for fast CPU inference (MobileNetV2/V3-style inverted residuals).

Body: a stride-2 stem conv → BN → ReLU, then the rows of :data:`BLOCKS` (the MobileNet table as data),
each ``repeats`` inverted residual blocks [1×1 expand → BN → ReLU → depthwise conv (stride on the
first block of the row) → BN → ReLU → 1×1 project → BN, + the input when the shape is kept], and a
1×1 conv → BN → ReLU to :data:`LAST` channels; then the shared head. Channel counts are scaled by
``width`` and rounded to multiples of 8 (at least 8).

Choices for one fast CPU model distilled from an ensemble:

* ReLU everywhere (no hardswish) and only conv, batch norm, ReLU and add in the body: what
  onnxruntime's static int8 QDQ quantisation handles best. No squeeze-excitation: its global pooling
  would make a window's features depend on the whole clip in the fast inference mode (body once over
  the clip), and its small ops cost more latency than they are worth at this size.
* The body leaves the 64×64 resolution right after the stem: at batch 32 those activations no longer
  fit the CPU caches and every op over them is memory-bound.
* Stride-2 convolutions use a 4×4 kernel with padding 1 instead of 3×3: each maps n to exactly n // 2
  and its step k is centred on the inputs 2k, 2k + 1 that a 2×2 pooling merges, so the body maps T
  frames to T // 32 steps, step k centred on the span 32k … 32k + 31 that step k of a pooled body
  (cnn1, vgg16) covers, which fast-mode window slicing assumes. A 3×3 kernel with symmetric padding
  would round up and shift every step by half of one; an explicit pad operator would cost a copy.

With 1 input channel and 80 classes: 1,385,632 trainable parameters and 48.4 M multiply-adds per
128×128 window at width 1 (454,352 and 13.8 M at width 0.5).
"""

from __future__ import annotations

from torch import Tensor, nn

from noisytag.models.blocks import init_weights
from noisytag.models.heads import Head, TaggingNet, frequency_options
from noisytag.models.registry import register

STEM = 16
# MobileNetV3-Large's rows (expansion ratios rounded to 4 or 6, repeats trimmed), the first one
# striding too. (expand ratio, out channels, repeats, stride of the first block) → output size of a
# 128 × 128 window, mel bins × frames (the stem makes 64 × 64).
BLOCKS = (
    (1, 16, 1, 2),  # 32 × 32
    (4, 24, 2, 2),  # 16 × 16
    (4, 40, 2, 2),  # 8 × 8
    (6, 80, 3, 1),
    (6, 112, 2, 1),
    (6, 160, 2, 2),  # 4 × 4
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
    """Conv (padding (kernel − 1) // 2) → BatchNorm2d (→ ReLU).

    The conv keeps its bias (zero at init), redundant before batch norm: the ONNX export (dynamo,
    unoptimised) builds a missing bias from ops onnxruntime cannot constant-fold, which stops it fusing
    conv + batch norm and using its blocked conv kernels (much slower there).
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups, bias=True),
        nn.BatchNorm2d(out_channels),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def spatial_conv(in_channels: int, out_channels: int, stride: int, groups: int = 1) -> nn.Sequential:
    """(B, C_in, F, T) → (B, C_out, F // stride, T // stride): 3×3 conv → BN → ReLU at stride 1; at
    stride 2 a 4×4 kernel (padding 1), so any size n maps to exactly n // 2 and output step k covers
    inputs 2k − 1 … 2k + 2, centred on the steps 2k, 2k + 1 a 2×2 pooling would merge (no pad operator)."""
    if stride not in (1, 2):
        raise ValueError(f"stride must be 1 or 2, got {stride}")
    return conv_bn(in_channels, out_channels, 3 if stride == 1 else 4, stride, groups)


class InvertedResidual(nn.Module):
    """(B, C_in, F, T) → (B, C_out, F // s, T // s): 1×1 expand (skipped at ratio 1) → depthwise
    :func:`spatial_conv` (stride s) → 1×1 linear projection; the input is added when s = 1 and C_in = C_out, and then the
    projection's batch-norm scale starts at zero (timm's ``zero_init_last``)."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, stride: int):
        super().__init__()
        hidden = in_channels * expand
        layers = [conv_bn(in_channels, hidden)] if expand != 1 else []
        layers += [
            spatial_conv(hidden, hidden, stride, groups=hidden),
            conv_bn(hidden, out_channels, relu=False),
        ]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels
        if self.residual:  # the block starts as the identity, so activations do not grow with depth
            nn.init.zeros_(self.block[-1][1].weight)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return x + out if self.residual else out


def mobile_body(in_channels: int, width: float = 1.0) -> tuple[nn.Sequential, int]:
    """The body for ``width`` and the channel count D of its feature map."""
    channels = divisible(STEM, width)
    modules: list[nn.Module] = [spatial_conv(in_channels, channels, stride=2)]
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
def mobilenet(
    n_classes: int,
    in_channels: int = 1,
    width: float = 1.0,
    hidden: int = 256,
    freq_channel: bool = False,
    pool: str = "default",
) -> TaggingNet:
    """The inverted-residual body (channels scaled by ``width``) + the shared head with ``hidden``
    units (not scaled); ``freq_channel``, ``pool``: the frequency options of :mod:`noisytag.models.heads`."""
    if int(hidden) < 1:
        raise ValueError(f"model 'mobilenet': hidden must be ≥ 1, got {hidden}")
    extra = frequency_options(freq_channel, pool)
    body, channels = mobile_body(in_channels + int(bool(freq_channel)), width)
    head = Head(channels, n_classes, hidden=int(hidden), pool=pool)
    spec = {
        "name": "mobilenet",
        "n_classes": n_classes,
        "in_channels": in_channels,
        "options": {"width": float(width), "hidden": int(hidden), **extra},
    }
    model = TaggingNet(body, head, spec, time_reduction(), freq_channel=bool(freq_channel))
    init_weights(model)
    return model
