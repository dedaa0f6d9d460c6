"""vgg16: the 13-convolution VGG-16 with batch norm (SPEC §3), not pretrained, with the shared head.

The layer list is data (as timm's VGG configs); max pooling after each of the five groups, so the
feature map has 1/32 of the input's frames. With 3 input channels and 80 classes: 15,292,048
trainable parameters (convolutions with biases, as torchvision's ``vgg16_bn``).
"""

from __future__ import annotations

from noisytag.models import register
from noisytag.models.blocks import init_weights, make_body, out_channels, scaled, time_reduction
from noisytag.models.heads import Head, TaggingNet

VGG16_LAYERS = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip


@register("vgg16")
def vgg16(n_classes: int, in_channels: int = 1, width: float = 1.0) -> TaggingNet:
    """VGG-16-BN body (channel counts scaled by ``width``) + the shared head."""
    body = make_body(VGG16_LAYERS, in_channels, width)
    head = Head(out_channels(VGG16_LAYERS, width), n_classes, hidden=scaled(512, width))
    spec = {
        "name": "vgg16",
        "n_classes": n_classes,
        "in_channels": in_channels,
        "options": {"width": float(width)},
    }
    model = TaggingNet(body, head, spec, time_reduction(VGG16_LAYERS))
    init_weights(model)
    return model
