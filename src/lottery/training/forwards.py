"""Batched forwards over stacked parameters: a model's own fast path, or the generic vmap path.

Every forward takes parameters with a leading replica dimension. A replica's numbers must not depend on
its neighbours in the stack, so random draws never span the stack: built-in models take each replica's
own stream (`ReplicaDraws`); a user module that draws from torch's global generator in training mode
(dropout, for one) is run replica by replica, each under a seed of its own.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import nn
from torch.func import functional_call, vmap

from lottery.memory import Workspace
from lottery.order import ReplicaDraws

Params = dict[str, torch.Tensor]
# Training forwards computed one by one also take a list of per-replica dicts (see StackedTrainer).
TrainForward = Callable[[Params | list[Params], torch.Tensor, ReplicaDraws], torch.Tensor]
StackedForward = Callable[[Params, torch.Tensor], torch.Tensor]


class StackedForwards(NamedTuple):
    """Batched forwards over stacked parameters (leading replica dim)."""

    train: TrainForward  # per-replica inputs [R, B, ...], training mode, each replica's own random draws
    each: StackedForward  # per-replica inputs [R, B, ...], evaluation mode
    shared: StackedForward  # one input [N, ...] for every replica, evaluation mode
    one_by_one: bool = False  # each replica computed on its own (no product spans replicas)


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


BATCHINGS = ("auto", "loop", "vmap")


def has_convolutions(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


def stacked_forward_for(model: nn.Module, example: torch.Tensor | None = None,
                        batching: str = "auto") -> StackedForwards:
    """A model's own `stacked_forward(params, x, shared=..., train=..., draws=...)` when it has one (the
    built-in MLPs: batched matmuls, measured faster on CPU); otherwise torch.func.functional_call over
    the stacked parameters and buffers, with the module put in train or eval mode for the call:
    - `loop`: one replica after another, each replica's weights an unbound slice of the stack. Chosen
      by `auto` for models with convolutions: measured on the 2-core CPU for Conv-2 at batch 60 in bf16,
      63 ms per replica-iteration against 176 ms for vmap (which turns R convolutions into one grouped
      convolution, a slow kernel) and 57 ms for a plain single-network loop; and for models with buffers
      (BatchNorm). A replica's arithmetic is then its own whatever shares the pass.
    - `vmap`: one vmapped call over the stack (batched matmuls), for the other models.
    Buffers (BatchNorm running statistics) are stacked like the parameters and updated in place, each
    replica's own. `example` (a few inputs) lets this find out whether the module draws random numbers in
    training; if it does, training runs replica by replica, each under its own seed."""
    if batching not in BATCHINGS:
        raise ValueError(f"batching must be one of {', '.join(BATCHINGS)}, got {batching!r}")
    own = getattr(model, "stacked_forward", None)
    if callable(own) and batching == "auto":
        # This forward's own workspace, where the model takes one: evaluation reuses its activations.
        reuse = {"workspace": Workspace()} if "workspace" in inspect.signature(own).parameters else {}
        return StackedForwards(lambda p, x, draws: own(p, x, shared=False, train=True, draws=draws),
                               lambda p, x: own(p, x, shared=False, train=False),
                               lambda p, x: own(p, x, shared=True, train=False, **reuse))

    def call(train: bool) -> Callable[[Params, torch.Tensor], torch.Tensor]:
        def one(p: Params, x: torch.Tensor) -> torch.Tensor:
            model.train(train)
            return functional_call(model, p, (x,))
        return one

    # Buffers too: under vmap, BatchNorm's statistics of a replica came out differently in the last bits
    # beside other replicas (measured), against invariant 7; one by one they cannot. A module that draws
    # from the global generator (dropout) trains one by one too, each replica under a seed of its own; so
    # does one that vmap cannot batch (an LSTM: no batching rule for aten::lstm), found by trying.
    draws = example is not None and draws_from_global_rng(model, example)
    loop = batching == "loop" or draws or (batching == "auto" and (
        has_convolutions(model) or any(True for _ in model.buffers())
        or (example is not None and not _vmap_can_batch(model, call(False), example))))
    if loop:
        each, shared = _one_by_one(call(False)), _one_by_one(call(False), shared_input=True)
        if draws:
            return StackedForwards(_replica_by_replica(call(True)), each, shared, True)
        looped = _one_by_one(call(True))
        return StackedForwards(lambda p, x, draws: looped(p, x), each, shared, True)
    # randomness="error": a draw inside the vmapped call would mix replicas; fail loudly instead.
    each = vmap(call(False), randomness="error")
    shared = vmap(call(False), in_dims=(0, None), randomness="error")
    batched = vmap(call(True), randomness="error")
    return StackedForwards(lambda p, x, draws: batched(p, x), each, shared)


def _vmap_can_batch(model: nn.Module, one: Callable[[Params, torch.Tensor], torch.Tensor], example: torch.Tensor) -> bool:
    """Whether a vmapped call over two stacked copies of the model runs (not every op has a batching rule)."""
    stacked = {n: t.detach().unsqueeze(0).expand(2, *t.shape) for n, t in
               [*model.named_parameters(), *model.named_buffers()]}
    try:
        with torch.no_grad():
            vmap(one, randomness="error")(stacked, example.unsqueeze(0).expand(2, *example.shape))
    except Exception:  # noqa: BLE001 - any failure of the fast path means: train one by one
        return False
    return True


def _replica_by_replica(one: Callable[[Params, torch.Tensor], torch.Tensor]) -> TrainForward:
    """Training forwards one replica at a time, each drawing from the global generator under its own seed
    (restored afterwards), so a replica's dropout masks are its own whatever shares the pass."""
    def train(p: Params | list[Params], x: torch.Tensor, draws: ReplicaDraws) -> torch.Tensor:
        outputs = []
        for r, row in enumerate(_rows(p)):
            with torch.random.fork_rng(devices=_devices(x.device)):
                torch.manual_seed(draws.global_seed(r))
                outputs.append(one(row, _fast_layout(x[r])))
        return torch.stack(outputs)
    return train


def _fast_layout(x: torch.Tensor) -> torch.Tensor:
    """Images channels-last: the layout oneDNN's and cuDNN's fastest convolutions (bf16 above all) use."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


def _rows(p: Params | list[Params]) -> list[Params]:
    """Each replica's tensors: given as such (the trainer's per-replica leaves), or slices of the stack
    from one unbind per tensor (so autograd stacks the gradients once rather than scattering each
    replica's into a zero tensor of the whole stack)."""
    if isinstance(p, list):
        return p
    unbound = {n: v.unbind(0) for n, v in p.items()}
    count = len(next(iter(unbound.values())))
    return [{n: rows[r] for n, rows in unbound.items()} for r in range(count)]


def _one_by_one(one: Callable[[Params, torch.Tensor], torch.Tensor], shared_input: bool = False) -> StackedForward:
    def forward(p: Params, x: torch.Tensor) -> torch.Tensor:
        rows = _rows(p)
        if shared_input:
            x = _fast_layout(x)
            return torch.stack([one(row, x) for row in rows])
        return torch.stack([one(row, _fast_layout(x[r])) for r, row in enumerate(rows)])
    return forward
