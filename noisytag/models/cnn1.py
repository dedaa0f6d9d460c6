"""cnn1 ("CNN-model-1" of the original entry, SPEC §3).

Four blocks of [3×3 conv → BN → ReLU] × 2 followed by 2×2 average pooling (widths 64, 128, 256,
512), then the shared head. With 3 input channels and 80 classes: 5,258,128 trainable parameters
(the convolutions carry biases; without them the count would be 1,920 lower).
"""

from __future__ import annotations

from noisytag.models import register
from noisytag.models.blocks import init_weights, make_body, out_channels, scaled, time_reduction
from noisytag.models.heads import Head, TaggingNet

LAYERS = (64, 64, "A", 128, 128, "A", 256, 256, "A", 512, 512, "A")


@register("cnn1")
def cnn1(n_classes: int, in_channels: int = 1, width: float = 1.0) -> TaggingNet:
    """cnn1 with channel counts (and the head's hidden layer) scaled by ``width``."""
    body = make_body(LAYERS, in_channels, width)
    head = Head(out_channels(LAYERS, width), n_classes, hidden=scaled(512, width))
    spec = {
        "name": "cnn1",
        "n_classes": n_classes,
        "in_channels": in_channels,
        "options": {"width": float(width)},
    }
    model = TaggingNet(body, head, spec, time_reduction(LAYERS))
    init_weights(model)
    return model
