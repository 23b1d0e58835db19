"""A small keyword-spotting CNN for spectrograms (FSDD's [1, 40 mel bands, 49 frames]).

Three 3x3 convolutions without bias, each followed by BatchNorm and ReLU, 2x2 max-pools after the first
two, a global average pool and one linear layer: the usual shape of small KWS nets (e.g. the CNNs of
"Hello Edge", Zhang et al. 2017), sized to train in minutes on a CPU. Conv and Linear weights are
Kaiming-normal. Prunable weights with widths (16, 32, 64): 144 + 4,608 + 18,432 conv + 640 output = 23,824.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class KeywordCNN(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: tuple[int, ...] = (16, 32, 64)) -> None:
        super().__init__()
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        for width in widths:
            self.convs.append(nn.Conv2d(in_channels, width, 3, padding=1, bias=False))
            self.norms.append(nn.BatchNorm2d(width))
            in_channels = width
        self.fc = nn.Linear(in_channels, num_classes)
        for module in [*self.convs, self.fc]:
            nn.init.kaiming_normal_(module.weight)

    def sequential(self) -> nn.Sequential:
        """The same network as a chain of standard modules sharing these parameters (for lottery.deploy.compact)."""
        chain: list[nn.Module] = []
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            chain += [conv, norm, nn.ReLU()] + ([nn.MaxPool2d(2)] if i < len(self.convs) - 1 else [])
        return nn.Sequential(*chain, nn.AdaptiveAvgPool2d(1), nn.Flatten(), self.fc)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x)))
            if i < len(self.convs) - 1:
                x = F.max_pool2d(x, 2)
        return self.fc(x.mean(dim=(2, 3)))
