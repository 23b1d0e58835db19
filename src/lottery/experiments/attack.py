"""Is a winning ticket easier to attack? FGSM and PGD (ℓ∞) on the trained networks of a run.

ε is in pixel units ([0, 1]) for image datasets: the attack works on normalized inputs with ε / std
and keeps every pixel inside [0, 1]. Datasets without a pixel space (MNIST-1D) take ε in input units,
unclipped. All (arm, trial) networks of a level are attacked together as stacked replicas, each on its
own adversarial copy of the test set. Attacks use the trained weights at the end of training (θT).

Writes RUN_DIR/attack/: attack.csv (one row per arm, trial, level, method, ε), attack.png, attack.md.
"""
from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import torch
import torch.nn.functional as F

from lottery.data import Dataset
from lottery.errors import UserError
from lottery.reports.figures import errorbar_series, get_cmap, percent_axis, save_figure, spread, subplots
from lottery.storage.finished import FinishedRun, ModelFn, model_and_data, open_run
from lottery.order import derive_seed
from lottery.ranks import Ranks
from lottery.storage.files import atomic_write_text, save_csv, writes_into_run
from lottery.training.forwards import StackedForward, stacked_forward_for
from lottery.training.progress import Progress
from lottery.training.replicas import at_least_two

METHODS = ("fgsm", "pgd")
ATTACK_COLUMNS = ["arm", "trial", "level", "percent_remaining", "method", "eps", "accuracy", "examples"]
EXAMPLE_ELEMENTS_PER_CHUNK = 2 ** 20  # examples × input size per chunk (times the replicas: bounds memory)


def input_units(data: Dataset, eps: float, x: torch.Tensor) -> tuple[float, float, float]:
    """(ε, lower, upper) in the normalized units the network sees. Bounds never cut the clean data."""
    if data.pixels is None:
        return eps, -math.inf, math.inf
    mean, std = data.pixels
    return eps / std, min((0.0 - mean) / std, float(x.min())), max((1.0 - mean) / std, float(x.max()))


def adversarial_examples(forward: StackedForward, params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                         method: str, eps: float, lower: float, upper: float, steps: int = 10,
                         step_size: float | None = None, generators: list[torch.Generator] | None = None) -> torch.Tensor:
    """Per replica, an ℓ∞ attack on shared clean inputs x [N, ...]: returns [R, N, ...].

    FGSM: one signed-gradient step of size ε. PGD: uniform random start in the ε-ball, drawn from each
    replica's own generator (`generators`), then `steps` signed steps of `step_size` (default ε/4), each
    projected back onto the ball and the valid input range.
    """
    replicas = next(iter(params.values())).shape[0]
    clean = x.unsqueeze(0).expand(replicas, *x.shape)
    target = y.unsqueeze(0).expand(replicas, -1).flatten()
    if method == "fgsm":
        adv, count, size = clean.clone(), 1, eps
    elif method == "pgd":
        if generators is None or len(generators) != replicas:
            raise ValueError("PGD needs one generator per replica")
        noise = torch.stack([torch.rand(x.shape, generator=g) for g in generators]).to(x.device) * 2 - 1
        adv, count, size = (clean + eps * noise).clamp(lower, upper), steps, eps / 4 if step_size is None else step_size
    else:
        raise UserError(f"unknown attack {method!r}; known: {', '.join(METHODS)}")
    for _ in range(count):
        adv.requires_grad_(True)
        loss = F.cross_entropy(forward(params, adv).flatten(0, 1).float(), target, reduction="sum")
        (grad,) = torch.autograd.grad(loss, adv)  # replica r's loss depends only on its own copy
        with torch.no_grad():
            adv = adv + size * grad.sign()
            adv = torch.minimum(torch.maximum(adv, clean - eps), clean + eps).clamp(lower, upper)
    return adv.detach()


def robust_accuracy(forward: StackedForward, params: dict[str, torch.Tensor], data: Dataset, method: str, eps: float,
                    examples: int | None = None, steps: int = 10, seeds: list[int] | None = None) -> torch.Tensor:
    """Accuracy per replica on the (first `examples`) test examples under the attack; ε = 0 is clean accuracy.
    Replica r's random start comes from its own seed, in chunks of a fixed number of examples: its result
    does not depend on which networks are attacked beside it."""
    x, y = data.x_test[:examples], data.y_test[:examples]
    eps_n, lower, upper = input_units(data, eps, x)
    params, count = at_least_two({n: p.detach() for n, p in params.items()})
    replicas = next(iter(params.values())).shape[0]
    seeds = list(seeds) if seeds is not None else list(range(count))
    seeds += seeds[:1] * (replicas - count)
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    chunk = max(1, EXAMPLE_ELEMENTS_PER_CHUNK // x[0].numel())
    correct = torch.zeros(replicas, device=x.device)
    for start in range(0, len(x), chunk):
        xb, yb = x[start:start + chunk], y[start:start + chunk]
        adv = adversarial_examples(forward, params, xb, yb, method, eps_n, lower, upper, steps, generators=generators)
        with torch.no_grad():
            correct += (forward(params, adv).argmax(-1) == yb).sum(1)
    return (correct / len(x))[:count]


@writes_into_run("lottery attack")
def attack_run(run_dir: Path | str, methods: list[str], epsilons: list[float], *, levels: list[int] | None = None,
               examples: int | None = None, steps: int = 10, data_dir: Path | str | None = None,
               model_fn: ModelFn | None = None, data: Dataset | None = None, device: str = "cpu",
               progress: bool = True, log: bool = False) -> Path:
    """Attack every (arm, trial) network of the chosen levels (default: all) and write RUN_DIR/attack/.
    `progress`: a bar over the (level, method, ε) attacks on a terminal's stderr; `log` (and bars asked for
    on a stderr that is no terminal): one line per finished level instead."""
    run = open_run(run_dir)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise UserError(f"unknown attack {unknown or methods}; known: {', '.join(METHODS)}")
    if any(not e >= 0 for e in epsilons) or not epsilons:
        raise UserError(f"eps must be one or more values ≥ 0, got {epsilons}")
    if examples is not None and examples < 1:
        raise UserError(f"examples must be at least 1, got {examples}")
    if steps < 1:
        raise UserError(f"PGD steps must be at least 1, got {steps}")
    levels = run.levels if levels is None else levels
    missing = [lv for lv in levels if lv not in run.levels]
    if missing:
        raise UserError(f"levels {missing} are not in {run.store.root} (it has {run.levels[0]}..{run.levels[-1]})")
    model, _, data, _ = model_and_data(run, data_dir, model_fn=model_fn, data=data, device=device)
    if data.channel_normalization is not None:
        raise UserError(f"attack does not yet support {data.name} (colour images with per-channel ranges); it "
                        f"supports mnist, fashion-mnist and mnist1d")
    run.check_networks(levels, masks=False)  # a damaged θT is named before the first level is attacked
    forward = stacked_forward_for(model).each
    epsilons = sorted(set([0.0, *epsilons]))  # ε = 0: clean accuracy through the same path
    ranks = Ranks.current()  # in a process group each rank attacks its share of the networks
    shown = Progress(progress and ranks.leader, levels=0, log=log and ranks.leader)
    bar = shown.iterations("attack", len(levels) * len(methods) * len(epsilons), 0)
    accuracy = []
    try:
        for level in levels:
            jobs = ranks.share([(arm, t) for arm in run.arms for t in run.trials if run.has(t, level, arm)])
            if jobs:
                finals = [run.final(t, level, arm, device) for arm, t in jobs]
                params = {n: torch.stack([f[n] for f in finals]) for n in finals[0]}
            for method in methods:
                for eps in epsilons:
                    if jobs:
                        seeds = [derive_seed(run.config.seed, "attack", method, eps, level, arm, t) for arm, t in jobs]
                        acc = robust_accuracy(forward, params, data, method, eps, examples, steps, seeds)
                        accuracy += [[level, method, eps, arm, trial, a] for (arm, trial), a in zip(jobs, acc.tolist())]
                    if bar is not None:
                        bar(1)
            shown.pass_done(f"attack level {level}", _level_summary(accuracy, level, len(jobs), methods, epsilons[-1]))
    finally:
        shown.end_iterations()
        shown.close()
    out = run.store.root / "attack"
    found = {tuple(key): a for part in ranks.gather(accuracy) for *key, a in part}
    if not ranks.leader:
        return out
    rows = [{"arm": arm, "trial": trial, "level": level, "percent_remaining": run.percent(level),
             "method": method, "eps": eps, "accuracy": found[(level, method, eps, arm, trial)],
             "examples": min(examples or len(data.x_test), len(data.x_test))}
            for level in levels for method in methods for eps in epsilons
            for arm in run.arms for trial in run.trials if run.has(trial, level, arm)]
    _figure(rows, methods, epsilons, run, out / "attack.png")
    save_csv(out / "attack.csv", rows, ATTACK_COLUMNS)
    atomic_write_text(out / "attack.md", _markdown(rows, run, data, steps))
    return out


def _level_summary(accuracy: list[list], level: int, networks: int, methods: list[str], eps: float) -> str:
    """One log line for a level (this rank's networks): mean accuracy clean and under each method at the largest ε."""
    def mean_at(method: str | None, at: float) -> str:
        values = [a for lv, m, e, *_, a in accuracy if lv == level and e == at and method in (None, m)]
        return f"{100 * sum(values) / len(values):.2f}%" if values else "-"

    attacked = ", ".join(f"{m} {mean_at(m, eps)}" for m in methods)
    return (f"{networks} network{'s' if networks != 1 else ''}; mean accuracy clean {mean_at(None, 0.0)}, "
            f"at ε={eps:g} {attacked}")


def _grouped(rows: list[dict]) -> dict[tuple[str, float, str], dict[int, list[dict]]]:
    out: dict[tuple[str, float, str], dict[int, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[(r["method"], r["eps"], r["arm"])][r["level"]].append(r)
        if r["level"] == 0 and r["arm"] == "imp":  # the dense network starts every arm's line
            for arm in {x["arm"] for x in rows} - {"imp"}:
                out[(r["method"], r["eps"], arm)][0].append(r)
    return out


def _figure(rows: list[dict], methods: list[str], epsilons: list[float], run: FinishedRun, path: Path) -> None:
    grouped = _grouped(rows)
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    fig, axes = subplots(1, len(methods), figsize=(6.4 * len(methods), 4.6), squeeze=False)
    styles = ["-", "--", ":", "-."]
    cmap = get_cmap("viridis")
    for ax, method in zip(axes[0], methods):
        percents: list[float] = []
        for i, eps in enumerate(epsilons):
            for j, arm in enumerate(arms):
                levels = grouped.get((method, eps, arm), {})
                if len(levels) < 2:
                    continue
                series = [(g[0]["percent_remaining"], [100 * r["accuracy"] for r in g]) for g in levels.values()]
                percents += errorbar_series(ax, series, ls=styles[j % len(styles)], marker="o", ms=3,
                                            color=cmap(i / max(1, len(epsilons) - 1)), label=f"{arm}, ε={eps:g}")
        if percents:
            percent_axis(ax, percents)
        ax.set_ylabel("test accuracy under attack (%)")
        ax.set_title(f"{method.upper()} (ℓ∞, ε in pixel units); mean, min/max over trials", fontsize=10)
    # One legend for all panels, outside them: inside, it hid the curves it names.
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.99, 0.92), fontsize=8,
                   title="arm, ε (colour: ε; line: arm)", title_fontsize=8)
    fig.suptitle(f"Robust accuracy vs sparsity: {run.config.model.name} on {run.config.data.dataset}")
    save_figure(fig, path)


def _markdown(rows: list[dict], run: FinishedRun, data: Dataset, steps: int) -> str:
    units = "pixel units, inputs kept in [0, 1]" if data.pixels is not None else "input units, unclipped"
    examples = rows[0]["examples"]
    lines = [f"# Attacks on {run.store.root.name}", "",
             f"ℓ∞ attacks ({units}) on the first {examples} test examples, against the trained weights θT of every "
             f"arm and trial. PGD: uniform random start, {steps} steps of ε/4. ε = 0 is clean accuracy. "
             "Cells: mean [min, max] accuracy (%) over trials.", "", "![attack](attack.png)", ""]
    grouped = _grouped(rows)
    methods = list(dict.fromkeys(r["method"] for r in rows))
    epsilons = sorted({r["eps"] for r in rows})
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    for method in methods:
        lines += [f"## {method.upper()}", "", "| arm | level | weights remaining (%) | " +
                  " | ".join(f"ε={e:g}" for e in epsilons) + " |", "|---|---:|---:|" + "---:|" * len(epsilons)]
        for arm in arms:
            for level in sorted({r["level"] for r in rows if r["arm"] == arm}):
                cells = []
                for eps in epsilons:
                    m, lo, hi = spread([100 * r["accuracy"] for r in grouped[(method, eps, arm)][level]])
                    cells.append(f"{m:.1f} [{lo:.1f}, {hi:.1f}]")
                lines.append(f"| {arm} | {level} | {run.percent(level):.1f} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
