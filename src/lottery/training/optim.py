"""Adam and SGD over stacked parameters, stepped replica by replica so that each replica's update is its own.

One optimizer over a stacked tensor [R, ...] is R independent optimizers in exact arithmetic, but not in
the last bits: a fused CPU kernel splits a tensor into vectorized blocks and a scalar tail, and where the
boundaries fall depends on the whole tensor's size, so a replica's update changed with R (measured:
Adam on a [R, 10] bias differs between R = 2 and R = 3). Here every replica's slice of every tensor is
a tensor of its own in the (fused, where available) multi-tensor step, so its arithmetic depends on its
own shape only. The optimizer state is kept stacked, with a leading replica dimension like the parameters.
"""
from __future__ import annotations

import torch
from torch.optim.adam import adam as adam_step
from torch.optim.sgd import sgd as sgd_step

from lottery.config import TrainConfig

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as the paper's runs used

# One replica's optimizer state, by buffer ("exp_avg", "momentum", ...) and parameter name.
OptimizerState = dict[str, dict[str, torch.Tensor]]


def flatten_state(state: OptimizerState, prefix: str = "") -> dict[str, torch.Tensor]:
    """Flat tensors for a safetensors file: "<prefix><buffer>.<parameter name>"."""
    return {f"{prefix}{buffer}.{name}": t for buffer, by_name in state.items() for name, t in by_name.items()}


def unflatten_state(tensors: dict[str, torch.Tensor], prefix: str = "") -> OptimizerState:
    """The inverse of `flatten_state`; tensors without the prefix are ignored."""
    state: OptimizerState = {}
    for key, tensor in tensors.items():
        if key.startswith(prefix):
            buffer, name = key[len(prefix):].split(".", 1)
            state.setdefault(buffer, {})[name] = tensor
    return state


class ReplicaOptimizer:
    """`cfg.optimizer` (adam | sgd) over stacked parameters [R, ...]; `lr` is set before each step."""

    def __init__(self, cfg: TrainConfig, params: list[torch.Tensor], decayed: list[bool] | None = None) -> None:
        """`decayed`: per parameter, whether weight decay applies (None: to all)."""
        self.cfg, self.params = cfg, params
        self._decayed = decayed if decayed is not None and not all(decayed) else None
        self.lr = cfg.lr
        self.fused = params[0].device.type in ("cpu", "cuda") and all(p.dtype == torch.float32 for p in params)
        self.steps_taken = 0
        self.buffers: dict[str, list[torch.Tensor]] = {}
        if cfg.optimizer == "adam":
            self.buffers = {"exp_avg": [torch.zeros_like(p) for p in params],
                            "exp_avg_sq": [torch.zeros_like(p) for p in params]}
            # One step counter per replica slice: the functional step increments each one it is given.
            self._counters = [torch.zeros((), dtype=torch.float32, device=p.device) for p in params for _ in p]
        elif cfg.optimizer == "sgd":
            if cfg.momentum > 0:
                self.buffers = {"momentum": [torch.zeros_like(p) for p in params]}
        else:
            raise ValueError(f"unknown optimizer {cfg.optimizer!r}")
        # Views stay valid: parameters and buffers are only ever updated in place.
        self._param_slices = self._slices(params)
        self._buffer_slices = {name: self._slices(tensors) for name, tensors in self.buffers.items()}

    @staticmethod
    def _slices(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
        return [row for t in tensors for row in t.unbind(0)]

    @torch.no_grad()
    def step(self, grads: list[torch.Tensor] | None = None) -> None:
        """One step; `grads` (replica slices in parameter-major order, like the parameters') default to
        the slices of each stacked parameter's .grad."""
        grads = grads if grads is not None else self._slices([p.grad for p in self.params])
        if self._decayed is None:
            self._step(list(range(len(self._param_slices))), grads, self.cfg.weight_decay)
        else:  # two groups, as torch's param_groups: each replica slice's update is its own either way
            rows = [d for d, p in zip(self._decayed, self.params) for _ in range(p.shape[0])]
            for flag, decay in ((True, self.cfg.weight_decay), (False, 0.0)):
                chosen = [i for i, r in enumerate(rows) if r == flag]
                if chosen:
                    self._step(chosen, [grads[i] for i in chosen], decay)
        self.steps_taken += 1

    def _step(self, chosen: list[int], grads: list[torch.Tensor], weight_decay: float) -> None:
        params = [self._param_slices[i] for i in chosen]
        kind = {"fused": True} if self.fused else {"foreach": True}
        if self.cfg.optimizer == "adam":
            exp_avg, exp_avg_sq = ([self._buffer_slices[b][i] for i in chosen] for b in ("exp_avg", "exp_avg_sq"))
            adam_step(params, grads, exp_avg, exp_avg_sq, [], [self._counters[i] for i in chosen], amsgrad=False,
                      beta1=ADAM_BETAS[0], beta2=ADAM_BETAS[1], lr=self.lr, weight_decay=weight_decay, eps=ADAM_EPS,
                      maximize=False, **kind)
        else:
            momentum = ([self._buffer_slices["momentum"][i] for i in chosen] if "momentum" in self._buffer_slices
                        else [None] * len(params))
            # Zero-initialized buffers give buf = grad on the first step, as torch.optim.SGD does.
            sgd_step(params, grads, momentum, weight_decay=weight_decay, momentum=self.cfg.momentum,
                     lr=self.lr, dampening=0.0, nesterov=self.cfg.nesterov and self.cfg.momentum > 0,
                     maximize=False, **kind)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    # --- checkpoints: stacked buffers (replica dimension first) and the step count ---------------------
    def state(self) -> tuple[dict[str, list[torch.Tensor]], int]:
        return self.buffers, self.steps_taken

    def load_state(self, buffers: dict[str, list[torch.Tensor]], steps_taken: int) -> None:
        with torch.no_grad():
            for name, tensors in self.buffers.items():
                for own, saved in zip(tensors, buffers[name]):
                    own.copy_(saved)
        self.steps_taken = steps_taken
        if self.cfg.optimizer == "adam":
            for counter in self._counters:
                counter.fill_(steps_taken)
