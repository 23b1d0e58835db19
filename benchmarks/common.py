"""Shared measurement helpers for the benchmarks: machine peaks, LeNet FLOP counts, a plain reference loop."""
from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

LENET_SIZES = [(784, 300), (300, 100), (100, 10)]


def data_dir() -> Path:
    for candidate in (os.environ.get("LOTTERY_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if candidate and (Path(candidate) / "mnist").exists():
            return Path(candidate)
    raise SystemExit("MNIST not found: set LOTTERY_DATA to a folder with mnist/ (see ../shared/data)")


def timed(fn, repeat: int, device: str = "cpu") -> float:
    """Seconds per call, after a warm-up call."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeat


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048) -> float:
    """FLOP/s of a large square matmul: the practical peak of this machine."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n ** 3 / timed(lambda: a @ b, 10, device)


def memory_bandwidth(device: str = "cpu", megabytes: int = 256) -> float:
    """Bytes/s of a large copy (read + write)."""
    a = torch.empty(megabytes * 2 ** 18, device=device)
    b = torch.empty_like(a)
    return 2 * a.numel() * 4 / timed(lambda: b.copy_(a), 10, device)


def lenet_train_flops(batch: int) -> float:
    """Forward + weight gradients + input gradients (not for the first layer) per network-iteration."""
    forward = sum(2 * batch * i * o for i, o in LENET_SIZES)
    weight_grads = forward
    input_grads = sum(2 * batch * i * o for i, o in LENET_SIZES[1:])
    return forward + weight_grads + input_grads


def lenet_eval_flops(examples: int) -> float:
    return sum(2 * examples * i * o for i, o in LENET_SIZES)


def plain_lenet() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10))


def plain_loop(data, iterations: int, batch: int, eval_every: int, seed: int = 0) -> float:
    """The usual way: one network, in-memory tensors, fused Adam, masks applied after each step,
    validation every `eval_every` iterations and the test set when validation loss improves.
    Returns seconds per iteration."""
    torch.manual_seed(seed)
    device = data.x_train.device
    model = plain_lenet().to(device)
    masks = [torch.ones_like(p) for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1.2e-3, fused=True)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    perm = torch.randperm(len(data.x_train), generator=generator).to(device)
    best = float("inf")
    _sync(str(device))
    start = time.perf_counter()
    for it in range(iterations):
        s = (it * batch) % (len(perm) - batch)
        idx = perm[s:s + batch]
        loss = F.cross_entropy(model(data.x_train[idx]), data.y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            for p, m in zip(model.parameters(), masks):
                p.mul_(m)
        if (it + 1) % eval_every == 0:
            with torch.no_grad():
                val = F.cross_entropy(model(data.x_val), data.y_val).item()
                if val < best:
                    best = val
                    (model(data.x_test).argmax(1) == data.y_test).float().mean().item()
    _sync(str(device))
    return (time.perf_counter() - start) / iterations


def lenet_trainer(data, replicas: int, streams: int, iterations: int, precision: str, prune_rounds: int,
                  track_path: bool = False):
    """A StackedTrainer of LeNet-300-100 replicas with random masks after `prune_rounds` rounds of the
    paper's rates (0: dense, so no masking cost), replica r reading data stream r % streams."""
    import lottery
    from lottery.procedure.find import EVAL_BATCH, initial_weights
    from lottery.pruning.masks import dense_mask
    from lottery.pruning.prune import prune_round
    from lottery.training.trainer import ReplicaSpec, StackedTrainer

    config = lottery.get_preset("lenet300-mnist")
    config.train.iterations = iterations
    config.train.precision = precision
    fn = lambda: lottery.build_model(config.model, data.input_shape, data.num_classes)  # noqa: E731
    model = fn().to(data.x_train.device)
    roles = lottery.prunable_roles(model)
    specs = []
    for r in range(replicas):
        init = initial_weights(fn, 0, r)
        mask = dense_mask(init, list(roles))
        for _ in range(prune_rounds):
            mask = prune_round({n: torch.rand(init[n].shape) for n in roles}, mask, roles, 0.2, 0.1)
        specs.append(ReplicaSpec(r % streams, init, mask))
    return StackedTrainer(model, specs, data, config.train, list(range(streams)), eval_batch=EVAL_BATCH,
                          track_path=track_path)
