"""Fully-connected networks: LeNet-300-100 (the paper's) and a general MLP."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..order import ReplicaDraws


def gaussian_glorot_(linear: nn.Linear, generator: torch.Generator | None = None) -> None:
    """The paper's initialization: weights ~ N(0, 2 / (fan_in + fan_out)), biases zero."""
    fan_out, fan_in = linear.weight.shape
    with torch.no_grad():
        linear.weight.normal_(0.0, math.sqrt(2.0 / (fan_in + fan_out)), generator=generator)
        linear.bias.zero_()


def replica_dropout(h: torch.Tensor, rate: float, draws: ReplicaDraws | None) -> torch.Tensor:
    """Dropout on stacked activations [R, ...]: each replica's mask comes from its own stream."""
    if draws is None:
        raise ValueError("dropout in a stacked training forward needs the replicas' own random streams (draws)")
    keep = draws.uniform(h.shape[1:]) >= rate
    return h * keep / (1.0 - rate)


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
                        train: bool = False, draws: ReplicaDraws | None = None) -> torch.Tensor:
        """R replicas at once; params have a leading replica dim. x is [R, B, ...] (one batch per
        replica) or, with `shared`, [N, ...] for all replicas. Returns [R, B or N, classes]. Dropout
        only with `train`, from each replica's own stream (`draws`), so a replica's dropout masks do not
        depend on which replicas share its pass.

        Activations are kept feature-major ([R, features, B]) so that h = W @ x needs no transpose of
        the weights, and autograd's weight gradient g @ xᵀ comes out in the weights' own [out, in]
        layout, with no copy. A shared input enters the batched matmul with a batch stride of 0 (no
        copy): every product is batched over replicas, never one matmul across them, which keeps each
        replica's arithmetic the same whatever the stack size (see lottery.train). Measured faster on
        CPU than vmap over functional_call.
        """
        n = len(self.layers)
        weight, bias = params["layers.0.weight"], params["layers.0.bias"]
        if shared:
            inputs = x.flatten(1).t().unsqueeze(0).expand(weight.shape[0], -1, -1)  # [R, in, N], stride 0
        else:
            inputs = x.flatten(2).transpose(1, 2)  # [R, in, B]
        h = torch.baddbmm(bias.unsqueeze(2), weight, inputs)  # [R, out, B]
        for i in range(1, n):
            h = torch.relu(h)
            if train and self.dropout > 0:
                h = replica_dropout(h, self.dropout, draws)
            weight, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            h = torch.baddbmm(bias.unsqueeze(2), weight, h)
        return h.transpose(1, 2)
