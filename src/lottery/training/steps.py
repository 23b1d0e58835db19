"""How one optimizer step is computed for a stack of replicas: three strategies behind one call.

- `HandBackprop`: the model's own backward (the built-in MLPs), which allocates nothing per step.
- `StackedAutograd`: autograd over the stacked parameters (a model's own stacked forward, or vmap).
- `OneByOne`: autograd replica after replica, each replica's weights leaves of their own (convolutions,
  BatchNorm, dropout from the global generator, modules vmap cannot batch such as LSTMs).

Each masks the gradients before the optimizer sees them: a pruned weight's gradient is 0, so Adam's moments,
momentum and (L2 or decoupled) weight decay all leave it at exactly zero: 0 - lr * 0 = 0 (invariant 1).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from lottery.config import TrainConfig
from lottery.order import ReplicaDraws
from lottery.training.forwards import StackedForwards
from lottery.training.replicas import ReplicaStack


def precision(cfg: TrainConfig, device_type: str) -> contextlib.AbstractContextManager:
    """bf16 matmuls under autocast (parameters, optimizer and loss stay float32), or nothing."""
    if cfg.precision == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def summed_replica_loss(logits: torch.Tensor, y: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Sum over replicas of each replica's mean loss: each replica gets exactly its own gradient."""
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum") / batch_size


class HandBackprop:
    """The model's own backward by hand: gradients land in the same buffers every step. float32 only."""

    gathers = True  # takes the batch gathered into fixed buffers (no augmentation)

    def __init__(self, backprop: Callable, stack: ReplicaStack) -> None:
        self.backprop, self.stack = backprop, stack
        # Fixed buffers: their slices are taken once.
        self.grads = [row for n in stack.params for row in backprop.grads[n].unbind(0)]
        self.masked = [backprop.grads[n] for n in stack.mask_names]
        self.masks = [stack.masks[n] for n in stack.mask_names]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, draws: ReplicaDraws, lr: float) -> None:
        self.backprop(self.stack.params, x, y, draws)
        if self.masked:
            torch._foreach_mul_(self.masked, self.masks)
        self.stack.optimizer.lr = lr
        self.stack.optimizer.step(self.grads)


class StackedAutograd:
    """Autograd over the stacked parameters: one forward and one backward for every replica."""

    gathers = False

    def __init__(self, forwards: StackedForwards, stack: ReplicaStack, cfg: TrainConfig, device_type: str) -> None:
        self.forwards, self.stack, self.cfg, self.device_type = forwards, stack, cfg, device_type
        self.masks = [stack.masks[n] for n in stack.mask_names]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, draws: ReplicaDraws, lr: float) -> None:
        stack = self.stack
        with precision(self.cfg, self.device_type):
            logits = self.forwards.train(stack.tensors(), x, draws)
        loss = summed_replica_loss(logits, y, self.cfg.batch_size)
        stack.optimizer.zero_grad()
        loss.backward()
        if self.masks:
            with torch.no_grad():
                torch._foreach_mul_([stack.params[n].grad for n in stack.mask_names], self.masks)
        stack.optimizer.lr = lr
        stack.optimizer.step()


class OneByOne:
    """Autograd replica by replica: each replica's weights are leaves of their own (`stack.rows`), so no
    product or random draw spans replicas; gradients and masks are handled parameter-major, in the
    optimizer's order."""

    gathers = False

    def __init__(self, forwards: StackedForwards, stack: ReplicaStack, cfg: TrainConfig, device_type: str) -> None:
        assert stack.rows is not None
        self.forwards, self.stack, self.cfg, self.device_type = forwards, stack, cfg, device_type
        self.leaves = [row[n] for n in stack.params for row in stack.rows]
        self.masked_leaves = [row[n] for n in stack.mask_names for row in stack.rows]
        self.masks = [m for n in stack.mask_names for m in stack.masks[n].unbind(0)]

    def __call__(self, x: torch.Tensor, y: torch.Tensor, draws: ReplicaDraws, lr: float) -> None:
        stack = self.stack
        with precision(self.cfg, self.device_type):
            logits = self.forwards.train(stack.rows, x, draws)
        loss = summed_replica_loss(logits, y, self.cfg.batch_size)
        stack.optimizer.zero_grad()
        for leaf in self.leaves:
            leaf.grad = None
        loss.backward()
        grads = [leaf.grad for leaf in self.leaves]
        if self.masks:
            with torch.no_grad():
                torch._foreach_mul_([leaf.grad for leaf in self.masked_leaves], self.masks)
        stack.optimizer.lr = lr
        stack.optimizer.step(grads)


Step = HandBackprop | StackedAutograd | OneByOne


def step_for(model: nn.Module, forwards: StackedForwards, stack: ReplicaStack, cfg: TrainConfig,
             device_type: str, backprop: Callable | None) -> Step:
    """The strategy for this stack: by hand where the model offers it, else one by one or stacked."""
    if backprop is not None:
        return HandBackprop(backprop, stack)
    if forwards.one_by_one:
        return OneByOne(forwards, stack, cfg, device_type)
    return StackedAutograd(forwards, stack, cfg, device_type)


def hand_backprop_for(model: nn.Module, cfg: TrainConfig, forwards: StackedForwards, batching: str,
                      size: int, device: torch.device) -> Callable | None:
    """A model's own backward by hand (the built-in MLPs), which allocates nothing per step; float32 only,
    and only on the model's own forward."""
    make = getattr(model, "stacked_backprop", None)
    if callable(make) and batching == "auto" and not forwards.one_by_one and cfg.precision == "float32":
        return make(size, cfg.batch_size, device)
    return None
