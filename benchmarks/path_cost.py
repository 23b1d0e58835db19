"""What tracking the `path` criterion (Σt |θt+1 − θt|, four in-place multi-tensor ops per step) costs.

Two trainers of the same LeNet-300-100 replicas on real MNIST, one tracking the path and one not,
timed in alternating blocks in one process so that machine load hits both alike. Prints the time
per step of each and their ratio.

    .venv/bin/python benchmarks/path_cost.py [--replicas 3,10] [--steps 200] [--device cpu]
"""
from __future__ import annotations

import argparse
import time

import torch

from common import data_dir, lenet_trainer, _sync


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--replicas", default="3,10")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--blocks", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    import lottery

    data = lottery.load_dataset("mnist", data_dir(), val_size=5000).to(args.device)
    print(f"threads {torch.get_num_threads()}, device {args.device}")
    for replicas in [int(r) for r in args.replicas.split(",")]:
        plain = lenet_trainer(data, replicas, replicas, 10 ** 9, "float32", prune_rounds=3)
        tracked = lenet_trainer(data, replicas, replicas, 10 ** 9, "float32", prune_rounds=3, track_path=True)
        spent = {"plain": 0.0, "path": 0.0}
        for trainer in (plain, tracked):  # warm up
            for _ in range(10):
                trainer.step()
        for _ in range(args.blocks):
            for name, trainer in (("plain", plain), ("path", tracked)):
                _sync(args.device)
                start = time.perf_counter()
                for _ in range(args.steps):
                    trainer.step()
                _sync(args.device)
                spent[name] += time.perf_counter() - start
        steps = args.steps * args.blocks
        p, t = 1e3 * spent["plain"] / steps, 1e3 * spent["path"] / steps
        print(f"{replicas:>3} replicas: {p:.2f} ms/step plain, {t:.2f} ms/step with path ({t / p:.3f}x)")


if __name__ == "__main__":
    main()
