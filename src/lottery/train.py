"""The training loop over a stack of replicas: several networks trained in one pass.

Every parameter has a leading replica dimension. Each replica has its own mask, its own data stream
(replicas of one trial share it), its own optimizer state (Adam and SGD act elementwise, so one
optimizer over stacked tensors is exactly R independent optimizers) and its own metrics.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, vmap

from .config import TrainConfig
from .data import Dataset
from .masks import Mask
from .memory import fix_malloc_threshold
from .order import BatchOrder

StackedForward = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]
CURVES = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")


@dataclass
class ReplicaSpec:
    """One network to train: its data stream, its start weights (all parameters) and its mask."""

    stream: int
    start: dict[str, torch.Tensor]
    mask: Mask


@dataclass
class ReplicaResult:
    iterations: list[int]
    curves: dict[str, list[float]]
    early_stop_iteration: int
    early_stop_val_loss: float
    early_stop_test_accuracy: float
    final_test_accuracy: float
    final_train_accuracy: float
    final: dict[str, torch.Tensor] = field(repr=False)
    path: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # Σ|θt+1 − θt| per prunable weight

    def metrics(self) -> dict[str, float | int]:
        return {
            "early_stop_iteration": self.early_stop_iteration,
            "early_stop_val_loss": self.early_stop_val_loss,
            "early_stop_test_accuracy": self.early_stop_test_accuracy,
            "final_test_accuracy": self.final_test_accuracy,
            "final_train_accuracy": self.final_train_accuracy,
        }


class StackedForwards(NamedTuple):
    """Batched forwards over stacked parameters (leading replica dim)."""

    train: StackedForward  # per-replica inputs [R, B, ...], training mode (dropout on)
    each: StackedForward  # per-replica inputs [R, B, ...], evaluation mode
    shared: StackedForward  # one input [N, ...] for every replica, evaluation mode


def stacked_forward_for(model: nn.Module) -> StackedForwards:
    """A model's own `stacked_forward(params, x, shared=..., train=...)` when it has one (the built-in
    MLPs: batched matmuls, measured faster on CPU); otherwise vmap over torch.func.functional_call,
    with the module put in train or eval mode for the call."""
    own = getattr(model, "stacked_forward", None)
    if callable(own):
        return StackedForwards(lambda p, x: own(p, x, shared=False, train=True),
                               lambda p, x: own(p, x, shared=False, train=False),
                               lambda p, x: own(p, x, shared=True, train=False))

    def call(train: bool) -> Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]:
        def one(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            model.train(train)
            return functional_call(model, p, (x,))
        return one

    return StackedForwards(vmap(call(True), randomness="different"), vmap(call(False), randomness="different"),
                           vmap(call(False), in_dims=(0, None), randomness="different"))


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    """Linear warmup, then step decay by `gamma` at each milestone (a pure function of the iteration)."""
    lr = cfg.lr * (min(1.0, (iteration + 1) / cfg.warmup) if cfg.warmup else 1.0)
    return lr * cfg.gamma ** sum(1 for m in cfg.milestones if iteration >= m)


def build_optimizer(cfg: TrainConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    fast = {"fused": True} if _fused_ok(params) else {"foreach": True}
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay, **fast)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0,
                               weight_decay=cfg.weight_decay, **fast)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}")


def _fused_ok(params: list[torch.Tensor]) -> bool:
    device = params[0].device.type
    return device in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in params)


class StackedTrainer:
    """Train R replicas together from `start_iteration`; evaluate every `eval_every` iterations."""

    def __init__(self, model: nn.Module, replicas: list[ReplicaSpec], data: Dataset, cfg: TrainConfig,
                 stream_seeds: list[int], start_iteration: int = 0, eval_batch: int = 10_000,
                 track_path: bool = False) -> None:
        device = data.x_train.device
        fix_malloc_threshold()  # else heap fragmentation grows RSS without bound over long passes
        self.cfg, self.data, self.eval_batch = cfg, data, eval_batch
        self.forwards = stacked_forward_for(model)
        self.device_type = device.type
        self.size = len(replicas)
        names = [n for n, _ in model.named_parameters()]
        self.params = {n: torch.stack([r.start[n].detach().to(device, torch.float32) for r in replicas])
                       .contiguous().requires_grad_() for n in names}
        self.masks = {n: torch.stack([r.mask[n].to(device) for r in replicas]).to(torch.float32)
                      for n in replicas[0].mask}
        # A dense pass (level 0) needs no masking at all; otherwise every prunable tensor is masked.
        dense = all(bool(m.all()) for m in self.masks.values())
        self.mask_names = [] if dense else list(self.masks)
        self.mask_list = [self.masks[n] for n in self.mask_names]
        if self.mask_names:
            with torch.no_grad():
                torch._foreach_mul_([self.params[n] for n in self.mask_names], self.mask_list)
        self.optimizer = build_optimizer(cfg, list(self.params.values()))
        # Path length Σt |θt+1 − θt| of every prunable weight, for the `path` criterion only.
        self.path = {n: torch.zeros_like(self.params[n]) for n in self.masks} if track_path else {}
        self._path_list = list(self.path.values())
        self._path_params = [self.params[n] for n in self.path]
        self._previous = [p.detach().clone() for p in self._path_params]
        self.order = BatchOrder(len(data.x_train), cfg.batch_size, stream_seeds, device)
        self.stream_rows = torch.tensor([r.stream for r in replicas], device=device)
        self.iteration = start_iteration
        self.start_iteration = start_iteration
        self.eval_iterations: list[int] = []
        self.curves: dict[str, list[torch.Tensor]] = {k: [] for k in CURVES}
        self.best_val_loss = torch.full((self.size,), math.inf, device=device)
        self.best_iteration = torch.full((self.size,), start_iteration, dtype=torch.long, device=device)
        self.best_test_accuracy = torch.zeros(self.size, device=device)
        self.test_evaluations = 0  # replica test passes run so far (for benchmarks)
        self._lr = cfg.lr

    def _precision(self) -> contextlib.AbstractContextManager:
        """bf16 matmuls under autocast (parameters, optimizer and loss stay float32), or nothing."""
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # --- the hot loop -------------------------------------------------------------------------------
    def step(self) -> None:
        idx = self.order.indices(self.iteration)[self.stream_rows]  # [R, B]
        x, y = self.data.x_train[idx], self.data.y_train[idx]
        with self._precision():
            logits = self.forwards.train(self.params, x)
        # Sum over replicas of each replica's mean loss: each replica gets exactly its own gradient.
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum") / self.cfg.batch_size
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Masked gradients keep the optimizer state of pruned weights at exactly zero, so Adam, momentum
        # and (L2 or decoupled) weight decay all leave a pruned weight at exactly zero: 0 - lr * 0 = 0.
        if self.mask_names:
            with torch.no_grad():
                torch._foreach_mul_([self.params[n].grad for n in self.mask_names], self.mask_list)
        lr = learning_rate(self.cfg, self.iteration)
        if lr != self._lr:
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            self._lr = lr
        self.optimizer.step()
        if self.path:
            self._accumulate_path()
        self.iteration += 1

    @torch.no_grad()
    def _accumulate_path(self) -> None:
        # In place, multi-tensor, no allocation: previous ← |θt − θt+1|, path += previous, previous ← θt+1.
        torch._foreach_sub_(self._previous, self._path_params)
        torch._foreach_abs_(self._previous)
        torch._foreach_add_(self._path_list, self._previous)
        torch._foreach_copy_(self._previous, self._path_params)

    def should_evaluate(self, iteration: int) -> bool:
        return (iteration == self.start_iteration or iteration % self.cfg.eval_every == 0
                or iteration == self.cfg.iterations)

    def run(self, until: int, on_eval: Callable[["StackedTrainer"], None] | None = None,
            on_progress: Callable[[int], None] | None = None) -> None:
        """Train up to iteration `until`, evaluating at the evaluation points (including the start)."""
        if self.iteration == self.start_iteration and not self.eval_iterations:
            self.evaluate_now()
            if on_eval:
                on_eval(self)
        done_since = 0
        while self.iteration < until:
            self.step()
            done_since += 1
            if self.should_evaluate(self.iteration):
                self.evaluate_now()
                if on_progress:
                    on_progress(done_since)
                    done_since = 0
                if on_eval:
                    on_eval(self)
        if on_progress and done_since:
            on_progress(done_since)

    # --- evaluation -----------------------------------------------------------------------------------
    @torch.no_grad()
    def loss_and_accuracy(self, x: torch.Tensor, y: torch.Tensor,
                          replicas: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and accuracy per replica (or per selected replica) on (x, y), in large batches,
        without autograd."""
        params = {n: p.detach() if replicas is None else p.detach()[replicas] for n, p in self.params.items()}
        size = self.size if replicas is None else len(replicas)
        total_loss = torch.zeros(size, device=x.device)
        correct = torch.zeros(size, device=x.device)
        for start in range(0, len(x), self.eval_batch):
            xb, yb = x[start:start + self.eval_batch], y[start:start + self.eval_batch]
            with self._precision():
                logits = self.forwards.shared(params, xb).float()
            target = yb.unsqueeze(0).expand(size, -1)
            total_loss += F.cross_entropy(logits.transpose(1, 2), target, reduction="none").sum(1)
            correct += (logits.argmax(-1) == target).sum(1)
        return total_loss / max(len(x), 1), correct / max(len(x), 1)

    def evaluate_now(self) -> None:
        val_loss, val_acc = self.loss_and_accuracy(self.data.x_val, self.data.y_val)
        improved = val_loss < self.best_val_loss
        # The test set is needed only by replicas at a new validation minimum (the early-stop accuracy,
        # exactly) and at the end, unless full test curves are asked for.
        test_loss = torch.full_like(val_loss, math.nan)
        test_acc = torch.full_like(val_loss, math.nan)
        if self.cfg.test_curves or self.iteration == self.cfg.iterations:
            test_loss, test_acc = self.loss_and_accuracy(self.data.x_test, self.data.y_test)
            self.test_evaluations += self.size
        else:
            chosen = improved.nonzero().flatten()
            if len(chosen):
                loss, acc = self.loss_and_accuracy(self.data.x_test, self.data.y_test, chosen)
                test_loss[chosen], test_acc[chosen] = loss, acc
                self.test_evaluations += len(chosen)
        self.best_val_loss = torch.where(improved, val_loss, self.best_val_loss)
        self.best_iteration = torch.where(improved, torch.full_like(self.best_iteration, self.iteration),
                                          self.best_iteration)
        self.best_test_accuracy = torch.where(improved, test_acc, self.best_test_accuracy)
        self.eval_iterations.append(self.iteration)
        for key, value in zip(CURVES, (val_loss, val_acc, test_loss, test_acc)):
            self.curves[key].append(value)

    def results(self) -> list[ReplicaResult]:
        """Per-replica results; call after training to `cfg.iterations`."""
        _, train_acc = self.loss_and_accuracy(self.data.x_train, self.data.y_train)
        curves = {k: torch.stack(v).T.tolist() for k, v in self.curves.items()}  # [R][evals]
        out = []
        for r in range(self.size):
            out.append(ReplicaResult(
                iterations=list(self.eval_iterations),
                curves={k: curves[k][r] for k in CURVES},
                early_stop_iteration=int(self.best_iteration[r]),
                early_stop_val_loss=float(self.best_val_loss[r]),
                early_stop_test_accuracy=float(self.best_test_accuracy[r]),
                final_test_accuracy=float(self.curves["test_accuracy"][-1][r]),
                final_train_accuracy=float(train_acc[r]),
                final={n: p[r].detach().clone() for n, p in self.params.items()},
                path={n: p[r].clone() for n, p in self.path.items()} if self.path else None,
            ))
        return out

    # --- checkpoints --------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to continue bit for bit: tensors (for safetensors) and JSON metadata."""
        tensors = {f"param.{n}": p.detach() for n, p in self.params.items()}
        opt = self.optimizer.state_dict()
        for index, slot in opt["state"].items():
            for key, value in slot.items():
                tensors[f"opt.{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
        if self.eval_iterations:
            for key, values in self.curves.items():
                tensors[f"curve.{key}"] = torch.stack(values)
        tensors["best.val_loss"] = self.best_val_loss
        tensors["best.iteration"] = self.best_iteration
        tensors["best.test_accuracy"] = self.best_test_accuracy
        tensors.update({f"path.{n}": p for n, p in self.path.items()})
        tensors["rng"] = torch.get_rng_state()
        meta = {"iteration": self.iteration, "eval_iterations": self.eval_iterations, "lr": self._lr}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(tensors[f"param.{n}"])
            for n, p in self.path.items():
                p.copy_(tensors[f"path.{n}"])
            for previous, p in zip(self._previous, self._path_params):
                previous.copy_(p)
        opt = self.optimizer.state_dict()
        state: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                state.setdefault(int(index), {})[name] = value
        opt["state"] = state
        self.optimizer.load_state_dict(opt)
        self.eval_iterations = list(meta["eval_iterations"])
        if self.eval_iterations:
            self.curves = {k: list(tensors[f"curve.{k}"].unbind(0)) for k in CURVES}
        self.best_val_loss = tensors["best.val_loss"].clone()
        self.best_iteration = tensors["best.iteration"].clone()
        self.best_test_accuracy = tensors["best.test_accuracy"].clone()
        torch.set_rng_state(tensors["rng"])
        self.iteration = int(meta["iteration"])
        self._lr = float(meta["lr"])
        for group in self.optimizer.param_groups:
            group["lr"] = self._lr
