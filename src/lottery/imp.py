"""The procedure: trials, levels, arms, rewinding. Iterative magnitude pruning and one-shot pruning.

Every level trains all its (arm, trial) replicas together in one pass. Each pass checkpoints itself,
so re-running the same command resumes where it stopped and gives the same results.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from . import masks as masks_lib
from .arms import OWN_MASK, REDRAWN, mask_with_counts, random_mask, same_sign
from .config import RunConfig, from_toml, to_toml, validate
from .criteria import needs_path, score_weights
from .data import Dataset, load_data
from .errors import UserError
from .models import build_model, prunable_roles
from .order import derive_seed
from .passes import finish_pass, resume, train_with_checkpoints
from .progress import Progress
from .sizing import replicas_per_pass
from .prune import prune_one_shot, prune_round
from .results import RESULT_COLUMNS, collect_results
from .store import RunStore, atomic_write_text, load_tensors, save_csv, save_json, save_tensors
from .train import CURVES, ReplicaResult, ReplicaSpec, StackedTrainer

ModelFn = Callable[[], nn.Module]
EVAL_BATCH = 10_000


@dataclass
class RunOptions:
    """How to run, not what to compute: none of these change a result, so none is in the run hash."""

    device: str = "cpu"
    progress: bool = True
    checkpoint_seconds: float = 60.0  # at most this long of training is lost on a kill
    max_replicas: int | None = None  # replicas per training pass; None: as many as memory and speed favour


@dataclass(frozen=True)
class Job:
    """One replica of a pass, named by (arm, trial, level)."""

    arm: str
    trial: int
    level: int

    @property
    def key(self) -> str:
        return f"{self.arm}/{self.trial}/{self.level}"


def initial_weights(model_fn: ModelFn, seed: int, trial: int) -> dict[str, torch.Tensor]:
    """θ0 of a trial: the model's own initializer under a seed derived from (seed, trial); no global side effect."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, "init", trial))
        model = model_fn()
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def find_tickets(config: RunConfig, run_dir: Path | str, *, model_fn: ModelFn | None = None,
                 data: Dataset | None = None, data_dir: Path | str | None = None,
                 roles: dict[str, str] | None = None, options: RunOptions | None = None) -> Path:
    """Run IMP (or one-shot pruning) as `config` says, in `run_dir`; resume whatever is already there.

    `model_fn` builds a fresh torch.nn.Module (default: the registry's `config.model`); `data` gives
    in-memory tensors (default: `config.data` loaded from `data_dir`); `roles` maps prunable parameter
    names to "hidden" or "output" (default: Linear/Conv weights, the last one is the output layer).
    """
    options = options or RunOptions()
    validate(config)
    if data is None:
        data = load_data(config.data, data_dir)
    if config.train.batch_size > len(data.x_train):
        raise UserError(f"batch size {config.train.batch_size} exceeds the {len(data.x_train)} training examples")
    data = data.to(options.device)
    if model_fn is None:
        spec = config.model
        model_fn = lambda: build_model(spec, data.input_shape, data.num_classes)  # noqa: E731
    model = model_fn().to(options.device)
    roles = dict(roles) if roles is not None else prunable_roles(model)
    params = dict(model.named_parameters())
    unknown = [n for n in [*roles, *config.prune.ignore] if n not in params]
    if unknown:
        raise UserError(f"not parameters of the model: {', '.join(unknown)}")

    store = RunStore(run_dir)
    _claim_run_dir(store, config)
    procedure = _Procedure(config, store, model, model_fn, data, roles, options)
    procedure.run()
    return store.root


def _claim_run_dir(store: RunStore, config: RunConfig) -> None:
    if store.config_path.exists():
        existing = from_toml(store.config_path.read_text())
        if existing.run_hash() != config.run_hash():
            raise UserError(f"{store.root} holds a run with a different config; choose another --out")
    store.root.mkdir(parents=True, exist_ok=True)
    atomic_write_text(store.config_path, to_toml(config))


class _Procedure:
    def __init__(self, config: RunConfig, store: RunStore, model: nn.Module, model_fn: ModelFn, data: Dataset,
                 roles: dict[str, str], options: RunOptions) -> None:
        self.config, self.store, self.model, self.model_fn = config, store, model, model_fn
        self.data, self.roles, self.options = data, roles, options
        self.trials = list(range(config.trials))
        self.levels = config.levels()
        self.device = options.device
        self.track_path = needs_path(config.prune.criterion)
        self.progress = Progress(enabled=options.progress, levels=len(self.levels))
        self.replicas_per_pass = replicas_per_pass(model, self.device, EVAL_BATCH, config.train.batch_size,
                                                   options.max_replicas)
        self.progress.note(f"training up to {self.replicas_per_pass} replicas per pass "
                           f"({'as asked' if options.max_replicas else 'chosen from model size, memory and device'})")

    # --- per-trial tensors, each computed once and saved -------------------------------------------
    def init(self, trial: int) -> dict[str, torch.Tensor]:
        path = self.store.init_path(trial)
        if not path.exists():
            save_tensors(path, initial_weights(self.model_fn, self.config.seed, trial))
        return load_tensors(path, self.device)

    def rewind(self, trial: int) -> dict[str, torch.Tensor]:
        if self.config.prune.rewind_iteration == 0:
            return self.init(trial)
        return load_tensors(self.store.rewind_path(trial), self.device)

    def mask(self, trial: int, level: int) -> masks_lib.Mask:
        path = self.store.mask_path(trial, level)
        if not path.exists():
            save_tensors(path, self._compute_mask(trial, level))
        return {n: t.bool() for n, t in load_tensors(path, self.device).items()}

    def _compute_mask(self, trial: int, level: int) -> masks_lib.Mask:
        p = self.config.prune
        if level == 0:
            return masks_lib.dense_mask(self.init(trial), list(self.roles))
        source = 0 if p.one_shot else level - 1  # one-shot prunes every level from the dense network
        previous = self.mask(trial, source)
        scores = self.scores(trial, source, list(self.roles), seed_level=level)
        if p.one_shot:
            return prune_one_shot(scores, previous, self.roles, p.rate_hidden, p.rate_output, p.one_shot[level - 1],
                                  p.scope, p.ignore)
        return prune_round(scores, previous, self.roles, p.rate_hidden, p.rate_output, p.scope, p.ignore)

    def scores(self, trial: int, trained_level: int, names: list[str], seed_level: int) -> dict[str, torch.Tensor]:
        """The criterion's scores from the ticket trained at `trained_level` (its θT and, if needed, its path)."""
        folder = self.store.arm_dir(trial, trained_level, "imp")
        trained = load_tensors(folder / "final.safetensors", self.device)
        path = load_tensors(folder / "path.safetensors", self.device) if self.track_path else None
        seed = derive_seed(self.config.seed, "criterion", trial, seed_level)
        return score_weights(self.config.prune.criterion, self.init(trial), self.rewind(trial), trained, names,
                             path, seed)

    # --- arms: every control is built from the ticket's own mask at the same level ------------------
    def arm_mask(self, trial: int, level: int, arm: str) -> masks_lib.Mask:
        if arm not in OWN_MASK or level == 0:
            return self.mask(trial, level)
        path = self.store.arm_dir(trial, level, arm) / "mask.safetensors"
        if not path.exists():
            reference = self.mask(trial, level)
            if arm == "random":
                mask = random_mask(reference, derive_seed(self.config.seed, "random-mask", trial, level))
            elif arm == "init-magnitude":
                init = self.init(trial)
                mask = mask_with_counts({n: init[n].abs() for n in reference}, reference)
            else:  # one-shot: the criterion on the dense network's training, straight to these counts
                mask = mask_with_counts(self.scores(trial, 0, list(reference), seed_level=level), reference)
            save_tensors(path, mask)
        return {n: t.bool() for n, t in load_tensors(path, self.device).items()}

    def arm_start(self, trial: int, level: int, arm: str) -> dict[str, torch.Tensor]:
        start = self.init(trial) if level == 0 else self.rewind(trial)
        if arm not in REDRAWN or level == 0:
            return start
        path = self.store.arm_dir(trial, level, arm) / "start.safetensors"
        if not path.exists():
            fresh = initial_weights(self.model_fn, derive_seed(self.config.seed, "reinit", arm, level), trial)
            save_tensors(path, fresh if arm == "reinit" else same_sign(fresh, start))
        return load_tensors(path, self.device)

    def arms_at(self, level: int) -> list[str]:
        return ["imp"] if level == 0 else list(self.config.arms)  # controls of the dense net are the dense net

    # --- the procedure ------------------------------------------------------------------------------
    def run(self) -> None:
        self._train_levels([0])
        rest = self.levels[1:]
        if self.config.prune.one_shot:
            self._train_levels(rest)  # independent of each other: one pass
        else:
            for level in rest:
                self._train_levels([level])
        self.progress.close()
        rows = collect_results(self.store, self.trials, self.levels, tuple(self.config.arms))
        save_csv(self.store.results_path, rows, RESULT_COLUMNS)

    def _train_levels(self, levels: list[int]) -> None:
        jobs = [Job(arm, t, level) for level in levels for arm in self.arms_at(level) for t in self.trials
                if not self.store.is_done(t, level, arm)]
        self.progress.levels_done(levels, skipped=not jobs)
        if not jobs:
            return
        name = "level_" + "_".join(f"{level:02d}" for level in levels)
        size = self.replicas_per_pass
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        if len(chunks) > 1:
            self.progress.note(f"{name}: {len(jobs)} replicas in {len(chunks)} passes of up to {size}")
        for index, chunk in enumerate(chunks):
            self._train_chunk(name if len(chunks) == 1 else f"{name}_part{index}", chunk, levels)

    def _train_chunk(self, name: str, jobs: list[Job], levels: list[int]) -> None:
        k = self.config.prune.rewind_iteration
        start_iteration = 0 if levels == [0] else k
        specs = []
        stream_trials = sorted({j.trial for j in jobs})
        for job in jobs:  # the arms of a trial share the trial's data order
            specs.append(ReplicaSpec(stream_trials.index(job.trial), self.arm_start(job.trial, job.level, job.arm),
                                     self.arm_mask(job.trial, job.level, job.arm),
                                     derive_seed(self.config.seed, "replica", job.arm, job.trial, job.level)))
        results = self._train_pass(name, jobs, specs, stream_trials, start_iteration, snapshot_at=k if levels == [0] else 0)
        for job, result in zip(jobs, results):
            self._save_result(job, result)
        finish_pass(self.store.checkpoint_paths(name)[0])

    def _train_pass(self, name: str, jobs: list[Job], specs: list[ReplicaSpec], stream_trials: list[int],
                    start_iteration: int, snapshot_at: int) -> list[ReplicaResult]:
        cfg = self.config.train
        seeds = [derive_seed(self.config.seed, "order", t) for t in stream_trials]
        trainer = StackedTrainer(self.model, specs, self.data, cfg, seeds, start_iteration, EVAL_BATCH,
                                 track_path=self.track_path)
        keys, checkpoint = [j.key for j in jobs], self.store.checkpoint_paths(name)[0]
        resume(trainer, keys, checkpoint)
        bar = self.progress.iterations(name, cfg.iterations - start_iteration, trainer.iteration - start_iteration)

        def save_rewind_points(tr: StackedTrainer) -> None:
            for row, job in enumerate(jobs):
                if not self.store.rewind_path(job.trial).exists():
                    save_tensors(self.store.rewind_path(job.trial), {n: p[row].detach() for n, p in tr.params.items()})

        train_with_checkpoints(trainer, keys, checkpoint, cfg.iterations,
                               self.options.checkpoint_seconds, bar, snapshot_at, save_rewind_points)
        self.progress.end_iterations()
        return trainer.results()

    def _save_result(self, job: Job, result: ReplicaResult) -> None:
        folder = self.store.arm_dir(job.trial, job.level, job.arm)
        if result.path is not None and job.arm == "imp":  # the trunk's path feeds the next mask
            save_tensors(folder / "path.safetensors", result.path)
        save_tensors(folder / "final.safetensors", result.final)
        rows = [{"iteration": it, **{k: result.curves[k][i] for k in CURVES}} for i, it in enumerate(result.iterations)]
        save_csv(folder / "curves.csv", rows, ["iteration", *CURVES])
        kept, total = masks_lib.count(self.arm_mask(job.trial, job.level, job.arm))
        save_json(folder / "metrics.json", {
            "arm": job.arm, "trial": job.trial, "level": job.level,
            "percent_remaining": 100.0 * kept / total, "weights_remaining": kept, "prunable_weights": total,
            **result.metrics(),
        })


