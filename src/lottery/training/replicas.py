"""The state of a stack of replicas: what each network of a pass carries, with a leading replica dimension.

Parameters, buffers (BatchNorm running statistics), masks, optimizer state and path lengths are stacked
[R, ...]; nothing is shared between replicas. Trained one by one, each replica's weights are also autograd
leaves of their own (`rows`): views of the stack, updated in place with it.

The shadow-copy rule lives here, at one boundary (`shadowed`): on the CPU a replica's bits are its own only
when every matrix product is a batched one over at least two replicas. MKL computes each item of a batch
of two or more single-threaded, in the same order whatever the batch size, but splits a lone small product
across threads in another order (measured: a 10x500 @ 500x100 product differs in the last bits between
batch 1 and batch 2+). So a stack of one replica is trained and evaluated beside a copy of itself.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lottery.config import TrainConfig
from lottery.pruning.masks import Mask
from lottery.training.optim import OptimizerState, ReplicaOptimizer


@dataclass
class ReplicaSpec:
    """One network to train: its data stream, its start (all parameters and buffers, such as BatchNorm
    running statistics), its mask and the seed of its own random stream (dropout draws)."""

    stream: int
    start: dict[str, torch.Tensor]
    mask: Mask
    seed: int = 0
    # The optimizer's state to start from, by buffer and parameter name (e.g. {"exp_avg": {...}}), and its
    # step count; None: fresh (zeros). A pass starts all its replicas fresh or all from a state.
    optimizer: OptimizerState | None = None
    optimizer_steps: int = 0


def shadowed(count: int, batched: bool) -> list[int]:
    """The rows a stack of `count` replicas is computed with: a lone replica beside a shadow copy of itself
    when its products are batched (see the module doc); every replica once otherwise."""
    return [0, 0] if count == 1 and batched else list(range(count))


def with_shadow(params: dict[str, torch.Tensor], batched: bool = True) -> dict[str, torch.Tensor]:
    """Stacked tensors with the shadow rule applied (a lone replica repeated)."""
    count = next(iter(params.values())).shape[0]
    rows = shadowed(count, batched)
    if len(rows) == count:
        return params
    return {n: p.repeat(len(rows), *[1] * (p.dim() - 1)) for n, p in params.items()}


def at_least_two(params: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], int]:
    """Stacked tensors for an evaluation of batched products, and how many replicas were given: the shadow
    rule for the experiments' own forwards."""
    count = next(iter(params.values())).shape[0]
    return with_shadow(params), count


class ReplicaStack:
    """R replicas' parameters, buffers, masks, optimizer state and (for the `path` criterion) path lengths.

    `count` replicas were asked for; `size` rows are computed (a shadow copy may follow a lone replica).
    `trainable`: the stacked parameters are autograd leaves (stacked autograd); else the step computes
    gradients itself (by hand) or on `rows`, each replica's own leaves (one by one)."""

    def __init__(self, model: nn.Module, replicas: list[ReplicaSpec], cfg: TrainConfig, device: torch.device,
                 *, one_by_one: bool, trainable: bool, track_path: bool = False) -> None:
        self.count = len(replicas)
        replicas = [replicas[i] for i in shadowed(len(replicas), batched=not one_by_one)]
        self.size = len(replicas)
        self.streams = torch.tensor([r.stream for r in replicas], device=device)
        self.seeds = [r.seed for r in replicas]
        names = [n for n, _ in model.named_parameters()]
        self.params = {n: torch.stack([r.start[n].detach().to(device, torch.float32) for r in replicas])
                       .contiguous().requires_grad_(trainable) for n in names}
        # Buffers (BatchNorm running statistics and counters): each replica's own, updated in place by the
        # training forward, part of the start and of every checkpoint and result.
        self.buffers = {n: torch.stack([r.start[n].detach().to(device) for r in replicas]).contiguous()
                        for n, _ in model.named_buffers()}
        # Trained one by one, each replica's weights are autograd leaves of their own: views of the stack
        # (updated in place with it) whose gradients land apart, never stacked (measured: the stacking cost
        # Conv-2 ~20% of a step on CPU).
        self.rows: list[dict[str, torch.Tensor]] | None = None
        if one_by_one:
            self.rows = [{**{n: p[r].detach().requires_grad_() for n, p in self.params.items()},
                          **{n: b[r] for n, b in self.buffers.items()}} for r in range(self.size)]
        self.masks = {n: torch.stack([r.mask[n].to(device) for r in replicas]).to(torch.float32)
                      for n in replicas[0].mask}
        # A dense pass (level 0) needs no masking at all; otherwise every prunable tensor is masked.
        dense = all(bool(m.all()) for m in self.masks.values())
        self.mask_names = [] if dense else list(self.masks)
        if self.mask_names:
            with torch.no_grad():
                torch._foreach_mul_([self.params[n] for n in self.mask_names], [self.masks[n] for n in self.mask_names])
        # A model may name the only parameters weight decay applies to (Kipf & Welling's GCN: the first layer).
        decayed = getattr(model, "decayed_parameters", None)
        self.optimizer = ReplicaOptimizer(cfg, list(self.params.values()),
                                          None if decayed is None else [n in decayed for n in self.params])
        if any(r.optimizer is not None for r in replicas):
            self._start_optimizer(replicas)
        # Path length Σt |θt+1 − θt| of every prunable weight, for the `path` criterion only.
        self.path = {n: torch.zeros_like(self.params[n]) for n in self.masks} if track_path else {}
        self._path_list = list(self.path.values())
        self._path_params = [self.params[n] for n in self.path]
        self._previous = [p.detach().clone() for p in self._path_params]

    def _start_optimizer(self, replicas: list[ReplicaSpec]) -> None:
        """Each replica's optimizer state from its spec, masked like its gradients (a pruned weight's
        momentum is zero, so it stays exactly zero)."""
        steps = {r.optimizer_steps for r in replicas}
        if any(r.optimizer is None for r in replicas) or len(steps) > 1:
            raise ValueError("a pass starts all its replicas fresh or all from an optimizer state with one step count")
        names = list(self.params)
        buffers = {key: [torch.stack([r.optimizer[key][n].to(p) for r in replicas])
                         * (self.masks[n] if n in self.masks else 1) for n, p in zip(names, self.params.values())]
                   for key in self.optimizer.buffers}
        self.optimizer.load_state(buffers, steps.pop())

    def tensors(self, replicas: torch.Tensor | None = None, detach: bool = False) -> dict[str, torch.Tensor]:
        """Parameters and buffers, stacked (or the selected replicas)."""
        params = {n: p.detach() if detach else p for n, p in self.params.items()}
        out = {**params, **self.buffers}
        return out if replicas is None else {n: t[replicas] for n, t in out.items()}

    def optimizer_of(self, replica: int) -> OptimizerState:
        """One replica's optimizer state now (copies), by buffer and parameter name; steps: `optimizer.steps_taken`."""
        return {key: {n: t[replica].detach().clone() for n, t in zip(self.params, tensors)}
                for key, tensors in self.optimizer.buffers.items()}

    @torch.no_grad()
    def accumulate_path(self) -> None:
        if not self.path:
            return
        # In place, multi-tensor, no allocation: previous ← |θt − θt+1|, path += previous, previous ← θt+1.
        torch._foreach_sub_(self._previous, self._path_params)
        torch._foreach_abs_(self._previous)
        torch._foreach_add_(self._path_list, self._previous)
        torch._foreach_copy_(self._previous, self._path_params)

    # --- checkpoints --------------------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        """The replicas asked for (not a shadow copy), replica dimension first."""
        real = slice(0, self.count)
        tensors = {f"param.{n}": p.detach()[real] for n, p in self.params.items()}
        tensors.update({f"buffer.{n}": b[real] for n, b in self.buffers.items()})
        buffers, _ = self.optimizer.state()
        for key, values in buffers.items():
            tensors.update({f"opt.{key}.{n}": v.detach()[real] for n, v in zip(self.params, values)})
        tensors.update({f"path.{n}": p[real] for n, p in self.path.items()})
        return tensors

    def read_state(self, pick) -> tuple:  # type: ignore[no-untyped-def]
        """Every tensor of a checkpoint, read and checked through `pick(key, like)`; nothing changes yet."""
        params = {n: pick(f"param.{n}", p) for n, p in self.params.items()}
        buffers = {n: pick(f"buffer.{n}", b) for n, b in self.buffers.items()}
        path = {n: pick(f"path.{n}", p) for n, p in self.path.items()}
        opt_buffers, _ = self.optimizer.state()
        optimizer = {key: [pick(f"opt.{key}.{n}", p) for n, p in self.params.items()] for key in opt_buffers}
        return params, buffers, path, optimizer

    @torch.no_grad()
    def load(self, params: dict, buffers: dict, path: dict, optimizer: dict, optimizer_steps: int) -> None:
        for n, p in self.params.items():
            p.copy_(params[n])
        for n, b in self.buffers.items():
            b.copy_(buffers[n])
        for n, p in self.path.items():
            p.copy_(path[n])
        for previous, p in zip(self._previous, self._path_params):
            previous.copy_(p)
        self.optimizer.load_state(optimizer, optimizer_steps)
