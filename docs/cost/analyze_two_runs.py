"""The Conv-2 tables of docs/cost.md from two runs that share θ0 and data order (same seed):
IMP's chain (`--arms imp`, iterative) and every cheaper method in one-shot mode (`--one-shot P1,P2,...`, the
percents of IMP's levels), where the `imp` arm is one-shot pruning from the dense network.

    python docs/cost/analyze_two_runs.py IMP_RUN ONE_SHOT_RUN > docs/cost/conv2-cifar10-400/tables.md
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from analyze import METHODS, results, spread  # noqa: E402


def main() -> None:
    chain, one_shot = Path(sys.argv[1]), Path(sys.argv[2])
    imp, cheap = defaultdict(list), defaultdict(list)
    for r in results(chain):
        imp[r["level"]].append(r)
    for r in results(one_shot):
        cheap[(r["arm"], r["level"])].append(r)
    dense = [100 * r["early_stop_test_accuracy"] for r in imp[0]]
    dense_again = [100 * r["early_stop_test_accuracy"] for r in cheap[("imp", 0)]]
    print(f"Dense network: {spread(dense)}% test accuracy at early stop ({len(dense)} trials); the one-shot run's own "
          f"level 0: {spread(dense_again)}% (the same θ0 and data order: {'identical' if dense == dense_again else 'DIFFERENT'}).\n")
    arms = list(dict.fromkeys(a for a, _ in cheap if a != "imp"))
    for level in sorted({lv for _, lv in cheap if lv > 0}):
        target = cheap[("imp", level)][0]["percent_remaining"]
        chain_level = min((lv for lv in imp if lv > 0), key=lambda lv: abs(np.log(imp[lv][0]["percent_remaining"] / target)))
        ticket = imp[chain_level]
        if abs(ticket[0]["percent_remaining"] / target - 1) > 0.01 or len(ticket) < len(dense):
            print(f"### {target:.2f}% remaining: IMP's chain has not reached it yet\n")
            continue
        base = np.mean([100 * r["early_stop_test_accuracy"] for r in ticket])
        print(f"### {target:.2f}% remaining (IMP level {chain_level}: {ticket[0]['percent_remaining']:.2f}%)\n")
        print("| method | test acc. at early stop (%) | early-stop iter. | cost to find (dense runs) | mean vs IMP (points) |")
        print("|---|---:|---:|---:|---:|")

        def line(name: str, cell: list[dict]) -> None:
            acc = [100 * r["early_stop_test_accuracy"] for r in cell]
            find = np.mean([r["cost_to_find"] for r in cell])
            it = np.mean([r["early_stop_iteration"] for r in cell])
            print(f"| {name} | {spread(acc)} | {it:.0f} | {find:.3f} | {np.mean(acc) - base:+.2f} |")

        line("IMP (the ticket)", ticket)
        line("one-shot", cheap[("imp", level)])
        for arm in arms:
            if (arm, level) in cheap:
                line(arm, cheap[(arm, level)])
        print("\nFrankle et al. 2021's shuffle check (mean accuracy, method minus its layer-wise shuffle; IMP's and "
              "one-shot's shuffle is `random`, which has their per-layer counts):\n")
        shuffle = np.mean([100 * r["early_stop_test_accuracy"] for r in cheap[("random", level)]]) \
            if ("random", level) in cheap else None
        for name, cell in (("IMP", ticket), ("one-shot", cheap[("imp", level)])):
            if shuffle is not None:
                a = np.mean([100 * r["early_stop_test_accuracy"] for r in cell])
                print(f"- {name}: {a:.2f} vs random {shuffle:.2f}: {a - shuffle:+.2f} points")
        for method in METHODS:
            if (method, level) in cheap and (f"{method}-shuffle", level) in cheap:
                a = np.mean([100 * r["early_stop_test_accuracy"] for r in cheap[(method, level)]])
                b = np.mean([100 * r["early_stop_test_accuracy"] for r in cheap[(f"{method}-shuffle", level)]])
                print(f"- {method}: {a:.2f} vs {method}-shuffle {b:.2f}: {a - b:+.2f} points")
        print()


if __name__ == "__main__":
    main()
