"""A plain EfficientNet classifier with one logit: the baseline the teacher must beat.

Same backbone as the teacher's branches, none of its transformers. If the teacher cannot beat this
for the same training time, its size buys nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import FaceClassifier, hub_mixin_kwargs
from .cross_efficient_vit import EfficientNetTrunk


class EfficientNetClassifier(FaceClassifier, **hub_mixin_kwargs("efficientnet-classifier")):
    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        image_size: int = 224,
        features: int = 1280,
        dropout: float = 0.2,
        mean: tuple[float, float, float] = (0.485, 0.456, 0.406),
        std: tuple[float, float, float] = (0.229, 0.224, 0.225),
    ):
        super().__init__(input_size=image_size, mean=mean, std=std)
        self.trunk = EfficientNetTrunk(backbone=backbone, num_stages=None)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(features, 1))
        nn.init.zeros_(self.head[-1].weight)  # start at p=0.5: a random head starts at loss ~2.5
        nn.init.zeros_(self.head[-1].bias)

    def trunks(self) -> tuple[EfficientNetTrunk, ...]:
        """The backbones whose maps `forward_from_features` takes, in its argument order."""
        return (self.trunk,)

    def forward_from_features(self, fmap: torch.Tensor) -> torch.Tensor:
        return self.head(fmap).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.forward_from_features(self.trunk(x))
