"""IMP around the user's own training: the user trains each network; lottery does everything else.

    imp = lottery.IMP(model, "runs/mine", levels=10, arms=["imp", "reinit", "random"], rewind_iteration=500)
    for net in imp.networks():               # every (level, arm, trial) still to train, in the paper's order
        opt = torch.optim.SGD(net.model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
        net.attach(opt)                      # pruned weights and their optimizer slots stay exactly 0
        for step, (x, y) in enumerate(loader):   # the user's loss, loop, scheduler, DataLoader, AMP ...
            loss = F.cross_entropy(net.model(x), y); opt.zero_grad(); loss.backward(); opt.step()
        net.finish(test_accuracy=evaluate(net.model))

Why this shape (an iterator of networks, not a `train_fn` callback): the user's loop stays theirs and
stays visible, a trainer (Lightning, Hugging Face) fits by the same three calls from a callback
(lottery.adapters), and nothing of lottery runs between the user's steps except two hooks. `net.attach`
registers them: a gradient hook per pruned tensor (the gradient of a pruned weight is 0, so gradient
clipping, momentum and Adam's moments never see it) and an optimizer step post-hook that, for an optimizer
not known to keep zeros by itself (`keeps_zeros`), zeroes the pruned weights and every optimizer slot
shaped like them (so weight decay and any optimizer's own arithmetic revive nothing), counts the steps, and
saves θk (weights, buffers and optionally the optimizer's state) after step k of the dense network.

The run directory is the built-in trainer's (lottery.procedure.levels): `lottery report`, `claims`, `export`
read it. Re-running the same loop resumes: finished networks are skipped; a network interrupted before
`finish` trains again from its start, which is saved.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lottery.pruning.arms import ARMS, TICKET
from lottery.config import PruneConfig, RunConfig
from lottery.validation import check_levels_fit, check_module, validate
from lottery.errors import UserError
from lottery.pruning.masks import Mask, count
from lottery.models import parameter_names
from lottery.models.prunable import Include, describe_prunable, prunable_roles
from lottery.pruning.prune import ignored_names
from lottery.pruning.units import run_units
from lottery.training.optim import OptimizerState
from lottery.procedure.levels import NetworkId, NetworkStart, Procedure, finite_or_nan
from lottery.storage.runinfo import claim
from lottery.storage.files import RunStore, hold_run
from lottery.procedure.tickets import initial_weights

ModelSource = nn.Module | Callable[[], nn.Module]
CURVE_COLUMNS = ["val_loss", "val_accuracy", "test_loss", "test_accuracy"]


def _fresh_copy(model: nn.Module) -> Callable[[], nn.Module]:
    """A function drawing fresh weights for `model`'s architecture: a deep copy whose every submodule with
    a `reset_parameters` is reset (under the caller's seed). A parameter that no reset reaches is refused:
    lottery could not draw θ0 for it, so the user passes a function that builds the model instead."""
    owners = {id(p) for m in model.modules() if _reset_of(m) is not None for p in m.parameters(recurse=False)}
    unreached = [n for n, p in model.named_parameters() if id(p) not in owners]
    if unreached:
        raise UserError(f"lottery cannot draw fresh weights for {unreached[0]} (its module has no reset_parameters); "
                        f"pass a function that builds the model instead, e.g. IMP(lambda: MyNet(), ...)")

    def build() -> nn.Module:
        fresh = copy.deepcopy(model)
        for module in fresh.modules():
            reset = _reset_of(module)
            if reset is not None:
                reset()
        return fresh
    return build


def _reset_of(module: nn.Module) -> Callable[[], None] | None:
    """A module's own initializer: `reset_parameters`, or `_reset_parameters` (nn.MultiheadAttention's)."""
    for name in ("reset_parameters", "_reset_parameters"):
        reset = getattr(module, name, None)
        if callable(reset):
            return reset
    return None


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers by name (detached copies on the CPU)."""
    return {n: t.detach().to("cpu", copy=True) for n, t in [*model.named_parameters(), *model.named_buffers()]}


def _unwrap(optimizer: Any) -> torch.optim.Optimizer:
    """The torch optimizer inside a wrapper (Lightning's LightningOptimizer, accelerate's AcceleratedOptimizer)."""
    seen = 0  # accelerate's wrapper subclasses Optimizer without being one (no hooks): unwrap it too
    while getattr(optimizer, "optimizer", None) is not None and seen < 8:
        optimizer, seen = optimizer.optimizer, seen + 1
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise UserError(f"attach() needs a torch.optim.Optimizer (or a wrapper with .optimizer), got "
                        f"{type(optimizer).__name__}; with a hand-written update call net.after_step() after each step")
    return optimizer


# torch's elementwise optimizers: with a masked gradient (0) and pruned weights and slots at 0, every update
# of a pruned weight is exactly 0 (momentum 0·β + 0, Adam's 0 / (√0 + ε), decoupled decay 0·(1 − lr·λ), L2
# 0 + λ·0), so they need no re-zeroing after each step, which costs a pass over every pruned tensor and
# slot (measured: LeNet-300-100's step 1.2 ms, the re-zeroing 0.16 ms). tests/test_user_loop.py checks each.
# (Adamax is not among them: its infinity norm max(β·u, |g| + ε) is ε, not 0, for a pruned weight.)
ELEMENTWISE_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.RMSprop,
                          torch.optim.Adagrad, torch.optim.NAdam, torch.optim.RAdam)


def keeps_zeros(optimizer: torch.optim.Optimizer) -> bool:
    """Whether `optimizer` keeps a pruned weight at exactly zero by itself, given masked gradients: one of
    torch's elementwise optimizers exactly (a subclass may change the update). Any other (Adafactor's
    factored moments, LAMB's trust ratio, the user's own) is re-zeroed after every step."""
    return type(optimizer) in ELEMENTWISE_OPTIMIZERS


class Network:
    """One (arm, trial, level) network to train, with the user's module loaded with its start weights.

    `model` is the user's module itself (the same object for every network), its weights set to this
    network's start and its pruned weights zero. `start_iteration` is where the schedule and the data order
    resume (0 at level 0, the rewind point k after it); `order_seed` is shared by the arms of a trial (seed
    the data order with it to give every arm the same batches, as the built-in trainer does) and `seed` is
    this network's own."""

    def __init__(self, imp: "IMP", start: NetworkStart, model: nn.Module, device: torch.device) -> None:
        self._imp, self._start, self.model = imp, start, model
        self.arm, self.trial, self.level = start.id.arm, start.id.trial, start.id.level
        self.seed, self.order_seed, self.start_iteration = start.seed, start.order_seed, start.start_iteration
        self.finetune = start.finetune
        self.mask: Mask = {n: m.to(device) for n, m in start.mask.items()}
        self.weights_remaining, self.prunable_weights = count(self.mask)
        self.steps = 0  # optimizer steps taken since the network started
        self._curves: list[dict[str, float]] = []
        self._hooks: list[Any] = []
        self._optimizer: torch.optim.Optimizer | None = None
        self._rezero = True  # after every step (a hand-written update calls after_step)
        self._finished = False
        params = dict(model.named_parameters())
        # Only tensors with pruned weights need hooks: a dense level runs with none.
        self._masked = [(params[n], m) for n, m in self.mask.items() if not bool(m.all())]
        self._masked_params = [p for p, _ in self._masked]
        self._mask_values: list[torch.Tensor] = []
        self._place_masks()
        for i, p in enumerate(self._masked_params):
            self._hooks.append(p.register_hook(lambda g, i=i: g * self._mask_values[i]))
        self._load(start.start)

    def _place_masks(self) -> None:
        """Masks as the parameters' dtype on their device (a trainer may have moved the model since)."""
        self._mask_values = [m.to(p.device, p.dtype) for p, m in self._masked]

    @property
    def percent_remaining(self) -> float:
        return 100.0 * self.weights_remaining / self.prunable_weights

    @property
    def key(self) -> str:
        return self._start.id.key

    def __repr__(self) -> str:
        return f"Network(arm={self.arm!r}, trial={self.trial}, level={self.level}, {self.percent_remaining:.1f}% remaining)"

    # --- before training --------------------------------------------------------------------------------
    @torch.no_grad()
    def _load(self, start: dict[str, torch.Tensor]) -> None:
        for name, tensor in [*self.model.named_parameters(), *self.model.named_buffers()]:
            tensor.copy_(start[name])
        self._zero_pruned()

    def attach(self, optimizer: Any) -> Any:
        """Enforce the mask through `optimizer` (any torch.optim.Optimizer, or a wrapper holding one) from
        now on, and start it from the rewound state at k where the run rewinds the optimizer. Returns it."""
        inner = _unwrap(optimizer)
        self._place_masks()
        if self._optimizer is not None and self._optimizer is not inner:
            raise UserError("this network is attached to another optimizer already; attach one per network")
        if self._optimizer is None:
            self._optimizer = inner
            self._rezero = not keeps_zeros(inner)
            if self._start.optimizer is not None:
                self._load_optimizer(inner, self._start.optimizer, self._start.optimizer_steps)
            self._zero_slots()  # an optimizer that has stepped before starts with its pruned slots at zero
            self._hooks.append(inner.register_step_post_hook(lambda _opt, _args, _kwargs: self.after_step()))
        return optimizer

    def _load_optimizer(self, optimizer: torch.optim.Optimizer, state: OptimizerState, steps: int) -> None:
        names = {id(p): n for n, p in self.model.named_parameters()}
        for group in optimizer.param_groups:
            for p in group["params"]:
                name = names.get(id(p))
                slots = {key: by_name[name] for key, by_name in state.items() if name in by_name}
                if name is None or not slots:
                    continue
                mask = self.mask.get(name)
                optimizer.state[p] = {key: (t.to(p) * mask.to(p.device) if mask is not None else t.to(p)).clone()
                                      for key, t in slots.items()}
                optimizer.state[p]["step"] = torch.tensor(float(steps))

    # --- during training ----------------------------------------------------------------------------------
    @torch.no_grad()
    def _zero_pruned(self) -> None:
        if self._masked_params:
            torch._foreach_mul_(self._masked_params, self._mask_values)

    @torch.no_grad()
    def after_step(self) -> None:
        """What the attached optimizer's post-hook runs after every step (call it yourself after a hand-written
        update): zero the pruned weights and their optimizer slots (unless the optimizer keeps them at zero by
        itself, see `keeps_zeros`), count the step, save θk at step k."""
        if self._rezero:
            self._zero_pruned()
            self._zero_slots()
        self.steps += 1
        if self._imp._captures_rewind_point(self) and self.steps == self._imp.rewind_iteration:
            self._imp._save_rewind_point(self)

    @torch.no_grad()
    def _zero_slots(self) -> None:
        """Every optimizer slot shaped like a pruned tensor, masked like it, in one multi-tensor call."""
        if self._optimizer is None or not self._masked:
            return
        state, slots, masks = self._optimizer.state, [], []
        for p, m in zip(self._masked_params, self._mask_values):
            for slot in state.get(p, {}).values():
                if isinstance(slot, torch.Tensor) and slot.shape == p.shape and slot.dtype == m.dtype:
                    slots.append(slot)
                    masks.append(m)
                elif isinstance(slot, torch.Tensor) and slot.shape == p.shape:
                    slot.mul_(m.to(slot.dtype))
        if slots:
            torch._foreach_mul_(slots, masks)

    def log(self, iteration: int, **values: float) -> None:
        """One row of this network's curves.csv (val_loss, val_accuracy, test_loss, test_accuracy; others too)."""
        self._curves.append({"iteration": int(iteration), **{k: finite_or_nan(v, k) for k, v in values.items()}})

    # --- after training -------------------------------------------------------------------------------------
    def finish(self, *, test_accuracy: float, val_loss: float | None = None, early_stop_iteration: int | None = None,
               final_test_accuracy: float | None = None, final_train_accuracy: float | None = None,
               **extra: float) -> None:
        """Record the trained network: its weights now (θT), and its metrics. `test_accuracy` is the one the
        paper reports: at the early-stop iteration (minimum validation loss) if the loop early-stops, with
        `val_loss` and `early_stop_iteration` the values there; `final_*` at the end. Accuracies are
        fractions in [0, 1]. Other keyword metrics go into metrics.json."""
        if self._finished:
            raise UserError(f"{self} is finished already")
        values = {"early_stop_test_accuracy": finite_or_nan(test_accuracy, "test_accuracy"),
                  "early_stop_val_loss": finite_or_nan(val_loss, "val_loss"),
                  "final_test_accuracy": finite_or_nan(test_accuracy if final_test_accuracy is None
                                                       else final_test_accuracy, "final_test_accuracy"),
                  "final_train_accuracy": finite_or_nan(final_train_accuracy, "final_train_accuracy")}
        for name in ("early_stop_test_accuracy", "final_test_accuracy", "final_train_accuracy"):
            if not (math.isnan(values[name]) or 0.0 <= values[name] <= 1.0):
                raise UserError(f"{name} must be a fraction in [0, 1], got {values[name]}")
        iteration = self.start_iteration + self.steps if early_stop_iteration is None else early_stop_iteration
        if isinstance(iteration, bool) or not isinstance(iteration, int) or iteration < 0:
            raise UserError(f"early_stop_iteration must be an iteration (an int, 0 or more), got {iteration!r}")
        if self._imp._captures_rewind_point(self) and self.steps < self._imp.rewind_iteration:
            raise UserError(f"the dense network took {self.steps} optimizer steps, fewer than the rewind iteration "
                            f"{self._imp.rewind_iteration}: attach the optimizer (net.attach(opt)) and train at least "
                            f"that long, or rewind earlier")
        self._zero_pruned()  # whatever the loop did outside the optimizer, a pruned weight ends at zero
        metrics = {"early_stop_iteration": iteration, **values}
        examples = extra.pop("train_accuracy_examples", None)  # how many examples final_train_accuracy saw
        if examples is not None:
            metrics["train_accuracy_examples"] = int(examples)
        extras = {"steps": self.steps, **{k: finite_or_nan(v, k) for k, v in extra.items()}}
        columns = CURVE_COLUMNS + sorted({k for row in self._curves for k in row} - {"iteration", *CURVE_COLUMNS})
        rows = [{c: row.get(c, math.nan) for c in ["iteration", *columns]} for row in self._curves]
        self._imp.procedure.record(self._start.id, self._start.mask, _state(self.model), metrics,
                                   rows if rows else None, columns, extra=extras)
        self._finished = True
        self.close()

    def close(self) -> None:
        """Remove this network's hooks from the model and the optimizer (finish does it)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []


class IMP:
    """Iterative magnitude pruning in `run_dir` around the user's own training (see the module doc).

    `model`: the user's module (its architecture; lottery draws each trial's θ0 by resetting its layers under
    the trial's seed) or a function that builds one. The options are `lottery.PruneConfig`'s (rates per kind
    of tensor: conv, hidden, output). `prunable` picks the pruned tensors (fnmatch patterns or a predicate;
    default: the weights that feed a product, see lottery.models.prunable), `example` gives a few inputs so
    that raw parameters are judged by their use. `training` describes the user's training (optimizer, lr,
    epochs ...): it is recorded, and part of the run's identity, so that another training is another run."""

    def __init__(self, model: ModelSource, run_dir: Path | str, *, levels: int = 10, trials: int = 1,
                 arms: Sequence[str] = (TICKET,), rewind_iteration: int = 0, rewind_optimizer: bool = False,
                 retrain: str = "rewind", criterion: str = "magnitude", scope: str = "layerwise",
                 rate: float = 0.2, rate_output: float = 0.1, rate_conv: float | None = None,
                 one_shot: Sequence[float] = (), pattern: str = "", granularity: str = "weight",
                 unit_score: str = "l1", ignore: Sequence[str] = (),
                 prunable: Include = None, example: torch.Tensor | None = None, seed: int = 0,
                 training: dict[str, Any] | None = None, name: str = "user-loop", device: str | torch.device | None = None,
                 verbose: bool = True) -> None:
        if isinstance(model, nn.Module):
            self.model, model_fn = model, _fresh_copy(model)
        elif callable(model):
            model_fn = model
            self.model = check_module(model_fn(), source="the model function")
        else:
            raise UserError(f"model must be a torch.nn.Module or a function that builds one, got {type(model).__name__}")
        self.device = torch.device(device) if device is not None else next(
            (p.device for p in self.model.parameters()), torch.device("cpu"))
        try:
            described = json.dumps(training or {}, sort_keys=True, default=str)
        except (TypeError, ValueError) as exc:
            raise UserError(f"training must be a dict of plain values (it is recorded as JSON): {exc}") from None
        self.config = RunConfig(preset=name, seed=seed, trials=trials, arms=list(arms), prune=PruneConfig(
            levels=levels, criterion=criterion, scope=scope, rate_hidden=rate, rate_output=rate_output,
            rate_conv=-1.0 if rate_conv is None else rate_conv, ignore=list(ignore),
            rewind_iteration=rewind_iteration, retrain=retrain, rewind_optimizer=rewind_optimizer,
            one_shot=list(one_shot), pattern=pattern, granularity=granularity, unit_score=unit_score))
        self.config.train.loop, self.config.train.described = "user", described
        self.config.model.name = type(self.model).__name__
        self.config.data.dataset = "user"
        validate(self.config)
        probing = [a for a in self.config.arms if ARMS[a].needs_probe or ARMS[a].found_by == "early-bird"]
        if probing:
            raise UserError(f"arm {probing[0]} needs the network at θ0 with training examples or the dense "
                            f"training's weights at each evaluation, which lottery does not have in your own loop; "
                            f"use it with find_tickets / lottery find")
        if example is not None:
            example = example.to(self.device)
        try:
            self.roles = prunable_roles(self.model, prunable, example)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        unknown = [n for n in self.roles if n not in parameter_names(self.model)]
        if unknown:
            raise UserError(f"not parameters of the model: {', '.join(unknown)}")
        check_levels_fit(self.config, {n: p.numel() for n, p in self.model.named_parameters()}, self.roles)
        self.rewind_iteration = rewind_iteration
        self.store = RunStore(run_dir)
        units, self._units_described = run_units(self.model, self.roles, example, granularity,
                                                 ignored_names(list(ignore), self.roles))
        self.procedure = Procedure(self.config, self.store, model_fn, self.roles, "cpu", units=units)
        self.verbose = verbose
        self._shown = False

    @property
    def run_dir(self) -> Path:
        return self.store.root

    def networks(self) -> Iterator[Network]:
        """Every network still to train, level by level (the ticket first, then its controls), holding the
        run's lock while the loop runs. Finish each before taking the next."""
        with hold_run(self.store.root, command="lottery.IMP"):
            claim(self.store, self.config, self.model, device=self.device)
            if self.verbose and not self._shown:
                print(describe_prunable(self.model, self.roles), file=sys.stderr, flush=True)
                if self._units_described:
                    print(self._units_described, file=sys.stderr, flush=True)
                self._shown = True
            for round_ in self.procedure.rounds():
                for network_id in round_:
                    if self.procedure.is_done(network_id):
                        continue
                    net = Network(self, self.procedure.start(network_id), self.model, self.device)
                    try:
                        yield net
                    finally:
                        net.close()
                    if not net._finished:
                        raise UserError(f"{net} was not finished: call net.finish(test_accuracy=...) before taking "
                                        f"the next network")

    def results(self) -> list[dict[str, Any]]:
        """results.csv's rows (after the loop has ended)."""
        from lottery.storage.results import read_results

        return read_results(self.store.root)

    # --- the rewind point ---------------------------------------------------------------------------------
    def _captures_rewind_point(self, net: Network) -> bool:
        return net.level == 0 and self.rewind_iteration > 0

    def _save_rewind_point(self, net: Network) -> None:
        """θk of the dense network, after its k-th step. Saved again if the dense network trains again (it was
        interrupted): θk belongs to the trajectory whose θT the next mask comes from."""
        optimizer, steps = None, 0
        if self.config.prune.rewind_optimizer and net._optimizer is not None:
            optimizer, steps = _optimizer_state(net._optimizer, self.model), net.steps
        self.procedure.save_rewind_point(net.trial, _state(self.model), optimizer, steps)


def _optimizer_state(optimizer: torch.optim.Optimizer, model: nn.Module) -> OptimizerState:
    """The optimizer's per-parameter tensors shaped like their parameter (momentum, Adam's moments), by slot
    and parameter name."""
    names = {id(p): n for n, p in model.named_parameters()}
    out: OptimizerState = {}
    for p, slots in optimizer.state.items():
        name = names.get(id(p))
        for key, value in slots.items():
            if name is not None and isinstance(value, torch.Tensor) and value.shape == p.shape:
                out.setdefault(key, {})[name] = value.detach().to("cpu", copy=True)
    return out


__all__ = ["IMP", "Network"]
