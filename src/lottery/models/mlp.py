"""Fully-connected networks: LeNet-300-100 (the paper's) and a general MLP."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lottery.memory import Workspace
from lottery.order import ReplicaDraws


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

    def sequential(self) -> nn.Sequential:
        """The same network as a chain of standard modules sharing these parameters (for lottery.deploy.compact)."""
        chain: list[nn.Module] = [nn.Flatten()]
        for i, layer in enumerate(self.layers):
            chain.append(layer)
            if i < len(self.layers) - 1:
                chain += [nn.ReLU(), nn.Dropout(self.dropout)]
        return nn.Sequential(*chain)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.dropout(torch.relu(x), self.dropout, self.training)
        return x

    def stacked_forward(self, params: dict[str, torch.Tensor], x: torch.Tensor, shared: bool = False,
                        train: bool = False, draws: ReplicaDraws | None = None,
                        workspace: Workspace | None = None) -> torch.Tensor:
        """R replicas at once; params have a leading replica dim. x is [R, B, ...] (one batch per
        replica) or, with `shared`, [N, ...] for all replicas. Returns [R, B or N, classes]. Dropout
        only with `train`, from each replica's own stream (`draws`), so a replica's dropout masks do not
        depend on which replicas share its pass.

        Activations are kept feature-major ([R, features, B]) so that h = W @ x needs no transpose of
        the weights, and autograd's weight gradient g @ xᵀ comes out in the weights' own [out, in]
        layout, with no copy. A shared input enters the batched matmul with a batch stride of 0 (no
        copy): every product is batched over replicas, never one matmul across them, which keeps each
        replica's arithmetic the same whatever the stack size (see lottery.training.replicas). Measured faster on
        CPU than vmap over functional_call. Outside autograd, a `workspace` holds the hidden activations
        from call to call (the logits are always a tensor of their own).
        """
        n = len(self.layers)
        weight, bias = params["layers.0.weight"], params["layers.0.bias"]
        if shared:
            inputs = x.flatten(1).t().unsqueeze(0).expand(weight.shape[0], -1, -1)  # [R, in, N], stride 0
        else:
            inputs = x.flatten(2).transpose(1, 2)  # [R, in, B]
        # Not under autograd (out= has no gradient), nor autocast (out= would run in float32).
        reuse = (workspace is not None and not torch.is_grad_enabled() and not (train and self.dropout > 0)
                 and not torch.is_autocast_enabled(x.device.type))
        h = inputs
        for i in range(n):
            weight, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            if i < n - 1 and reuse:
                h = torch.baddbmm(bias.unsqueeze(2), weight, h,
                                  out=workspace.take(f"mlp.h{i}", (weight.shape[0], weight.shape[1], h.shape[2]), weight))
                h.relu_()
                continue
            h = torch.baddbmm(bias.unsqueeze(2), weight, h)  # [R, out, B]
            if i < n - 1:
                h = torch.relu(h)
                if train and self.dropout > 0:
                    h = replica_dropout(h, self.dropout, draws)
        return h.transpose(1, 2)

    def stacked_backprop(self, replicas: int, batch: int, device: torch.device | str) -> "MLPBackprop":
        """The training step's gradients by hand, into buffers made once (see MLPBackprop)."""
        return MLPBackprop(self, replicas, batch, device)


class MLPBackprop:
    """Gradients of the summed per-replica mean cross-entropy of a stacked MLP, computed by hand.

    Autograd over `MLP.stacked_forward` made every step's tensors afresh; the stacked first-layer weight
    gradient alone (7.5 MB for 8 LeNet replicas) was a fresh mapping every step (measured: ~930 page
    faults per step, system time 11% of user time). Here every activation and gradient lands in a buffer
    allocated once, so a step allocates nothing large. Activations are example-major ([R, B, features]):
    on this CPU the first layer's forward x @ Wᵀ ran at 173 GFLOP/s against 146 for W @ xᵀ, and the
    softmax runs along each example's row, as autograd's cross-entropy does. Every product is a batched
    one over the replicas (each replica's arithmetic its own, see lottery.training.replicas). float32 only; bf16
    autocast takes the autograd path.
    """

    def __init__(self, mlp: MLP, replicas: int, batch: int, device: torch.device | str) -> None:
        self.dropout, self.batch = mlp.dropout, batch
        shapes = [tuple(layer.weight.shape) for layer in mlp.layers]  # (out, in)
        self.count = len(shapes)
        empty = lambda *shape: torch.empty(replicas, *shape, device=device)  # noqa: E731
        self.grads: dict[str, torch.Tensor] = {}
        for i, (out, inp) in enumerate(shapes):
            self.grads[f"layers.{i}.weight"] = empty(out, inp)
            self.grads[f"layers.{i}.bias"] = empty(out)
        # Each layer's output: after the ReLU for hidden layers (all their backward needs); the logits last.
        self._out = [empty(batch, out) for out, _ in shapes]
        hidden = shapes[:-1]
        self._keep = [empty(out, batch) for out, _ in hidden] if self.dropout > 0 else []
        self._dropped = [empty(batch, out) for out, _ in hidden] if self.dropout > 0 else []
        self._delta = [empty(batch, out) for out, _ in shapes]  # dLoss/d(pre-activation)
        self._back = [empty(batch, inp) for _, inp in shapes[1:]]  # δ W, before the ReLU's mask
        self._minus_one = torch.full((replicas, batch, 1), -1.0, device=device)

    @torch.no_grad()
    def __call__(self, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 draws: ReplicaDraws | None = None) -> dict[str, torch.Tensor]:
        """Fill and return `grads` for inputs x [R, B, ...] and labels y [R, B]."""
        inputs = [x.flatten(2)]  # [R, B, in]
        for i in range(self.count):
            weight, bias = params[f"layers.{i}.weight"], params[f"layers.{i}.bias"]
            h = torch.bmm(inputs[i], weight.transpose(1, 2), out=self._out[i])
            h.add_(bias.unsqueeze(1))
            if i < self.count - 1:
                h.relu_()
                if self.dropout > 0:  # the autograd path's masks: each replica's own stream, drawn [out, B]
                    keep = self._keep[i]
                    torch.ge(draws.uniform(keep.shape[1:]), self.dropout, out=keep)
                    keep.div_(1.0 - self.dropout)
                    h = torch.mul(h, keep.transpose(1, 2), out=self._dropped[i])
                inputs.append(h)
        # Softmax cross-entropy along each example's row: δ = (softmax − onehot) / B, the gradient of each
        # replica's mean loss.
        delta = self._delta[-1]
        torch.ops.aten._softmax.out(self._out[-1], 2, False, out=delta)
        delta.scatter_add_(2, y.unsqueeze(2), self._minus_one)
        delta.div_(self.batch)
        for i in reversed(range(self.count)):
            torch.bmm(self._delta[i].transpose(1, 2), inputs[i], out=self.grads[f"layers.{i}.weight"])
            torch.sum(self._delta[i], 1, out=self.grads[f"layers.{i}.bias"])
            if i == 0:
                break
            back = torch.bmm(self._delta[i], params[f"layers.{i}.weight"], out=self._back[i - 1])
            if self.dropout > 0:
                back.mul_(self._keep[i - 1].transpose(1, 2))
            # ReLU's gradient: pass where the unit was active (its stored output, before dropout, is > 0).
            torch.ops.aten.threshold_backward.grad_input(back, self._out[i - 1], 0, grad_input=self._delta[i - 1])
        return self.grads
