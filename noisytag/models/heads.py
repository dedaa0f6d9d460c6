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

    Attributes used by the rest of the package: ``body`` (B, C, F, T) → (B, D, F', T');
    ``head.pool`` / ``head.classify``; ``spec`` (dict accepted by ``noisytag.models.build(**spec)``);
    ``time_reduction`` (input frames per feature-map step).
    """

    def __init__(self, body: nn.Module, head: Head, spec: dict[str, Any], time_reduction: int):
        super().__init__()
        self.body = body
        self.head = head
        self.spec = spec
        self.time_reduction = time_reduction

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.classify(self.head.pool(self.body(x)))
