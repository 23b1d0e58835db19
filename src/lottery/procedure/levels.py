"""The IMP procedure, whoever trains the networks: levels in order, the prune step, the arms' masks and
starts, which networks are still to train, and their results. It never trains anything itself.

    for level in 0..L:
        prune: the level's mask from the ticket trained at the level before (level 0: dense)
        build every arm's (mask, start) from the ticket's
        train each (arm, trial) network of the level          <- the seam: a trainer does this
        record each network's θT, curves and metrics
    results.csv

Two trainers sit behind the seam: the built-in stacked trainer (lottery.procedure.find.find_tickets), which trains
a round's networks together in passes, and the user's own loop (lottery.procedure.user_loop.IMP), one at a time.
Every file goes through one RunStore, so the two write the same run directory, and `report`, `claims`
and `export` read either.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from lottery.pruning import masks as masks_lib
from lottery.pruning.arms import ARMS, TICKET
from lottery.config import RunConfig
from lottery.pruning.criteria import needs_path
from lottery.procedure.lineage import LineageCheck
from lottery.procedure.lineage import read as lineage_of
from lottery.training.optim import OptimizerState, flatten_state
from lottery.order import derive_seed
from lottery.ranks import Ranks
from lottery.storage.ledger import with_costs
from lottery.storage.results import LATER_COLUMNS, RESULT_COLUMNS, collect_results
from lottery.storage.files import RunStore, remove_empty_folder, remove_file, save_csv, save_json, save_tensors, tensor_digest
from lottery.procedure.tickets import ModelFn, Tickets
from lottery.pruning.saliency import InitProbe
from lottery.pruning.units import UnitGroup

Weights = dict[str, torch.Tensor]


@dataclass(frozen=True)
class NetworkId:
    """One network of a run, named by (arm, trial, level)."""

    arm: str
    trial: int
    level: int

    @property
    def key(self) -> str:
        return f"{self.arm}/{self.trial}/{self.level}"


@dataclass
class NetworkStart:
    """Where a network starts: what any trainer needs to train it."""

    id: NetworkId
    mask: masks_lib.Mask
    start: Weights  # parameters and buffers (the trainer zeroes the pruned weights)
    seed: int  # the network's own random stream (dropout)
    order_seed: int  # the data order; the arms of a trial share it
    start_iteration: int  # 0 at level 0; k after it: the schedule and data order replay from here
    optimizer: OptimizerState | None = None  # the optimizer's state at k (prune.rewind_optimizer), else fresh
    optimizer_steps: int = 0
    finetune: bool = False  # prune.retrain=finetune: the ticket's θT at a fixed small learning rate


class Procedure:
    """One run's procedure over `store`. In a process group (lottery.ranks) rank 0 writes what the ranks
    share (masks, starts, results.csv); the trainer barriers between rounds."""

    def __init__(self, config: RunConfig, store: RunStore, model_fn: ModelFn, roles: dict[str, str],
                 device: str, probe_for: Callable[[int], InitProbe] | None = None,
                 units: list[UnitGroup] | None = None) -> None:
        self.config, self.store, self.roles, self.units = config, store, roles, units
        self.ranks = Ranks.current()
        self.trials = list(range(config.trials))
        self.levels = config.levels()
        self.track_path = needs_path(config.prune.criterion)
        self.tickets = Tickets(config, store, model_fn, roles, device, self.track_path, probe_for, units)
        self.lineage = LineageCheck(store, list(config.arms), bool(config.prune.one_shot), self.tickets.shapes)
        # A graph model's edges are counted apart from its weights, with the MACs of a whole-graph forward.
        self.edge_names = [n for n, kind in roles.items() if kind == "edge"]
        self.macs_of = getattr(model_fn(), "inference_macs", None) if self.edge_names else None

    # --- the level loop -------------------------------------------------------------------------------
    def rounds(self) -> Iterator[list[NetworkId]]:
        """The networks to train, a round at a time: level 0, then each level in order (one-shot: all
        pruned levels in one round, each pruned from the dense network). A round lists every network of
        its levels, done or not, so that a trainer cuts its passes the same way after a kill; the caller
        trains those not done and records them before asking for the next round. Ends with results.csv."""
        for level in self.levels:  # a contradiction anywhere is refused before any training
            self._check_lineage(level)
        yield self._round([0])
        rest = self.levels[1:]
        if self.config.prune.one_shot:
            yield self._round(rest)
        else:
            for level in rest:
                self._check_lineage(level)  # the level before may have been trained again just now
                yield self._round([level])
        self.ranks.leader_first(self.write_results)

    def arms_at(self, level: int) -> list[str]:
        return [TICKET] if level == 0 else list(self.config.arms)  # the controls of the dense net are the dense net

    def _round(self, levels: list[int]) -> list[NetworkId]:
        networks = [NetworkId(arm, t, level) for level in levels for arm in self.arms_at(level) for t in self.trials]
        todo = [n for n in networks if not self.is_done(n)]
        if todo:  # prune, and build the arms' masks and starts: each computed once and saved
            self.ranks.leader_first(lambda: [self._build(n) for n in todo])
        return networks

    def _build(self, network: NetworkId) -> None:
        self.tickets.arm_mask(network.trial, network.level, network.arm)
        self.tickets.arm_start(network.trial, network.level, network.arm)

    def _check_lineage(self, level: int) -> None:
        def check() -> None:
            for trial in self.trials:
                self.lineage.check_level(trial, level, self.levels[-1])
        self.ranks.leader_first(check)

    # --- what a trainer reads and writes --------------------------------------------------------------
    def is_done(self, network: NetworkId) -> bool:
        return self.store.is_done(network.trial, network.level, network.arm)

    def finetuned(self, network: NetworkId) -> bool:
        return network.level > 0 and network.arm == TICKET and self.config.prune.retrain == "finetune"

    def fresh_optimizer(self, network: NetworkId) -> bool:
        """A fresh draw in a run that rewinds the optimizer starts with a fresh one (another step count)."""
        return (self.config.prune.rewind_optimizer and network.level > 0
                and not self.tickets.uses_rewound_optimizer(network.level, network.arm))

    def start(self, network: NetworkId, stream_seed_of_trial: bool = True) -> NetworkStart:
        trial, level, arm = network.trial, network.level, network.arm
        optimizer, steps = self.tickets.arm_optimizer(trial, level, arm)
        return NetworkStart(network, self.tickets.arm_mask(trial, level, arm), self.tickets.arm_start(trial, level, arm),
                            derive_seed(self.config.seed, "replica", arm, trial, level),
                            derive_seed(self.config.seed, "order", trial),
                            0 if level == 0 else self.config.prune.rewind_iteration,
                            optimizer, steps, self.finetuned(network))

    def needs_rewind_point(self, trial: int) -> bool:
        """Whether the dense network of `trial` must save its state at iteration k while it trains."""
        return self.config.prune.rewind_iteration > 0 and not self.store.rewind_path(trial).exists()

    def save_rewind_point(self, trial: int, weights: Weights, optimizer: OptimizerState | None = None,
                          optimizer_steps: int = 0) -> None:
        """θk of a trial (parameters and buffers), and the optimizer's state at k when the run rewinds it."""
        if self.config.prune.rewind_optimizer:  # first, so that rewind.safetensors stands for both
            save_tensors(self.store.rewind_optimizer_path(trial), flatten_state(optimizer or {}),
                         {"optimizer_steps": str(optimizer_steps)})
        save_tensors(self.store.rewind_path(trial), weights)

    def record(self, network: NetworkId, mask: masks_lib.Mask, final: Weights, metrics: dict[str, float | int],
               curves: list[dict[str, float]] | None = None, curve_columns: list[str] | None = None,
               path: Weights | None = None, extra: dict | None = None) -> None:
        """Save a trained network: θT, its curves, and metrics.json last (the network is done once it exists)."""
        trial, level, arm = network.trial, network.level, network.arm
        if path is not None and arm == TICKET:  # the trunk's path feeds the next mask
            save_tensors(self.store.path_length_path(trial, level, arm), path)
        final_path = self.store.final_path(trial, level, arm)
        save_tensors(final_path, final)
        self.lineage.forget(final_path)
        if curves is not None:
            save_csv(self.store.curves_path(trial, level, arm), curves, ["iteration", *(curve_columns or [])])
        kept, total = masks_lib.count({n: m for n, m in mask.items() if n not in self.edge_names})
        save_json(self.store.metrics_path(trial, level, arm), {
            "arm": arm, "trial": trial, "level": level,
            "percent_remaining": 100.0 * kept / total, "weights_remaining": kept, "prunable_weights": total,
            **self.graph_counts(mask), "mask_digest": tensor_digest(mask), **(extra or {}), **metrics,
        })

    def graph_counts(self, mask: masks_lib.Mask) -> dict[str, float | int]:
        """For a graph model: edges kept of the graph's (undirected, self-loops not counted), and the MACs
        of one forward over the whole graph with this mask and with none (lottery.models.gcn)."""
        if not self.edge_names:
            return {}
        kept, total = masks_lib.count({n: mask[n] for n in self.edge_names})
        macs = {}
        if self.macs_of is not None:
            macs = {"macs": self.macs_of(masks_lib.layer_counts(mask)), "dense_macs": self.macs_of({})}
        return {"edges_remaining": kept, "graph_edges": total, "percent_edges_remaining": 100.0 * kept / total, **macs}

    def _found_at(self) -> dict[tuple[str, int, int], int]:
        """The dense-training iteration each early-bird mask was drawn at (recorded with the mask)."""
        out = {}
        for arm in self.config.arms:
            if ARMS[arm].found_by != "early-bird":
                continue
            for trial in self.trials:
                for level in self.levels[1:]:
                    path = self.store.arm_mask_path(trial, level, arm)
                    found = (lineage_of(path) or {}).get("found") if path.exists() else None
                    if found:
                        out[(arm, trial, level)] = int(found["iteration"])
        return out

    def write_results(self) -> None:
        rows = with_costs(collect_results(self.store, self.trials, self.levels, tuple(self.config.arms)), self.config,
                          self._found_at())
        save_csv(self.store.results_path, rows, RESULT_COLUMNS + LATER_COLUMNS)
        # Every network is done: what is left are checkpoints of passes cut another way (another
        # --max-replicas, another number of processes); their networks were trained since.
        for stale in self.store.checkpoint_dir.glob("*.safetensors"):
            remove_file(stale)  # refuses checkpoints/ as a link: its target's files are not the run's
        remove_empty_folder(self.store.checkpoint_dir)


def finite_or_nan(value: object, name: str) -> float:
    """A metric as a float (NaN for "not measured"); a non-number is refused by name."""
    if value is None:
        return math.nan
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {value!r}")
    return float(value)
