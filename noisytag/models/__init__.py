"""Models: ``build(name, n_classes, in_channels, **options)`` is the only way to make one.

Every model is a :class:`~noisytag.models.heads.TaggingNet` (convolutional body + the shared head),
so parameter counts, fast windowed inference and ONNX export work alike for all of them. The one list
of models is the registry :data:`~noisytag.models.registry.MODELS`: a new architecture is one file
whose factory, decorated by ``@register("name")``, takes ``(n_classes, in_channels, **options)`` and
returns a TaggingNet; importing the file registers it, and this package imports its built-in
architecture files once, here.
"""

from __future__ import annotations

from noisytag.models import cnn1, mobile, vgg  # noqa: F401  (importing each registers its models)
from noisytag.models.registry import MODELS, available, build, options_of, register

__all__ = ["MODELS", "available", "build", "options_of", "register"]
