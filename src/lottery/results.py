"""results.csv: one row per (arm, trial, level), gathered from each finished replica's metrics.json."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from .store import RunStore, load_csv, load_json

RESULT_COLUMNS = [
    "arm", "trial", "level", "percent_remaining", "weights_remaining", "prunable_weights",
    "early_stop_iteration", "early_stop_val_loss", "early_stop_test_accuracy",
    "final_test_accuracy", "final_train_accuracy",
]


def collect_results(store: RunStore, trials: list[int], levels: list[int], arms: tuple[str, ...] = ("imp",)) -> list[dict[str, Any]]:
    rows = []
    for arm in arms:
        for level in levels:
            for trial in trials:
                path = store.arm_dir(trial, level, arm) / "metrics.json"
                if path.exists():
                    metrics = load_json(path)
                    rows.append({c: metrics[c] for c in RESULT_COLUMNS})
    return rows


def read_results(run_dir: Path | str) -> list[dict[str, Any]]:
    """results.csv with numbers parsed."""
    rows = load_csv(Path(run_dir) / "results.csv")
    ints = {"trial", "level", "weights_remaining", "prunable_weights", "early_stop_iteration"}
    out = []
    for row in rows:
        out.append({k: (v if k == "arm" else int(v) if k in ints else float(v)) for k, v in row.items()})
    return out
