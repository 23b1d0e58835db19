"""VGG for CIFAR-10 with BatchNorm, in open_lth's layout (Frankle et al.'s code for the later papers).

3x3 convolutions (with bias) each followed by BatchNorm and ReLU, four 2x2 max-pools between the stacks,
a 2x2 average pool and one linear layer (512 -> classes). Conv and Linear weights are Kaiming-normal.
Prunable weights: VGG-16 14,715,584 (14,710,464 conv + 5,120 fc); VGG-19 20,024,000 (20,018,880 + 5,120).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

POOL = 0  # in a plan: a 2x2 max-pool
VGG_PLANS = {
    "vgg16": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512],
    "vgg19": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512],
}


class ConvBN(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class VGG(nn.Module):
    def __init__(self, plan: list[int], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for spec in plan:
            if spec == POOL:
                layers.append(nn.MaxPool2d(2))
            else:
                layers.append(ConvBN(in_channels, spec))
                in_channels = spec
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(self.layers(x), 2)
        return self.fc(x.flatten(1))
