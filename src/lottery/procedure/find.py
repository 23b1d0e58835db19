"""`find_tickets`: IMP (or one-shot pruning) with the built-in stacked trainer behind the procedure's seam.

The procedure (lottery.procedure.levels) says which networks each round trains; here every round's (arm, trial)
networks train together, in passes of up to `max_replicas`. Each pass checkpoints itself, so re-running
the same command resumes where it stopped; a replica's result does not depend on which pass trains it, so
the resumed run gives the uninterrupted run's results bit for bit.
"""
from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import torch
from torch import nn

from lottery.config import RunConfig, TrainConfig
from lottery.validation import (check_builtin_loop, check_data, check_levels_fit, check_logits, check_module,
                                validate_inputs, long_run_note)
from lottery.data import Dataset, load_data
from lottery.errors import UserError
from lottery.models import build_model, parameter_names
from lottery.models.prunable import Include, describe_prunable, prunable_roles
from lottery.options import RunOptions
from lottery.order import derive_seed
from lottery.training.cost import train_flops_per_iteration
from lottery.training.passes import TrainingPass
from lottery.training.tracking import PassWatch, open_sinks
from lottery.procedure.levels import NetworkId, Procedure
from lottery.training.progress import Progress, pass_summary
from lottery.ranks import Ranks
from lottery.pruning.arms import ARMS
from lottery.pruning.prune import KINDS, ignored_names, unmatched_patterns
from lottery.pruning.units import describe_units, run_units
from lottery.pruning.saliency import PROBE_BATCHES, InitProbe
from lottery.storage.runinfo import claim
from lottery.training.sizing import check_fits, eval_batch_for, parameters_of, replicas_per_pass
from lottery.storage.files import RunStore, hold_run, save_tensors
from lottery.procedure.tickets import ModelFn, initial_weights
from lottery.training.trainer import CURVES, ReplicaSpec, StackedTrainer

EVAL_BATCH = 10_000

__all__ = ["EVAL_BATCH", "Job", "RunOptions", "find_tickets", "initial_weights"]


Job = NetworkId  # the name this had before the procedure moved out


def find_tickets(config: RunConfig, run_dir: Path | str, *, model_fn: ModelFn | None = None,
                 data: Dataset | None = None, data_dir: Path | str | None = None,
                 roles: dict[str, str] | None = None, prunable: Include = None,
                 options: RunOptions | None = None) -> Path:
    """Run IMP (or one-shot pruning) as `config` says, in `run_dir`; resume whatever is already there.

    `model_fn` builds a fresh torch.nn.Module (default: the registry's `config.model`); `data` gives
    in-memory tensors (default: `config.data` loaded from `data_dir`); `roles` maps prunable parameter
    names to "conv", "hidden" or "output" (default: Conv weights "conv", Linear weights "hidden", the last
    one "output"); or `prunable` chooses them (fnmatch patterns over parameter names, or a predicate
    (name, parameter) -> bool; default: lottery.models.prunable); each kind prunes at its own rate.
    Everything is checked before anything is written; the run directory is locked while this runs.
    """
    options = options or RunOptions()
    validate_inputs(config, model_fn=model_fn, data=data)
    check_builtin_loop(config)
    options.validate()
    if data is None:
        data = load_data(config.data, data_dir)
        check_data(data)
    if config.train.batch_size > len(data.x_train):
        raise UserError(f"batch size {config.train.batch_size} exceeds the {len(data.x_train)} training examples")
    if config.data.augment != "none" and data.x_train.dim() != 4:
        raise UserError(f"data.augment={config.data.augment} needs images [N, C, H, W]; {data.name} inputs are "
                        f"{tuple(data.x_train.shape[1:])}")
    data = data.to(options.device)
    if model_fn is None:
        spec = config.model
        model_fn = lambda: build_model(spec, data.input_shape, data.num_classes, data.graph)  # noqa: E731
        # The config sizes the registry's model: one too large for the machine is named before it is allocated.
        parameters = parameters_of(model_fn)
        if parameters is not None:
            check_fits(parameters, options.device)
    model = _build_checked(model_fn, options.device)
    check_logits(model, data.features(data.x_train[:2]), data.num_classes)
    if config.train.batching == "vmap" and config.train.precision == "bf16" and any(True for _ in model.buffers()):
        raise UserError("train.batching=vmap with precision bf16 fails for models with buffers (vmap's batch norm "
                        "under autocast, measured); use precision float32 or batching auto")
    roles = _canonical_roles(model, roles, prunable, data.features(data.x_train[:2]))
    unmatched = unmatched_patterns(config.prune.ignore, roles)
    if unmatched:
        raise UserError(f"prune.ignore: {unmatched[0]!r} matches none of the prunable tensors "
                        f"({', '.join(sorted(roles)[:6])}{', ...' if len(roles) > 6 else ''})")
    check_levels_fit(config, {n: p.numel() for n, p in model.named_parameters()}, roles)
    units, _ = run_units(model, roles, data.features(data.x_train[:2]), config.prune.granularity,
                         ignored_names(config.prune.ignore, roles))

    store = RunStore(run_dir)
    with hold_run(store.root, command="lottery find"):
        inputs = {"input_shape": list(data.input_shape), "num_classes": data.num_classes}
        Ranks.current().leader_first(lambda: claim(store, config, model, inputs, device=options.device))
        procedure = Procedure(config, store, model_fn, roles, options.device,
                              probe_for=lambda trial: init_probe(model, data, config, trial), units=units)
        _BuiltinTrainer(procedure, model, data, options).run()
    return store.root


def _build_checked(model_fn: ModelFn, device: str) -> nn.Module:
    """The user's (or the registry's) model, built once: a torch.nn.Module that fits the machine, on `device`."""
    try:
        model = model_fn()
    except (MemoryError, RuntimeError) as exc:  # torch's allocators raise RuntimeError subclasses
        if not isinstance(exc, MemoryError) and "memory" not in str(exc):
            raise
        raise UserError(f"building the model ran out of memory ({type(exc).__name__}); use a smaller model") from None
    check_fits(sum(p.numel() for p in check_module(model).parameters()), device)
    return model.to(device)


def _canonical_roles(model: nn.Module, roles: dict[str, str] | None, prunable: Include = None,
                     example: torch.Tensor | None = None) -> dict[str, str]:
    """The prunable tensors by canonical name (a tied weight, reachable by two names, is one tensor)."""
    if roles is None:
        try:
            return prunable_roles(model, prunable, example)
        except ValueError as exc:
            raise UserError(str(exc)) from None
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


def init_probe(model: nn.Module, data: Dataset, config: RunConfig, trial: int) -> InitProbe:
    """The network at θ0 for pruning at initialization: a fixed sample of `PROBE_BATCHES` training batches,
    drawn for the trial from the run's seed (the same whichever arm or pass asks)."""
    count = min(len(data.x_train), PROBE_BATCHES * config.train.batch_size)
    order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(
        derive_seed(config.seed, "init-probe", trial)))[:count].to(data.x_train.device)
    return InitProbe(model, data.x_train[order], data.y_train[order], tuple(data.features(data.x_train[:1]).shape[1:]),
                     data.features)


class _BuiltinTrainer:
    """Trains each round of the procedure with the stacked trainer: a round's networks in passes, each pass
    checkpointed; rewind points saved while the dense networks pass iteration k; results recorded."""

    def __init__(self, procedure: Procedure, model: nn.Module, data: Dataset, options: RunOptions) -> None:
        self.procedure, self.config, self.store = procedure, procedure.config, procedure.store
        self.model, self.data, self.options = model, data, options
        self.ranks = Ranks.current()
        self.progress = Progress(enabled=options.progress and self.ranks.leader, levels=len(procedure.levels),
                                 log=options.log_passes and self.ranks.leader)
        self.replicas_per_pass = replicas_per_pass(model, options.device,
                                                   eval_batch_for(model, data.features(data.x_train[:1])),
                                                   self.config.train.batch_size, options.max_replicas)
        self.progress.note(describe_prunable(model, procedure.roles))
        if procedure.units is not None:
            self.progress.note(describe_units(procedure.units, []))
        # Dense FLOPs per iteration: what the trainer computes for every network (masks multiply, not skip).
        self.flops_per_iteration = train_flops_per_iteration(model, data.features(data.x_train[:1]),
                                                             self.config.train.batch_size)
        note = long_run_note(self.config, self.flops_per_iteration)
        if note and self.ranks.leader:  # a very long run says what it will cost (a note, not a refusal)
            print(note, file=sys.stderr, flush=True)
        self.progress.note(f"training up to {self.replicas_per_pass} replicas per pass "
                           f"({'as asked' if options.max_replicas else 'chosen from model size, memory and device'})")

    def run(self) -> None:
        # Live metrics (options.track): opened here, written only once a network logs, closed (flushed) on
        # the way out, a failure's included, so what was logged is on disk.
        self.sinks, opened = open_sinks(self.options.trackers, self.store.root, run_hash=self.config.run_hash())
        try:
            for networks in self.procedure.rounds():
                self._train_round(networks)
        finally:
            for sink in opened:
                sink.close()
        self.progress.close()

    def _train_round(self, jobs: list[NetworkId]) -> None:
        """Passes are cut from all the round's networks, done or not, so a pass keeps its name and checkpoint
        when some of its replicas finished before a kill; only the unfinished ones train."""
        levels = sorted({j.level for j in jobs})
        todo = [j for j in jobs if not self.procedure.is_done(j)]
        self.progress.levels_done(levels, skipped=not todo)
        if not todo:
            return
        # Fine-tuned tickets train at their own fixed learning rate, and with a rewound optimizer the fresh
        # draws start with a fresh one (another step count): passes of their own.
        finetuned = [j for j in jobs if self.procedure.finetuned(j)]
        fresh = [j for j in jobs if self.procedure.fresh_optimizer(j)]
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

    def _watch(self, jobs: list[NetworkId]) -> PassWatch:
        """The pass's networks by their folders in the run (trial_T/level_LL/ARM): their evaluations to the
        sinks, their curves so far into their curves.csv at each checkpoint (record() writes the whole curves
        last, and metrics.json after them: a network is finished only then)."""
        folders = [self.store.arm_dir(j.trial, j.level, j.arm) for j in jobs]
        return PassWatch([f.relative_to(self.store.root).as_posix() for f in folders], self.sinks,
                         curves=[self.store.curves_path(j.trial, j.level, j.arm) for j in jobs])

    def _train_chunk(self, name: str, jobs: list[NetworkId], levels: list[int]) -> None:
        """One pass: the networks' starts from the procedure, trained together, recorded through the seam."""
        starts = [self.procedure.start(job) for job in jobs]
        stream_trials = sorted({j.trial for j in jobs})
        specs = [ReplicaSpec(stream_trials.index(s.id.trial),  # the arms of a trial share the trial's data order
                             s.start, s.mask, s.seed, s.optimizer, s.optimizer_steps) for s in starts]
        cfg = self.config.train
        if starts[0].finetune:  # the ticket's trained weights at a fixed small learning rate
            cfg = dataclasses.replace(cfg, lr=self.config.prune.finetune_lr, warmup=0, milestones=[])
        started, start_iteration = time.monotonic(), starts[0].start_iteration
        run = TrainingPass(self.model, self.data, cfg, specs, [j.key for j in jobs],
                           [derive_seed(self.config.seed, "order", t) for t in stream_trials],
                           self.store.checkpoint_paths(name)[0], start_iteration=start_iteration,
                           track_path=self.procedure.track_path, augment=self.config.data.augment,
                           checkpoint_seconds=self.options.checkpoint_seconds, warn=self.progress.warn,
                           watch=self._watch(jobs))
        bar = self.progress.iterations(name, cfg.iterations - start_iteration, run.iteration - start_iteration)

        def save_rewind_points(tr: StackedTrainer, _iteration: int) -> None:
            for row, job in enumerate(jobs):
                if self.procedure.needs_rewind_point(job.trial):
                    self.procedure.save_rewind_point(job.trial, {n: t[row] for n, t in tr.tensors(detach=True).items()},
                                                     tr.optimizer_of(row), tr.optimizer.steps_taken)

        def keep_trajectory(tr: StackedTrainer) -> None:
            """The dense networks' prunable weights at this evaluation, for the early-bird arm."""
            weights = tr.tensors(detach=True)
            for row, job in enumerate(jobs):
                path = self.store.trajectory_path(job.trial, tr.iteration)
                if not path.exists():
                    save_tensors(path, {n: weights[n][row].clone() for n in self.procedure.roles})

        # The dense networks (level 0) pass iteration k on their way: θk is saved there.
        rewind = self.config.prune.rewind_iteration if levels == [0] else 0
        trajectory = levels == [0] and any(ARMS[a].found_by == "early-bird" for a in self.config.arms)
        run.train(cfg.iterations, stops=[rewind] if rewind > 0 else [], on_stop=save_rewind_points, on_progress=bar,
                  on_evaluation=keep_trajectory if trajectory else None)
        self.progress.end_iterations()
        results = run.results()
        for job, spec, result in zip(jobs, specs, results):
            curves = [{"iteration": it, **{k: result.curves[k][i] for k in CURVES}}
                      for i, it in enumerate(result.iterations)]
            self.procedure.record(job, spec.mask, result.final, result.metrics(), curves, list(CURVES), result.path,
                                  extra={"train_flops": (cfg.iterations - start_iteration) * self.flops_per_iteration})
        run.finish()  # the results are saved: the pass's checkpoint is no longer needed
        summary = pass_summary([j.arm for j in jobs], results, cfg.iterations - start_iteration,
                               time.monotonic() - started)
        self.progress.pass_done(name, summary)
