"""What live tracking costs a run: the same small find with and without `--track` (lottery.training.tracking).

    nice -n 19 .venv/bin/python benchmarks/tracking_overhead.py [--repeats 5] [--iterations 2000]

One process; the libraries are imported before timing (their import is paid once per command and reported
apart). Two figures per variant:
- in tracking: the seconds spent inside the tracking calls themselves (every PassWatch method, the sinks' opening
  and closing), as a share of the run's wall time: robust to other work on the machine;
- wall: the fastest of `repeats` interleaved runs against the fastest untracked one: the honest end-to-end
  figure, but on a shared machine its noise (several percent) is larger than the effect.
Evaluation every 100 iterations, as a long run's; the checkpoint cadence is the default (60 s), so the live
curves.csv is written as often as it would be in such a run.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import lottery
import lottery.procedure.find as find_module
from lottery.training import tracking


def config(iterations: int) -> lottery.RunConfig:
    config = lottery.get_preset("mnist1d-mlp")
    config.trials, config.arms, config.prune.levels = 2, ["imp", "reinit"], 1
    config.train.iterations, config.train.eval_every = iterations, 100
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    for module in ("torch.utils.tensorboard", "mlflow.tracking"):
        start = time.perf_counter()
        __import__(module)
        print(f"import {module}: {time.perf_counter() - start:.2f} s (once per command)")
    data = lottery.load_dataset("mnist1d")
    variants = {"none": (), "tensorboard": ("tensorboard",), "tensorboard,mlflow": ("tensorboard", "mlflow")}
    walls: dict[str, list[float]] = {v: [] for v in variants}
    cpus: dict[str, list[float]] = {v: [] for v in variants}
    inside: dict[str, list[float]] = {v: [] for v in variants}
    spent = [0.0]

    def timed(function):  # type: ignore[no-untyped-def]
        def wrapper(*a, **k):  # type: ignore[no-untyped-def]
            start = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                spent[0] += time.perf_counter() - start
        return wrapper

    for method in ("begin", "evaluated", "checkpoint", "end"):
        setattr(tracking.PassWatch, method, timed(getattr(tracking.PassWatch, method)))
    for sink in (tracking.TensorBoardSink, tracking.MLflowSink):
        sink.close = timed(sink.close)
    find_module.open_sinks = timed(find_module.open_sinks)
    root = Path(tempfile.mkdtemp(prefix="tracking-overhead-"))
    try:
        lottery.find_tickets(config(args.iterations), root / "warm-up", data=data,
                             options=lottery.RunOptions(progress=False))
        for repeat in range(args.repeats):
            for name, track in variants.items():
                run = root / f"{name}-{repeat}"
                wall, cpu, spent[0] = time.perf_counter(), time.process_time(), 0.0
                lottery.find_tickets(config(args.iterations), run, data=data,
                                     options=lottery.RunOptions(progress=False, track=track))
                walls[name].append(time.perf_counter() - wall)
                cpus[name].append(time.process_time() - cpu)
                inside[name].append(spent[0] / walls[name][-1])
                shutil.rmtree(run)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    networks = config(args.iterations).trials * (1 + len(config(args.iterations).arms))
    print(f"{networks} networks x {args.iterations} iterations, evaluation every 100; {args.repeats} runs each, "
          f"{os.cpu_count()} CPUs, {lottery.__name__} with torch threads {__import__('torch').get_num_threads()}")
    base_wall, base_cpu = min(walls["none"]), min(cpus["none"])
    for name in variants:
        wall, cpu = min(walls[name]), min(cpus[name])
        print(f"{name:>20}: in tracking {100 * statistics.median(inside[name]):5.2f}% of the run (median)   "
              f"wall {wall:6.2f} s (min; median {statistics.median(walls[name]):6.2f}) "
              f"{100 * (wall / base_wall - 1):+5.1f}%   cpu {cpu:6.2f} s {100 * (cpu / base_cpu - 1):+5.1f}%")


if __name__ == "__main__":
    main()
