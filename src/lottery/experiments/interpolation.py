"""Linear mode connectivity (Frankle et al. 2020): networks on the straight line between two trained
networks, BatchNorm statistics recomputed for each, and the error barrier along the line.

Small pure functions over state dicts; `lottery.experiments.stability` runs the experiment with them.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from lottery.training.forwards import StackedForwards
from lottery.training.replicas import at_least_two
from lottery.order import ReplicaDraws

Features = Callable[[torch.Tensor], torch.Tensor]


def alphas_between(points: int) -> list[float]:
    """`points` evenly spaced interpolation weights from 0 to 1, both ends included."""
    if points < 2:
        raise ValueError(f"an interpolation needs at least 2 points (the two ends), got {points}")
    return torch.linspace(0.0, 1.0, points, dtype=torch.float64).tolist()


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alphas: list[float]) -> dict[str, torch.Tensor]:
    """The networks (1 − α)·a + α·b, stacked [len(alphas), ...], for every floating-point tensor
    (parameters, BatchNorm statistics); integer tensors (BatchNorm's batch counters) are taken from a.
    torch.lerp gives exactly a at α = 0 and exactly b at α = 1. Weights pruned in both (zero) stay zero."""
    if set(a) != set(b):
        raise ValueError(f"the two networks have different tensors: {sorted(set(a) ^ set(b))[:3]}")
    weights = torch.tensor(alphas, dtype=torch.float32)
    out = {}
    for name, ta in a.items():
        tb = b[name].to(ta.device)
        if ta.is_floating_point():
            w = weights.to(ta.device, ta.dtype).view(-1, *[1] * ta.dim())
            out[name] = torch.lerp(ta.unsqueeze(0).expand(len(alphas), *ta.shape),
                                   tb.unsqueeze(0).expand(len(alphas), *tb.shape), w).contiguous()
        else:
            out[name] = ta.unsqueeze(0).expand(len(alphas), *ta.shape).clone()
    return out


def instability(errors: list[float]) -> float:
    """The error barrier: the largest error along the path minus the mean of the two ends' errors
    (`errors` from α = 0 to α = 1). 0 when the path is no worse than its ends (linearly connected)."""
    return max(errors) - (errors[0] + errors[-1]) / 2


def batchnorm_layers(model: nn.Module) -> list[str]:
    """Names of the BatchNorm layers that keep running statistics."""
    return [name for name, m in model.named_modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, forwards: StackedForwards, tensors: dict[str, torch.Tensor],
                          x: torch.Tensor, batch_size: int, features: Features = lambda v: v,
                          precision: contextlib.AbstractContextManager | None = None) -> dict[str, torch.Tensor]:
    """Stacked networks with their BatchNorm running statistics recomputed on `x` (training inputs): the
    statistics are reset and averaged (cumulatively, not with momentum) over every full batch of
    `batch_size`, in training mode. Interpolating two networks' running statistics gives statistics that
    match neither the interpolated weights nor the data. Returns new dicts for the statistics; the
    parameters are the same tensors, untouched. Without BatchNorm layers, `tensors` as given."""
    layers = batchnorm_layers(model)
    if not layers:
        return tensors
    out = dict(tensors)
    for layer in layers:
        out[f"{layer}.running_mean"] = torch.zeros_like(tensors[f"{layer}.running_mean"])
        out[f"{layer}.running_var"] = torch.ones_like(tensors[f"{layer}.running_var"])
        out[f"{layer}.num_batches_tracked"] = torch.zeros_like(tensors[f"{layer}.num_batches_tracked"])
    count = next(iter(tensors.values())).shape[0]
    modules = dict(model.named_modules())
    momenta = {layer: modules[layer].momentum for layer in layers}
    draws = ReplicaDraws([0] * count, x.device).at(0)
    try:
        for layer in layers:
            modules[layer].momentum = None  # a cumulative average over the batches
        for start in range(0, len(x) - batch_size + 1, batch_size):
            batch = features(x[start:start + batch_size])
            with precision or contextlib.nullcontext():
                forwards.train(out, batch.unsqueeze(0).expand(count, *batch.shape), draws)
    finally:
        for layer, momentum in momenta.items():
            modules[layer].momentum = momentum
    return out


@torch.no_grad()
def error_rates(forwards: StackedForwards, tensors: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                eval_batch: int, features: Features = lambda v: v,
                precision: contextlib.AbstractContextManager | None = None) -> list[float]:
    """Classification error of each stacked network on (x, y), in evaluation mode."""
    params, count = at_least_two(tensors)  # never a batched product over one network (see lottery.training.replicas)
    size = next(iter(params.values())).shape[0]
    correct = torch.zeros(size, device=x.device)
    for start in range(0, len(x), eval_batch):
        xb, yb = features(x[start:start + eval_batch]), y[start:start + eval_batch]
        with precision or contextlib.nullcontext():
            logits = forwards.shared(params, xb).float()
        correct += (logits.argmax(-1) == yb.unsqueeze(0)).sum(1)
    accuracy = (correct[:count] / max(len(x), 1)).tolist()  # as the trainer computes it, to the bit
    return [1.0 - a for a in accuracy]
