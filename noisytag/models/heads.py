"""The shared head and the body + head network every architecture returns.

Head (SPEC §3): concatenation of global max and global average pooling over both axes of the
feature map → BN → dropout 0.25 → linear (hidden) → ReLU → BN → dropout 0.5 → linear K (logits).
Global pooling makes the network accept any number of frames, so the same weights serve 128-frame
windows and whole clips; ``head.pool`` and ``head.classify`` are separate so inference can run the
body once over a clip and pool each window's slice of the feature map.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class GlobalMaxAvgPool(nn.Module):
    """(B, D, F', T') feature map → (B, 2D) = [max over F'×T' ‖ mean over F'×T']."""

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        flat = fmap.flatten(2)
        return torch.cat([flat.amax(dim=2), flat.mean(dim=2)], dim=1)


def classifier(in_features: int, n_classes: int, hidden: int = 512) -> nn.Sequential:
    """(B, in_features) pooled features → (B, n_classes) logits."""
    return nn.Sequential(
        nn.BatchNorm1d(in_features),
        nn.Dropout(0.25),
        nn.Linear(in_features, hidden),
        nn.ReLU(inplace=True),
        nn.BatchNorm1d(hidden),
        nn.Dropout(0.5),
        nn.Linear(hidden, n_classes),
    )


class Head(nn.Module):
    """``pool`` (feature map → (B, 2D)) followed by ``classify`` ((B, 2D) → logits (B, K))."""

    def __init__(self, channels: int, n_classes: int, hidden: int = 512):
        super().__init__()
        self.pool = GlobalMaxAvgPool()
        self.classify = classifier(2 * channels, n_classes, hidden)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pool(fmap))


class TaggingNet(nn.Module):
    """Body + head: (B, C, F, T) log-mels → (B, K) logits (no sigmoid).

    Attributes used by the rest of the package: :meth:`features` (B, 1 or C, F, T) → (B, D, F', T');
    ``head.pool`` / ``head.classify``; ``spec`` (dict accepted by ``noisytag.models.build(**spec)``);
    ``time_reduction`` (input frames per feature-map step). A one-channel input is repeated to the
    model's ``in_channels`` here and nowhere else (the original fed 3 identical image channels).
    """

    def __init__(self, body: nn.Module, head: Head, spec: dict[str, Any], time_reduction: int):
        super().__init__()
        self.body = body
        self.head = head
        self.spec = spec
        self.time_reduction = time_reduction

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 or C, F, T) → feature map (B, D, F', T')."""
        channels = int(self.spec.get("in_channels", 1))
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1)
        return self.body(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 or C, F, T) → (B, hidden): the head's input to its last linear layer."""
        return self.head.classify[:-1](self.head.pool(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.classify(self.head.pool(self.features(x)))
