"""The shared head and the body + head network every architecture returns.

Head (SPEC §3): concatenation of global max and global average pooling over both axes of the
feature map → BN → dropout 0.25 → linear (hidden) → ReLU → BN → dropout 0.5 → linear K (logits).
Global pooling makes the network accept any number of frames, so the same weights serve 128-frame
windows and whole clips; ``head.pool`` and ``head.classify`` are separate so inference can run the
body once over a clip and pool each window's slice of the feature map.

Frequency awareness (FAT2019's 2nd and 3rd places), two model options every architecture accepts and
its spec records when they differ from the default (config keys ``model.pool``, ``model.freq_channel``):
the pooling by name (:data:`POOLS`: ``default`` as above, ``maxtime_meanfreq`` the mean over mel
then the max over time), and a frequency-position input channel added inside the model
(:func:`with_freq_channel`), so exported graphs and fast-mode inference need nothing extra.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from noisytag.registry import Registry

# The head's pooling, chosen by the config key model.pool; meta ``features``: pooled features per channel.
POOLS = Registry("pooling", "model.pool")


@POOLS.register("default", features=2)
class GlobalMaxAvgPool(nn.Module):
    """(B, D, F', T') feature map → (B, 2D) = [max over F'×T' ‖ mean over F'×T']."""

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        flat = fmap.flatten(2)
        return torch.cat([flat.amax(dim=2), flat.mean(dim=2)], dim=1)


@POOLS.register("maxtime_meanfreq", features=1)
class MeanFreqMaxTimePool(nn.Module):
    """(B, D, F', T') → (B, D): the mean over mel bins, then the max over time steps (FAT2019's 2nd
    place): an event counts where it is loudest in time, with its whole spectrum."""

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return fmap.mean(dim=2).amax(dim=2)


def with_freq_channel(x: torch.Tensor) -> torch.Tensor:
    """(B, C, F, T) → (B, C + 1, F, T): one more channel holding each mel bin's position f / (F − 1),
    0 … 1, the same in every frame (FAT2019's 3rd place), so convolutions know where they are on the
    mel axis. Made from the input's shape (a model serves any mel count), not stored in the weights."""
    b, _, f, t = x.shape
    ramp = torch.arange(f, dtype=x.dtype, device=x.device) / max(f - 1, 1)
    return torch.cat([x, ramp.view(1, 1, f, 1).expand(b, 1, f, t)], dim=1)


def frequency_options(freq_channel: bool = False, pool: str = "default") -> dict[str, Any]:
    """The frequency options of a model's spec: only those that differ from the default, so the specs
    (and model.json files) of models without them are what they were before the options existed."""
    POOLS.get(pool)  # an unknown pooling: ConfigError naming model.pool and the known ones
    return ({"freq_channel": True} if freq_channel else {}) | ({"pool": pool} if pool != "default" else {})


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
    """``pool`` (feature map → (B, 2D), or (B, D) for ``maxtime_meanfreq``) followed by ``classify``
    (pooled features → logits (B, K))."""

    def __init__(self, channels: int, n_classes: int, hidden: int = 512, pool: str = "default"):
        super().__init__()
        entry = POOLS.get(pool)
        self.pool = entry.factory()
        self.classify = classifier(entry.meta["features"] * channels, n_classes, hidden)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.classify(self.pool(fmap))


class TaggingNet(nn.Module):
    """Body + head: (B, C, F, T) log-mels → (B, K) logits (no sigmoid).

    Attributes used by the rest of the package: :meth:`features` (B, 1 or C, F, T) → (B, D, F', T');
    ``head.pool`` / ``head.classify``; ``spec`` (dict accepted by ``noisytag.models.build(**spec)``);
    ``time_reduction`` (input frames per feature-map step). A one-channel input is repeated to the
    model's ``in_channels`` here and nowhere else (the original fed 3 identical image channels); with
    ``freq_channel`` the body reads one channel more, :func:`with_freq_channel`, also added here.
    """

    def __init__(
        self,
        body: nn.Module,
        head: Head,
        spec: dict[str, Any],
        time_reduction: int,
        freq_channel: bool = False,
    ):
        super().__init__()
        self.body = body
        self.head = head
        self.spec = spec
        self.time_reduction = time_reduction
        self.freq_channel = bool(freq_channel)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 or C, F, T) → feature map (B, D, F', T')."""
        channels = int(self.spec.get("in_channels", 1))
        if x.shape[1] != channels:
            x = x.expand(-1, channels, -1, -1)
        if self.freq_channel:
            x = with_freq_channel(x)
        return self.body(x)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1 or C, F, T) → (B, hidden): the head's input to its last linear layer."""
        return self.head.classify[:-1](self.head.pool(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head.classify(self.head.pool(self.features(x)))
