"""ResNet-D for CIFAR-10 (He et al. 2016, Sec. 4.2), in open_lth's layout: D = 6n + 2 layers.

A 3x3 convolution to 16 channels, three stages of n basic blocks with 16, 32 and 64 channels (the first
block of stages 2 and 3 halves the resolution and has a 1x1 conv + BatchNorm shortcut), global average
pooling and one linear layer. Convolutions have no bias; conv and linear weights are Kaiming-normal.
ResNet-20 has 270,896 prunable weights (270,256 conv, of which 2,560 in the two shortcuts, + 640 fc);
272,474 parameters in all with BatchNorm and the fc bias. The paper's "Resnet-18" is this 20-layer net.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        stride = 2 if downsample else 1
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if downsample or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, depth: int, in_channels: int, num_classes: int, width: int = 16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet has depth 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        self.conv = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        blocks, channels = [], width
        for stage, out_channels in enumerate([width, 2 * width, 4 * width]):
            for index in range(blocks_per_stage):
                blocks.append(Block(channels, out_channels, downsample=stage > 0 and index == 0))
                channels = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.blocks(F.relu(self.bn(self.conv(x))))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.fc(out)
