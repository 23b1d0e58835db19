"""The tables and figure of docs/graph.md from graph-ticket runs (lottery find gcn-cora / gcn-citeseer).

    python docs/graph/analyze.py DATA_DIR OUT_PREFIX MAIN_RUN [WEIGHTS_ONLY_RUN] [GRAPH_ONLY_RUN]

MAIN_RUN prunes weights and citations (imp + reinit + random + random-edges); WEIGHTS_ONLY_RUN the same
with prune.rate_edge=0 (the full graph); GRAPH_ONLY_RUN with prune.rate_hidden=rate_output=0 (dense
weights). Writes OUT_PREFIX.md (tables) and OUT_PREFIX.png (accuracy vs weights and vs edges remaining).
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import lottery  # noqa: E402
from lottery.storage.files import load_tensors  # noqa: E402
from lottery.storage.runinfo import read_config  # noqa: E402
from lottery.storage.files import RunStore  # noqa: E402

ARM_NAMES = {"imp": "ticket (weights + graph)", "reinit": "reinit", "random": "random weights + random graph",
             "random-edges": "ticket's weights + random graph"}


def spread(values: list[float]) -> str:
    return f"{np.mean(values):.1f} [{np.min(values):.1f}, {np.max(values):.1f}]"


def grouped(run: Path) -> dict[tuple[str, int], list[dict]]:
    by = defaultdict(list)
    for r in lottery.read_results(run):
        by[(r["arm"], r["level"])].append(r)
    return by


def accuracy(rows: list[dict]) -> list[float]:
    return [100 * r["early_stop_test_accuracy"] for r in rows]


def level_table(main: Path, weights_only: Path | None, graph_only: Path | None) -> tuple[str, int | None, dict]:
    by = grouped(main)
    extra = {name: grouped(run) for name, run in (("weights-only IMP (full graph)", weights_only),
                                                  ("graph-only IMP (dense weights)", graph_only)) if run}
    levels = sorted({lv for _, lv in by})
    arms = [a for a in ARM_NAMES if (a, 1) in by]
    dense = accuracy(by[("imp", 0)])
    lines = [f"Dense GCN: {spread(dense)}% test accuracy at early stop over {len(dense)} trials (mean [min, max]).\n",
             "| level | weights % | edges % | MACs saved % | " + " | ".join(ARM_NAMES[a] for a in arms)
             + "".join(f" | {n}" for n in extra) + " |",
             "|---" * (4 + len(arms) + len(extra)) + "|"]
    matching = None
    for lv in levels:
        row = by[("imp", lv)][0]
        saved = 100 * (1 - row["macs"] / row["dense_macs"])
        cells = []
        for a in arms:
            acc = accuracy(by[(a, lv)]) if (a, lv) in by else (dense if lv == 0 else [])
            cells.append(spread(acc) if acc else "")
        for name, other in extra.items():
            cells.append(spread(accuracy(other[("imp", lv)])) if ("imp", lv) in other else "")
        mean = np.mean(accuracy(by[("imp", lv)]))
        if mean >= np.mean(dense):
            matching = lv
        lines.append(f"| {lv} | {row['percent_remaining']:.1f} | {row['percent_edges_remaining']:.1f} | {saved:.1f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines), matching, by


def figure(by: dict, extra_runs: dict[str, Path | None], out: Path, title: str) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    levels = sorted({lv for a, lv in by if a == "imp"})
    dense = np.mean(accuracy(by[("imp", 0)]))
    for a in ARM_NAMES:
        lvs = [lv for lv in levels if (a, lv) in by or lv == 0]
        if len(lvs) < 2:
            continue
        means = [np.mean(accuracy(by[("imp" if lv == 0 else a, lv)])) for lv in lvs]
        w = [by[("imp", lv)][0]["percent_remaining"] for lv in lvs]
        e = [by[("imp", lv)][0]["percent_edges_remaining"] for lv in lvs]
        axes[0].plot(w, means, marker="o", ms=3, label=ARM_NAMES[a])
        axes[1].plot(e, means, marker="o", ms=3, label=ARM_NAMES[a])
    for name, run in extra_runs.items():
        if run is None:
            continue
        other = grouped(run)
        lvs = sorted(lv for a, lv in other if a == "imp")
        means = [np.mean(accuracy(other[("imp", lv)])) for lv in lvs]
        axis = 0 if "weights-only" in name else 1
        key = "percent_remaining" if axis == 0 else "percent_edges_remaining"
        axes[axis].plot([other[("imp", lv)][0][key] for lv in lvs], means, marker="s", ms=3, ls="--", label=name)
    for ax, label in zip(axes, ("weights remaining %", "citations (edges) remaining %")):
        ax.axhline(dense, color="gray", lw=0.8, ls=":", label="dense")
        ax.set_xscale("log")
        ax.invert_xaxis()
        ax.set_xlabel(label)
        ax.set_ylabel("test accuracy at early stop %")
        ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def subgraph_table(main: Path, data: lottery.Dataset, level: int, by: dict) -> str:
    """Which citations and papers the ticket's subgraph at `level` keeps, over the trials."""
    g = data.graph
    i, j = g.edges
    labels = g.labels
    labelled = (labels[i] >= 0) & (labels[j] >= 0)
    within = labelled & (labels[i] == labels[j])
    cross = labelled & (labels[i] != labels[j])
    degree = torch.zeros(g.num_nodes).index_add_(0, g.edges.flatten(), torch.ones(2 * g.num_edges))
    edge_degree = (degree[i] + degree[j]) / 2
    near = torch.zeros(g.num_nodes, dtype=torch.bool)
    near[data.x_train] = True
    hop = near.clone()
    hop[i[near[j]]] = True
    hop[j[near[i]]] = True
    field = hop[i] | hop[j]  # the edges a 2-layer GCN's loss on the labelled papers can reach
    stats = defaultdict(list)
    per_topic = defaultdict(lambda: defaultdict(list))
    store = RunStore(main)
    trials = sorted({r["trial"] for r in by[("imp", level)]})
    for t in trials:
        kept = load_tensors(store.mask_path(t, level))["edge_weight"]
        start = load_tensors(main / f"trial_{t}" / "init.safetensors")["edge_weight"]
        final0 = load_tensors(store.final_path(t, 0, "imp"))["edge_weight"]
        moved = final0 != start
        stats["moved"].append(100 * moved.float().mean().item())
        stats["within"].append(100 * kept[within].float().mean().item())
        stats["cross"].append(100 * kept[cross].float().mean().item())
        stats["deg_kept"].append(edge_degree[kept].mean().item())
        stats["deg_pruned"].append(edge_degree[~kept].mean().item() if (~kept).any() else float("nan"))
        stats["field_kept"].append(100 * kept[field].float().mean().item())
        stats["outside_kept"].append(100 * kept[~field].float().mean().item())
        has_edge = torch.zeros(g.num_nodes, dtype=torch.bool)
        has_edge[g.edges[:, kept].flatten()] = True
        had_edge = degree > 0
        stats["isolated"].append(100 * (had_edge & ~has_edge).float().sum().item() / had_edge.sum().item())
        control = store.arm_mask_path(t, level, "random-edges")
        if control.exists():
            random_kept = load_tensors(control)["edge_weight"]
            has_edge = torch.zeros(g.num_nodes, dtype=torch.bool)
            has_edge[g.edges[:, random_kept].flatten()] = True
            stats["isolated_random"].append(100 * (had_edge & ~has_edge).float().sum().item() / had_edge.sum().item())
            test = torch.zeros(g.num_nodes, dtype=torch.bool)
            test[data.x_test] = True
            stats["test_isolated"].append(100 * (test & had_edge & ~torch.zeros_like(test).index_fill_(
                0, g.edges[:, kept].flatten(), True)).sum().item() / test.sum().item())
            stats["test_isolated_random"].append(100 * (test & had_edge & ~has_edge).sum().item() / test.sum().item())
        for c, name in enumerate(g.class_names):
            topic = labelled & (labels[i] == c) & (labels[j] == c)
            touching = labelled & ((labels[i] == c) | (labels[j] == c)) & (labels[i] != labels[j])
            per_topic[name]["within"].append(100 * kept[topic].float().mean().item())
            per_topic[name]["cross"].append(100 * kept[touching].float().mean().item())
    kept_share = by[("imp", level)][0]["percent_edges_remaining"]
    ticket = accuracy(by[("imp", level)])
    control = accuracy(by[("random-edges", level)]) if ("random-edges", level) in by else []
    paired = [100 * (a["early_stop_test_accuracy"] - b["early_stop_test_accuracy"])
              for a, b in zip(sorted(by[("imp", level)], key=lambda r: r["trial"]),
                              sorted(by.get(("random-edges", level), []), key=lambda r: r["trial"]))]
    lines = [f"Level {level}: {kept_share:.1f}% of the citations kept; mean [min, max] over {len(trials)} trials.\n",
             "| measure | value |", "|---|---|",
             f"| citations whose edge weight received any gradient in the dense training | {spread(stats['moved'])}% |",
             f"| kept: within-topic citations | {spread(stats['within'])}% |",
             f"| kept: cross-topic citations | {spread(stats['cross'])}% |",
             f"| kept: citations within 1 hop of a labelled paper (reachable by the loss) | {spread(stats['field_kept'])}% |",
             f"| kept: citations outside that field (no gradient ever) | {spread(stats['outside_kept'])}% |",
             f"| mean degree of a kept citation's papers | {np.mean(stats['deg_kept']):.2f} |",
             f"| mean degree of a pruned citation's papers | {np.nanmean(stats['deg_pruned']):.2f} |",
             f"| papers with citations that lost them all | {spread(stats['isolated'])}% |",
             *([f"| the same in the random subgraph of that size | {spread(stats['isolated_random'])}% |",
                f"| test papers cut off: ticket's subgraph / random subgraph | {spread(stats['test_isolated'])}% / "
                f"{spread(stats['test_isolated_random'])}% |"] if stats["isolated_random"] else []),
             f"| test accuracy, ticket's subgraph | {spread(ticket)}% |"]
    if paired:
        lines.append(f"| test accuracy, a random subgraph of the same size (same weights) | {spread(control)}% |")
        lines.append(f"| ticket minus random subgraph, paired by trial | {spread(paired)} points "
                     f"({sum(p > 0 for p in paired)} of {len(paired)} trials better) |")
    lines += ["", "| topic | within-topic kept % | cross-topic kept % |", "|---|---|---|"]
    for name, values in per_topic.items():
        lines.append(f"| {name} | {spread(values['within'])} | {spread(values['cross'])} |")
    return "\n".join(lines)


def main() -> None:
    data_dir, prefix, main_run = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    weights_only = Path(sys.argv[4]) if len(sys.argv) > 4 and sys.argv[4] != "-" else None
    graph_only = Path(sys.argv[5]) if len(sys.argv) > 5 else None
    config = read_config(RunStore(main_run))
    data = lottery.load_dataset(config.data.dataset, data_dir)
    table, matching, by = level_table(main_run, weights_only, graph_only)
    figure(by, {"weights-only IMP (full graph)": weights_only, "graph-only IMP (dense weights)": graph_only},
           prefix.with_suffix(".png"), f"GCN on {config.data.dataset}: graph lottery tickets")
    parts = [f"# {config.data.dataset}\n", table, ""]
    if matching is not None:
        parts.append(f"Sparsest level whose ticket's mean is at least the dense mean: {matching}.\n")
    levels = sorted({lv for a, lv in by if a == "imp"})
    for level in sorted({lv for lv in (matching, levels[len(levels) // 2], levels[-1]) if lv}):
        parts += [subgraph_table(main_run, data, level, by), ""]
    prefix.with_suffix(".md").write_text("\n".join(parts) + "\n")
    print(prefix.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
