"""Extrapolated wall time of the paper's full LeNet-300-100 protocol on this machine, and peak memory.

The protocol: 5 trials x {imp, reinit} x 18 pruning levels (plus the dense level 0, which has only the
ticket arm) x 50,000 iterations, batch 60, Adam, validation every 100 on 5,000 held-out examples.
Each level trains its 10 replicas (5 trials x 2 arms, the arms of a trial sharing its batches) in one
pass. We time shortened passes on real MNIST and scale them to 50,000 iterations. Early in training
the validation loss improves at most evaluations, which costs a copy of the weights each time (the
test set runs once per network, at the end; see lottery.training.early_stop); over a full run it improves far
less often, so the extrapolation is an upper bound.

    .venv/bin/python benchmarks/protocol.py [--iterations 2000] [--precision float32|bf16] [--device cpu]
"""
from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import lottery  # noqa: E402

TRIALS, ARMS, LEVELS, ITERATIONS = 5, 2, 18, 50_000


def pass_seconds(data, replicas: int, streams: int, iterations: int, precision: str, sparse: bool,
                 improving: bool = True) -> float:
    """Seconds per iteration of one pass. `improving=False` times the steady state of a long run, where
    the validation loss no longer reaches new minima (so no test passes)."""
    trainer = common.lenet_trainer(data, replicas, streams, ITERATIONS, precision, prune_rounds=3 if sparse else 0)
    trainer.run(1)
    if not improving:
        trainer.early_stop.val_loss.fill_(-float("inf"))
    common._sync(str(data.x_train.device))
    start = time.perf_counter()
    trainer.run(iterations + 1)
    common._sync(str(data.x_train.device))
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=2000)
    parser.add_argument("--precision", default="float32", choices=["float32", "bf16"])
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = lottery.load_dataset("mnist", common.data_dir(), val_size=5000).to(args.device)

    dense = pass_seconds(data, TRIALS, TRIALS, args.iterations, args.precision, sparse=False)
    level = pass_seconds(data, TRIALS * ARMS, TRIALS, args.iterations, args.precision, sparse=True)
    total = ITERATIONS * (dense + LEVELS * level)
    steady = ITERATIONS * (pass_seconds(data, TRIALS, TRIALS, args.iterations, args.precision, False, False)
                           + LEVELS * pass_seconds(data, TRIALS * ARMS, TRIALS, args.iterations, args.precision,
                                                   True, False))
    replica_iterations = ITERATIONS * (TRIALS + LEVELS * TRIALS * ARMS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(f"device {args.device}, precision {args.precision}, {torch.get_num_threads()} threads; "
          f"timed {args.iterations} iterations per pass")
    print(f"level 0 pass ({TRIALS} replicas): {dense * 1e3:.2f} ms/iteration; "
          f"level pass ({TRIALS * ARMS} replicas): {level * 1e3:.2f} ms/iteration "
          f"= {level / (TRIALS * ARMS) * 1e3:.3f} ms per replica-iteration")
    print(f"full protocol ({replica_iterations / 1e6:.2f} M replica-iterations): between {steady / 60:.0f} "
          f"(validation never improving) and {total / 60:.0f} minutes (improving at every evaluation); "
          f"peak RSS {rss / 2 ** 30:.2f} GiB")


if __name__ == "__main__":
    main()
