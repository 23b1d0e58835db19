"""Fully-connected networks: LeNet-300-100 (the paper's) and a general MLP."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gaussian_glorot_(linear: nn.Linear, generator: torch.Generator | None = None) -> None:
    """The paper's initialization: weights ~ N(0, 2 / (fan_in + fan_out)), biases zero."""
    fan_out, fan_in = linear.weight.shape
    with torch.no_grad():
        linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
        linear.bias.zero_()


class MLP(nn.Module):
    """input -> [Linear -> ReLU -> Dropout] * len(hidden) -> Linear. Inputs of any shape are flattened."""

    def __init__(self, input_size: int, hidden: list[int], num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.dropout = dropout
        sizes = [input_size, *hidden, num_classes]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for layer in self.layers:
            gaussian_glorot_(layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.dropout(torch.relu(x), self.dropout, self.training)
        return x

    def stacked_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool = False,
                        train: bool = False) -> torch.Tensor:
        """R replicas at once; params have a leading replica dim. x is [R, B, ...] (one batch per
        replica) or, with `shared`, [N, ...] for all replicas. Returns [R, B or N, classes]. Dropout
        (independent per replica and example) only with `train`.

        Activations are kept feature-major ([R, features, B]) so that h = W @ x needs no transpose of
        the weights, and autograd's weight gradient g @ xᵀ comes out in the weights' own [out, in]
        layout, with no copy. A shared input goes through the first layer as one matmul against all
        replicas' weights side by side. Measured faster on CPU than vmap over functional_call.
        """
        n = len(self.layers)
        weight, bias = params["layers.0.weight"], params["layers.0.bias"]
        if shared:
            replicas, out_features, in_features = weight.shape
            h = torch.addmm(bias.reshape(-1, 1), weight.reshape(-1, in_features), x.flatten(1).t())  # [R*out, N]
            h = h.view(replicas, out_features, -1)
        else:
            h = torch.baddbmm(bias.unsqueeze(2), weight, x.flatten(2).transpose(1, 2))  # [R, out, B]
        for i in range(1, n):
            h = F.dropout(torch.relu(h), self.dropout, train)
            weight, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            h = torch.baddbmm(bias.unsqueeze(2), weight, h)
        return h.transpose(1, 2)
