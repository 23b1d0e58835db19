"""results.csv: one row per (arm, trial, level), gathered from each finished replica's metrics.json."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from lottery.errors import BrokenFile
from lottery.storage.files import RunStore, load_csv, load_json, remedy

RESULT_COLUMNS = [
    "arm", "trial", "level", "percent_remaining", "weights_remaining", "prunable_weights",
    "early_stop_iteration", "early_stop_val_loss", "early_stop_test_accuracy",
    "final_test_accuracy", "final_train_accuracy",
]
# Columns added after runs existed: written by every run now, read as None from a row or metrics.json
# written before them. train_accuracy_examples, val_examples, test_examples: how many examples of each set
# the accuracies were measured on (lottery.training.eval_sets: a short run's are samples); the
# cost ledger's columns (lottery.storage.ledger): train_iterations, train_flops (dense FLOPs the built-in
# trainer computed; empty for a user's loop), and cost_to_find and cost_total in dense training runs;
# for a graph model (lottery.models.gcn), its edges kept of the graph's (weights_remaining then counts
# weights only) and the MACs of a whole-graph forward, with the mask and dense; empty for other models.
LATER_COLUMNS = ["train_accuracy_examples", "train_iterations", "train_flops", "cost_to_find", "cost_total",
                 "val_examples", "test_examples", "edges_remaining", "graph_edges", "percent_edges_remaining",
                 "macs", "dense_macs"]
LATER_FLOATS = {"cost_to_find", "cost_total", "percent_edges_remaining"}


NUMBER = (int, float)  # JSON numbers; NaN (not measured) is a float
OPTIONAL_INT = (int, type(None))
OPTIONAL_NUMBER = (int, float, type(None))
# What metrics.json's writer (procedure/levels.py, RunRecorder.record) puts in each field: read_metrics checks
# every field it finds against this, so a wrong-typed value is named in its file, not met deep in a reader.
METRIC_TYPES: dict[str, type | tuple[type, ...]] = {
    "arm": str, "trial": int, "level": int, "percent_remaining": NUMBER, "weights_remaining": int,
    "prunable_weights": int, "early_stop_iteration": int, "early_stop_val_loss": NUMBER,
    "early_stop_test_accuracy": NUMBER, "final_test_accuracy": NUMBER, "final_train_accuracy": NUMBER,
    "mask_digest": str, "steps": int,
    **{c: (OPTIONAL_NUMBER if c in LATER_FLOATS else OPTIONAL_INT) for c in LATER_COLUMNS},
}


def read_metrics(path: Path, keys: tuple[str, ...] = tuple(RESULT_COLUMNS)) -> dict[str, Any]:
    """A network's metrics.json: an object holding `keys`, every known field of its type (METRIC_TYPES)."""
    return load_json(path, keys, METRIC_TYPES)


def collect_results(store: RunStore, trials: list[int], levels: list[int], arms: tuple[str, ...] = ("imp",)) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        for level in levels:
            for trial in trials:
                path = store.metrics_path(trial, level, arm)
                if path.exists():
                    metrics = read_metrics(path)
                    says = (metrics["arm"], metrics["trial"], metrics["level"])
                    if says != (arm, trial, level):  # a file copied from another network's folder
                        raise BrokenFile(f"{path} is another network's (it says arm {says[0]}, trial {says[1]}, level "
                                         f"{says[2]}); {remedy(path)}", reason="another network's metrics")
                    row = {c: metrics.get(c, "") for c in RESULT_COLUMNS + LATER_COLUMNS}
                    if "steps" in metrics:  # a user's loop: the steps it took (the ledger's train_iterations)
                        row["steps"] = metrics["steps"]
                    rows.append(row)
    return rows


_NETWORK = re.compile(r"trial_(\d+)/level_(\d+)/([^/]+)/metrics\.json")


def finished_networks(store: RunStore) -> set[tuple[str, int, int]]:
    """(arm, trial, level) of every finished network in the run's own folders (its metrics.json exists)."""
    found = set()
    for path in store.root.glob("trial_*/level_*/*/metrics.json"):
        match = _NETWORK.fullmatch(path.relative_to(store.root).as_posix())
        if match:
            found.add((match.group(3), int(match.group(1)), int(match.group(2))))
    return found


def check_rows_complete(store: RunStore, rows: list[dict]) -> None:
    """results.csv holds a row for every finished network of its arms, trials and levels: a table cut at a line
    boundary parses, and would quietly show fewer networks. (A later `find` with fewer trials, levels or arms
    writes a smaller table on purpose: only networks of the arms, trials and levels it holds are asked for.)"""
    arms, trials, levels = ({r[k] for r in rows} for k in ("arm", "trial", "level"))
    have = {(r["arm"], r["trial"], r["level"]) for r in rows}
    missing = sorted((t, lv, a) for a, t, lv in finished_networks(store) - have
                     if a in arms and t in trials and lv in levels)
    if missing:
        t, lv, a = missing[0]
        path = store.results_path
        raise BrokenFile(f"{path} is incomplete (no row for {len(missing)} finished network"
                         f"{'s' if len(missing) > 1 else ''}, e.g. trial_{t}/level_{lv:02d}/{a}); {remedy(path)}",
                         reason="rows of finished networks are missing")


def read_results(run_dir: Path | str) -> list[dict[str, Any]]:
    """results.csv with numbers parsed; a truncated, foreign or incomplete table is one clear error naming the
    file (read_results is its only reader: report, claims, compare, the CLI's summary and the experiments)."""
    path = RunStore(run_dir).results_path
    rows = load_csv(path, RESULT_COLUMNS)
    ints = {"trial", "level", "weights_remaining", "prunable_weights", "early_stop_iteration",
            *(set(LATER_COLUMNS) - LATER_FLOATS)}
    out = []
    for number, row in enumerate(rows, start=2):
        row = {**{c: "" for c in LATER_COLUMNS}, **row}
        try:
            out.append({k: (v if k == "arm" else None if v == "" and k in LATER_COLUMNS
                            else int(v) if k in ints else float(v)) for k, v in row.items()})
        except ValueError as exc:
            raise BrokenFile(f"{path} is malformed (line {number}: {exc}); {remedy(path)}") from None
    check_rows_complete(RunStore(run_dir), out)
    return out
