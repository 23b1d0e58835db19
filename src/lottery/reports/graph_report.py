"""The graph part of a report (a GCN's run): edges and MACs per level, and whether the edge scores learned
anything (Hui et al., ICLR 2023: few citations lie in a labelled paper's receptive field, so most edge scores
never receive a gradient and are pruned in the order of their initial jitter, that is, at random)."""
from __future__ import annotations

from collections import defaultdict

import torch

from lottery.config import RunConfig
from lottery.storage.expect import load_weights, recorded_shapes
from lottery.storage.files import RunStore

EDGE_SCORE = "edge_weight"  # lottery.models.gcn's edge tensor


def edge_gradient_share(store: RunStore, trial: int) -> float | None:
    """Share of the graph's edge scores that the dense training moved from θ0 (any gradient reached them)."""
    init, final = store.init_path(trial), store.final_path(trial, 0, "imp")
    if not (init.exists() and final.exists()):
        return None
    shapes = recorded_shapes(store)  # both hold the parameters run.json recorded, of their shapes
    start, end = load_weights(init, shapes).get(EDGE_SCORE), load_weights(final, shapes).get(EDGE_SCORE)
    if start is None or end is None:
        return None
    return float((start != end).float().mean())


def graph_section(store: RunStore, rows: list[dict], config: RunConfig) -> str:
    if not any(r.get("edges_remaining") is not None for r in rows):
        return ""
    by = defaultdict(list)
    for r in rows:
        if r["arm"] == "imp":
            by[r["level"]].append(r)
    lines = ["## The graph", "",
             f"Per level, {config.prune.rate_edge:.0%} of the remaining citations (undirected edges; self-loops are "
             f"never pruned) and {config.prune.rate_hidden:.0%} / {config.prune.rate_output:.0%} of the remaining "
             f"weights are pruned. MACs are those of one forward over the whole graph.", "",
             "| level | weights % | edges % | edges kept | MACs saved % |", "|---|---|---|---|---|"]
    for level, level_rows in sorted(by.items()):
        r = level_rows[0]
        saved = 100 * (1 - r["macs"] / r["dense_macs"]) if r.get("macs") else float("nan")
        lines.append(f"| {level} | {r['percent_remaining']:.1f} | {r['percent_edges_remaining']:.1f} | "
                     f"{r['edges_remaining']:,} of {r['graph_edges']:,} | {saved:.1f} |")
    shares = [s for t in sorted({r["trial"] for r in rows}) if (s := edge_gradient_share(store, t)) is not None]
    if shares:
        share = sum(shares) / len(shares)
        lines += ["", f"**Did the edge scores learn?** In the dense training, {100 * share:.1f}% of the citations' "
                      f"scores received any gradient (mean over {len(shares)} trials). The other {100 * (1 - share):.1f}% "
                      "lie outside every labelled paper's receptive field: their scores keep θ0 exactly, and magnitude "
                      "pruning removes them in the order of their initial jitter, i.e. at random (Hui et al. 2023)."]
    return "\n".join(lines) + "\n"
