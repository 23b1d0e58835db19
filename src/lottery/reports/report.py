"""Figures and a table from a run directory: RUN_DIR/report/{accuracy,early_stop,curves}.png, report.md."""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from lottery.reports.graph_report import graph_section
from lottery.reports.claims import check_claims, claims_markdown, protocol_caveats
from lottery.environment import describe
from lottery.errors import UserError
from lottery.reports.figures import get_cmap, percent_axis, save_figure, spread, subplots
from lottery.storage.results import read_results
from lottery.storage.runinfo import read_config, recorded_environment
from lottery.storage.files import RunStore, atomic_write_text, load_csv
from lottery.reports.live import LiveRun, live_section, report_hold

CURVE_TARGETS = (100.0, 51.3, 21.1, 7.0, 3.6, 1.9)  # the paper's Fig. 3 levels


def _by_arm_level(rows: list[dict]) -> dict[str, dict[int, list[dict]]]:
    out: dict[str, dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        out[row["arm"]][row["level"]].append(row)
    return out


def _metric_figure(grouped: dict, metric: str, scale: float, ylabel: str, title: str, path: Path) -> None:
    fig, ax = subplots(figsize=(6.4, 4.2))
    all_percents = []
    for arm, levels in grouped.items():
        pts = sorted(((rows[0]["percent_remaining"], spread([scale * r[metric] for r in rows]))
                      for rows in levels.values()), reverse=True)
        x = [p for p, _ in pts]
        mean = np.array([s[0] for _, s in pts])
        low, high = mean - np.array([s[1] for _, s in pts]), np.array([s[2] for _, s in pts]) - mean
        ax.errorbar(x, mean, yerr=[low, high], marker="o", ms=4, capsize=3, label=arm)
        all_percents += x
        if arm == "imp" and 0 in levels:
            dense = np.mean([scale * r[metric] for r in levels[0]])
            ax.axhline(dense, color="grey", ls="--", lw=1, label=f"dense network ({dense:.1f})")
    percent_axis(ax, all_percents)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n(mean; bars: min/max over trials)", fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def _mean_curve(store: RunStore, arm: str, level: int, trials: list[int]) -> tuple[list[int], np.ndarray, str]:
    """Per-trial accuracy curves of one (arm, level): test accuracy, or validation accuracy where the
    run did not keep full test curves."""
    series, used = [], "test_accuracy"
    for trial in trials:
        curve = load_csv(store.curves_path(trial, level, arm), ("iteration", "test_accuracy", "val_accuracy"))
        acc = [float(c["test_accuracy"]) for c in curve]
        if any(math.isnan(a) for a in acc):
            used = "val_accuracy"
        series.append(([int(c["iteration"]) for c in curve], curve))
    length = min(len(its) for its, _ in series)
    values = np.array([[float(c[used]) for c in curve[:length]] for _, curve in series]) * 100
    return series[0][0][:length], values, used


def _has_curves(store: RunStore, rows: list[dict]) -> bool:
    """Every ticket has curves.csv with an accuracy column (a user's loop may log none, or only losses)."""
    paths = [store.curves_path(r["trial"], r["level"], r["arm"]) for r in rows if r["arm"] == "imp"]
    if not paths or not all(p.exists() for p in paths):
        return False
    first = load_csv(paths[0], ("iteration",))
    return any(not math.isnan(float(c.get(k, "nan") or "nan")) for c in first for k in ("test_accuracy", "val_accuracy"))


def _curves_figure(store: RunStore, grouped: dict, path: Path) -> str:
    """Accuracy over training at levels near the paper's Fig. 3 levels; reinit arms dashed."""
    imp = grouped.get("imp", {})
    percents = {level: rows[0]["percent_remaining"] for level, rows in imp.items()}
    chosen = sorted({min(percents, key=lambda lv: abs(math.log(percents[lv] / t))) for t in CURVE_TARGETS})
    fig, ax = subplots(figsize=(7.2, 4.6))
    kinds = set()
    for level in chosen:
        its, values, used = _mean_curve(store, "imp", level, [r["trial"] for r in imp[level]])
        kinds.add(used)
        line, = ax.plot(its, values.mean(0), label=f"{percents[level]:.1f}% remaining")
        if len(values) > 1:
            ax.fill_between(its, values.min(0), values.max(0), color=line.get_color(), alpha=0.2)
        reinit = grouped.get("reinit", {}).get(level)
        if reinit:
            its, values, used = _mean_curve(store, "reinit", level, [r["trial"] for r in reinit])
            kinds.add(used)
            ax.plot(its, values.mean(0), ls="--", color=line.get_color(), label=f"{percents[level]:.1f}% reinit")
    name = "test" if kinds == {"test_accuracy"} else "validation" if kinds == {"val_accuracy"} else "test/validation"
    ax.set_xlabel("training iteration")
    ax.set_ylabel(f"{name} accuracy (%)")
    ax.set_title(f"{name.capitalize()} accuracy during training (mean; band: min/max over trials)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    lows = [float(np.percentile(line.get_ydata(), 10)) for line in ax.lines]
    if lows:
        ax.set_ylim(bottom=max(0.0, min(lows) - 1))
    save_figure(fig, path)
    return name


def _one_shot_figure(grouped: dict, path: Path) -> None:
    """One-shot beside iterative pruning at the same per-layer sparsity: speed and accuracy."""
    fig, axes = subplots(1, 2, figsize=(11, 4.2))
    for ax, metric, scale, label in ((axes[0], "early_stop_iteration", 1, "early-stop iteration"),
                                     (axes[1], "early_stop_test_accuracy", 100, "test accuracy at early stop (%)")):
        percents = []
        for arm, style in (("imp", "o-"), ("one-shot", "s--")):
            levels = grouped.get(arm, {})
            if arm == "one-shot" and 0 in grouped.get("imp", {}):
                levels = {0: grouped["imp"][0], **levels}  # both start from the same dense network
            pts = sorted(((rows[0]["percent_remaining"], spread([scale * r[metric] for r in rows]))
                          for rows in levels.values()), reverse=True)
            x = [p for p, _ in pts]
            m = np.array([s[0] for _, s in pts])
            err = [m - np.array([s[1] for _, s in pts]), np.array([s[2] for _, s in pts]) - m]
            ax.errorbar(x, m, yerr=err, fmt=style, ms=4, capsize=3,
                        label="iterative (imp)" if arm == "imp" else "one-shot from the dense network")
            percents += x
        percent_axis(ax, percents)
        ax.set_ylabel(label)
        ax.legend(fontsize=8)
    fig.suptitle("One-shot vs iterative pruning (mean, min/max over trials)")
    save_figure(fig, path)


def _cost_figure(grouped: dict, path: Path, targets: tuple[float, ...] = (21.1, 7.0, 3.6)) -> None:
    """Test accuracy at early stop against the cost of finding the mask (dense training runs, the ledger's
    cost_to_find), one panel per sparsity near each of `targets`; beside it, accuracy vs weights remaining."""
    percents = sorted({rows[0]["percent_remaining"] for levels in grouped.values() for rows in levels.values()})
    chosen = sorted({min(percents, key=lambda p: abs(math.log(p / t))) for t in targets if percents}, reverse=True)
    fig, axes = subplots(1, len(chosen) + 1, figsize=(4.2 * (len(chosen) + 1), 4.0))
    palette = get_cmap("tab20").colors if len(grouped) > 10 else [f"C{i}" for i in range(10)]
    colors = {arm: palette[i % len(palette)] for i, arm in enumerate(grouped)}  # one colour per arm
    markers = "osD^v<>ph*"
    for i, (arm, levels) in enumerate(grouped.items()):
        pts = sorted(((rows[0]["percent_remaining"], spread([100 * r["early_stop_test_accuracy"] for r in rows]))
                      for rows in levels.values()), reverse=True)
        axes[0].plot([p for p, _ in pts], [m[0] for _, m in pts], marker=markers[i % len(markers)], ms=3,
                     color=colors[arm], label=arm, lw=1)
        for ax, percent in zip(axes[1:], chosen):
            rows = [r for rows in levels.values() for r in rows if r["percent_remaining"] == percent]
            if rows and all(r.get("cost_to_find") is not None for r in rows):
                m, lo, hi = spread([100 * r["early_stop_test_accuracy"] for r in rows])
                cost = float(np.mean([r["cost_to_find"] for r in rows]))
                ax.errorbar([cost], [m], yerr=[[m - lo], [hi - m]], marker=markers[i % len(markers)], ms=6,
                            capsize=3, color=colors[arm], label=arm)
    percent_axis(axes[0], percents)
    axes[0].set_ylabel("test accuracy at early stop (%)")
    axes[0].set_title("accuracy vs weights remaining (mean)", fontsize=9)
    for ax, percent in zip(axes[1:], chosen):
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("cost to find the mask (dense training runs)")
        ax.set_title(f"{percent:.1f}% of the weights (mean, min/max)", fontsize=9)
        ax.grid(alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), fontsize=7, ncol=min(6, len(grouped)), loc="lower center",
               bbox_to_anchor=(0.5, -0.02 - 0.04 * math.ceil(len(grouped) / 6)))
    fig.suptitle("What a mask costs to find, and what it is worth")
    save_figure(fig, path)


def _table(grouped: dict) -> str:
    lines = ["| arm | level | weights remaining (%) | early-stop iteration | test acc. at early stop (%) "
             "| final test acc. (%) | final train acc. (%) | trials |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for arm, levels in grouped.items():
        for level in sorted(levels):
            rows = levels[level]

            def cell(metric: str, scale: float = 1.0, fmt: str = ".2f") -> str:
                m, lo, hi = spread([scale * r[metric] for r in rows])
                return f"{m:{fmt}} [{lo:{fmt}}, {hi:{fmt}}]" if len(rows) > 1 else f"{m:{fmt}}"

            lines.append(f"| {arm} | {level} | {rows[0]['percent_remaining']:.1f} | {cell('early_stop_iteration', fmt='.0f')} "
                         f"| {cell('early_stop_test_accuracy', 100)} | {cell('final_test_accuracy', 100)} "
                         f"| {cell('final_train_accuracy', 100)} | {len(rows)} |")
    return "\n".join(lines)


def environment_lines(store: RunStore) -> list[str]:
    """What run.json says the run was made with (lottery.environment), and any other environment it was
    resumed in: one line each; "environment not recorded" for a run made before run.json kept it."""
    made, later = recorded_environment(store)
    lines = [f"made with {describe(made)}" if made else "environment not recorded"]
    if later:
        lines.append("resumed with " + "; ".join(describe(e) for e in later)
                     + (" (results need not match bit for bit across them)" if made else ""))
    return lines


def write_report(run_dir: Path | str) -> Path:
    """Write RUN_DIR/report/ and return its path. On a run that another process is writing now, from what
    has finished so far (lottery.reports.live says how report and the run's writer keep out of each other's way)."""
    store = RunStore(run_dir)
    if not store.results_path.exists() and not store.config_path.exists():
        raise UserError(f"{store.root} has no results.csv: not a finished `lottery find` run directory")
    config = read_config(store)
    with report_hold(store, list(config.arms)) as live:
        return _write_report(store, config, live)


def _write_report(store: RunStore, config, live: LiveRun | None) -> Path:  # type: ignore[no-untyped-def]
    if live is None and not store.results_path.exists():
        raise UserError(f"{store.root} has no results.csv: not a finished `lottery find` run directory")
    rows = read_results(store.root) if live is None else live.rows
    if not rows:
        raise UserError(f"{store.results_path} has no rows yet" if live is None else
                        f"no network of {store.root} has finished yet ({live.holder} is writing it); run this again later")
    grouped = _by_arm_level(rows)
    out = store.root / "report"
    user_loop = config.train.loop == "user"
    title = f"{config.model.name} (the user's own training)" if user_loop else f"{config.model.name} on {config.data.dataset}"
    _metric_figure(grouped, "early_stop_test_accuracy", 100, "test accuracy at early stop (%)",
                   f"Test accuracy at early stop: {title}", out / "accuracy.png")
    _metric_figure(grouped, "early_stop_iteration", 1, "early-stop iteration (min. validation loss)",
                   f"Early-stop iteration: {title}", out / "early_stop.png")
    _metric_figure(grouped, "final_train_accuracy", 100, "final train accuracy (%)",
                   f"Train accuracy at the end of training: {title}", out / "train_accuracy.png")
    figures = ["![accuracy](accuracy.png)", "![early stop](early_stop.png)"]
    if _has_curves(store, rows):
        figures.append(f"![curves](curves.png) ({_curves_figure(store, grouped, out / 'curves.png')} accuracy)")
    else:  # a copy of a run's results without its level folders (docs/ holds such copies)
        figures.append("(no curves.png: this folder holds the results but not the level folders with curves.csv)")
    figures.append("![train accuracy](train_accuracy.png)")
    if "one-shot" in grouped:
        _one_shot_figure(grouped, out / "one_shot.png")
        figures.append("![one-shot vs iterative](one_shot.png)")
    if len(grouped) > 1 and any(r.get("cost_to_find") is not None for r in rows if r["level"] > 0):
        _cost_figure(grouped, out / "cost.png")
        figures.append("![cost to find](cost.png) (cost to find a mask: the ledger's `cost_to_find` in results.csv, "
                       "in dense training runs; see lottery.storage.ledger)")
    trials = len({r["trial"] for r in rows})
    claims = claims_markdown(check_claims(rows, config), protocol_caveats(config, trials))
    prunable = rows[0]["prunable_weights"]
    conv = f"conv {config.conv_rate():g} / " if config.conv_rate() is not None else ""
    mode = f"one-shot to {config.prune.one_shot} %" if config.prune.one_shot else (
        f"iterative, {config.prune.scope}, {conv}hidden {config.prune.rate_hidden:g} / output {config.prune.rate_output:g} "
        f"per level, rewind to iteration {config.prune.rewind_iteration}")
    if user_loop:
        protocol = (f"{title}, trained by the user's loop (`lottery.IMP`), described as {config.train.described}; "
                    f"pruning: {mode}; criterion {config.prune.criterion}.\nThe early-stop iteration and the test "
                    f"accuracy at it are the ones the user's loop reported.")
    else:
        protocol = (f"{title}; {config.train.optimizer} lr {config.train.lr:g}, batch {config.train.batch_size}, "
                    f"{config.train.iterations} iterations\nper level, validation every {config.train.eval_every}; "
                    f"pruning: {mode}; criterion {config.prune.criterion}.")
    text = f"""# Report: {store.root.name}

{live_section(live, out) + chr(10) if live is not None else ""}{protocol}
Environment: {"; ".join(environment_lines(store))}.
Weights remaining are counted from the masks over the {prunable:,} prunable weights (the tensors that feed a
product: Linear/Conv/attention/RNN weights; biases and norms are not prunable). Early stop is the iteration of
minimum validation loss; its test accuracy is the one recorded at that same iteration. Cells show the mean
[min, max] over trials.

{chr(10).join(figures)}

{_table(grouped)}

{graph_section(store, rows, config)}
## The paper's claims (`lottery claims`)

{claims}
"""
    atomic_write_text(out / "report.md", text)
    return out
