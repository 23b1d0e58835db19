"""Read access to a finished `lottery find` run, for the commands that build on it (noise, attack, transfer,
stability, export): its config, results, θ0, masks and trained weights, and the model and data it used.

Every tensor file is read through lottery.storage.expect, checked against the run's model: the one a command
builds (`use_model`), else the registry's model built from what run.json recorded, else run.json's parameters.
The prunable tensors are those the dense mask holds. A mask is also checked against the digest its network
recorded when it trained (metrics.json's mask_digest), and results.csv against the finished networks on disk.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lottery.config import RunConfig
from lottery.data import Dataset, load_data
from lottery.errors import BrokenFile, UserError
from lottery.pruning.masks import Mask
from lottery.models import GRAPH_MODELS, MODELS, build_model
from lottery.models.prunable import prunable_roles
from lottery.pruning.prune import ignored_names
from lottery.pruning.units import UnitGroup, run_units
from lottery.storage.expect import (RunShapes, check_prunable, check_trained_under, load_mask, load_weights,
                                    recorded_shapes)
from lottery.storage.results import read_results
from lottery.storage.runinfo import check_model, read_config, recorded_inputs
from lottery.storage.files import RunStore, load_tensors, remedy, tensor_digest

ModelFn = Callable[[], nn.Module]


@dataclass
class FinishedRun:
    store: RunStore
    config: RunConfig
    rows: list[dict] = field(repr=False)
    shapes: RunShapes | None = field(default=None, repr=False)  # see expected()
    _mask_digests: dict[Path, str] = field(default_factory=dict, repr=False)  # masks read: their digests

    @property
    def trials(self) -> list[int]:
        return sorted({r["trial"] for r in self.rows})

    @property
    def levels(self) -> list[int]:
        return sorted({r["level"] for r in self.rows})

    @property
    def arms(self) -> list[str]:
        return list(dict.fromkeys(r["arm"] for r in self.rows))

    def rows_of(self, arm: str, level: int) -> list[dict]:
        return [r for r in self.rows if r["arm"] == arm and r["level"] == level]

    def percent(self, level: int) -> float:
        return self.rows_of("imp", level)[0]["percent_remaining"]

    def has(self, trial: int, level: int, arm: str) -> bool:
        return self.store.is_done(trial, level, arm)

    # --- what the files must hold ------------------------------------------------------------------------
    def expected(self) -> RunShapes:
        """The names and shapes of the run's tensors: from the model given to use_model, else from the
        registry's model as run.json recorded it, else run.json's parameters; the prunable tensors are the
        dense mask's."""
        if self.shapes is None:
            self.use_shapes(_registry_shapes(self) or recorded_shapes(self.store))
        return self.shapes  # type: ignore[return-value]  # use_shapes set it

    def use_model(self, model: nn.Module) -> None:
        """Check every file read from now on against `model` (its parameters and buffers)."""
        self.use_shapes(RunShapes.of_model(model))

    def use_shapes(self, shapes: RunShapes) -> None:
        """Check every file read from now on against `shapes` (the prunable tensors, if not given: the dense mask's)."""
        if shapes.prunable is None:
            shapes = RunShapes(shapes.parameters, shapes.buffers, self._dense_mask(shapes))
        self.shapes = shapes

    def _dense_mask(self, shapes: RunShapes) -> dict[str, tuple[int, ...]]:
        """The prunable tensors, as the first trial's dense mask holds them (each a parameter of its shape),
        checked against the digest its network recorded."""
        trial = self.trials[0]
        path = self.store.mask_path(trial, 0)
        tensors = load_tensors(path)
        check_prunable(path, tensors, shapes)
        self._check_lineage(path, tensors, trial, 0, "imp")
        return {n: tuple(t.shape) for n, t in tensors.items()}

    def _check_lineage(self, path: Path, mask: dict[str, torch.Tensor], trial: int, level: int, arm: str) -> None:
        """The network (trial, level, arm), when it is finished, was trained under this mask."""
        if path not in self._mask_digests:
            self._mask_digests[path] = tensor_digest({n: t.bool() for n, t in mask.items()})
        metrics = self.store.metrics_path(trial, level, arm)
        if metrics.exists():
            check_trained_under(metrics, path, self._mask_digests[path])

    # --- the files -------------------------------------------------------------------------------------
    def init(self, trial: int, device: str = "cpu") -> dict[str, torch.Tensor]:
        return load_weights(self.store.init_path(trial), self.expected(), device)

    def start(self, trial: int, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The ticket's start weights: θk when the run rewinds to k > 0, else θ0."""
        if self.config.prune.rewind_iteration:
            return load_weights(self.store.rewind_path(trial), self.expected(), device)
        return self.init(trial, device)

    def arm_start(self, trial: int, level: int, arm: str, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The start weights an arm drew for itself (reinit, same-sign)."""
        return load_weights(self.store.arm_start_path(trial, level, arm), self.expected(), device)

    def mask_path(self, trial: int, level: int, arm: str = "imp") -> Path:
        """The mask (trial, level, arm) trains under: the arm's own, else the level's (the ticket's)."""
        own = self.store.arm_mask_path(trial, level, arm)
        return own if own.exists() else self.store.mask_path(trial, level)

    def mask(self, trial: int, level: int, arm: str = "imp", device: str = "cpu") -> Mask:
        path = self.mask_path(trial, level, arm)
        mask = load_mask(path, self.expected(), device)
        self._check_lineage(path, mask, trial, level, arm)
        return mask

    def final(self, trial: int, level: int, arm: str = "imp", device: str = "cpu") -> dict[str, torch.Tensor]:
        return load_weights(self.store.final_path(trial, level, arm), self.expected(), device)

    def check_networks(self, levels: list[int], masks: bool = True) -> None:
        """Read (and so check) the θT, and the mask if `masks`, of every finished network at `levels`: a command
        that reads them as it goes calls this first, so that a damaged file is named before any work is done."""
        for level in levels:
            for arm in self.arms:
                for trial in self.trials:
                    if self.has(trial, level, arm):
                        self.final(trial, level, arm)
                        if masks:
                            self.mask(trial, level, arm)

    def unit_groups(self, model: nn.Module, example: torch.Tensor) -> list[UnitGroup] | None:
        """A structured run's groups of channels, traced as `lottery find` traced them (the run's prunable tensors
        and prune.ignore on `model`), so that a reader redrawing a structured control (stability's random mask)
        draws the arm's own units; None for a run pruned by weight."""
        if self.config.prune.granularity == "weight":
            return None
        names = list(self.expected().prunable or ())
        try:
            roles = prunable_roles(model, names, example)
        except ValueError as exc:
            raise UserError(f"{self.store.root}: {exc}") from None
        roles = {n: kind for n, kind in roles.items() if n in names}
        units, _ = run_units(model, roles, example, self.config.prune.granularity,
                             ignored_names(self.config.prune.ignore, roles))
        return units

    def nearest_levels(self, targets: tuple[float, ...]) -> list[int]:
        """The levels whose percent remaining is nearest (in log scale) to each target, without repeats."""
        import math

        percents = {lv: self.percent(lv) for lv in self.levels}
        return sorted({min(percents, key=lambda lv: abs(math.log(percents[lv] / t))) for t in targets})


def _registry_shapes(run: FinishedRun) -> RunShapes | None:
    """The shapes of the registry's model for this run, built on the meta device (no memory, no random draw)
    from the inputs run.json recorded; None for a graph model, a model of the user's, or an older run."""
    spec = run.config.model
    inputs = recorded_inputs(run.store)
    if spec.name not in MODELS or spec.name in GRAPH_MODELS or not isinstance(inputs, dict):
        return None
    recorded = recorded_shapes(run.store)
    try:
        with torch.device("meta"):
            model = build_model(spec, tuple(inputs["input_shape"]), int(inputs["num_classes"]))
    except Exception:  # noqa: BLE001 - what run.json says cannot build it: the records alone are checked
        return None
    shapes = RunShapes.of_model(model)
    return shapes if recorded.parameters in (None, shapes.parameters) else None


def open_run(run_dir: Path | str) -> FinishedRun:
    store = RunStore(run_dir)
    if not store.results_path.exists():
        raise UserError(f"{store.root} has no results.csv: not a finished `lottery find` run directory")
    config = read_config(store)
    rows = read_results(store.root)
    if not rows:
        raise UserError(f"{store.results_path} has no rows")
    return FinishedRun(store, config, rows)


def model_and_data(run: FinishedRun, data_dir: Path | str | None = None, *, model_fn: ModelFn | None = None,
                   data: Dataset | None = None, device: str = "cpu") -> tuple[nn.Module, ModelFn, Dataset, list[str]]:
    """The run's model (a fresh module, for its structure), a builder, its data on `device`, and the
    names of its prunable (masked) tensors. From Python, pass `model_fn`/`data` for runs made with your own module or tensors."""
    data = (data if data is not None else load_data(run.config.data, data_dir)).to(device)
    if model_fn is None:
        spec = run.config.model
        model_fn = lambda: build_model(spec, data.input_shape, data.num_classes, data.graph)  # noqa: E731
    model = model_fn().to(device)
    check_model(run.store, model)
    run.use_model(model)
    return model, model_fn, data, list(run.expected().prunable or ())
