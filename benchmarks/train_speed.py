"""Training speed of LeNet-300-100 on real MNIST (batch 60, Adam), ours vs. a plain PyTorch loop.

Prints, for 1, 4, 8 and 16 replicas: time per replica-iteration (training + validation every 100 +
the test set at the end and on each network's early-stop snapshot; median of --repeats timings), the ratio against the plain per-network loop measured in this same
process, the achieved FLOP/s as a fraction of the float32 matmul peak measured here, and a bound for
this machine (FLOP time at that peak + the optimizer's bytes at the measured memory bandwidth).

    .venv/bin/python benchmarks/train_speed.py [--replicas 1,4,8,16] [--iterations 1000] [--repeats 3] [--device cpu]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

import lottery  # noqa: E402

PARAMS = sum(i * o + o for i, o in common.LENET_SIZES)


def ours(data, replicas: int, iterations: int, precision: str) -> tuple[float, int]:
    # Sparse masks (level 3 of the ladder), so masking costs what it costs in IMP; the two arms of a
    # trial share the trial's batches.
    trainer = common.lenet_trainer(data, replicas, max(1, replicas // 2), iterations, precision, prune_rounds=3)
    trainer.run(20)  # warm-up
    common._sync(str(data.x_train.device))
    start = time.perf_counter()
    trainer.run(iterations)
    common._sync(str(data.x_train.device))
    return (time.perf_counter() - start) / ((iterations - 20) * replicas), trainer.test_evaluations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", default="1,4,8,16")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="float32", choices=["float32", "bf16"])
    parser.add_argument("--repeats", type=int, default=3, help="timings per replica count (median reported)")
    args = parser.parse_args()

    data = lottery.load_dataset("mnist", common.data_dir(), val_size=5000).to(args.device)
    peak = common.matmul_peak(args.device)
    bandwidth = common.memory_bandwidth(args.device)
    plain = common.plain_loop(data, args.iterations, 60, 100)
    print(f"device {args.device}, {torch.get_num_threads()} threads; float32 matmul peak {peak / 1e12:.3f} TFLOP/s, "
          f"copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(f"plain per-network loop: {plain * 1e3:.3f} ms/iteration")
    train = common.lenet_train_flops(60)
    val = common.lenet_eval_flops(5000) / 100
    adam_bytes = PARAMS * 4 * 10  # fused Adam reads p, g, m, v, writes p, m, v; the grad mask reads g, m, writes g
    bound = (train + val) / peak + adam_bytes / bandwidth
    print(f"bound per replica-iteration: {bound * 1e3:.3f} ms  (FLOPs {(train + val) / 1e6:.0f} M at peak "
          f"+ optimizer {adam_bytes / 1e6:.1f} MB at bandwidth), plus the test passes run, at peak")
    print(f"{'replicas':>8} {'ms/replica-it':>13} {'vs plain':>9} {'of peak':>8} {'bound ms':>9} {'ours/bound':>10}"
          f"  precision {args.precision}")
    for replicas in [int(r) for r in args.replicas.split(",")]:
        # The median of `repeats` timings: this machine's timings vary by ±10% from run to run.
        timings = sorted(ours(data, replicas, args.iterations, args.precision) for _ in range(args.repeats))
        seconds, tests = timings[len(timings) // 2]
        test_flops = tests * common.lenet_eval_flops(10000) / (args.iterations * replicas)
        achieved = (train + val + test_flops) / seconds
        with_tests = bound + test_flops / peak  # the test set at the end and on the early-stop snapshots
        print(f"{replicas:>8} {seconds * 1e3:>13.3f} {plain / seconds:>8.2f}x {achieved / peak:>8.1%} "
              f"{with_tests * 1e3:>9.3f} {seconds / with_tests:>9.2f}x")


if __name__ == "__main__":
    main()
