"""A ticket on different data: train tickets found on source data on a target dataset.

For each source run, level and trial, the source's ticket (its mask and its start weights θ0, or θk
when it rewinds) trains on the target data under the target run's training config and data order.
It is compared with the target's own ticket at that level, its reinit and random arms, and the dense
network on the target. With the same seed and model, source and target share θ0 for a trial, so the
transferred ticket differs from the target's own ticket only in its mask.

The target run is `against` when given (a finished `lottery find` on the target data, best with arms
imp,reinit,random); otherwise it is trained first, inside the output folder, with those arms.

Writes SOURCE/transfer/<target>/ (of the first source): transfer.csv, transfer.png, transfer.md, and
target-run/ when trained here.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from pathlib import Path

import torch

from lottery.config import DataConfig, copy
from lottery.data import load_data
from lottery.errors import UserError
from lottery.reports.figures import errorbar_series, percent_axis, save_figure, spread, subplots
from lottery.storage.finished import FinishedRun, model_and_data, open_run
from lottery.procedure.find import EVAL_BATCH, find_tickets
from lottery.options import RunOptions
from lottery.models import build_model
from lottery.order import derive_seed
from lottery.training.passes import NamedReplica, train_replicas
from lottery.storage.results import RESULT_COLUMNS
from lottery.training.sizing import replicas_per_pass
from lottery.ranks import Ranks
from lottery.storage.expect import read_replica_metrics
from lottery.storage.files import NetworkFiles, atomic_write_text, hold_run, save_csv, writes_into_run

TRANSFER_COLUMNS = ["source", *RESULT_COLUMNS]
TARGET_ARMS = ("imp", "reinit", "random")
# The fields _transfer gives each transferred ticket's metrics.json (NamedReplica extra).
REPLICA_TYPES: dict[str, type | tuple[type, ...]] = {"source": str, "arm": str, "trial": int, "level": int}


def data_label(data: DataConfig) -> str:
    """A short name for a dataset and its shifts, e.g. mnist-permute0.5-rotate45-classes0.1.2."""
    parts = [data.dataset]
    if data.permute_fraction:
        parts.append(f"permute{data.permute_fraction:g}")
    if data.rotate_degrees:
        parts.append(f"rotate{data.rotate_degrees:g}")
    if data.classes:
        parts.append("classes" + ".".join(str(c) for c in data.classes))
    return "-".join(parts)


@writes_into_run("lottery transfer")
def transfer_run(sources: list[Path | str], target: DataConfig | None = None, *, against: Path | str | None = None,
                 levels: list[int] | None = None, data_dir: Path | str | None = None,
                 options: RunOptions | None = None) -> Path:
    """Train the sources' tickets on the target data and compare (see the module doc); returns the output folder.
    Writes into the first source (held exclusively); the other sources and `against` are read (held shared)."""
    with contextlib.ExitStack() as held:
        for other in [*sources[1:], *([against] if against is not None else [])]:
            if Path(other).is_dir():
                held.enter_context(hold_run(other, exclusive=False))
        return _transfer(sources, target, against=against, levels=levels, data_dir=data_dir, options=options)


def _transfer(sources: list[Path | str], target: DataConfig | None, *, against: Path | str | None,
              levels: list[int] | None, data_dir: Path | str | None, options: RunOptions | None) -> Path:
    options = options or RunOptions()
    options.validate()
    runs = [open_run(s) for s in sources]
    if not runs:
        raise UserError("transfer needs at least one source run")
    first = runs[0]
    if against is not None:
        target_run = open_run(against)
        if target is not None and data_label(target) != data_label(target_run.config.data):
            raise UserError(f"--to {data_label(target)} differs from the data of {against} "
                            f"({data_label(target_run.config.data)})")
        target = target_run.config.data
    if target is None:
        raise UserError("say which data to transfer to (--to DATASET) or give a target run (--against)")
    for run in runs:  # before a target run is trained for nothing
        if levels and any(lv not in run.levels for lv in levels if lv > 0):
            raise UserError(f"levels {levels} are not all in {run.store.root} (it has up to {run.levels[-1]})")
    out = first.store.root / "transfer" / data_label(target)
    data = None  # loaded once here when a target run is trained, else by model_and_data
    if against is None:
        # Check the tickets fit a model on the target data before spending a whole target run on it.
        data = load_data(target, data_dir)
        shapes = {n: p.shape for n, p in build_model(first.config.model, data.input_shape, data.num_classes, data.graph)
                  .named_parameters()}
        _check_fit(runs, shapes)
        config = copy(first.config)
        config.data = dataclasses.replace(target, classes=list(target.classes))
        config.arms = list(TARGET_ARMS)
        config.preset = f"{first.config.preset}-on-{data_label(target)}"
        find_tickets(config, out / "target-run", data=data, data_dir=data_dir, options=options)
        target_run = open_run(out / "target-run")

    model, _, data, _ = model_and_data(target_run, data_dir, data=data, device=options.device)
    _check_fit(runs, {n: m.shape for n, m in target_run.mask(target_run.trials[0], 0).items()})
    labels = _source_labels(runs)
    tconfig = target_run.config
    replicas = []
    for run, label in zip(runs, labels):
        chosen = [lv for lv in (levels or run.levels) if lv > 0 and lv in run.levels]
        if levels and len(chosen) < len([lv for lv in levels if lv > 0]):
            raise UserError(f"levels {levels} are not all in {run.store.root} (it has up to {run.levels[-1]})")
        for level in chosen:
            for trial in sorted(set(run.trials) & set(target_run.trials)):
                def build(run: FinishedRun = run, trial: int = trial, level: int = level):
                    return run.start(trial, options.device), run.mask(trial, level, "imp", options.device)
                key = f"transfer/{label}/{trial}/{level}"
                replicas.append(NamedReplica(out / "sources" / label / f"trial_{trial}" / f"level_{level:02d}",
                                             derive_seed(tconfig.seed, "order", trial), build,
                                             derive_seed(tconfig.seed, "replica", key), key,
                                             {"source": label, "arm": "transfer", "trial": trial, "level": level}))
    if not replicas:
        raise UserError("no (level, trial) is shared by the sources and the target run")
    per_pass = replicas_per_pass(model, options.device, EVAL_BATCH, tconfig.train.batch_size, options.max_replicas)
    train_replicas(replicas, model, data, tconfig.train, out / "checkpoints", max_per_pass=per_pass,
                   checkpoint_seconds=options.checkpoint_seconds, progress=options.progress,
                   log=options.log_passes, label="transfer",
                   start_iteration=tconfig.prune.rewind_iteration, augment=tconfig.data.augment)

    if not Ranks.current().leader:  # every rank trained its share; rank 0 writes the tables
        return out
    rows = [{c: read_replica_metrics(NetworkFiles(r.folder).metrics, TRANSFER_COLUMNS, REPLICA_TYPES)[c]
             for c in TRANSFER_COLUMNS} for r in replicas]
    target_label = f"{data_label(target)} (own)"
    rows += [{"source": target_label, **{c: r[c] for c in RESULT_COLUMNS}} for r in target_run.rows]
    save_csv(out / "transfer.csv", rows, TRANSFER_COLUMNS)
    _figure(rows, target_label, data_label(target), out / "transfer.png")
    atomic_write_text(out / "transfer.md", _markdown(rows, target_label, data_label(target), runs, labels, target_run))
    return out


def _check_fit(runs: list[FinishedRun], shapes: dict[str, torch.Size]) -> None:
    """Every source's masks name prunable tensors of the target model, with the same shapes."""
    for run in runs:
        masks = run.mask(run.trials[0], 0)
        wrong = [n for n, m in masks.items() if n not in shapes or m.shape != shapes[n]]
        if wrong:
            got = f"{tuple(shapes[wrong[0]])}" if wrong[0] in shapes else "no such tensor"
            raise UserError(f"the tickets of {run.store.root} do not fit a model on the target data: "
                            f"{wrong[0]} is {tuple(masks[wrong[0]].shape)} in the source, {got} on the target")


def _source_labels(runs: list[FinishedRun]) -> list[str]:
    labels = [data_label(r.config.data) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [r.store.root.name for r in runs]
    return labels


def _points(rows: list[dict], metric: str, scale: float) -> dict[tuple[str, str], dict[float, list[float]]]:
    out: dict[tuple[str, str], dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        out[(r["source"], r["arm"])][round(r["percent_remaining"], 3)].append(scale * r[metric])
    return out


def _figure(rows: list[dict], target_label: str, target: str, path: Path) -> None:
    fig, axes = subplots(1, 2, figsize=(13, 4.6))
    for ax, metric, scale, ylabel in ((axes[0], "early_stop_test_accuracy", 100, "test accuracy at early stop (%)"),
                                      (axes[1], "early_stop_iteration", 1, "early-stop iteration")):
        points = _points(rows, metric, scale)
        dense = points.get((target_label, "imp"), {}).get(100.0)
        percents: list[float] = []
        for (source, arm), series in sorted(points.items(), key=lambda kv: (kv[0][0] != target_label, kv[0])):
            series = {p: v for p, v in series.items() if p < 100.0}
            if len(series) < 2:
                continue
            own = source == target_label
            label = f"target's own {arm}" if own else f"ticket from {source}"
            style = {"ls": "--", "color": "grey" if arm == "random" else "black"} if own and arm != "imp" else {}
            percents += errorbar_series(ax, list(series.items()), marker="o", ms=3, label=label, **style)
        if dense:
            ax.axhline(spread(dense)[0], color="grey", ls=":", lw=1, label="dense network on the target")
        if percents:
            percent_axis(ax, percents)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    fig.suptitle(f"Tickets trained on {target}: transferred vs the target's own (mean, min/max over trials)")
    save_figure(fig, path)


def _markdown(rows: list[dict], target_label: str, target: str, runs: list[FinishedRun], labels: list[str],
              target_run: FinishedRun) -> str:
    acc = _points(rows, "early_stop_test_accuracy", 100)
    its = _points(rows, "early_stop_iteration", 1)
    own = acc.get((target_label, "imp"), {})
    # Columns: the dense network and the sparsities the tickets were transferred at.
    percents = sorted({100.0} | {p for (s, a), pts in acc.items() if a == "transfer" for p in pts}, reverse=True)
    lines = [f"# Transfer to {target}", "",
             f"Target run: {target_run.store.root} ({target_run.config.train.iterations} iterations, "
             f"{len(target_run.trials)} trials). Sources: " + ", ".join(f"{lab} ({r.store.root})" for lab, r in zip(labels, runs)),
             "", "![transfer](transfer.png)", "",
             "Test accuracy at early stop (%), mean over trials; in brackets the difference to the target's own ticket.",
             "", "| network | " + " | ".join(f"{p:.1f} %" for p in percents) + " |", "|---|" + "---:|" * len(percents)]
    order = [(target_label, "imp"), (target_label, "reinit"), (target_label, "random"),
             *[(lab, "transfer") for lab in labels]]
    for key in order:
        if key not in acc:
            continue
        name = f"target's own {key[1]}" if key[0] == target_label else f"ticket from {key[0]}"
        cells = []
        for p in percents:
            if p not in acc[key]:
                cells.append("")
                continue
            m = spread(acc[key][p])[0]
            delta = f" ({m - spread(own[p])[0]:+.2f})" if key != (target_label, "imp") and p in own else ""
            cells.append(f"{m:.2f}{delta}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Early-stop iteration, mean over trials:", "",
              "| network | " + " | ".join(f"{p:.1f} %" for p in percents) + " |", "|---|" + "---:|" * len(percents)]
    for key in order:
        if key in its:
            name = f"target's own {key[1]}" if key[0] == target_label else f"ticket from {key[0]}"
            lines.append(f"| {name} | " + " | ".join(f"{spread(its[key][p])[0]:.0f}" if p in its[key] else ""
                                                     for p in percents) + " |")
    return "\n".join(lines) + "\n"
