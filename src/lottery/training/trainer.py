"""The training loop over a stack of replicas: several networks trained in one pass.

Every parameter has a leading replica dimension. Each replica has its own mask, its own data stream
(replicas of one trial share it), its own random stream (dropout), its own optimizer state (Adam and
SGD act elementwise, so one optimizer over stacked tensors is exactly R independent optimizers) and its
own metrics.

A replica's numbers are bit for bit the same whatever else shares its pass. On the CPU that needs
every matrix product to be a batched one over at least two replicas: MKL computes each item of a
batch of two or more single-threaded, in the same order whatever the batch size, but splits a lone
small product across threads in another order (measured: a 10x500 @ 500x100 product differs in the
last bits between batch 1 and batch 2+). So a pass of one replica trains a shadow copy beside it, and
an evaluation of one replica evaluates it twice.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from lottery.config import TrainConfig
from lottery.data import Dataset
from lottery.data.augment import AUGMENTATIONS, flip_crop
from lottery.training.early_stop import EarlyStop
from lottery.training.forwards import StackedForward, StackedForwards, at_least_two, stacked_forward_for
from lottery.pruning.masks import Mask
from lottery.memory import Workspace, fix_malloc_threshold
from lottery.training.sizing import eval_batch_for, largest_activation
from lottery.training.optim import OptimizerState, ReplicaOptimizer
from lottery.order import BatchOrder, ReplicaDraws, derive_seed

CURVES = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")


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
    train_accuracy_examples: int = 0  # how many training examples final_train_accuracy was measured on

    def metrics(self) -> dict[str, float | int]:
        return {
            "early_stop_iteration": self.early_stop_iteration,
            "early_stop_val_loss": self.early_stop_val_loss,
            "early_stop_test_accuracy": self.early_stop_test_accuracy,
            "final_test_accuracy": self.final_test_accuracy,
            "final_train_accuracy": self.final_train_accuracy,
            "train_accuracy_examples": self.train_accuracy_examples,
        }


def learning_rate(cfg: TrainConfig, iteration: int) -> float:
    """Linear warmup, then step decay by `gamma` at each milestone (a pure function of the iteration)."""
    lr = cfg.lr * (min(1.0, (iteration + 1) / cfg.warmup) if cfg.warmup else 1.0)
    return lr * cfg.gamma ** sum(1 for m in cfg.milestones if iteration >= m)


class StackedTrainer:
    """Train R replicas together from `start_iteration`; evaluate every `eval_every` iterations."""

    def __init__(self, model: nn.Module, replicas: list[ReplicaSpec], data: Dataset, cfg: TrainConfig,
                 stream_seeds: list[int], start_iteration: int = 0, eval_batch: int | None = None,
                 track_path: bool = False, augment: str = "none", batching: str | None = None) -> None:
        device = data.x_train.device
        self.cfg, self.data = cfg, data
        self.forwards = stacked_forward_for(model, data.features(data.x_train[:2]), batching or cfg.batching)
        example = data.features(data.x_train[:1])
        self.eval_batch = eval_batch or eval_batch_for(model, example)
        # Else heap fragmentation grows RSS without bound over long passes, or (too low) every large
        # activation is a fresh mapping; see lottery.memory.
        fix_malloc_threshold(4 * largest_activation(model, example) * cfg.batch_size)
        self.device_type = device.type
        if device.type == "cuda":
            # cuDNN may pick a convolution algorithm by timing, or one that sums with atomics; either would
            # make a replica's bits depend on the run. Deterministic algorithms, chosen by shape alone.
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
        self.count = len(replicas)  # the replicas asked for; a lone one may get a shadow copy (see the module doc)
        if len(replicas) == 1 and not self.forwards.one_by_one:
            replicas = replicas * 2
        self.size = len(replicas)
        names = [n for n, _ in model.named_parameters()]
        one_by_one = self.forwards.one_by_one
        # A model's own backward by hand (the built-in MLPs), which allocates nothing per step; float32
        # only, and only on the model's own forward.
        make_backprop = getattr(model, "stacked_backprop", None)
        self.backprop = (make_backprop(self.size, cfg.batch_size, device)
                         if callable(make_backprop) and (batching or cfg.batching) == "auto" and not one_by_one
                         and cfg.precision == "float32" else None)
        self.params = {n: torch.stack([r.start[n].detach().to(device, torch.float32) for r in replicas])
                       .contiguous().requires_grad_(not one_by_one and self.backprop is None) for n in names}
        # Buffers (BatchNorm running statistics and counters): each replica's own, updated in place by
        # the training forward, part of the start and of every checkpoint and result.
        self.buffers = {n: torch.stack([r.start[n].detach().to(device) for r in replicas]).contiguous()
                        for n, _ in model.named_buffers()}
        # Trained one by one, each replica's weights are autograd leaves of their own: views of the stack
        # (updated in place with it) whose gradients land apart, never stacked (measured: the stacking
        # cost Conv-2 ~20% of a step on CPU).
        self.rows: list[dict[str, torch.Tensor]] | None = None
        if one_by_one:
            self.rows = [{**{n: p[r].detach().requires_grad_() for n, p in self.params.items()},
                          **{n: b[r] for n, b in self.buffers.items()}} for r in range(self.size)]
        self.masks = {n: torch.stack([r.mask[n].to(device) for r in replicas]).to(torch.float32)
                      for n in replicas[0].mask}
        # A dense pass (level 0) needs no masking at all; otherwise every prunable tensor is masked.
        dense = all(bool(m.all()) for m in self.masks.values())
        self.mask_names = [] if dense else list(self.masks)
        self.mask_list = [self.masks[n] for n in self.mask_names]
        if self.mask_names:
            with torch.no_grad():
                torch._foreach_mul_([self.params[n] for n in self.mask_names], self.mask_list)
        if self.rows is not None:  # gradients and masks replica by replica, parameter-major like the optimizer's
            self._leaves = [row[n] for n in names for row in self.rows]
            self._masked_leaves = [row[n] for n in self.mask_names for row in self.rows]
            self.mask_list = [m for n in self.mask_names for m in self.masks[n].unbind(0)]
        self._workspace = Workspace()
        if self.backprop is not None:  # fixed buffers: their slices are taken once
            self._backprop_grads = [row for n in names for row in self.backprop.grads[n].unbind(0)]
            self._backprop_masked = [self.backprop.grads[n] for n in self.mask_names]
        self.optimizer = ReplicaOptimizer(cfg, list(self.params.values()))
        if any(r.optimizer is not None for r in replicas):
            self._start_optimizer(replicas)
        # Path length Σt |θt+1 − θt| of every prunable weight, for the `path` criterion only.
        self.path = {n: torch.zeros_like(self.params[n]) for n in self.masks} if track_path else {}
        self._path_list = list(self.path.values())
        self._path_params = [self.params[n] for n in self.path]
        self._previous = [p.detach().clone() for p in self._path_params]
        self.order = BatchOrder(len(data.x_train), cfg.batch_size, stream_seeds, device)
        self.stream_seeds, self.augment = list(stream_seeds), augment
        if augment != "none" and (data.x_train.dim() != 4 or augment not in AUGMENTATIONS):
            raise ValueError(f"augmentation {augment!r} needs images [N, C, H, W]; the data is {tuple(data.x_train.shape)}")
        self.stream_rows = torch.tensor([r.stream for r in replicas], device=device)
        self.draws = ReplicaDraws([r.seed for r in replicas], device)
        self.iteration = start_iteration
        self.start_iteration = start_iteration
        self.eval_iterations: list[int] = []
        self.curves: dict[str, list[torch.Tensor]] = {k: [] for k in CURVES}
        self.early_stop = EarlyStop(self.size, start_iteration, device)
        self.test_evaluations = 0  # replica test passes run so far (for benchmarks)
        self._lr = cfg.lr

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

    def _precision(self) -> contextlib.AbstractContextManager:
        """bf16 matmuls under autocast (parameters, optimizer and loss stay float32), or nothing."""
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def tensors(self, replicas: torch.Tensor | None = None, detach: bool = False) -> dict[str, torch.Tensor]:
        """Parameters and buffers, stacked (or the selected replicas)."""
        params = {n: p.detach() if detach else p for n, p in self.params.items()}
        out = {**params, **self.buffers}
        return out if replicas is None else {n: t[replicas] for n, t in out.items()}

    # --- the hot loop -------------------------------------------------------------------------------
    def step(self) -> None:
        idx = self.order.indices(self.iteration)  # [streams, B]: the arms of a trial share a stream
        if self.backprop is not None and self.augment == "none" and self.data.x_train.dtype == torch.float32:
            self._step_by_hand(*self._gather(idx))
            return
        x = self.data.x_train[idx]
        if self.augment == "flip-crop":
            x = flip_crop(x, self.stream_seeds, self.iteration)
        x = self.data.features(x)[self.stream_rows]  # [R, B, ...]
        y = self.data.y_train[idx][self.stream_rows]
        if self.backprop is not None:
            self._step_by_hand(x, y)
            return
        with self._precision():
            logits = self.forwards.train(self.rows or self.tensors(), x, self.draws.at(self.iteration))
        # Sum over replicas of each replica's mean loss: each replica gets exactly its own gradient.
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum") / self.cfg.batch_size
        self.optimizer.zero_grad()
        if self.rows is not None:
            for leaf in self._leaves:
                leaf.grad = None
        loss.backward()
        grads = [leaf.grad for leaf in self._leaves] if self.rows is not None else None
        # Masked gradients keep the optimizer state of pruned weights at exactly zero, so Adam, momentum
        # and (L2 or decoupled) weight decay all leave a pruned weight at exactly zero: 0 - lr * 0 = 0.
        if self.mask_names:
            masked = ([leaf.grad for leaf in self._masked_leaves] if self.rows is not None
                      else [self.params[n].grad for n in self.mask_names])
            with torch.no_grad():
                torch._foreach_mul_(masked, self.mask_list)
        lr = learning_rate(self.cfg, self.iteration)
        self.optimizer.lr = self._lr = lr
        self.optimizer.step(grads)
        if self.path:
            self._accumulate_path()
        self.iteration += 1

    def _gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each replica's batch [R, B, ...] and labels [R, B], gathered into the same buffers every step."""
        rows = idx[self.stream_rows].flatten()
        x_train, y_train = self.data.x_train, self.data.y_train
        x = self._workspace.take("batch.x", (len(rows), *x_train.shape[1:]), x_train)
        y = self._workspace.take("batch.y", (len(rows),), y_train)
        torch.index_select(x_train, 0, rows, out=x)
        torch.index_select(y_train, 0, rows, out=y)
        return x.view(self.size, -1, *x_train.shape[1:]), y.view(self.size, -1)

    def _step_by_hand(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The step with the model's own backward: gradients land in the same buffers every step."""
        self.backprop(self.params, x, y, self.draws.at(self.iteration))
        if self.mask_names:
            torch._foreach_mul_(self._backprop_masked, self.mask_list)
        self.optimizer.lr = self._lr = learning_rate(self.cfg, self.iteration)
        self.optimizer.step(self._backprop_grads)
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
    def loss_and_accuracy(self, x: torch.Tensor, y: torch.Tensor, replicas: list[int] | None = None,
                          tensors: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and accuracy per replica (or per selected replica) on (x, y), in large batches,
        without autograd; of the trainer's tensors, or of stacked `tensors` given (early-stop snapshots)."""
        params = self.tensors(detach=True) if tensors is None else tensors
        if replicas is not None:
            params = {n: t[replicas] for n, t in params.items()}
        size = next(iter(params.values())).shape[0]
        if size == 1 and not self.forwards.one_by_one:
            params, _ = at_least_two(params)  # never a batch of one product
            loss, accuracy = self.loss_and_accuracy(x, y, tensors=params)
            return loss[:1], accuracy[:1]
        total_loss = torch.zeros(size, device=x.device)
        correct = torch.zeros(size, device=x.device)
        for start in range(0, len(x), self.eval_batch):
            xb, yb = self.data.features(x[start:start + self.eval_batch]), y[start:start + self.eval_batch]
            with self._precision():
                logits = self.forwards.shared(params, xb).float()
            target = yb.unsqueeze(0).expand(size, -1)
            # Row-wise losses, then one sum per replica over a fixed-size row: a reduction over the whole
            # [R, N] block may split rows across threads differently for another R.
            losses = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(size, -1)
            total_loss += torch.stack([row.sum() for row in losses])
            correct += (logits.argmax(-1) == target).sum(1)
        return total_loss / max(len(x), 1), correct / max(len(x), 1)

    def evaluate_now(self) -> None:
        val_loss, val_acc = self.loss_and_accuracy(self.data.x_val, self.data.y_val)
        # The test set runs at every evaluation only for full test curves; else at the end, and once per
        # replica on the weights of its early-stop iteration (see lottery.training.early_stop).
        final = self.iteration == self.cfg.iterations
        test_loss = torch.full_like(val_loss, math.nan)
        test_acc = torch.full_like(val_loss, math.nan)
        if self.cfg.test_curves or final:
            test_loss, test_acc = self.loss_and_accuracy(self.data.x_test, self.data.y_test)
            self.test_evaluations += self.size
        self.early_stop.update(self.iteration, val_loss, self.tensors(detach=True),
                               test_acc if self.cfg.test_curves or final else None)
        self.eval_iterations.append(self.iteration)
        for key, value in zip(CURVES, (val_loss, val_acc, test_loss, test_acc)):
            self.curves[key].append(value)
        if final:
            self._test_early_stop_snapshots()

    def _test_early_stop_snapshots(self) -> None:
        """The test set on each pending replica's weights of its early-stop iteration, also written into
        the curves at that iteration."""
        rows = self.early_stop.pending()
        if not rows:
            return
        loss, acc = self.loss_and_accuracy(self.data.x_test, self.data.y_test, rows, self.early_stop.snapshot)
        self.test_evaluations += len(rows)
        self.early_stop.resolve(rows, acc)
        for i, r in enumerate(rows):
            at = self.eval_iterations.index(int(self.early_stop.iteration[r]))
            self.curves["test_loss"][at][r] = loss[i]
            self.curves["test_accuracy"][at][r] = acc[i]

    def train_accuracy_sample(self) -> torch.Tensor | None:
        """The training examples final_train_accuracy is measured on: None for all of them, else a fixed
        sample of `cfg.train_accuracy_examples` (the same for every network of every run on this data)."""
        n, size = self.cfg.train_accuracy_examples, len(self.data.x_train)
        if n == 0 or n >= size:
            return None
        order = torch.randperm(size, generator=torch.Generator().manual_seed(derive_seed("train-accuracy-sample", size)))
        return order[:n].sort().values.to(self.data.x_train.device)

    def results(self) -> list[ReplicaResult]:
        """Per-replica results; call after training to `cfg.iterations`."""
        sample = self.train_accuracy_sample()
        x, y = (self.data.x_train, self.data.y_train) if sample is None else (self.data.x_train[sample], self.data.y_train[sample])
        _, train_acc = self.loss_and_accuracy(x, y)
        curves = {k: torch.stack(v).T.tolist() for k, v in self.curves.items()}  # [R][evals]
        out = []
        for r in range(self.count):
            out.append(ReplicaResult(
                iterations=list(self.eval_iterations),
                curves={k: curves[k][r] for k in CURVES},
                early_stop_iteration=int(self.early_stop.iteration[r]),
                early_stop_val_loss=float(self.early_stop.val_loss[r]),
                early_stop_test_accuracy=float(self.early_stop.test_accuracy[r]),
                final_test_accuracy=float(self.curves["test_accuracy"][-1][r]),
                final_train_accuracy=float(train_acc[r]),
                final={n: t[r].detach().clone() for n, t in self.tensors().items()},
                path={n: p[r].clone() for n, p in self.path.items()} if self.path else None,
                train_accuracy_examples=len(x),
            ))
        return out

    def optimizer_of(self, replica: int) -> OptimizerState:
        """One replica's optimizer state now (copies), by buffer and parameter name; steps: `optimizer.steps_taken`."""
        return {key: {n: t[replica].detach().clone() for n, t in zip(self.params, tensors)}
                for key, tensors in self.optimizer.buffers.items()}

    # --- checkpoints --------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to continue bit for bit, for the replicas asked for (not a shadow copy):
        tensors (for safetensors, replica dimension first, or second for curves) and JSON metadata."""
        real = slice(0, self.count)
        tensors = {f"param.{n}": p.detach()[real] for n, p in self.params.items()}
        tensors.update({f"buffer.{n}": b[real] for n, b in self.buffers.items()})
        buffers, steps_taken = self.optimizer.state()
        names = list(self.params)
        for key, values in buffers.items():
            tensors.update({f"opt.{key}.{n}": v.detach()[real] for n, v in zip(names, values)})
        if self.eval_iterations:
            for key, values in self.curves.items():
                tensors[f"curve.{key}"] = torch.stack(values)[:, real]
        tensors.update(self.early_stop.state(real))
        tensors.update({f"path.{n}": p[real] for n, p in self.path.items()})
        meta = {"iteration": self.iteration, "eval_iterations": self.eval_iterations, "lr": self._lr,
                "replicas": self.count, "optimizer_steps": steps_taken}
        return tensors, meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: dict, rows: list[int] | None = None) -> None:
        """Continue from `state()`; `rows` picks this trainer's replicas among the checkpoint's (default:
        the first ones, in order). A replica's state is its own, so any subset continues exactly. Every
        tensor is read and checked before anything changes: a broken checkpoint leaves the trainer as it was."""
        rows = list(range(self.count)) if rows is None else list(rows)
        if len(rows) != self.count:
            raise ValueError(f"{len(rows)} checkpoint rows for {self.count} replicas")
        device = self.early_stop.val_loss.device
        index = torch.tensor(rows + rows[:1] * (self.size - self.count), device=device)  # a shadow repeats its replica

        def pick(key: str, like: torch.Tensor | None = None, dim: int = 0) -> torch.Tensor:
            value = tensors[key].to(device).index_select(dim, index)
            if like is not None and value.shape != like.shape:
                raise ValueError(f"{key} has shape {tuple(value.shape)}, expected {tuple(like.shape)}")
            return value

        params = {n: pick(f"param.{n}", p) for n, p in self.params.items()}
        buffers = {n: pick(f"buffer.{n}", b) for n, b in self.buffers.items()}
        path = {n: pick(f"path.{n}", p) for n, p in self.path.items()}
        opt_buffers, _ = self.optimizer.state()
        saved_buffers = {key: [pick(f"opt.{key}.{n}", p) for n, p in zip(self.params, self.params.values())]
                         for key in opt_buffers}
        eval_iterations = [int(i) for i in meta["eval_iterations"]]
        curves = {k: list(pick(f"curve.{k}", dim=1).unbind(0)) for k in CURVES} if eval_iterations else self.curves
        if eval_iterations and len(curves[CURVES[0]]) != len(eval_iterations):
            raise ValueError("the curves do not match the evaluation iterations")
        early_stop = EarlyStop(self.size, self.start_iteration, device)
        early_stop.load_state(tensors, pick, self.tensors(detach=True))
        iteration, lr, steps = int(meta["iteration"]), float(meta["lr"]), int(meta["optimizer_steps"])
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(params[n])
            for n, b in self.buffers.items():
                b.copy_(buffers[n])
            for n, p in self.path.items():
                p.copy_(path[n])
            for previous, p in zip(self._previous, self._path_params):
                previous.copy_(p)
        self.optimizer.load_state(saved_buffers, steps)
        self.eval_iterations, self.curves = eval_iterations, curves
        self.early_stop = early_stop
        self.iteration = iteration
        self._lr = self.optimizer.lr = lr
