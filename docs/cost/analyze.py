"""The tables of docs/cost.md from a run's results.csv (and its masks, for the early-bird iterations).

    python docs/cost/analyze.py RUN_DIR > docs/cost/tables.md
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

import lottery
from lottery.procedure.lineage import read as lineage_of
from lottery.storage.files import RunStore
from lottery.storage.ledger import with_costs
from lottery.storage.results import collect_results
from lottery.storage.runinfo import read_config

TARGETS = (51.3, 21.1, 7.0, 3.6)
METHODS = ("init-magnitude-global", "snip-global", "grasp-global", "synflow-global")


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.2f} [{np.min(values):.2f}, {np.max(values):.2f}]"


def results(run: Path) -> list[dict]:
    """results.csv's rows, or, while the run is still going, the same rows gathered from its finished networks."""
    store = RunStore(run)
    if store.results_path.exists():
        return lottery.read_results(run)
    config = read_config(store)
    trials, levels = list(range(config.trials)), config.levels()
    found_at = {}
    for trial in trials:
        for level in levels[1:]:
            path = store.arm_mask_path(trial, level, "early-bird")
            info = (lineage_of(path) or {}).get("found") if path.exists() else None
            if info:
                found_at[("early-bird", trial, level)] = int(info["iteration"])
    rows = with_costs(collect_results(store, trials, levels, tuple(config.arms)), config, found_at)
    return [{k: (v if v != "" else None) for k, v in r.items()} for r in rows]


def main() -> None:
    run = Path(sys.argv[1])
    rows = results(run)
    by = defaultdict(list)
    for r in rows:
        by[(r["arm"], r["level"])].append(r)
    levels = sorted({r["level"] for r in rows})
    percent = {lv: by[("imp", lv)][0]["percent_remaining"] for lv in levels if ("imp", lv) in by}
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    dense = [100 * r["early_stop_test_accuracy"] for r in by[("imp", 0)]]
    print(f"Dense network (level 0): {spread(dense)}% test accuracy at early stop, "
          f"{len(dense)} trials; levels done: {levels[0]}..{levels[-1]} ({percent[levels[-1]]:.1f}% remaining).\n")
    for target in TARGETS:
        level = min(percent, key=lambda lv: abs(np.log(percent[lv] / target)))
        if abs(np.log(percent[level] / target)) > 0.1:
            print(f"### {target}% remaining: not reached by this run\n")
            continue
        imp = [100 * r["early_stop_test_accuracy"] for r in by[("imp", level)]]
        print(f"### {percent[level]:.1f}% remaining (level {level})\n")
        print("| arm | test acc. at early stop (%) | early-stop iter. | cost to find (dense runs) | cost to find + train "
              "| mean vs ticket (points) |")
        print("|---|---:|---:|---:|---:|---:|")
        for arm in arms:
            cell = by.get((arm, level))
            if not cell:
                continue
            acc = [100 * r["early_stop_test_accuracy"] for r in cell]
            find = np.mean([r["cost_to_find"] for r in cell]) if cell[0]["cost_to_find"] is not None else float("nan")
            total = np.mean([r["cost_total"] for r in cell]) if cell[0]["cost_total"] is not None else float("nan")
            it = np.mean([r["early_stop_iteration"] for r in cell])
            print(f"| {arm} | {spread(acc)} | {it:.0f} | {find:.3f} | {total:.3f} | {np.mean(acc) - np.mean(imp):+.2f} |")
        print()
        print("Frankle et al. 2021's shuffle check at this level (mean accuracy, method minus its layer-wise shuffle):\n")
        for method in ("imp", *METHODS):
            control = "random" if method == "imp" else f"{method}-shuffle"
            if (method, level) in by and (control, level) in by:
                a = np.mean([100 * r["early_stop_test_accuracy"] for r in by[(method, level)]])
                b = np.mean([100 * r["early_stop_test_accuracy"] for r in by[(control, level)]])
                print(f"- {method}: {a:.2f} vs {control} {b:.2f}: {a - b:+.2f} points")
        print()
    store = RunStore(run)
    found = []
    for r in by.get(("early-bird", 1), []):
        info = (lineage_of(store.arm_mask_path(r["trial"], 1, "early-bird")) or {}).get("found", {})
        found.append((r["trial"], info.get("iteration"), info.get("found"), (info.get("distances") or [[None, None]])[-1]))
    if found:
        print("Early-bird search at level 1 (trial, iteration, found, last [iteration, distance]):", found)


if __name__ == "__main__":
    main()
