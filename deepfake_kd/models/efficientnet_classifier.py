"""A plain EfficientNet classifier with one logit: the baseline the teacher must beat.

Same backbone as the teacher's branches, none of its transformers. If the teacher cannot beat this
for the same training time, its size buys nothing.
"""

from __future__ import annotations

from torch import nn

from .base import IMAGENET_MEAN, IMAGENET_STD, hub_mixin_kwargs
from .trunk import EfficientNetTrunk, TrunkClassifier


class EfficientNetClassifier(TrunkClassifier, **hub_mixin_kwargs("efficientnet-classifier")):
    derived_keys = ("features",)

    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        image_size: int = 224,
        dropout: float = 0.2,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ):
        super().__init__(input_size=image_size, mean=mean, std=std)
        self.trunk = EfficientNetTrunk(backbone=backbone, num_stages=None)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(self.trunk.out_channels, 1))
        nn.init.zeros_(self.head[-1].weight)  # start at p=0.5: a random head starts at loss ~2.5
        nn.init.zeros_(self.head[-1].bias)

    def derived_config(self) -> dict:
        """The head's input width older configs stored as `features`; it comes from the trunk."""
        return {"features": self.trunk.out_channels}
