"""The paper's Conv-2, Conv-4 and Conv-6 (Frankle & Carbin 2019, Fig. 2) for 32x32 RGB images.

3x3 convolutions with "same" padding in pairs, each pair followed by 2x2 max-pooling: 64-64 (Conv-2),
+128-128 (Conv-4), +256-256 (Conv-6); then fully-connected 256-256 and the 10-way output. Weights are
Gaussian Glorot (the paper's initialization), biases zero. Weight counts (prunable, biases excluded):
Conv-2 4,300,992 (38,592 conv), Conv-4 2,425,024 (259,776 conv), Conv-6 2,261,184 (1,144,512 conv). The
paper prints 1.7M for Conv-6; this architecture as described gives 2.26M (see the docs).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

PLANS = {"conv2": [64, 64], "conv4": [64, 64, 128, 128], "conv6": [64, 64, 128, 128, 256, 256]}


def gaussian_glorot_conv_(module: nn.Conv2d | nn.Linear) -> None:
    """weights ~ N(0, 2 / (fan_in + fan_out)) with fans counting the receptive field; biases zero."""
    receptive = math.prod(module.weight.shape[2:]) if module.weight.dim() > 2 else 1
    fan_in, fan_out = module.weight.shape[1] * receptive, module.weight.shape[0] * receptive
    with torch.no_grad():
        module.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)))
        module.bias.zero_()


class ConvNet(nn.Module):
    """[conv3x3-ReLU, conv3x3-ReLU, maxpool] per pair of `channels`, then Linear 256-256-classes."""

    def __init__(self, channels: list[int], input_shape: tuple[int, ...], num_classes: int,
                 hidden: tuple[int, ...] = (256, 256)) -> None:
        super().__init__()
        in_channels, height, width = input_shape
        convs = []
        for out_channels in channels:
            convs.append(nn.Conv2d(in_channels, out_channels, 3, padding=1))
            in_channels = out_channels
        self.convs = nn.ModuleList(convs)
        pools = len(channels) // 2
        sizes = [in_channels * (height >> pools) * (width >> pools), *hidden, num_classes]
        self.fcs = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for module in [*self.convs, *self.fcs]:
            gaussian_glorot_conv_(module)

    def sequential(self) -> nn.Sequential:
        """The same network as a chain of standard modules sharing these parameters (for lottery.deploy.compact)."""
        chain: list[nn.Module] = []
        for i, conv in enumerate(self.convs):
            chain += [conv, nn.ReLU()] + ([nn.MaxPool2d(2)] if i % 2 == 1 else [])
        chain.append(nn.Flatten())
        for i, fc in enumerate(self.fcs):
            chain += [fc] + ([nn.ReLU()] if i < len(self.fcs) - 1 else [])
        return nn.Sequential(*chain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, conv in enumerate(self.convs):
            x = torch.relu(conv(x))
            if i % 2 == 1:
                x = F.max_pool2d(x, 2)
        x = x.flatten(1)
        for i, fc in enumerate(self.fcs):
            x = fc(x)
            if i < len(self.fcs) - 1:
                x = torch.relu(x)
        return x
