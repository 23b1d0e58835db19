"""How robust is a winning ticket to Gaussian noise? (the paper's App. F.7, and the inference-time view)

σ of a layer is the standard deviation of that layer's initial weights θ0 (per trial); noise of
k·σ is drawn for the prunable weights only, and pruned weights stay exactly zero.
- Training view: the ticket's mask with start weights θ0 + N(0, (kσ)²), trained under the run's own
  config and data order; compared with the clean ticket (k = 0) and the run's reinit arm.
- Inference view: the trained weights θT of every arm plus N(0, (kσ)²), test accuracy without
  retraining (mean over several draws).

Writes RUN_DIR/noise/: training.csv, inference.csv, training.png, inference.png, noise.md.
"""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch

from lottery.data import Dataset
from lottery.errors import UserError
from lottery.reports.figures import errorbar_series, percent_axis, save_figure, spread, subplots
from lottery.storage.finished import FinishedRun, ModelFn, model_and_data, open_run
from lottery.procedure.find import EVAL_BATCH
from lottery.options import RunOptions
from lottery.order import derive_seed
from lottery.training.passes import NamedReplica, train_replicas
from lottery.reports.report import CURVE_TARGETS
from lottery.training.sizing import replicas_per_pass
from lottery.ranks import Ranks
from lottery.storage.expect import read_replica_metrics
from lottery.storage.files import NetworkFiles, atomic_write_text, save_csv, writes_into_run
from lottery.training.forwards import stacked_forward_for
from lottery.training.replicas import at_least_two

TRAINING_COLUMNS = ["arm", "sigma", "trial", "level", "percent_remaining", "early_stop_iteration",
                    "early_stop_test_accuracy", "final_test_accuracy"]
INFERENCE_COLUMNS = ["arm", "sigma", "trial", "level", "percent_remaining", "accuracy", "draws"]
# The fields noise_run gives each noisy-init replica's metrics.json (NamedReplica extra).
REPLICA_TYPES: dict[str, type | tuple[type, ...]] = {"arm": str, "sigma": (int, float), "trial": int, "level": int}


def layer_sigmas(init: dict[str, torch.Tensor], names: list[str]) -> dict[str, float]:
    """σ per prunable tensor: the standard deviation of its initial weights."""
    return {n: float(init[n].std()) for n in names}


def noisy(weights: dict[str, torch.Tensor], mask: dict[str, torch.Tensor], sigmas: dict[str, float], k: float,
          generator: torch.Generator) -> dict[str, torch.Tensor]:
    """weights + N(0, (k·σ_layer)²) on the kept prunable weights; everything else unchanged."""
    out = dict(weights)
    for n in sorted(mask):
        draw = torch.randn(weights[n].shape, generator=generator).to(weights[n].device)
        out[n] = (weights[n] + k * sigmas[n] * draw) * mask[n]
    return out


@writes_into_run("lottery noise")
def noise_run(run_dir: Path | str, sigmas: list[float], *, levels: list[int] | None = None, draws: int = 5,
              data_dir: Path | str | None = None, model_fn: ModelFn | None = None, data: Dataset | None = None,
              options: RunOptions | None = None) -> Path:
    """Both views at the chosen levels (default: those nearest 100, 51.3, 21.1, 7.0, 3.6, 1.9 %)."""
    options = options or RunOptions()
    options.validate()
    device = options.device
    run = open_run(run_dir)
    if not sigmas or any(not k > 0 for k in sigmas):
        raise UserError(f"sigmas must be one or more positive multiples of the init std, got {sigmas}")
    if draws < 1:
        raise UserError(f"draws must be at least 1, got {draws}")
    levels = run.nearest_levels(CURVE_TARGETS) if levels is None else levels
    missing = [lv for lv in levels if lv not in run.levels]
    if missing:
        raise UserError(f"levels {missing} are not in {run.store.root} (it has {run.levels[0]}..{run.levels[-1]})")
    model, _, data, names = model_and_data(run, data_dir, model_fn=model_fn, data=data, device=device)
    out = run.store.root / "noise"
    config = run.config
    run.check_networks(levels)  # what the inference view reads, named before the training view spends its time

    # Training view: one replica per (k, trial, level), on the trial's own data order.
    replicas = []
    for level in levels:
        for trial in run.trials:
            for k in sigmas:
                def build(trial: int = trial, level: int = level, k: float = k):
                    start, mask = run.start(trial, device), run.mask(trial, level, "imp", device)
                    generator = torch.Generator().manual_seed(derive_seed(config.seed, "noise", k, trial, level))
                    return noisy(start, mask, layer_sigmas(run.init(trial), names), k, generator), mask
                key = f"noisy-init/{trial}/{level}/{k:g}"
                replicas.append(NamedReplica(out / f"trial_{trial}" / f"level_{level:02d}" / f"sigma_{k:g}",
                                             derive_seed(config.seed, "order", trial), build,
                                             derive_seed(config.seed, "replica", key), key,
                                             {"arm": "noisy-init", "sigma": k, "trial": trial, "level": level}))
    per_pass = replicas_per_pass(model, device, EVAL_BATCH, config.train.batch_size, options.max_replicas)
    train_replicas(replicas, model, data, config.train, out / "checkpoints", max_per_pass=per_pass,
                   checkpoint_seconds=options.checkpoint_seconds, progress=options.progress,
                   log=options.log_passes, label="noise",
                   start_iteration=config.prune.rewind_iteration, augment=config.data.augment)
    training = [{c: read_replica_metrics(NetworkFiles(r.folder).metrics, TRAINING_COLUMNS, REPLICA_TYPES)[c]
                 for c in TRAINING_COLUMNS} for r in replicas]
    for arm in ("imp", "reinit"):  # the clean ticket (k = 0) and the reinit control, from the run itself
        for level in levels:
            for row in run.rows_of(arm, level):
                training.append({**{c: row[c] for c in TRAINING_COLUMNS if c in row}, "arm": arm, "sigma": 0.0})

    # Inference view: noise on the trained weights of every arm; no retraining.
    forward = stacked_forward_for(model).shared
    ranks = Ranks.current()  # in a process group each rank evaluates its share of the networks
    inference = []
    for level in levels:
        jobs = ranks.share([(arm, t) for arm in run.arms for t in run.trials if run.has(t, level, arm)])
        if not jobs:
            continue
        for k in [0.0, *sigmas]:
            stacked: dict[str, list[torch.Tensor]] = defaultdict(list)
            for arm, trial in jobs:
                final, mask = run.final(trial, level, arm, device), run.mask(trial, level, arm, device)
                generator = torch.Generator().manual_seed(derive_seed(config.seed, "noise-inference", k, trial, level, arm))
                for _ in range(draws if k else 1):
                    for n, t in noisy(final, mask, layer_sigmas(run.init(trial), names), k, generator).items():
                        stacked[n].append(t)
            params, count = at_least_two({n: torch.stack(v) for n, v in stacked.items()})
            acc = _accuracy(forward, params, data)[:count].view(len(jobs), -1).mean(1)
            for (arm, trial), a in zip(jobs, acc.tolist()):
                inference.append({"arm": arm, "sigma": k, "trial": trial, "level": level,
                                  "percent_remaining": run.percent(level), "accuracy": a, "draws": draws if k else 1})
    found = {(r["level"], r["sigma"], r["arm"], r["trial"]): r for part in ranks.gather(inference) for r in part}
    if not ranks.leader:
        return out
    inference = [found[(level, k, arm, t)] for level in levels for k in [0.0, *sigmas]
                 for arm in run.arms for t in run.trials if run.has(t, level, arm)]

    save_csv(out / "training.csv", training, TRAINING_COLUMNS)
    save_csv(out / "inference.csv", inference, INFERENCE_COLUMNS)
    _figure(training, "early_stop_test_accuracy", "test accuracy at early stop (%)",
            "Training from a noisy θ0: the ticket's mask, θ0 + N(0, (kσ)²)", out / "training.png")
    _figure(inference, "accuracy", "test accuracy (%)",
            "Noise on the trained weights θT + N(0, (kσ)²), no retraining", out / "inference.png")
    atomic_write_text(out / "noise.md", _markdown(run, training, inference, draws))
    return out


@torch.no_grad()
def _accuracy(forward, params: dict[str, torch.Tensor], data: Dataset) -> torch.Tensor:
    correct = None
    for start in range(0, len(data.x_test), EVAL_BATCH):
        xb, yb = data.features(data.x_test[start:start + EVAL_BATCH]), data.y_test[start:start + EVAL_BATCH]
        hits = (forward(params, xb).argmax(-1) == yb).sum(1)
        correct = hits if correct is None else correct + hits
    return correct.float() / len(data.x_test)


def _series(rows: list[dict], metric: str, scale: float = 100.0) -> dict[tuple[str, float], dict[float, list[float]]]:
    out: dict[tuple[str, float], dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    percents = {}
    for r in rows:
        out[(r["arm"], r["sigma"])][r["level"]].append(scale * r[metric])
        percents[r["level"]] = r["percent_remaining"]
    return {key: {percents[lv]: v for lv, v in levels.items()} for key, levels in out.items()}


def _label(arm: str, k: float) -> str:
    if arm == "noisy-init":
        return f"ticket, θ0 + noise k={k:g}"
    return f"{arm} (clean)" if k == 0 else f"{arm}, k={k:g}"


def _figure(rows: list[dict], metric: str, ylabel: str, title: str, path: Path) -> None:
    fig, ax = subplots(figsize=(7.2, 4.6))
    percents: list[float] = []
    for (arm, k), points in sorted(_series(rows, metric).items(), key=lambda kv: (kv[0][0] != "imp", kv[0])):
        if not points:
            continue
        style = {"ls": "--"} if arm == "reinit" else {}
        percents += errorbar_series(ax, list(points.items()), marker="o", ms=3, label=_label(arm, k), **style)
    if percents:
        percent_axis(ax, percents)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{title}\n(σ: std of the layer's θ0; mean, min/max over trials)", fontsize=9)
    ax.legend(fontsize=7)
    save_figure(fig, path)


def _markdown(run: FinishedRun, training: list[dict], inference: list[dict], draws: int) -> str:
    def table(rows: list[dict], metric: str, scale: float = 100.0, digits: int = 2) -> list[str]:
        series = _series(rows, metric, scale)
        percents = sorted({p for points in series.values() for p in points}, reverse=True)
        lines = ["| arm | k | " + " | ".join(f"{p:.1f} %" for p in percents) + " |",
                 "|---|---:|" + "---:|" * len(percents)]
        for (arm, k), points in sorted(series.items(), key=lambda kv: (kv[0][0] != "imp", kv[0])):
            cells = [f"{spread(points[p])[0]:.{digits}f}" if p in points else "" for p in percents]
            lines.append(f"| {arm} | {k:g} | " + " | ".join(cells) + " |")
        return lines

    return "\n".join([
        f"# Gaussian noise: {run.store.root.name}", "",
        "σ is the standard deviation of each layer's initial weights; k·σ noise touches only the kept prunable "
        "weights. Columns: weights remaining. Cells: mean over trials (%).", "",
        "## Training from θ0 + noise (test accuracy at early stop)", "",
        "`noisy-init` is the ticket's mask trained from θ0 + N(0, (kσ)²); `imp` k=0 is the clean ticket and "
        "`reinit` the run's random reinitialization.", "", "![training](training.png)", "",
        *table(training, "early_stop_test_accuracy"), "",
        "## Early-stop iteration", "", *table(training, "early_stop_iteration", 1.0, 0), "",
        f"## Noise on the trained weights (test accuracy, mean of {draws} draws, no retraining)", "",
        "![inference](inference.png)", "", *table(inference, "accuracy"), "",
    ]) + "\n"
