"""EfficientNetTrunk: a timm EfficientNet cut after some stages, the backbone of every model
here but the plain CNN. Its `out_channels` is what the layers on top are sized from.
`TrunkClassifier`: the forward pass shared by the models that are a trunk and a pooling head."""

from __future__ import annotations

import timm
import torch
from torch import nn

from .base import FaceClassifier


class EfficientNetTrunk(nn.Module):
    """An EfficientNet from timm cut after `num_stages` stages (None: the whole network up to
    conv_head, i.e. the 1280-channel map). Built without touching the network."""

    def __init__(self, *, backbone: str, num_stages: int | None):
        super().__init__()
        net = timm.create_model(backbone, pretrained=False)
        self.conv_stem, self.bn1 = net.conv_stem, net.bn1
        self.blocks = net.blocks if num_stages is None else net.blocks[:num_stages]
        full = num_stages is None
        self.conv_head = net.conv_head if full else nn.Identity()
        self.bn2 = net.bn2 if full else nn.Identity()

    @property
    def out_channels(self) -> int:
        """Channels of the map forward returns: those of the last convolution."""
        return [m for m in self.modules() if isinstance(m, nn.Conv2d)][-1].out_channels

    def forward(self, x):
        return self.bn2(self.conv_head(self.blocks(self.bn1(self.conv_stem(x)))))


class TrunkClassifier(FaceClassifier):
    """A model that is `self.trunk` (an EfficientNetTrunk) and `self.head`, a Sequential that
    pools the trunk's map and ends in dropout and the one linear logit: its pre-logit features
    are the head's output before those two."""

    trunk: EfficientNetTrunk
    head: nn.Sequential

    def trunks(self) -> tuple[EfficientNetTrunk, ...]:
        """The backbone whose map `forward_from_features` takes (what training can cache while
        the trunk is frozen, and what a heatmap explains)."""
        return (self.trunk,)

    def forward_from_features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(fmap).squeeze(-1)

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.head[:-2](self.trunk(x))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head[-2:](features).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_from_features(self.trunk(x))
