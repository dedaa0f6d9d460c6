"""cnn1 ("CNN-model-1" of the original entry, SPEC §3).

Four blocks of [3×3 conv → BN → ReLU] × 2 followed by 2×2 average pooling (widths 64, 128, 256,
512), then the shared head. With 3 input channels and 80 classes: 5,258,128 trainable parameters
(the convolutions carry biases; without them the count would be 1,920 lower).
"""

from __future__ import annotations

from noisytag.models.blocks import layer_list_net
from noisytag.models.heads import TaggingNet
from noisytag.models.registry import register

LAYERS = (64, 64, "A", 128, 128, "A", 256, 256, "A", 512, 512, "A")


@register("cnn1")
def cnn1(
    n_classes: int,
    in_channels: int = 1,
    width: float = 1.0,
    freq_channel: bool = False,
    pool: str = "default",
) -> TaggingNet:
    """cnn1 with channel counts (and the head's hidden layer) scaled by ``width``."""
    return layer_list_net("cnn1", LAYERS, n_classes, in_channels, width, freq_channel, pool)
