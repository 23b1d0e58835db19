"""What each replica of a level starts from: θ0, θk, the level's mask and each arm's mask and weights.

Each is computed once, saved, and read back from the run directory afterwards; masks record what they
were derived from (see lottery.procedure.lineage). Every control is built from the ticket's own mask at the same
level, and only the ticket (`imp`) feeds the next level's mask.
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import nn

from lottery.pruning import masks as masks_lib
from lottery.pruning.arms import ARMS, TICKET, ArmInputs
from lottery.config import RunConfig
from lottery.pruning.criteria import score_weights
from lottery.procedure.lineage import mask_lineage, record
from lottery.training.optim import OptimizerState, unflatten_state
from lottery.order import derive_seed
from lottery.pruning.saliency import InitProbe
from lottery.pruning.prune import ignored_names, parse_pattern, prune_one_shot, prune_round
from lottery.pruning.units import UnitGroup, prune_units_round
from lottery.storage.expect import RunShapes, load_mask, load_optimizer, load_prunable, load_weights, optimizer_steps
from lottery.storage.files import RunStore, save_tensors, tensor_digest

ModelFn = Callable[[], nn.Module]


def initial_weights(model_fn: ModelFn, seed: int, trial: int) -> dict[str, torch.Tensor]:
    """θ0 of a trial, parameters and buffers (BatchNorm statistics): the model's own initializer under a
    seed derived from (seed, trial); no global side effect."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init", trial))
        model = model_fn()
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}


class Tickets:
    """The saved starting points of one run: per trial, per level, per arm."""

    def __init__(self, config: RunConfig, store: RunStore, model_fn: ModelFn, roles: dict[str, str],
                 device: str, track_path: bool, probe_for: Callable[[int], InitProbe] | None = None,
                 units: list[UnitGroup] | None = None) -> None:
        self.config, self.store, self.model_fn, self.roles = config, store, model_fn, roles
        self.units = units  # a structured run's groups of channels (prune.granularity=channel), else None
        self.device, self.track_path = device, track_path
        # trial -> the network at θ0 with that trial's sample of training examples; one per trial, so the
        # scores it remembers serve every level and arm
        self.probe_for = functools.cache(probe_for) if probe_for is not None else None

    @functools.cached_property
    def shapes(self) -> RunShapes:
        """What each file this class reads must hold (lottery.storage.expect): the model's parameters and
        buffers, and its prunable tensors. The model is built under a forked random state: no global side effect."""
        with torch.random.fork_rng(devices=[]):
            return RunShapes.of_model(self.model_fn(), self.roles)

    def init(self, trial: int) -> dict[str, torch.Tensor]:
        path = self.store.init_path(trial)
        if not path.exists():
            save_tensors(path, initial_weights(self.model_fn, self.config.seed, trial))
        return load_weights(path, self.shapes, self.device)

    def rewind(self, trial: int) -> dict[str, torch.Tensor]:
        if self.config.prune.rewind_iteration == 0:
            return self.init(trial)
        return load_weights(self.store.rewind_path(trial), self.shapes, self.device)

    def uses_rewound_optimizer(self, level: int, arm: str) -> bool:
        """Whether this replica starts with the optimizer's state at k (prune.rewind_optimizer): every arm
        that starts from θk; a fresh draw (reinit, same-sign) starts with a fresh optimizer."""
        return self.config.prune.rewind_optimizer and level > 0 and not ARMS[arm].redrawn

    def arm_optimizer(self, trial: int, level: int, arm: str) -> tuple[OptimizerState | None, int]:
        """(the optimizer's state to start from, by buffer and parameter name; its step count), or (None, 0): fresh."""
        if not self.uses_rewound_optimizer(level, arm):
            return None, 0
        path = self.store.rewind_optimizer_path(trial)
        return unflatten_state(load_optimizer(path, self.shapes, self.device)), optimizer_steps(path)

    def mask(self, trial: int, level: int) -> masks_lib.Mask:
        path = self.store.mask_path(trial, level)
        if not path.exists():
            mask, lineage = self._compute_mask(trial, level)
            save_tensors(path, mask, lineage)
        return load_mask(path, self.shapes, self.device)

    def _compute_mask(self, trial: int, level: int) -> tuple[masks_lib.Mask, dict[str, str] | None]:
        p = self.config.prune
        if level == 0:
            return masks_lib.dense_mask(self.init(trial), list(self.roles)), None
        source = 0 if p.one_shot else level - 1  # one-shot prunes every level from the dense network
        previous = self.mask(trial, source)
        trained, scores = self.scores(trial, source, list(self.roles), seed_level=level)
        lineage = mask_lineage(trained, p.criterion, derive_seed(self.config.seed, "criterion", trial, level))
        conv = self.config.conv_rate()
        ignore = ignored_names(p.ignore, self.roles)
        pattern = parse_pattern(p.pattern)
        if self.units is not None:
            return prune_units_round(self.units, scores, previous, p.rate_hidden, conv, p.scope, p.unit_score,
                                     trained), lineage
        if p.one_shot:
            return prune_one_shot(scores, previous, self.roles, p.rate_hidden, p.rate_output, p.one_shot[level - 1],
                                  p.scope, ignore, conv, pattern, p.rate_edge), lineage
        return prune_round(scores, previous, self.roles, p.rate_hidden, p.rate_output, p.scope, ignore,
                           conv, pattern, p.rate_edge), lineage

    def scores(self, trial: int, trained_level: int, names: list[str],
               seed_level: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(θT, the criterion's scores) of the ticket trained at `trained_level` (its path too, if needed)."""
        trained = load_weights(self.store.final_path(trial, trained_level, "imp"), self.shapes, self.device)
        path = (load_prunable(self.store.path_length_path(trial, trained_level, "imp"), self.shapes, self.device)
                if self.track_path else None)
        seed = derive_seed(self.config.seed, "criterion", trial, seed_level)
        return trained, score_weights(self.config.prune.criterion, self.init(trial), self.rewind(trial), trained,
                                      names, path, seed)

    def arm_inputs(self, trial: int, level: int, arm: str) -> ArmInputs:
        """What the arm's strategy builds from; each input is computed once, when the arm asks for it."""
        once = functools.cache
        return ArmInputs(
            trial=trial, level=level, run_seed=self.config.seed, reference=self.mask(trial, level),
            pattern=parse_pattern(self.config.prune.pattern),
            init=once(lambda: self.init(trial)),
            start=once(lambda: self.rewind(trial)),
            fresh=once(lambda: initial_weights(self.model_fn, derive_seed(self.config.seed, "reinit", arm, level), trial)),
            dense_scores=once(lambda: self.scores(trial, 0, list(self.roles), seed_level=level)[1]),
            **({"probe": once(lambda: self.probe_for(trial))} if self.probe_for is not None else {}),
            trajectory=once(lambda: self.trajectory(trial)),
            roles=self.roles,
            units=self.units,
        )

    def trajectory(self, trial: int) -> list[tuple[int, dict[str, torch.Tensor]]]:
        """The dense network's prunable weights at each evaluation, in order (see RunStore.trajectory_dir)."""
        folder = self.store.trajectory_dir(trial)
        paths = sorted(folder.glob("iteration_*.safetensors")) if folder.exists() else []
        return [(int(p.stem.split("_")[1]), load_prunable(p, self.shapes, self.device)) for p in paths]

    def arm_mask(self, trial: int, level: int, arm: str) -> masks_lib.Mask:
        """The mask the arm trains under: the level's (the ticket's), or the arm's own, drawn once and saved."""
        strategy = ARMS[arm]
        if strategy.mask is None or level == 0:
            return self.mask(trial, level)
        path = self.store.arm_mask_path(trial, level, arm)
        if not path.exists():
            inputs = self.arm_inputs(trial, level, arm)
            made = strategy.mask(inputs)
            mask, found = made if isinstance(made, tuple) else (made, None)
            save_tensors(path, mask, record(reference=tensor_digest(inputs.reference),
                                            **({"found": found} if found is not None else {})))
        return load_mask(path, self.shapes, self.device)

    def arm_start(self, trial: int, level: int, arm: str) -> dict[str, torch.Tensor]:
        """The state a network starts from (the trainer masks it). The ticket: θk under `rewind`; under
        `lr-rewind` and `finetune` the trained θT (weights and buffers) of the ticket its mask was pruned
        from. Controls keep their meaning whatever the mode: the other-mask arms start from θk, the redrawn
        ones (reinit, same-sign) from their own fresh draw, saved once. The optimizer: see `arm_optimizer`."""
        if level > 0 and arm == TICKET and self.config.prune.retrain != "rewind":
            source = 0 if self.config.prune.one_shot else level - 1
            return load_weights(self.store.final_path(trial, source, TICKET), self.shapes, self.device)
        start = self.init(trial) if level == 0 else self.rewind(trial)
        strategy = ARMS[arm]
        if strategy.start is None or level == 0:
            return start
        path = self.store.arm_start_path(trial, level, arm)
        if not path.exists():
            save_tensors(path, strategy.start(self.arm_inputs(trial, level, arm)))
        return load_weights(path, self.shapes, self.device)
