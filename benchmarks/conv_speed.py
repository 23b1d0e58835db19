"""Training speed of conv nets on CIFAR-10 (Conv-2, ResNet-20), ours vs. a plain PyTorch loop, one process.

For each model, precision and replica count: milliseconds per replica-iteration of our StackedTrainer
(R replicas in one pass, masks at level 3 of the ladder, each replica its own data stream) and of a plain
loop that trains the same R networks one after another (channels-last module, the preset's optimizer,
masks re-applied after each step, batches indexed from the same in-memory uint8 images). Both train only:
no evaluation, no augmentation, so both do exactly the same arithmetic. Also the achieved FLOP/s against
the float32 (or bf16) matmul peak measured in this process.

Data: CIFAR-10 from $LOTTERY_DATA or ../shared/data when present, else random images of the same shape
(speed does not depend on pixel values; the line "data:" says which).

    .venv/bin/python benchmarks/conv_speed.py [--device cpu|cuda] [--models conv2,resnet20]
        [--precisions float32,bf16] [--replicas 1,4] [--iterations 20] [--batching auto,vmap]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import lottery  # noqa: E402
from lottery.pruning.masks import dense_mask  # noqa: E402
from lottery.pruning.prune import prune_round  # noqa: E402
from lottery.procedure.tickets import initial_weights  # noqa: E402
from lottery.training.trainer import ReplicaSpec, StackedTrainer  # noqa: E402

PRESETS = {"conv2": "conv2-cifar10", "resnet20": "resnet20-cifar10"}


def cifar10(device: str) -> tuple[lottery.Dataset, str]:
    for folder in (os.environ.get("LOTTERY_DATA"), Path(__file__).resolve().parents[2] / "shared" / "data"):
        if folder and (Path(folder) / "cifar-10" / "cifar-10-batches-bin").exists():
            return lottery.load_dataset("cifar10", folder, val_size=5000).to(device), f"CIFAR-10 from {folder}"
    g = torch.Generator().manual_seed(0)
    images = lambda n: torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)  # noqa: E731
    labels = lambda n: torch.randint(0, 10, (n,), generator=g)  # noqa: E731
    data = lottery.Dataset("cifar10-shaped", images(45_000), labels(45_000), images(500), labels(500), images(500),
                           labels(500), 10, channel_normalization=((0.49, 0.48, 0.45), (0.25, 0.24, 0.26)))
    return data.to(device), "random uint8 images of CIFAR-10's shape (CIFAR-10 not found)"


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-adds x 2 of the convolutions and linear layers for one example."""
    total = 0

    def count(module: nn.Module, _inputs: object, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            per_output = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += 2 * output[0].numel() * per_output
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    hooks = [m.register_forward_hook(count) for m in model.modules()]
    with torch.no_grad():
        model.eval()
        model(example[:1])
    for h in hooks:
        h.remove()
    return total


def specs_for(fn, roles, replicas: int) -> list[ReplicaSpec]:
    out = []
    for r in range(replicas):
        start = initial_weights(fn, 0, r)
        mask = dense_mask(start, list(roles))
        for level in range(3):
            scores = {n: torch.rand(start[n].shape, generator=torch.Generator().manual_seed(100 * r + level))
                      for n in roles}
            mask = prune_round(scores, mask, roles, 0.2, 0.1)
        out.append(ReplicaSpec(r, start, mask, seed=r))
    return out


def ours(config, fn, data, replicas: int, iterations: int, batching: str, device: str) -> float:
    model = fn().to(device)
    roles = lottery.prunable_roles(model)
    train = config.train
    train.iterations, train.eval_every = 10 ** 9, 10 ** 9  # training only
    trainer = StackedTrainer(model, specs_for(fn, roles, replicas), data, train, list(range(replicas)),
                             eval_batch=500, batching=batching)
    for _ in range(3):  # warm-up
        trainer.step()
    common._sync(device)
    start = time.perf_counter()
    for _ in range(iterations):
        trainer.step()
    common._sync(device)
    return (time.perf_counter() - start) / (iterations * replicas)


def plain(config, fn, data, replicas: int, iterations: int, device: str) -> float:
    """The usual way: one network at a time, channels-last, torch.optim, masks re-applied after each step."""
    train = config.train
    roles = lottery.prunable_roles(fn())
    specs = specs_for(fn, roles, replicas)
    bf16 = train.precision == "bf16"
    elapsed = 0.0
    for spec in specs:
        model = fn().to(device).to(memory_format=torch.channels_last)
        model.load_state_dict(spec.start)
        masks = {n: spec.mask[n].to(device) for n in roles}
        params = dict(model.named_parameters())
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
        if train.optimizer == "adam":
            optimizer = torch.optim.Adam(model.parameters(), lr=train.lr, fused=True)
        else:
            optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum,
                                        weight_decay=train.weight_decay, fused=True)
        g = torch.Generator(device="cpu").manual_seed(0)

        def step() -> None:
            idx = torch.randint(0, len(data.x_train), (train.batch_size,), generator=g).to(device)
            x = data.features(data.x_train[idx])
            if x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for n, m in masks.items():
                    params[n].mul_(m)

        model.train()
        for _ in range(3):
            step()
        common._sync(device)
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        common._sync(device)
        elapsed += time.perf_counter() - start
    return elapsed / (iterations * replicas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="conv2,resnet20")
    parser.add_argument("--precisions", default="float32,bf16")
    parser.add_argument("--replicas", default="1,4")
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--batching", default="auto", help="comma-separated: auto, loop, vmap")
    args = parser.parse_args()
    device = args.device
    data, source = cifar10(device)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; data: {source}")
    peaks = {"float32": common.matmul_peak(device), "bf16": common.matmul_peak(device, torch.bfloat16)}
    print("matmul peak: " + ", ".join(f"{k} {v / 1e12:.2f} TFLOP/s" for k, v in peaks.items()))
    print(f"{'model':<9} {'precision':<8} {'R':>3} {'batching':<8} {'plain ms':>9} {'ours ms':>8} {'speed-up':>8} "
          f"{'of peak':>8}   (ms per replica-iteration)")
    for model_name in args.models.split(","):
        for precision in args.precisions.split(","):
            config = lottery.get_preset(PRESETS[model_name])
            config.train.precision = precision
            fn = lambda n=model_name: lottery.build_model(lottery.ModelConfig(name=n), data.input_shape, 10)  # noqa: E731
            flops = 3 * forward_flops(fn().to(device), data.features(data.x_train[:1])) * config.train.batch_size
            for replicas in [int(r) for r in args.replicas.split(",")]:
                reference = plain(config, fn, data, replicas, args.iterations, device)
                for batching in args.batching.split(","):
                    try:
                        seconds = ours(config, fn, data, replicas, args.iterations, batching, device)
                    except RuntimeError as exc:  # vmap's batch norm under bf16 autocast, for one
                        print(f"{model_name:<9} {precision:<8} {replicas:>3} {batching:<8} fails: "
                              f"{str(exc).splitlines()[0][:80]}", flush=True)
                        continue
                    print(f"{model_name:<9} {precision:<8} {replicas:>3} {batching:<8} {reference * 1e3:>9.2f} "
                          f"{seconds * 1e3:>8.2f} {reference / seconds:>7.2f}x {flops / seconds / peaks[precision]:>8.1%}",
                          flush=True)


if __name__ == "__main__":
    main()
