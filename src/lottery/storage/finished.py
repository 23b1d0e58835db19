"""Read access to a finished `lottery find` run, for the experiments that build on it (noise, attack,
transfer): its config, results, θ0, masks and trained weights, and the model and data it used."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lottery.config import RunConfig
from lottery.data import Dataset, load_data
from lottery.errors import UserError
from lottery.pruning.masks import Mask
from lottery.models import build_model
from lottery.storage.results import read_results
from lottery.storage.runinfo import check_model, read_config
from lottery.storage.files import RunStore, load_tensors

ModelFn = Callable[[], nn.Module]


@dataclass
class FinishedRun:
    store: RunStore
    config: RunConfig
    rows: list[dict] = field(repr=False)

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

    def init(self, trial: int, device: str = "cpu") -> dict[str, torch.Tensor]:
        return load_tensors(self.store.init_path(trial), device)

    def start(self, trial: int, device: str = "cpu") -> dict[str, torch.Tensor]:
        """The ticket's start weights: θk when the run rewinds to k > 0, else θ0."""
        if self.config.prune.rewind_iteration:
            return load_tensors(self.store.rewind_path(trial), device)
        return self.init(trial, device)

    def mask(self, trial: int, level: int, arm: str = "imp", device: str = "cpu") -> Mask:
        own = self.store.arm_mask_path(trial, level, arm)
        path = own if own.exists() else self.store.mask_path(trial, level)
        return {n: t.bool() for n, t in load_tensors(path, device).items()}

    def final(self, trial: int, level: int, arm: str = "imp", device: str = "cpu") -> dict[str, torch.Tensor]:
        return load_tensors(self.store.final_path(trial, level, arm), device)

    def nearest_levels(self, targets: tuple[float, ...]) -> list[int]:
        """The levels whose percent remaining is nearest (in log scale) to each target, without repeats."""
        import math

        percents = {lv: self.percent(lv) for lv in self.levels}
        return sorted({min(percents, key=lambda lv: abs(math.log(percents[lv] / t))) for t in targets})


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
    masks = run.mask(run.trials[0], run.levels[0])
    shapes = dict(model.named_parameters())
    if any(n not in shapes or shapes[n].shape != m.shape for n, m in masks.items()):
        raise UserError(f"the model does not match the run's masks in {run.store.root} (pass the run's own model_fn)")
    return model, model_fn, data, list(masks)
