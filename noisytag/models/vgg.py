"""vgg16: the 13-convolution VGG-16 with batch norm (SPEC §3), not pretrained, with the shared head.

The layer list is data (as timm's VGG configs); max pooling after each of the five groups, so the
feature map has 1/32 of the input's frames. With 3 input channels and 80 classes: 15,292,048
trainable parameters (convolutions with biases, as torchvision's ``vgg16_bn``).
"""

from __future__ import annotations

from noisytag.models.blocks import layer_list_net
from noisytag.models.heads import TaggingNet
from noisytag.models.registry import register

VGG16_LAYERS = (
    64, 64, "M",
    128, 128, "M",
    256, 256, 256, "M",
    512, 512, 512, "M",
    512, 512, 512, "M",
)  # fmt: skip


@register("vgg16")
def vgg16(
    n_classes: int,
    in_channels: int = 1,
    width: float = 1.0,
    freq_channel: bool = False,
    pool: str = "default",
) -> TaggingNet:
    """VGG-16-BN body (channel counts scaled by ``width``) + the shared head."""
    return layer_list_net("vgg16", VGG16_LAYERS, n_classes, in_channels, width, freq_channel, pool)
