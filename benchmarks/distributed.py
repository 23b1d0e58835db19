"""Wall time of one small `lottery find` in one process and split over N processes with torchrun.

Each variant runs the same command into its own fresh folder, interleaved (A B C A B C ...) so that the
machine's drift hits all alike; the median is reported with the ratio to one process at the same thread
count, and every variant's results.csv must equal the one-process run's (the split must not change a
number). On the CPU each process gets one thread (OMP_NUM_THREADS=1), so N processes use N cores; the
one-process run with N threads is shown too: it is the fair alternative on the same cores.

    .venv/bin/python benchmarks/distributed.py [--processes 2] [--repeats 3] [--device cpu|cuda]
        [--preset lenet300-mnist] [--iterations 1000] [--levels 2] [--trials 2]

On a GPU machine, --device cuda --processes (number of GPUs) gives each rank its own GPU (LOCAL_RANK).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def run(command: list[str], threads: int, out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{result.stderr[-2000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--preset", default="lenet300-mnist")
    parser.add_argument("--iterations", type=int, default=1000)
    parser.add_argument("--levels", type=int, default=2)
    parser.add_argument("--trials", type=int, default=2)
    args = parser.parse_args()
    n = args.processes
    find = ["-m", "lottery", "find", args.preset, "--iterations", str(args.iterations), "--levels", str(args.levels),
            "--trials", str(args.trials), "--arms", "imp,reinit", "--no-progress", "--device", args.device,
            "--data-dir", str(common.data_dir())]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n)]
    variants = {f"1 process, 1 thread": ([sys.executable, *find], 1),
                f"{n} processes (torchrun), 1 thread each": ([*torchrun, *find], 1),
                f"1 process, {n} threads": ([sys.executable, *find], n)}
    if args.device != "cpu":  # threads matter little on a GPU: one process on one GPU against n on n
        variants = dict(list(variants.items())[:2])
    times: dict[str, list[float]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as tmp:
        results: dict[str, str] = {}
        for repeat in range(args.repeats):
            for index, (name, (command, threads)) in enumerate(variants.items()):
                out = Path(tmp) / f"{index}-{repeat}"
                times[name].append(run([*command, "--out", str(out)], threads, out))
                results[name] = next(out.glob("*/results.csv")).read_text()
        reference = results[next(iter(variants))]
        same = all(text == reference for text in results.values())
    print(f"{args.preset}: {args.trials} trials x (imp, reinit), {args.levels} levels after the dense one, "
          f"{args.iterations} iterations, device {args.device}; median of {args.repeats}, interleaved")
    base = statistics.median(times[next(iter(variants))])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:<40} {median:7.1f} s   x{base / median:4.2f} vs one process, one thread   "
              f"(runs: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"results.csv identical in every variant: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
