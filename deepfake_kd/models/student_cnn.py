"""A small plain CNN: the previous release's student, kept so its weights still load.

Dense 3x3 convolutions at a low input resolution (112x112 by default) run close to peak speed on a
CPU, unlike depthwise blocks whose runtime is dominated by memory traffic. Each stage halves the
resolution with a strided conv and refines with a residual conv; a global average pool and one
linear layer give the single logit.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import IMAGENET_MEAN, IMAGENET_STD, FaceClassifier, hub_mixin_kwargs


def conv_bn_relu(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class ResidualStage(nn.Module):
    """Strided conv (downsample, widen) followed by a residual 3x3 conv."""

    def __init__(self, *, c_in: int, c_out: int):
        super().__init__()
        self.down = conv_bn_relu(c_in, c_out, stride=2)
        self.refine = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(c_out))
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.down(x)
        return self.act(x + self.refine(x))


class StudentCNN(FaceClassifier, **hub_mixin_kwargs("student-cnn")):
    def __init__(
        self,
        *,
        image_size: int = 112,
        widths: tuple[int, ...] = (16, 32, 64, 128),
        dropout: float = 0.1,
        mean: tuple[float, float, float] = IMAGENET_MEAN,
        std: tuple[float, float, float] = IMAGENET_STD,
    ):
        super().__init__(input_size=image_size, mean=mean, std=std)
        widths = tuple(int(w) for w in widths)
        self.stem = conv_bn_relu(3, widths[0], stride=2)
        self.stages = nn.Sequential(*(ResidualStage(c_in=a, c_out=b)
                                      for a, b in zip(widths[:-1], widths[1:])))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(widths[-1], 1))

    def pre_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The pooled last map [N, widths[-1]], before dropout and the linear logit."""
        self.check_input(x)
        return self.head[:-2](self.stages(self.stem(x)))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        return self.head[-2:](features).squeeze(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        return self.head(self.stages(self.stem(x))).squeeze(-1)
