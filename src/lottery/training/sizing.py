"""How many replicas train in one pass: as many as fit in memory, up to where stacking stops paying."""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from lottery.errors import UserError

# Measured with benchmarks/train_speed.py (LeNet-300-100, 2-core CPU): time per replica-iteration
# falls from 1 to 8 replicas and is flat beyond 16, so larger CPU passes only cost memory.
# A GPU keeps gaining from wider batched matmuls.
SPEED_CAP = {"cpu": 16, "cuda": 128}
MEMORY_SHARE = 0.5  # of the memory available now


EVAL_BATCH_MAX = 10_000
# Bytes of one replica's largest activation in an evaluation chunk: below glibc's largest mmap threshold
# (lottery.memory), so chunks come from the heap instead of fresh, page-faulted mappings (measured on
# Conv-2: 600-image chunks evaluated 5,000 images in 2.1 s per replica, 100-image chunks in 1.2 s).
EVAL_MEMORY = 24 * 2 ** 20


def eval_batch_for(model: nn.Module, example: torch.Tensor) -> int:
    """Examples per evaluation chunk: as many as keep one replica's largest float32 activation within
    EVAL_MEMORY, in hundreds (at least 100), at most EVAL_BATCH_MAX. A function of the model and input
    shape only (never of free memory), so a replica's evaluation sums are always cut the same way.
    Conv-2 on CIFAR-10: 100; LeNet-300-100: 10,000."""
    if getattr(model, "transductive", False):  # every forward computes the whole graph: one chunk per set
        return EVAL_BATCH_MAX
    fits = EVAL_MEMORY // (4 * largest_activation(model, example))
    return int(max(100, min(EVAL_BATCH_MAX, fits // 100 * 100)))


def largest_activation(model: nn.Module, example: torch.Tensor) -> int:
    """Elements of the largest output of any module, per example (measured on one example)."""
    largest = 1

    def measure(_module: nn.Module, _inputs: object, output: object) -> None:
        nonlocal largest
        if torch.is_tensor(output):
            largest = max(largest, output[0].numel())

    hooks = [m.register_forward_hook(measure) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(example[:1])
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return largest


def available_memory(device: torch.device | str) -> int:
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2 ** 30  # unknown platform: assume 4 GiB


# float32 copies of its parameters one replica holds: weights, gradients, two Adam moments, a mask, a bf16 copy
# and the early-stop snapshot.
STATE_COPIES = 7


def state_bytes(parameters: int) -> int:
    """What one replica's parameters cost in training, before any activation: STATE_COPIES float32 copies."""
    return 4 * parameters * STATE_COPIES


def bytes_per_replica(model: nn.Module, eval_batch: int, batch_size: int) -> int:
    """The replica's state (state_bytes); plus activations of the largest evaluation chunk and of a training
    batch (with autograd's saved tensors, ~3x)."""
    params = sum(p.numel() for p in model.parameters())
    outputs = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    outputs += sum(m.out_channels for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)) * 1024
    return state_bytes(params) + 4 * max(outputs, 1) * (eval_batch + 3 * batch_size)


def parameters_of(model_fn: Callable[[], nn.Module]) -> int | None:
    """The parameter count of the model `model_fn` builds, built on the meta device (shapes, no memory), so that
    a model too large for the machine is named before it is allocated; None where it cannot be built there."""
    try:
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            model = model_fn()
        return sum(p.numel() for p in model.parameters())
    except Exception:  # a model that needs real tensors to be built: it is checked once built instead
        return None


def check_fits(parameters: int, device: torch.device | str) -> None:
    """Refuse a model whose one network cannot train in the memory available now (its state alone, a lower
    bound: activations and data come on top), with the figures."""
    need, free = state_bytes(parameters), available_memory(device)
    if need > free:
        raise UserError(f"the model has {parameters:,} parameters: training one network needs at least "
                        f"~{need / 2 ** 30:,.1f} GiB ({STATE_COPIES} float32 copies: weights, gradients, optimizer "
                        f"moments, mask, snapshots), {free / 2 ** 30:,.1f} GiB available on {torch.device(device)}; "
                        f"use a smaller model")


def replicas_per_pass(model: nn.Module, device: torch.device | str, eval_batch: int, batch_size: int,
                      limit: int | None = None) -> int:
    device_type = torch.device(device).type
    by_memory = int(available_memory(device) * MEMORY_SHARE // bytes_per_replica(model, eval_batch, batch_size))
    cap = limit if limit is not None else SPEED_CAP.get(device_type, 16)
    return max(1, min(cap, by_memory))
