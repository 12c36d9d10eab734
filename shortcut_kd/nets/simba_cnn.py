"""The 3D CNN used on SimBA-style brain MRI (also usable in 2D)."""

from __future__ import annotations

from typing import Sequence

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from torch import nn


class SimBACNN(nn.Module):
    """Five conv blocks (3×3×3 conv, batch norm, ReLU, 2× max pool), global average pooling, dropout, linear.

    The blocks are named ``block1`` … ``block5`` (the tap points) and the head ``fc``. The max pools
    use ``ceil_mode`` so that inputs as small as 8³ pass all five blocks.

    Args:
        spatial_dims: 3 (volumes) or 2 (slices).
        in_channels: number of input channels.
        num_classes: number of output logits.
        channels: output channels of the five blocks (default 32, 64, 128, 256, 512).
        dropout: dropout probability before the linear head.
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (32, 64, 128, 256, 512),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        if len(channels) != 5:
            raise ValueError(f"SimBACNN needs five block widths, got {list(channels)}.")
        conv, norm = Conv[Conv.CONV, spatial_dims], Norm[Norm.BATCH, spatial_dims]
        pool = Pool[Pool.MAX, spatial_dims]
        c_in = in_channels
        blocks = []
        for c_out in channels:
            blocks.append(nn.Sequential(
                conv(c_in, int(c_out), kernel_size=3, padding=1, bias=False),
                norm(int(c_out)),
                nn.ReLU(inplace=True),
                pool(kernel_size=2, stride=2, ceil_mode=True),
            ))
            c_in = int(c_out)
        self.block1, self.block2, self.block3, self.block4, self.block5 = blocks
        self.pool = Pool[Pool.ADAPTIVEAVG, spatial_dims](1)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # explicit calls (not getattr by name) keep the network TorchScript-exportable
        x = self.block5(self.block4(self.block3(self.block2(self.block1(x)))))
        return self.fc(self.dropout(torch.flatten(self.pool(x), 1)))
