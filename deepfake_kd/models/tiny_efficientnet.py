"""A tiny student: the stem and first stages of EfficientNet-Lite0 at a low input resolution.

Why not a plain CNN from scratch: 21,600 training crops are too few to learn good low-level
features, while Lite0's first four stages (254k parameters) carry ImageNet features that start
training far ahead. At 112x112 they run in a few milliseconds per face on a CPU. A 1x1 conv widens
the last map before global average pooling and one linear logit.
"""

from __future__ import annotations

from torch import nn

from .base import IMAGENET_MEAN, IMAGENET_STD, hub_mixin_kwargs
from .trunk import EfficientNetTrunk, TrunkClassifier


class TinyEfficientNet(TrunkClassifier, **hub_mixin_kwargs("tiny-efficientnet")):
    def __init__(
        self,
        *,
        backbone: str = "efficientnet_lite0",
        num_stages: int = 4,
        head_channels: int = 256,
        image_size: int = 112,
        dropout: float = 0.2,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ):
        super().__init__(input_size=image_size, mean=mean, std=std)
        self.trunk = EfficientNetTrunk(backbone=backbone, num_stages=num_stages)
        self.head = nn.Sequential(
            nn.Conv2d(self.trunk.out_channels, head_channels, 1, bias=False),
            nn.BatchNorm2d(head_channels), nn.ReLU6(inplace=True),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
            nn.Linear(head_channels, 1))
        nn.init.zeros_(self.head[-1].weight)  # start at p=0.5 rather than a random guess
        nn.init.zeros_(self.head[-1].bias)
