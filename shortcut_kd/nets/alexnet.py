"""AlexNet for 2D images of any size from 32² to 224².

torchvision is not a dependency of this toolkit, so AlexNet is written here. The layout follows
Krizhevsky et al. (2012) as popularised by torchvision (five convolutions, three max pools, an
adaptive average pool and three fully connected layers). Two changes let it run on small images:
the max pools pad by one (so a 1×1 map survives them) and the pooled map size is adaptive.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Sequence

import torch
from torch import nn


class AlexNet(nn.Module):
    """AlexNet with named conv blocks ``features.block1`` … ``features.block5`` and head ``classifier.out``.

    Args:
        in_channels: number of input channels.
        num_classes: number of output logits.
        widths: output channels of the five convolutions (the original: 64, 192, 384, 256, 256).
        hidden: width of the two hidden fully connected layers (the original: 4096).
        pool_size: side of the adaptive average pool before the classifier (the original: 6).
        dropout: dropout probability before each hidden fully connected layer.
        stem_stride: stride of the 11×11 first convolution (the original: 4; 2 keeps more detail
            on small images).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        widths: Sequence[int] = (64, 192, 384, 256, 256),
        hidden: int = 4096,
        pool_size: int = 6,
        dropout: float = 0.5,
        stem_stride: int = 4,
    ) -> None:
        super().__init__()
        if len(widths) != 5:
            raise ValueError(f"AlexNet needs five conv widths, got {list(widths)}.")
        w1, w2, w3, w4, w5 = (int(w) for w in widths)

        def pool() -> nn.MaxPool2d:
            return nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        self.features = nn.Sequential(
            OrderedDict(
                block1=nn.Sequential(
                    nn.Conv2d(in_channels, w1, 11, stride=stem_stride, padding=2), nn.ReLU(inplace=True), pool()
                ),
                block2=nn.Sequential(nn.Conv2d(w1, w2, 5, padding=2), nn.ReLU(inplace=True), pool()),
                block3=nn.Sequential(nn.Conv2d(w2, w3, 3, padding=1), nn.ReLU(inplace=True)),
                block4=nn.Sequential(nn.Conv2d(w3, w4, 3, padding=1), nn.ReLU(inplace=True)),
                block5=nn.Sequential(nn.Conv2d(w4, w5, 3, padding=1), nn.ReLU(inplace=True), pool()),
            )
        )
        self.avgpool = nn.AdaptiveAvgPool2d(pool_size)
        self.classifier = nn.Sequential(
            OrderedDict(
                drop1=nn.Dropout(dropout),
                fc1=nn.Linear(w5 * pool_size * pool_size, hidden),
                relu1=nn.ReLU(inplace=True),
                drop2=nn.Dropout(dropout),
                fc2=nn.Linear(hidden, hidden),
                relu2=nn.ReLU(inplace=True),
                out=nn.Linear(hidden, num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))
