"""The cost ledger: what each network's training cost, and what finding its mask cost, in units of one dense
training run (the iterations of the dense network's training; every network of a run costs the same per
iteration in the built-in trainer, whose masks multiply and do not skip).

- `train_iterations`: the network's own training (iterations − k after level 0; a user's loop: its steps).
- `cost_to_find`: the training spent before this network's mask existed, by how the arm finds it
  (lottery.pruning.arms, `found_by`):
  - "ticket" (imp, reinit, same-sign): the ticket's levels 0..ℓ−1, the trunk's trainings.
  - "dense" (one-shot): the dense network's training.
  - "ticket-counts" (random, init-magnitude, layer-wise SNIP...): the per-tensor counts IMP reached. With
    layer-wise pruning (`prune.scope = layerwise`) they follow from the rates alone: 0; with global pruning
    they are the ticket's cost.
  - "init" (the global pruning-at-initialization arms and their controls): θ0 alone: 0.
  - "early-bird": the dense training up to the iteration where its mask stopped changing (`found_at`).
  plus the scoring of θ0 for SNIP, GraSP and SynFlow (lottery.pruning.saliency.SCORING_ITERATIONS).
- `cost_total`: cost_to_find + the network's own training.
"""
from __future__ import annotations

from typing import Any

from lottery.config import RunConfig
from lottery.pruning.arms import ARMS, TICKET
from lottery.pruning.saliency import SCORING_ITERATIONS

COST_COLUMNS = ["train_iterations", "cost_to_find", "cost_total"]


def train_iterations(row: dict[str, Any], config: RunConfig) -> int:
    if row.get("steps") not in (None, ""):  # the user's own loop counted them
        return int(row["steps"])
    start = 0 if int(row["level"]) == 0 else config.prune.rewind_iteration
    return config.train.iterations - start


def with_costs(rows: list[dict[str, Any]], config: RunConfig,
               found_at: dict[tuple[str, int, int], int] | None = None) -> list[dict[str, Any]]:
    """`rows` (results.csv's, with any `steps` from metrics.json) with the ledger's columns filled in;
    `found_at`: the dense-training iteration at which an (arm, trial, level) mask was drawn (early-bird)."""
    found_at = found_at or {}
    spent = {(r["arm"], int(r["trial"]), int(r["level"])): train_iterations(r, config) for r in rows}

    def dense_run(trial: int) -> int:
        """The unit: the trial's dense training (its steps in a user's loop), else the config's iterations."""
        return spent.get((TICKET, trial, 0), config.train.iterations) or 1

    def ticket_cost(trial: int, level: int) -> float:
        source_levels = [0] if config.prune.one_shot else range(level)
        return sum(spent.get((TICKET, trial, lv), dense_run(trial) if lv == 0
                             else config.train.iterations - config.prune.rewind_iteration) for lv in source_levels)

    out = []
    for r in rows:
        arm, trial, level = r["arm"], int(r["trial"]), int(r["level"])
        strategy = ARMS.get(arm)
        found_by = strategy.found_by if strategy else "ticket"
        if level == 0:
            find = 0.0
        elif found_by == "ticket":
            find = ticket_cost(trial, level)
        elif found_by == "dense":
            find = dense_run(trial)
        elif found_by == "early-bird":
            find = found_at.get((arm, trial, level), dense_run(trial))
        elif found_by == "ticket-counts":
            find = 0.0 if config.prune.scope == "layerwise" else ticket_cost(trial, level)
        else:
            find = 0.0
        if level > 0 and strategy and strategy.scoring:
            find += SCORING_ITERATIONS[strategy.scoring](config.train.batch_size)
        own = spent[(arm, trial, level)]
        unit = dense_run(trial)
        out.append({**{k: v for k, v in r.items() if k != "steps"}, "train_iterations": own,
                    "cost_to_find": round(find / unit, 4), "cost_total": round((find + own) / unit, 4)})
    return out
