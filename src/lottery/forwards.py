"""Batched forwards over stacked parameters: a model's own fast path, or the generic vmap path.

Every forward takes parameters with a leading replica dimension. A replica's numbers must not depend on
its neighbours in the stack, so random draws never span the stack: built-in models take each replica's
own stream (`ReplicaDraws`); a user module that draws from torch's global generator in training mode
(dropout, for one) is run replica by replica, each under a seed of its own.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap

from .order import ReplicaDraws

Params = dict[str, torch.Tensor]
TrainForward = Callable[[Params, torch.Tensor, ReplicaDraws], torch.Tensor]
StackedForward = Callable[[Params, torch.Tensor], torch.Tensor]


class StackedForwards(NamedTuple):
    """Batched forwards over stacked parameters (leading replica dim)."""

    train: TrainForward  # per-replica inputs [R, B, ...], training mode, each replica's own random draws
    each: StackedForward  # per-replica inputs [R, B, ...], evaluation mode
    shared: StackedForward  # one input [N, ...] for every replica, evaluation mode


def _devices(device: torch.device) -> list[int]:
    return [device.index or 0] if device.type == "cuda" else []


def draws_from_global_rng(model: nn.Module, x: torch.Tensor) -> bool:
    """Whether the module's training-mode forward on `x` draws from torch's global generator (dropout,
    noise layers). Probed once, with the generator state restored afterwards."""
    was_training = model.training
    device = x.device
    with torch.random.fork_rng(devices=_devices(device)), torch.no_grad():
        before = torch.get_rng_state()
        cuda_before = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        model.train(True)
        try:
            model(x)
        finally:
            model.train(was_training)
        changed = not torch.equal(before, torch.get_rng_state())
        if cuda_before is not None:
            changed = changed or not torch.equal(cuda_before, torch.cuda.get_rng_state(device))
    return changed


def stacked_forward_for(model: nn.Module, example: torch.Tensor | None = None) -> StackedForwards:
    """A model's own `stacked_forward(params, x, shared=..., train=..., draws=...)` when it has one (the
    built-in MLPs: batched matmuls, measured faster on CPU); otherwise vmap over torch.func.functional_call,
    with the module put in train or eval mode for the call. `example` (a few inputs) lets the generic path
    find out whether the module draws random numbers in training; if it does, training runs replica by
    replica, each under its own seed, instead of one vmap whose draws would span the stack."""
    own = getattr(model, "stacked_forward", None)
    if callable(own):
        return StackedForwards(lambda p, x, draws: own(p, x, shared=False, train=True, draws=draws),
                               lambda p, x: own(p, x, shared=False, train=False),
                               lambda p, x: own(p, x, shared=True, train=False))

    def call(train: bool) -> Callable[[Params, torch.Tensor], torch.Tensor]:
        def one(p: Params, x: torch.Tensor) -> torch.Tensor:
            model.train(train)
            return functional_call(model, p, (x,))
        return one

    # randomness="error": a draw inside the vmapped call would mix replicas; fail loudly instead.
    each = vmap(call(False), randomness="error")
    shared = vmap(call(False), in_dims=(0, None), randomness="error")
    if example is not None and draws_from_global_rng(model, example):
        return StackedForwards(_replica_by_replica(call(True)), each, shared)
    batched = vmap(call(True), randomness="error")
    return StackedForwards(lambda p, x, draws: batched(p, x), each, shared)


def _replica_by_replica(one: Callable[[Params, torch.Tensor], torch.Tensor]) -> TrainForward:
    def train(p: Params, x: torch.Tensor, draws: ReplicaDraws) -> torch.Tensor:
        outputs = []
        for r in range(x.shape[0]):
            with torch.random.fork_rng(devices=_devices(x.device)):
                torch.manual_seed(draws.global_seed(r))
                outputs.append(one({n: v[r] for n, v in p.items()}, x[r]))
        return torch.stack(outputs)
    return train


def at_least_two(params: Params) -> tuple[Params, int]:
    """Stacked parameters with two replicas or more, and how many were given: a lone replica is repeated,
    because a batched product over one item takes another path than over two (see lottery.train)."""
    count = next(iter(params.values())).shape[0]
    if count >= 2:
        return params, count
    return {n: p.repeat(2, *[1] * (p.dim() - 1)) for n, p in params.items()}, count


def check_model_output(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """The module's forward must map a batch [B, ...] to one tensor of logits [B, classes]."""
    from .errors import UserError

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=_devices(x.device)):
            out = model(x)
    except Exception as exc:  # the user's module: report its own message, in one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the model's forward fails on a batch of inputs of shape {tuple(x.shape)}: "
                        f"{type(exc).__name__}: {text[:200]}") from None
    finally:
        model.train(was_training)
    if not torch.is_tensor(out):
        raise UserError(f"the model's forward returns a {type(out).__name__}; lottery needs one tensor of logits "
                        f"[batch, {num_classes}] (wrap the model so that forward returns the logits)")
    if tuple(out.shape) != (len(x), num_classes):
        raise UserError(f"the model's forward returns shape {tuple(out.shape)} for a batch of {len(x)}; lottery "
                        f"needs logits [batch, {num_classes}] for the {num_classes} classes of the data")
