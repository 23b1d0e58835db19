"""Several runs on the same axes, and how much their masks overlap.

`compare_runs` writes into OUT: compare.csv (per run, arm, level: the metrics over trials),
jaccard.csv (per pair of runs, level: Jaccard index of the tickets' masks over shared trials, beside
what two random masks with the same per-layer counts would give), accuracy.png, early_stop.png and
compare.md.
"""
from __future__ import annotations

import contextlib
from collections import defaultdict
from itertools import combinations
from pathlib import Path

import torch

from lottery.config import RunConfig
from lottery.errors import UserError
from lottery.reports.figures import errorbar_series, percent_axis, save_figure, spread, subplots
from lottery.storage.finished import FinishedRun, open_run
from lottery.storage.files import atomic_write_text, hold_run, make_folder, save_csv

COMPARE_COLUMNS = ["run", "arm", "level", "percent_remaining", "trials", "early_stop_iteration_mean",
                   "early_stop_iteration_min", "early_stop_iteration_max", "early_stop_test_accuracy_mean",
                   "early_stop_test_accuracy_min", "early_stop_test_accuracy_max"]
JACCARD_COLUMNS = ["run_a", "run_b", "level", "percent_remaining_a", "percent_remaining_b", "trials",
                   "jaccard_mean", "jaccard_min", "jaccard_max", "jaccard_random_masks"]


def jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """|A ∩ B| / |A ∪ B| over all prunable weights pooled (the masks must cover the same tensors)."""
    if set(a) != set(b) or any(a[n].shape != b[n].shape for n in a):
        raise UserError("masks of different models cannot be compared")
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else 1.0


def random_jaccard(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Expected Jaccard index of two independent random masks with the per-layer counts of a and b."""
    inter = sum(int(a[n].sum()) * int(b[n].sum()) / a[n].numel() for n in a)
    union = sum(int(a[n].sum()) + int(b[n].sum()) for n in a) - inter
    return inter / union if union else 1.0


def mask_overlap(run_a: Path | FinishedRun, run_b: Path | FinishedRun) -> list[dict]:
    """Jaccard index of the tickets' masks of two runs, per level, over the trials both have. The masks are
    read checked (lottery.storage.finished: names, shapes and the digest their networks trained under)."""
    a = run_a if isinstance(run_a, FinishedRun) else open_run(run_a)
    b = run_b if isinstance(run_b, FinishedRun) else open_run(run_b)
    levels_a = _levels(a.rows)
    levels_b = _levels(b.rows)
    rows = []
    for level in sorted(set(levels_a) & set(levels_b)):
        trials = sorted(set(levels_a[level]) & set(levels_b[level]))
        pairs = [(a.mask(t, level), b.mask(t, level)) for t in trials]
        values = [jaccard(x, y) for x, y in pairs]
        mean, low, high = spread(values)
        rows.append({"run_a": a.store.root.name, "run_b": b.store.root.name, "level": level,
                     "percent_remaining_a": round(levels_a[level][trials[0]], 3),
                     "percent_remaining_b": round(levels_b[level][trials[0]], 3), "trials": len(trials),
                     "jaccard_mean": round(mean, 4), "jaccard_min": round(low, 4), "jaccard_max": round(high, 4),
                     "jaccard_random_masks": round(sum(random_jaccard(x, y) for x, y in pairs) / len(pairs), 4)})
    return rows


def _levels(rows: list[dict]) -> dict[int, dict[int, float]]:
    """level -> trial -> percent remaining, for the ticket (imp) rows."""
    out: dict[int, dict[int, float]] = defaultdict(dict)
    for r in rows:
        if r["arm"] == "imp":
            out[r["level"]][r["trial"]] = r["percent_remaining"]
    return out


def compare_runs(run_dirs: list[Path | str], out_dir: Path | str, labels: list[str] | None = None,
                 arms: tuple[str, ...] = ("imp",)) -> Path:
    """Write the comparison of `run_dirs` into `out_dir` (see the module doc) and return it. The runs are
    read while no `lottery find` extends them (each held shared)."""
    with contextlib.ExitStack() as held:
        for run in run_dirs:
            if Path(run).is_dir():
                held.enter_context(hold_run(run, exclusive=False))
        return _compare(run_dirs, out_dir, labels, arms)


def _compare(run_dirs: list[Path | str], out_dir: Path | str, labels: list[str] | None,
             arms: tuple[str, ...]) -> Path:
    runs = [Path(r) for r in run_dirs]
    if len(runs) < 2:
        raise UserError("compare needs at least two run directories")
    labels = labels or [r.name for r in runs]
    if len(labels) != len(runs) or len(set(labels)) != len(labels):
        raise UserError(f"give one distinct label per run ({len(runs)} runs, labels {labels})")
    finished = [open_run(r) for r in runs]
    opened = [(run.config, run.rows) for run in finished]
    out = make_folder(Path(out_dir))

    table = []
    for label, (_, rows) in zip(labels, opened):
        grouped: dict[tuple[str, int], list[dict]] = defaultdict(list)
        for r in rows:
            if r["arm"] in arms or r["level"] == 0:
                grouped[(r["arm"], r["level"])].append(r)
        for (arm, level), group in sorted(grouped.items()):
            it = spread([r["early_stop_iteration"] for r in group])
            acc = spread([100 * r["early_stop_test_accuracy"] for r in group])
            table.append({"run": label, "arm": arm, "level": level,
                          "percent_remaining": round(group[0]["percent_remaining"], 3), "trials": len(group),
                          **{f"early_stop_iteration_{k}": round(v, 1) for k, v in zip(("mean", "min", "max"), it)},
                          **{f"early_stop_test_accuracy_{k}": round(v, 3) for k, v in zip(("mean", "min", "max"), acc)}})
    overlap = []
    for (i, a), (j, b) in combinations(enumerate(finished), 2):
        for row in mask_overlap(a, b):
            overlap.append({**row, "run_a": labels[i], "run_b": labels[j]})

    for metric, scale, ylabel, name in (("early_stop_test_accuracy", 100, "test accuracy at early stop (%)", "accuracy"),
                                        ("early_stop_iteration", 1, "early-stop iteration (min. validation loss)",
                                         "early_stop")):
        fig, ax = subplots(figsize=(6.8, 4.4))
        percents: list[float] = []
        for label, (_, rows) in zip(labels, opened):
            for arm in arms:
                points: dict[int, list[dict]] = defaultdict(list)
                for r in rows:
                    if r["arm"] == arm or (r["level"] == 0 and r["arm"] == "imp"):
                        points[r["level"]].append(r)
                if len(points) <= 1:
                    continue
                series = [(g[0]["percent_remaining"], [scale * r[metric] for r in g]) for g in points.values()]
                name_ = label if arms == ("imp",) else f"{label}: {arm}"
                percents += errorbar_series(ax, series, marker="o", ms=3, label=name_)
        if percents:
            percent_axis(ax, percents)
        ax.set_ylabel(ylabel)
        ax.set_title(f"{ylabel[0].upper()}{ylabel[1:]}\n(mean; bars: min/max over trials)", fontsize=10)
        ax.legend(fontsize=8)
        save_figure(fig, out / f"{name}.png")

    save_csv(out / "compare.csv", table, COMPARE_COLUMNS)
    save_csv(out / "jaccard.csv", overlap, JACCARD_COLUMNS)
    atomic_write_text(out / "compare.md", _markdown(labels, runs, opened, table, overlap, arms))
    return out


def _markdown(labels: list[str], runs: list[Path], opened: list[tuple[RunConfig, list[dict]]], table: list[dict],
              overlap: list[dict], arms: tuple[str, ...]) -> str:
    lines = ["# Comparison", "", "| label | run | dataset | model | criterion | dropout | iterations | trials |",
             "|---|---|---|---|---|---:|---:|---:|"]
    for label, run, (config, rows) in zip(labels, runs, opened):
        lines.append(f"| {label} | {run} | {config.data.dataset} | {config.model.name} | {config.prune.criterion} "
                     f"| {config.model.dropout:g} | {config.train.iterations} | {len({r['trial'] for r in rows})} |")
    lines += ["", "![accuracy](accuracy.png) ![early stop](early_stop.png)", "",
              f"Arms shown: {', '.join(arms)}. Cells: mean [min, max] over trials.", "",
              "| run | arm | level | weights remaining (%) | early-stop iteration | test acc. at early stop (%) |",
              "|---|---|---:|---:|---:|---:|"]
    for r in table:
        lines.append(f"| {r['run']} | {r['arm']} | {r['level']} | {r['percent_remaining']:.1f} "
                     f"| {r['early_stop_iteration_mean']:.0f} [{r['early_stop_iteration_min']:.0f}, "
                     f"{r['early_stop_iteration_max']:.0f}] | {r['early_stop_test_accuracy_mean']:.2f} "
                     f"[{r['early_stop_test_accuracy_min']:.2f}, {r['early_stop_test_accuracy_max']:.2f}] |")
    lines += ["", "## Mask overlap of the tickets", "",
              "Jaccard index |A ∩ B| / |A ∪ B| of the two runs' masks for the same trial (the same θ0 when the "
              "runs share seed and model), pooled over all prunable weights; beside it the expected index of two "
              "random masks with the same per-layer counts.", "",
              "| run A | run B | level | remaining A (%) | remaining B (%) | trials | Jaccard [min, max] | random masks |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in overlap:
        lines.append(f"| {r['run_a']} | {r['run_b']} | {r['level']} | {r['percent_remaining_a']:.1f} "
                     f"| {r['percent_remaining_b']:.1f} | {r['trials']} | {r['jaccard_mean']:.3f} "
                     f"[{r['jaccard_min']:.3f}, {r['jaccard_max']:.3f}] | {r['jaccard_random_masks']:.3f} |")
    return "\n".join(lines) + "\n"
