"""The training loop over a stack of replicas: several networks trained in one pass.

A pass is three parts (lottery.training): the replicas' state (`ReplicaStack`: stacked parameters,
buffers, masks, optimizer state; the shadow-copy rule), a step strategy (`steps`: by hand, stacked
autograd, or one by one) and an evaluator. This class runs them: the data order and augmentation of each
iteration, the evaluations and the early stop, the results and checkpoints. Each replica has its own
mask, data stream (replicas of one trial share it), random stream (dropout), optimizer state and metrics,
and its numbers are bit for bit the same whatever else shares its pass (invariant 7).
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from lottery.config import TrainConfig
from lottery.data import Dataset
from lottery.data.augment import AUGMENTATIONS, flip_crop
from lottery.memory import Workspace, fix_malloc_threshold
from lottery.order import BatchOrder, ReplicaDraws
from lottery.training.early_stop import EarlyStop
from lottery.training.eval_sets import evaluated_count, fixed_sample, take
from lottery.training.evaluation import Evaluator
from lottery.training.forwards import stacked_forward_for
from lottery.training.optim import OptimizerState
from lottery.training.replicas import ReplicaSpec, ReplicaStack, shadowed
from lottery.training.sizing import eval_batch_for, largest_activation
from lottery.training.steps import hand_backprop_for, step_for

__all__ = ["CURVES", "ReplicaResult", "ReplicaSpec", "StackedTrainer", "learning_rate"]

CURVES = ("val_loss", "val_accuracy", "test_loss", "test_accuracy")


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
    val_examples: int = 0  # how many validation examples each evaluation used (lottery.training.eval_sets)
    test_examples: int = 0  # the same for the test set

    def metrics(self) -> dict[str, float | int]:
        return {
            "early_stop_iteration": self.early_stop_iteration,
            "early_stop_val_loss": self.early_stop_val_loss,
            "early_stop_test_accuracy": self.early_stop_test_accuracy,
            "final_test_accuracy": self.final_test_accuracy,
            "final_train_accuracy": self.final_train_accuracy,
            "train_accuracy_examples": self.train_accuracy_examples,
            "val_examples": self.val_examples,
            "test_examples": self.test_examples,
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
        batching = batching or cfg.batching
        self.forwards = stacked_forward_for(model, data.features(data.x_train[:2]), batching)
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
        one_by_one = self.forwards.one_by_one
        size = len(shadowed(len(replicas), batched=not one_by_one))
        self.backprop = hand_backprop_for(model, cfg, self.forwards, batching, size, device)
        self.stack = ReplicaStack(model, replicas, cfg, device, one_by_one=one_by_one,
                                  trainable=not one_by_one and self.backprop is None, track_path=track_path)
        self.count, self.size = self.stack.count, self.stack.size
        self._step = step_for(model, self.forwards, self.stack, cfg, self.device_type, self.backprop)
        self.evaluator = Evaluator(self.forwards, data, cfg, self.eval_batch, self.device_type)
        # The examples every evaluation uses: whole sets, or a short run's fixed samples (eval_sets).
        self.val_set = take(data.x_val, data.y_val, fixed_sample(
            len(data.x_val), evaluated_count(cfg, len(data.x_val)), "val-sample", device))
        self.test_set = take(data.x_test, data.y_test, fixed_sample(
            len(data.x_test), evaluated_count(cfg, len(data.x_test)), "test-sample", device))
        self._workspace = Workspace()
        self.order = BatchOrder(len(data.x_train), cfg.batch_size, stream_seeds, device)
        self.stream_seeds, self.augment = list(stream_seeds), augment
        if augment != "none" and (data.x_train.dim() != 4 or augment not in AUGMENTATIONS):
            raise ValueError(f"augmentation {augment!r} needs images [N, C, H, W]; the data is {tuple(data.x_train.shape)}")
        self.draws = ReplicaDraws(self.stack.seeds, device)
        self.iteration = start_iteration
        self.start_iteration = start_iteration
        self.eval_iterations: list[int] = []
        self.curves: dict[str, list[torch.Tensor]] = {k: [] for k in CURVES}
        self.early_stop = EarlyStop(self.size, start_iteration, device)
        self.test_evaluations = 0  # replica test passes run so far (for benchmarks)
        self._lr = cfg.lr

    # The replicas' state, by the names the callers read.
    @property
    def params(self) -> dict[str, torch.Tensor]:
        return self.stack.params

    @property
    def buffers(self) -> dict[str, torch.Tensor]:
        return self.stack.buffers

    @property
    def masks(self) -> dict[str, torch.Tensor]:
        return self.stack.masks

    @property
    def path(self) -> dict[str, torch.Tensor]:
        return self.stack.path

    @property
    def optimizer(self):  # type: ignore[no-untyped-def]
        return self.stack.optimizer

    def tensors(self, replicas: torch.Tensor | None = None, detach: bool = False) -> dict[str, torch.Tensor]:
        """Parameters and buffers, stacked (or the selected replicas)."""
        return self.stack.tensors(replicas, detach)

    def optimizer_of(self, replica: int) -> OptimizerState:
        """One replica's optimizer state now (copies), by buffer and parameter name; steps: `optimizer.steps_taken`."""
        return self.stack.optimizer_of(replica)

    # --- the hot loop -------------------------------------------------------------------------------
    def step(self) -> None:
        idx = self.order.indices(self.iteration)  # [streams, B]: the arms of a trial share a stream
        if self._step.gathers and self.augment == "none" and self.data.x_train.dtype == torch.float32:
            x, y = self._gather(idx)
        else:
            x = self.data.x_train[idx]
            if self.augment == "flip-crop":
                x = flip_crop(x, self.stream_seeds, self.iteration)
            x = self.data.features(x)[self.stack.streams]  # [R, B, ...]
            y = self.data.y_train[idx][self.stack.streams]
        self._lr = learning_rate(self.cfg, self.iteration)
        self._step(x, y, self.draws.at(self.iteration), self._lr)
        self.stack.accumulate_path()
        self.iteration += 1

    def _gather(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Each replica's batch [R, B, ...] and labels [R, B], gathered into the same buffers every step."""
        rows = idx[self.stack.streams].flatten()
        x_train, y_train = self.data.x_train, self.data.y_train
        x = self._workspace.take("batch.x", (len(rows), *x_train.shape[1:]), x_train)
        y = self._workspace.take("batch.y", (len(rows),), y_train)
        torch.index_select(x_train, 0, rows, out=x)
        torch.index_select(y_train, 0, rows, out=y)
        return x.view(self.size, -1, *x_train.shape[1:]), y.view(self.size, -1)

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
    def loss_and_accuracy(self, x: torch.Tensor, y: torch.Tensor, replicas: list[int] | None = None,
                          tensors: dict[str, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and accuracy per replica (or per selected replica) on (x, y); of the trainer's tensors,
        or of stacked `tensors` given (early-stop snapshots)."""
        params = self.tensors(detach=True) if tensors is None else tensors
        if replicas is not None:
            params = {n: t[replicas] for n, t in params.items()}
        return self.evaluator.loss_and_accuracy(params, x, y)

    def evaluate_now(self) -> None:
        val_loss, val_acc = self.loss_and_accuracy(*self.val_set)
        # The test set runs at every evaluation only for full test curves; else at the end, and once per
        # replica on the weights of its early-stop iteration (see lottery.training.early_stop).
        final = self.iteration == self.cfg.iterations
        test_loss = torch.full_like(val_loss, math.nan)
        test_acc = torch.full_like(val_loss, math.nan)
        if self.cfg.test_curves or final:
            test_loss, test_acc = self.loss_and_accuracy(*self.test_set)
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
        loss, acc = self.loss_and_accuracy(*self.test_set, rows, self.early_stop.snapshot)
        self.test_evaluations += len(rows)
        self.early_stop.resolve(rows, acc)
        for i, r in enumerate(rows):
            at = self.eval_iterations.index(int(self.early_stop.iteration[r]))
            self.curves["test_loss"][at][r] = loss[i]
            self.curves["test_accuracy"][at][r] = acc[i]

    def train_accuracy_sample(self) -> torch.Tensor | None:
        """The training examples final_train_accuracy is measured on: None for all of them, else a fixed
        sample of `cfg.train_accuracy_examples` (the same for every network of every run on this data),
        at most as many as the evaluations use (lottery.training.eval_sets)."""
        size = len(self.data.x_train)
        n = min(self.cfg.train_accuracy_examples or size, evaluated_count(self.cfg, size))
        return fixed_sample(size, n, "train-accuracy-sample", self.data.x_train.device)

    def results(self) -> list[ReplicaResult]:
        """Per-replica results; call after training to `cfg.iterations`."""
        x, y = take(self.data.x_train, self.data.y_train, self.train_accuracy_sample())
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
                val_examples=len(self.val_set[0]),
                test_examples=len(self.test_set[0]),
            ))
        return out

    # --- checkpoints --------------------------------------------------------------------------------
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Everything needed to continue bit for bit, for the replicas asked for (not a shadow copy):
        tensors (for safetensors, replica dimension first, or second for curves) and JSON metadata."""
        real = slice(0, self.count)
        tensors = self.stack.state()
        if self.eval_iterations:
            for key, values in self.curves.items():
                tensors[f"curve.{key}"] = torch.stack(values)[:, real]
        tensors.update(self.early_stop.state(real))
        meta = {"iteration": self.iteration, "eval_iterations": self.eval_iterations, "lr": self._lr,
                "replicas": self.count, "optimizer_steps": self.optimizer.steps_taken}
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

        params, buffers, path, optimizer = self.stack.read_state(pick)
        eval_iterations = [int(i) for i in meta["eval_iterations"]]
        curves = {k: list(pick(f"curve.{k}", dim=1).unbind(0)) for k in CURVES} if eval_iterations else self.curves
        if eval_iterations and len(curves[CURVES[0]]) != len(eval_iterations):
            raise ValueError("the curves do not match the evaluation iterations")
        early_stop = EarlyStop(self.size, self.start_iteration, device)
        early_stop.load_state(tensors, pick, self.tensors(detach=True))
        iteration, lr, steps = int(meta["iteration"]), float(meta["lr"]), int(meta["optimizer_steps"])
        self.stack.load(params, buffers, path, optimizer, steps)
        self.eval_iterations, self.curves = eval_iterations, curves
        self.early_stop = early_stop
        self.iteration = iteration
        self._lr = self.optimizer.lr = lr
