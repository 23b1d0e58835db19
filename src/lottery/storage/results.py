"""results.csv: one row per (arm, trial, level), gathered from each finished replica's metrics.json."""
from __future__ import annotations

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
                    row = {c: metrics.get(c, "") for c in RESULT_COLUMNS + LATER_COLUMNS}
                    if "steps" in metrics:  # a user's loop: the steps it took (the ledger's train_iterations)
                        row["steps"] = metrics["steps"]
                    rows.append(row)
    return rows


def read_results(run_dir: Path | str) -> list[dict[str, Any]]:
    """results.csv with numbers parsed; a truncated or foreign table is one clear error naming the file."""
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
    return out
