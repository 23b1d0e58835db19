"""Conv and BatchNorm training on a GPU: the checks the CPU test suite makes, run on CUDA.

1. Replicas trained stacked equal the same replicas trained one by one (Conv-2 and ResNet-8, SGD +
   momentum + weight decay, bf16 and float32), bit for bit or by how much they differ.
2. Pruned weights stay exactly zero (ResNet-8: SGD + momentum + weight decay + BN + flip-crop).
3. bf16 against float32 accuracy on a short run of each conv preset's model and optimizer.

Data: CIFAR-10 from a folder holding `data_batch_1.bin` (one official batch, 10,000 images: 8,000 for
training, 1,000 validation, 1,000 test), so it fits on a machine the full dataset cannot reach.

    python checks/cuda_conv.py DATA_FOLDER [--device cuda] [--iterations 600]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lottery  # noqa: E402
from lottery.data.cifar10 import NORMALIZATION  # noqa: E402
from lottery.pruning.masks import dense_mask  # noqa: E402
from lottery.pruning.prune import prune_round  # noqa: E402
from lottery.procedure.tickets import initial_weights  # noqa: E402
from lottery.training.trainer import ReplicaSpec, StackedTrainer  # noqa: E402


def one_batch(folder: Path, device: str) -> lottery.Dataset:
    raw = np.fromfile(folder / "data_batch_1.bin", dtype=np.uint8).reshape(10_000, 3073)
    x = torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy())
    y = torch.from_numpy(raw[:, 0].astype(np.int64))
    return lottery.Dataset("cifar10-batch1", x[:8000], y[:8000], x[8000:9000], y[8000:9000], x[9000:], y[9000:],
                           10, channel_normalization=NORMALIZATION).to(device)


def model_fn(name: str, **kw):
    return lambda: lottery.build_model(lottery.ModelConfig(name=name, **kw), (3, 32, 32), 10)


def specs(fn, count: int, prune: bool) -> tuple[torch.nn.Module, list[ReplicaSpec]]:
    model = fn()
    roles = lottery.prunable_roles(model)
    out = []
    for r in range(count):
        start = initial_weights(fn, 0, r)
        mask = dense_mask(start, list(roles))
        if prune:
            scores = {n: torch.rand(start[n].shape, generator=torch.Generator().manual_seed(r)) for n in roles}
            mask = prune_round(scores, mask, roles, 0.5, 0.2)
        out.append(ReplicaSpec(r, start, mask, seed=r))
    return model, out


def stacked_vs_alone(data, name: str, fn, precision: str, batching: str, device: str, steps: int) -> bool:
    train = lottery.TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, batch_size=60,
                                iterations=steps, eval_every=steps, precision=precision)
    model, replicas = specs(fn, 3, prune=True)
    model = model.to(device)
    together = StackedTrainer(model, replicas, data, train, [5, 6, 7], batching=batching)
    together.run(train.iterations)
    stacked = together.results()
    worst, exact = 0.0, True
    for r, spec in enumerate(replicas):
        alone = StackedTrainer(model, [ReplicaSpec(0, spec.start, spec.mask, spec.seed)], data, train, [5 + r],
                               batching=batching)
        alone.run(train.iterations)
        for n, value in alone.results()[0].final.items():
            other = stacked[r].final[n]
            exact &= torch.equal(value, other)
            if value.is_floating_point():
                worst = max(worst, float((value - other).abs().max()))
    print(f"stacked vs alone  {name:<8} {precision:<8} {batching:<5} bit-for-bit: {exact}  max |diff| {worst:.3g}")
    return exact


def zeros_stay_zero(data, device: str) -> bool:
    train = lottery.TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3,
                                batch_size=60, iterations=40, eval_every=40)
    model, replicas = specs(model_fn("resnet", depth=8), 2, prune=True)
    trainer = StackedTrainer(model.to(device), replicas, data, train, [3, 4], augment="flip-crop")
    ok = True
    for _ in range(train.iterations):
        trainer.step()
        ok &= all(bool(torch.all(trainer.params[n].detach()[m == 0] == 0)) for n, m in trainer.masks.items())
    print(f"pruned weights exactly zero under SGD+momentum+wd+BN+flip-crop on {device}: {ok}")
    return ok


def precision_check(data, preset: str, iterations: int, device: str) -> None:
    config = lottery.get_preset(preset)
    accuracies = {}
    for precision in ("float32", "bf16"):
        train = config.train
        train.precision, train.iterations, train.eval_every = precision, iterations, iterations // 6
        train.warmup = min(train.warmup, iterations // 10)
        train.milestones = []
        fn = model_fn(config.model.name)
        model, replicas = specs(fn, 2, prune=False)
        start = time.perf_counter()
        trainer = StackedTrainer(model.to(device), replicas, data, train, [1, 2], augment=config.data.augment)
        trainer.run(iterations)
        results = trainer.results()
        accuracies[precision] = [r.early_stop_test_accuracy for r in results]
        print(f"  {preset:<24} {precision:<8} test accuracy at early stop {accuracies[precision]} "
              f"({time.perf_counter() - start:.1f} s)", flush=True)
    gap = abs(np.mean(accuracies["bf16"]) - np.mean(accuracies["float32"]))
    print(f"  {preset:<24} |bf16 - float32| = {100 * gap:.2f} points over 2 replicas")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", type=Path)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--iterations", type=int, default=600)
    parser.add_argument("--steps", type=int, default=60, help="steps of the stacked-vs-alone comparison")
    parser.add_argument("--presets", default="conv2-cifar10,conv4-cifar10,conv6-cifar10,resnet20-cifar10,vgg16-cifar10")
    args = parser.parse_args()
    device = args.device
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    print(f"device {name}, torch {torch.__version__}")
    data = one_batch(args.data, device)
    for label, fn in (("conv2", model_fn("conv2")), ("resnet8", model_fn("resnet", depth=8))):
        for precision in ("float32", "bf16"):
            for batching in ("auto", "vmap"):
                try:
                    stacked_vs_alone(data, label, fn, precision, batching, device, args.steps)
                except RuntimeError as exc:  # vmap is never chosen for BN models; say how it fails
                    print(f"stacked vs alone  {label:<8} {precision:<8} {batching:<5} fails: {str(exc).splitlines()[0][:100]}")
    zeros_stay_zero(data, device)
    print(f"bf16 vs float32, {args.iterations} iterations on 8,000 images:")
    for preset in args.presets.split(","):
        precision_check(data, preset, args.iterations, device)


if __name__ == "__main__":
    main()
