"""Figures and stability.md for an instability analysis (lottery.experiments.stability)."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from lottery.reports.figures import errorbar_series, get_cmap, percent_axis, save_figure, spread, subplots
from lottery.storage.finished import FinishedRun
from lottery.storage.files import atomic_write_text

STABLE = 2.0  # percentage points of error barrier: Frankle et al. (2020) call a network stable below this
METRICS = (("test", "test error"), ("train", "train error"))


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def _style(arm: str) -> dict:
    return {"ls": "--", "marker": "s"} if arm == "random" else {"ls": "-", "marker": "o"}


def over_trials(rows: list[dict], spread_word: str | None = "min/max") -> str:
    """How a figure's or table's numbers summarize the trials: with one trial there is no spread to show."""
    trials = len({r["trial"] for r in rows})
    if trials == 1:
        return "one trial"
    return f"mean, {spread_word} over {trials} trials" if spread_word else f"mean over {trials} trials"


def _random_note(rows: list[dict], note: str) -> str:
    return note if any(r["arm"] == "random" for r in rows) else ""


def _colors(values: list) -> dict:
    cmap = get_cmap("viridis")
    return {v: cmap(i / max(1, len(values) - 1) * 0.9) for i, v in enumerate(values)}


def path_figure(path_rows: list[dict], out: Path) -> None:
    """Error along the line between the two copies, per level (columns), test and train (rows), a line
    per rewind point; mean over trials."""
    levels = sorted({r["level"] for r in path_rows})
    ks = sorted({r["k"] for r in path_rows})
    colors = _colors(ks)
    fig, axes = subplots(2, len(levels), figsize=(3.4 * len(levels) + 1, 6.2), squeeze=False, sharey="row")
    percents = {r["level"]: r["percent_remaining"] for r in path_rows}
    for col, level in enumerate(levels):
        for row, (metric, label) in enumerate(METRICS):
            ax = axes[row][col]
            for (arm, k), rows in sorted(_by([r for r in path_rows if r["level"] == level], "arm", "k").items()):
                by_alpha = _by(rows, "alpha")
                alphas = sorted(by_alpha)
                mean = [100 * spread([r[f"{metric}_error"] for r in by_alpha[a]])[0] for a in alphas]
                ax.plot(alphas, mean, color=colors[k], ls="--" if arm == "random" else "-", lw=1.3,
                        label=f"k={k}" + (" random" if arm == "random" else ""))
            ax.set_xlabel("α (0: copy A, 1: copy B)")
            if col == 0:
                ax.set_ylabel(f"{label} (%)")
            if row == 0:
                ax.set_title(f"{percents[level]:.1f}% remaining" + (" (dense)" if level == 0 else ""), fontsize=9)
            ax.grid(alpha=0.3)
    entries = {}  # every panel's lines, once each (the dense panel has no random mask)
    for ax in axes[0]:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            entries.setdefault(label, handle)
    axes[0][0].legend(list(entries.values()), list(entries), fontsize=7, loc="upper center", ncol=2)
    fig.suptitle("Error along the straight line between two copies trained from iteration k on different "
                 f"data orders ({over_trials(path_rows, None)}{_random_note(path_rows, '; dashed: random mask')})",
                 fontsize=9)
    save_figure(fig, out)


def instability_vs_k(rows: list[dict], out: Path) -> None:
    levels = sorted({r["level"] for r in rows})
    colors = _colors(levels)
    ks = sorted({r["k"] for r in rows})
    fig, axes = subplots(1, 2, figsize=(12, 4.4))
    for ax, (metric, label) in zip(axes, METRICS):
        for (level, arm), group in sorted(_by(rows, "level", "arm").items()):
            points = [(k, [100 * r[f"{metric}_instability"] for r in g]) for (k,), g in _by(group, "k").items()]
            if not points:
                continue
            pts = sorted((k, spread(v)) for k, v in points)
            mean = [s[0] for _, s in pts]
            err = [[s[0] - s[1] for _, s in pts], [s[2] - s[0] for _, s in pts]]
            ax.errorbar([k for k, _ in pts], mean, yerr=err, capsize=3, color=colors[level], ms=4,
                        label=f"{group[0]['percent_remaining']:.1f}% {arm}", **_style(arm))
        ax.set_xscale("symlog", linthresh=max(1, min([k for k in ks if k > 0], default=1)))
        ax.set_xticks(ks)
        ax.set_xticklabels([str(k) for k in ks])
        ax.axhline(STABLE, color="grey", ls=":", lw=1)
        ax.set_ylim(bottom=0)  # an error barrier is never negative
        ax.set_xlabel("rewind iteration k")
        ax.set_ylabel(f"instability, {label} (percentage points)")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Instability vs rewind point ({over_trials(rows)}; dotted: {STABLE:g} points)", fontsize=9)
    save_figure(fig, out)


def instability_vs_sparsity(rows: list[dict], out: Path) -> None:
    ks = sorted({r["k"] for r in rows})
    colors = _colors(ks)
    fig, axes = subplots(1, 2, figsize=(12, 4.4))
    for ax, (metric, label) in zip(axes, METRICS):
        percents: list[float] = []
        for (k, arm), group in sorted(_by(rows, "k", "arm").items()):
            # The dense network belongs to both lines: it is where the ticket and random pruning start.
            group = group + ([r for r in rows if r["k"] == k and r["level"] == 0] if arm == "random" else [])
            points = [(p, [100 * r[f"{metric}_instability"] for r in g]) for (p,), g in
                      _by(group, "percent_remaining").items()]
            percents += errorbar_series(ax, points, color=colors[k], ms=4, label=f"k={k} {arm}", **_style(arm))
        if percents:
            percent_axis(ax, percents)
        ax.axhline(STABLE, color="grey", ls=":", lw=1)
        ax.set_ylim(bottom=0)  # an error barrier is never negative
        ax.set_ylabel(f"instability, {label} (percentage points)")
    axes[1].legend(fontsize=7)
    fig.suptitle(f"Instability vs weights remaining ({over_trials(rows)}): IMP (solid)"
                 f"{_random_note(rows, ' and random pruning (dashed)')}", fontsize=9)
    save_figure(fig, out)


def _cell(values: list[float]) -> str:
    mean, low, high = spread(values)
    return f"{mean:.2f} ({low:.2f}–{high:.2f})" if len(values) > 1 else f"{mean:.2f}"


def _table(rows: list[dict], metric: str, scale: float = 100.0) -> list[str]:
    ks = sorted({r["k"] for r in rows})
    lines = ["| weights remaining | arm | " + " | ".join(f"k = {k}" for k in ks) + " |",
             "|---:|---|" + "---:|" * len(ks)]
    for (level, arm), group in sorted(_by(rows, "level", "arm").items()):
        by_k = _by(group, "k")
        cells = [_cell([scale * r[metric] for r in by_k[(k,)]]) if (k,) in by_k else "" for k in ks]
        lines.append(f"| {group[0]['percent_remaining']:.1f}% | {arm} | " + " | ".join(cells) + " |")
    return lines


def matching(rows: list[dict], level: int, arm: str, k: int) -> bool | None:
    """Whether the network's test error at the ends (mean over trials) is no worse than the dense
    network's worst trial trained from the same k: within the dense network's own spread."""
    own = [r["test_error_ends"] for r in rows if (r["level"], r["arm"], r["k"]) == (level, arm, k)]
    dense = [r["test_error_ends"] for r in rows if (r["level"], r["k"]) == (0, k)]
    if not own or not dense:
        return None
    return spread(own)[0] <= max(dense)


def stable(rows: list[dict], level: int, arm: str, k: int) -> bool | None:
    own = [100 * r["test_instability"] for r in rows if (r["level"], r["arm"], r["k"]) == (level, arm, k)]
    return spread(own)[0] < STABLE if own else None


def _verdicts(rows: list[dict]) -> list[str]:
    ks = sorted({r["k"] for r in rows})
    lines = ["| weights remaining | arm | " + " | ".join(f"k = {k}" for k in ks) + " |",
             "|---:|---|" + "---:|" * len(ks)]
    for (level, arm), group in sorted(_by(rows, "level", "arm").items()):
        cells = []
        for k in ks:
            s, m = stable(rows, level, arm, k), matching(rows, level, arm, k)
            cells.append("" if s is None else ("stable" if s else "unstable") + (", matching" if m else ", not matching"))
        lines.append(f"| {group[0]['percent_remaining']:.1f}% | {arm} | " + " | ".join(cells) + " |")
    return lines


def _first_k(rows: list[dict], level: int, arm: str, need_matching: bool) -> int | None:
    """The earliest analysed rewind point at which the network is stable (and matching)."""
    for k in sorted({r["k"] for r in rows}):
        if stable(rows, level, arm, k) and (not need_matching or matching(rows, level, arm, k)):
            return k
    return None


def stability_claims(rows: list[dict], model: str, dataset: str, depth: int = 0) -> list[tuple[str, str, str, str]]:
    """Frankle et al. (2020)'s claims for the networks this run can test: (claim, their finding, measured,
    verdict yes | no | not testable). Thresholds fixed here: stable below 2 points, matching as above."""
    levels = sorted({r["level"] for r in rows if r["level"] > 0 and r["arm"] == "imp"})
    ks = sorted({r["k"] for r in rows})
    percent = {r["level"]: r["percent_remaining"] for r in rows}
    claims = []
    if model == "lenet300-100" and dataset == "mnist":
        dense = stable(rows, 0, "imp", 0)
        value = [100 * r["test_instability"] for r in rows if (r["level"], r["k"]) == (0, 0)]
        claims.append(("LeNet-300-100 (dense) is stable at k = 0", "instability ≈ 0 (< 2 points)",
                       f"{spread(value)[0]:.2f} points" if value else "-",
                       "not testable" if dense is None else "yes" if dense else "no"))
        for level in levels:
            s, m = stable(rows, level, "imp", 0), matching(rows, level, "imp", 0)
            value = [100 * r["test_instability"] for r in rows if (r["level"], r["arm"], r["k"]) == (level, "imp", 0)]
            claims.append((f"its IMP subnetwork at {percent[level]:.1f}% is stable and matching at k = 0",
                           "stable and matching at k = 0",
                           f"instability {spread(value)[0]:.2f} points, {'matching' if m else 'not matching'}"
                           if value else "-", "not testable" if s is None else "yes" if s and m else "no"))
    if (model == "resnet20" or (model == "resnet" and depth in (0, 20))) and dataset == "cifar10":
        first = _first_k(rows, 0, "imp", need_matching=False)
        claims.append(("ResNet-20 (dense) becomes stable at about iteration 2000, not at k = 0",
                       "stable from k ≈ 2000", f"first stable at k = {first}" if first is not None else "never stable here",
                       "not testable" if 0 not in ks else "yes" if first is not None and 0 < first <= 2000 else "no"))
        for level in levels:
            first = _first_k(rows, level, "imp", need_matching=True)
            claims.append((f"its IMP subnetwork at {percent[level]:.1f}% is stable and matching from k ≈ 500",
                           "stable and matching from k ≈ 500, not at k = 0",
                           f"first at k = {first}" if first is not None else "never here",
                           "not testable" if 0 not in ks else "yes" if first is not None and 0 < first <= 500 else "no"))
    return claims


def write_report(out: Path, run: FinishedRun, rows: list[dict], path_rows: list[dict], *, keep_optimizer: bool,
                 same_noise: bool, train_examples: int, batchnorm: bool) -> None:
    path_figure(path_rows, out / "path.png")
    instability_vs_k(rows, out / "instability_vs_k.png")
    instability_vs_sparsity(rows, out / "instability_vs_sparsity.png")
    config = run.config
    alphas = len({r["alpha"] for r in path_rows})
    trials = sorted({r["trial"] for r in rows})
    text = [
        f"# Instability analysis: {run.store.root.name}", "",
        f"{config.model.name} on {config.data.dataset}; {config.train.optimizer} lr {config.train.lr:g}, batch "
        f"{config.train.batch_size}, {config.train.iterations} iterations; trials {', '.join(map(str, trials))}. "
        f"Two copies of each network start from the dense network's state at iteration k (its own trajectory, "
        f"as the run trained it) under the mask, the learning-rate schedule replayed from k, and train to the end "
        f"on {'the same data order (a control: the copies are identical)' if same_noise else 'two different data orders'}; "
        f"the optimizer {'as it was at k (moments and step count)' if keep_optimizer else 'fresh (as the run rewinds)'}. "
        f"Error along the line between their final weights at {alphas} points, on the test set and on the first "
        f"{train_examples:,} training examples"
        + ("; BatchNorm statistics recomputed at every point on those examples." if batchnorm else ".")
        + f" Instability: largest error along the line minus the mean of the ends' errors, in percentage points; "
        f"stable below {STABLE:g}. Masks: the run's ticket (`imp`) at each level, found by its own procedure "
        f"(rewind iteration {config.prune.rewind_iteration}, retrain {config.prune.retrain}); `random`: random "
        f"positions with the ticket's count per layer.", "",
        "![error along the path](path.png)", "",
        "![instability vs k](instability_vs_k.png)", "",
        "![instability vs weights remaining](instability_vs_sparsity.png)", "",
        f"## Test instability (percentage points; {over_trials(rows, 'min–max')})", "",
        *_table(rows, "test_instability"), "",
        "## Train instability", "", *_table(rows, "train_instability"), "",
        "## Test error of the copies (%, mean of the two ends)", "", *_table(rows, "test_error_ends"), "",
        "## Stable and matching", "",
        f"Stable: mean test instability below {STABLE:g} points. Matching: mean test error of the ends no worse "
        "than the dense network's worst trial from the same k."
        + (" With one trial the dense network's spread is not measured, so \"not matching\" by a few tenths of "
           "a point may be noise." if len(trials) == 1 else ""), "", *_verdicts(rows), "",
    ]
    claims = stability_claims(rows, config.model.name, config.data.dataset, config.model.depth)
    if claims:
        text += ["## Claims of Frankle et al. (2020)", "", "| claim | their finding | measured | reproduced |",
                 "|---|---|---|---|", *[f"| {c} | {p} | {m} | {v} |" for c, p, m, v in claims], ""]
    atomic_write_text(out / "stability.md", "\n".join(text) + "\n")
