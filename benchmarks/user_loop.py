"""What lottery costs inside the user's own loop, and what the built-in trainer's one-by-one fallback costs.

1. Hooks: the same plain PyTorch loop (Adam, batch 60) on a pruned network through `lottery.IMP`
   (`net.attach(opt)`: a gradient hook per pruned tensor, a step post-hook zeroing pruned weights and
   Adam's slots) against a copy of the network with no hooks at all. Blocks of steps alternate between
   the two in one process; the median over blocks is reported. Target: <= 5% overhead.
2. Fallback: an LSTM classifier, which vmap cannot batch, through `find_tickets` (built-in trainer, one
   replica after another) against a plain loop training the same networks one at a time.

    .venv/bin/python benchmarks/user_loop.py [--steps 200] [--blocks 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import lottery  # noqa: E402


def pruned_network(model_fn, run_dir: Path) -> tuple[lottery.Network, object]:
    """The level-1 ticket of a one-level IMP (80% of the weights kept), with its hooks on the model, and the
    generator that yielded it: the caller keeps it alive (a generator collected early closes its network,
    which removes the hooks, and the benchmark would time a network without them)."""
    imp = lottery.IMP(model_fn, run_dir, levels=1, verbose=False)
    networks = imp.networks()
    dense = next(networks)
    dense.finish(test_accuracy=0.0)
    return next(networks), networks


def steps_per_second(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
                     steps: int, batch: int) -> float:
    start = time.perf_counter()
    for i in range(steps):
        lo = (i * batch) % (len(x) - batch)
        loss = F.cross_entropy(model(x[lo:lo + batch]), y[lo:lo + batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps / (time.perf_counter() - start)


def hook_overhead(name: str, model_fn, data: lottery.Dataset, steps: int, blocks: int, batch: int = 60,
                  fused: bool = True) -> None:
    """`fused`: torch's fused Adam kernel. The default (single-tensor) Adam on this CPU takes a slow path for
    a square root of exact zeros (measured: torch.sqrt on a 300x784 tensor, 30 us with no zeros, 560 us with
    20% zeros), and a pruned weight's exp_avg_sq is exactly zero: the sparse network's own optimizer step
    gets slower, whoever keeps the mask. The fused kernel does not (157 vs 165 us)."""
    with tempfile.TemporaryDirectory() as tmp:
        net, alive = pruned_network(model_fn, Path(tmp) / "run")
        plain = model_fn()  # the same weights, no hooks
        plain.load_state_dict(net.model.state_dict())
        ours_opt = net.attach(torch.optim.Adam(net.model.parameters(), lr=1e-3, fused=fused))
        plain_opt = torch.optim.Adam(plain.parameters(), lr=1e-3, fused=fused)
        x, y = data.features(data.x_train[:20_000]), data.y_train[:20_000]
        ours, theirs = [], []
        steps_per_second(net.model, ours_opt, x, y, 20, batch)  # warm-up both
        steps_per_second(plain, plain_opt, x, y, 20, batch)
        for _ in range(blocks):
            ours.append(steps_per_second(net.model, ours_opt, x, y, steps, batch))
            theirs.append(steps_per_second(plain, plain_opt, x, y, steps, batch))
        a, b = statistics.median(ours), statistics.median(theirs)
        print(f"{name}, {'fused' if fused else 'default'} Adam: with lottery's hooks {1e3 / a:.2f} ms/step, "
              f"plain loop {1e3 / b:.2f} ms/step: "
              f"overhead {100 * (b / a - 1):+.1f}% (median of {blocks} blocks of {steps} steps, "
              f"{net.percent_remaining:.0f}% of the weights kept)")
        assert net._hooks, "the network lost its hooks: the benchmark would time a plain loop twice"
        net.finish(test_accuracy=0.0)
        del alive


class LSTMClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, 128, batch_first=True)
        self.head = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.squeeze(1).transpose(1, 2))
        return self.head(out[:, -1])


def fallback(data: lottery.Dataset, iterations: int, replicas: int = 4) -> None:
    config = lottery.get_preset("fsdd-mlp")
    config.trials, config.arms, config.prune.levels = replicas, ["imp"], 0
    config.train.iterations, config.train.eval_every, config.train.batch_size = iterations, iterations, 32
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        lottery.find_tickets(config, Path(tmp) / "run", model_fn=LSTMClassifier, data=data,
                             options=lottery.RunOptions(progress=False))
        ours = (time.perf_counter() - start) / replicas
    start = time.perf_counter()
    for r in range(replicas):  # the same work by hand: train, validate at start and end, test, train accuracy
        torch.manual_seed(r)
        model = LSTMClassifier()
        opt = torch.optim.Adam(model.parameters(), lr=config.train.lr)
        x, y = data.x_train, data.y_train
        for i in range(iterations):
            idx = torch.randint(len(x), (32,))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            model.eval()
            for split in (data.x_val, data.x_val, data.x_test, data.x_train):
                model(split)
    plain = (time.perf_counter() - start) / replicas
    print(f"LSTM (FSDD, {iterations} iterations, {replicas} networks): find_tickets one by one {ours:.1f} s per "
          f"network, plain loop {plain:.1f} s: {plain / ours:.2f}x the plain loop's speed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=7)
    parser.add_argument("--fallback-iterations", type=int, default=300)
    args = parser.parse_args()
    torch.set_num_threads(2)
    mnist = lottery.load_dataset("mnist", common.data_dir(), val_size=5000)
    lenet = lottery.get_preset("lenet300-mnist").model
    lenet_fn = lambda: lottery.build_model(lenet, mnist.input_shape, 10)  # noqa: E731
    hook_overhead("LeNet-300-100, MNIST", lenet_fn, mnist, args.steps, args.blocks)
    hook_overhead("LeNet-300-100, MNIST", lenet_fn, mnist, args.steps, args.blocks, fused=False)
    fsdd = lottery.load_dataset("fsdd", common.data_dir())
    hook_overhead("LSTM-128, FSDD", LSTMClassifier, fsdd, args.steps // 4, args.blocks, batch=32)
    fallback(fsdd, args.fallback_iterations)


if __name__ == "__main__":
    main()
