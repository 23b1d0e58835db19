"""The procedure: trials, levels, arms, rewinding. Iterative magnitude pruning and one-shot pruning.

Every level trains all its (arm, trial) replicas together, in passes of up to `max_replicas`. Each pass
checkpoints itself, so re-running the same command resumes where it stopped; a replica's result does
not depend on which pass trains it, so the resumed run gives the uninterrupted run's results bit for bit.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from . import masks as masks_lib
from .config import RunConfig, TrainConfig, validate
from .criteria import needs_path
from .data import Dataset, load_data
from .errors import UserError
from .forwards import check_model_output
from .lineage import LineageCheck
from .models import build_model, parameter_names, prunable_roles
from .optim import flatten_state
from .options import RunOptions
from .order import derive_seed
from .passes import finish_pass, resume, train_with_checkpoints
from .progress import Progress, pass_summary
from .ranks import Ranks
from .prune import KINDS, unmatched_patterns
from .results import RESULT_COLUMNS, collect_results
from .runinfo import claim
from .sizing import eval_batch_for, replicas_per_pass
from .store import RunStore, hold_run, remove_empty_folder, save_csv, save_json, save_tensors, tensor_digest
from .tickets import ModelFn, Tickets, initial_weights
from .train import CURVES, ReplicaResult, ReplicaSpec, StackedTrainer

EVAL_BATCH = 10_000

__all__ = ["EVAL_BATCH", "Job", "RunOptions", "find_tickets", "initial_weights"]


@dataclass(frozen=True)
class Job:
    """One replica of a pass, named by (arm, trial, level)."""

    arm: str
    trial: int
    level: int

    @property
    def key(self) -> str:
        return f"{self.arm}/{self.trial}/{self.level}"


def find_tickets(config: RunConfig, run_dir: Path | str, *, model_fn: ModelFn | None = None,
                 data: Dataset | None = None, data_dir: Path | str | None = None,
                 roles: dict[str, str] | None = None, options: RunOptions | None = None) -> Path:
    """Run IMP (or one-shot pruning) as `config` says, in `run_dir`; resume whatever is already there.

    `model_fn` builds a fresh torch.nn.Module (default: the registry's `config.model`); `data` gives
    in-memory tensors (default: `config.data` loaded from `data_dir`); `roles` maps prunable parameter
    names to "conv", "hidden" or "output" (default: Conv weights "conv", Linear weights "hidden", the last
    one "output"); each kind prunes at its own rate.
    Everything is checked before anything is written; the run directory is locked while this runs.
    """
    options = options or RunOptions()
    validate(config)
    options.validate()
    if data is None:
        data = load_data(config.data, data_dir)
    if config.train.batch_size > len(data.x_train):
        raise UserError(f"batch size {config.train.batch_size} exceeds the {len(data.x_train)} training examples")
    if config.data.augment != "none" and data.x_train.dim() != 4:
        raise UserError(f"data.augment={config.data.augment} needs images [N, C, H, W]; {data.name} inputs are "
                        f"{tuple(data.x_train.shape[1:])}")
    data = data.to(options.device)
    if model_fn is None:
        spec = config.model
        model_fn = lambda: build_model(spec, data.input_shape, data.num_classes)  # noqa: E731
    model = model_fn().to(options.device)
    check_model_output(model, data.features(data.x_train[:2]), data.num_classes)
    if config.train.batching == "vmap" and config.train.precision == "bf16" and any(True for _ in model.buffers()):
        raise UserError("train.batching=vmap with precision bf16 fails for models with buffers (vmap's batch norm "
                        "under autocast, measured); use precision float32 or batching auto")
    roles = _canonical_roles(model, roles)
    unmatched = unmatched_patterns(config.prune.ignore, roles)
    if unmatched:
        raise UserError(f"prune.ignore: {unmatched[0]!r} matches none of the prunable tensors "
                        f"({', '.join(sorted(roles)[:6])}{', ...' if len(roles) > 6 else ''})")

    store = RunStore(run_dir)
    with hold_run(store.root, command="lottery find"):
        Ranks.current().leader_first(lambda: claim(store, config, model))
        _Procedure(config, store, model, model_fn, data, roles, options).run()
    return store.root


def _canonical_roles(model: nn.Module, roles: dict[str, str] | None) -> dict[str, str]:
    """The prunable tensors by canonical name (a tied weight, reachable by two names, is one tensor)."""
    if roles is None:
        return prunable_roles(model)
    names = parameter_names(model)
    unknown = [n for n in roles if n not in names]
    if unknown:
        raise UserError(f"not parameters of the model: {', '.join(unknown)}")
    kinds = sorted({k for k in roles.values() if k not in KINDS})
    if kinds:
        raise UserError(f"unknown kind {kinds[0]!r} in roles; kinds are {', '.join(KINDS)}")
    canonical: dict[str, str] = {}
    for name, kind in roles.items():
        if canonical.setdefault(names[name], kind) != kind:
            raise UserError(f"{name} is tied to {names[name]}: one tensor, one kind; roles give it two")
    return canonical


class _Procedure:
    """Levels in order; each level's (arm, trial) replicas trained in passes; results saved per replica.
    In a process group (lottery.ranks) each rank trains its share of every level; rank 0 writes what the
    ranks share (masks, starting points, results.csv), and a level starts when every rank ended the last."""

    def __init__(self, config: RunConfig, store: RunStore, model: nn.Module, model_fn: ModelFn, data: Dataset,
                 roles: dict[str, str], options: RunOptions) -> None:
        self.config, self.store, self.model = config, store, model
        self.data, self.options = data, options
        self.ranks = Ranks.current()
        self.trials = list(range(config.trials))
        self.levels = config.levels()
        self.track_path = needs_path(config.prune.criterion)
        self.tickets = Tickets(config, store, model_fn, roles, options.device, self.track_path)
        self.lineage = LineageCheck(store, list(config.arms), bool(config.prune.one_shot))
        self.progress = Progress(enabled=options.progress and self.ranks.leader, levels=len(self.levels),
                                 log=options.log_passes and self.ranks.leader)
        self.replicas_per_pass = replicas_per_pass(model, options.device,
                                                   eval_batch_for(model, data.features(data.x_train[:1])),
                                                   config.train.batch_size, options.max_replicas)
        self.progress.note(f"training up to {self.replicas_per_pass} replicas per pass "
                           f"({'as asked' if options.max_replicas else 'chosen from model size, memory and device'})")

    def arms_at(self, level: int) -> list[str]:
        return ["imp"] if level == 0 else list(self.config.arms)  # controls of the dense net are the dense net

    def run(self) -> None:
        for level in self.levels:  # a contradiction anywhere is refused before any training
            self._check_lineage(level)
        self._train_levels([0])
        rest = self.levels[1:]
        if self.config.prune.one_shot:
            for level in rest:
                self._check_lineage(level)
            self._train_levels(rest)  # independent of each other: one pass
        else:
            for level in rest:
                self._check_lineage(level)  # the level before may have been trained again just now
                self._train_levels([level])
        self.progress.close()
        self.ranks.leader_first(self._write_results)

    def _write_results(self) -> None:
        rows = collect_results(self.store, self.trials, self.levels, tuple(self.config.arms))
        save_csv(self.store.results_path, rows, RESULT_COLUMNS)
        # Every pass has ended: what is left are checkpoints of passes cut another way (another
        # --max-replicas, another number of processes); their replicas were trained since.
        for stale in self.store.checkpoint_dir.glob("*.safetensors"):
            stale.unlink(missing_ok=True)
        remove_empty_folder(self.store.checkpoint_dir)

    def _check_lineage(self, level: int) -> None:
        def check() -> None:
            for trial in self.trials:
                self.lineage.check_level(trial, level, self.levels[-1])
        self.ranks.leader_first(check)

    def _train_levels(self, levels: list[int]) -> None:
        """Passes are cut from all the level's jobs, done or not, so a pass keeps its name and checkpoint
        when some of its replicas finished before a kill; only the unfinished ones train."""
        jobs = [Job(arm, t, level) for level in levels for arm in self.arms_at(level) for t in self.trials]
        todo = [j for j in jobs if not self.store.is_done(j.trial, j.level, j.arm)]
        self.progress.levels_done(levels, skipped=not todo)
        if not todo:
            return
        self.ranks.leader_first(lambda: self._prepare(todo))  # one writer for the files the ranks share
        # Fine-tuned tickets train at their own fixed learning rate, and with a rewound optimizer the fresh
        # draws start with a fresh one (another step count): passes of their own.
        finetuned = [j for j in jobs if self._finetuned(j)]
        fresh = [j for j in jobs if self.config.prune.rewind_optimizer and j.level > 0
                 and not self.tickets.uses_rewound_optimizer(j.level, j.arm)]
        name = f"level_{'_'.join(f'{level:02d}' for level in levels)}"
        groups = [(name, [j for j in jobs if j not in finetuned and j not in fresh]),
                  (name + "_finetune", finetuned), (name + "_fresh_optimizer", fresh)]
        for name, group in groups:
            size, group = self.replicas_per_pass, self.ranks.share(group)
            name += self.ranks.pass_suffix()
            chunks = [group[i:i + size] for i in range(0, len(group), size)]
            if len(chunks) > 1:
                self.progress.note(f"{name}: {len(group)} replicas in {len(chunks)} passes of up to {size}")
            for index, chunk in enumerate(chunks):
                remaining = [j for j in chunk if j in todo]
                if remaining:
                    self._train_chunk(name if len(chunks) == 1 else f"{name}_part{index}", remaining, levels)
        self.ranks.barrier()  # the next level's masks need every rank's results

    def _prepare(self, jobs: list[Job]) -> None:
        """Write the masks and starting points these jobs read (each is computed once and saved)."""
        for job in jobs:
            self.tickets.arm_mask(job.trial, job.level, job.arm)
            self.tickets.arm_start(job.trial, job.level, job.arm)

    def _finetuned(self, job: Job) -> bool:
        return job.level > 0 and job.arm == "imp" and self.config.prune.retrain == "finetune"

    def _train_chunk(self, name: str, jobs: list[Job], levels: list[int]) -> None:
        k = self.config.prune.rewind_iteration
        start_iteration = 0 if levels == [0] else k
        tickets = self.tickets
        stream_trials = sorted({j.trial for j in jobs})
        specs = [ReplicaSpec(stream_trials.index(job.trial),  # the arms of a trial share the trial's data order
                             tickets.arm_start(job.trial, job.level, job.arm),
                             tickets.arm_mask(job.trial, job.level, job.arm),
                             derive_seed(self.config.seed, "replica", job.arm, job.trial, job.level),
                             *tickets.arm_optimizer(job.trial, job.level, job.arm))
                 for job in jobs]
        cfg = self.config.train
        if self._finetuned(jobs[0]):  # the ticket's trained weights at a fixed small learning rate
            cfg = dataclasses.replace(cfg, lr=self.config.prune.finetune_lr, warmup=0, milestones=[])
        started = time.monotonic()
        results = self._train_pass(name, jobs, specs, stream_trials, start_iteration, cfg,
                                   snapshot_at=k if levels == [0] else 0)
        for job, spec, result in zip(jobs, specs, results):
            self._save_result(job, spec, result)
        finish_pass(self.store.checkpoint_paths(name)[0])
        summary = pass_summary([j.arm for j in jobs], results, cfg.iterations - start_iteration,
                               time.monotonic() - started)
        self.progress.pass_done(name, summary)

    def _train_pass(self, name: str, jobs: list[Job], specs: list[ReplicaSpec], stream_trials: list[int],
                    start_iteration: int, cfg: TrainConfig, snapshot_at: int) -> list[ReplicaResult]:
        seeds = [derive_seed(self.config.seed, "order", t) for t in stream_trials]
        trainer = StackedTrainer(self.model, specs, self.data, cfg, seeds, start_iteration,
                                 track_path=self.track_path, augment=self.config.data.augment)
        keys, checkpoint = [j.key for j in jobs], self.store.checkpoint_paths(name)[0]
        resume(trainer, keys, checkpoint, warn=self.progress.warn)
        bar = self.progress.iterations(name, cfg.iterations - start_iteration, trainer.iteration - start_iteration)

        def save_rewind_points(tr: StackedTrainer) -> None:
            for row, job in enumerate(jobs):
                if self.store.rewind_path(job.trial).exists():
                    continue
                if self.config.prune.rewind_optimizer:  # first, so that rewind.safetensors stands for both
                    save_tensors(self.store.rewind_optimizer_path(job.trial), flatten_state(tr.optimizer_of(row)),
                                 {"optimizer_steps": str(tr.optimizer.steps_taken)})
                save_tensors(self.store.rewind_path(job.trial), {n: t[row] for n, t in tr.tensors(detach=True).items()})

        train_with_checkpoints(trainer, keys, checkpoint, cfg.iterations,
                               self.options.checkpoint_seconds, bar, snapshot_at, save_rewind_points)
        self.progress.end_iterations()
        return trainer.results()

    def _save_result(self, job: Job, spec: ReplicaSpec, result: ReplicaResult) -> None:
        folder = self.store.arm_dir(job.trial, job.level, job.arm)
        if result.path is not None and job.arm == "imp":  # the trunk's path feeds the next mask
            save_tensors(folder / "path.safetensors", result.path)
        save_tensors(folder / "final.safetensors", result.final)
        self.lineage.forget(folder / "final.safetensors")
        rows = [{"iteration": it, **{k: result.curves[k][i] for k in CURVES}} for i, it in enumerate(result.iterations)]
        save_csv(folder / "curves.csv", rows, ["iteration", *CURVES])
        kept, total = masks_lib.count(spec.mask)
        save_json(folder / "metrics.json", {
            "arm": job.arm, "trial": job.trial, "level": job.level,
            "percent_remaining": 100.0 * kept / total, "weights_remaining": kept, "prunable_weights": total,
            "mask_digest": tensor_digest(spec.mask),
            **result.metrics(),
        })

