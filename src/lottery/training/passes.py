"""The one pass engine: a pass of replicas trained together, checkpointed, resumable after a kill.

`TrainingPass` is what `find_tickets` (each round's networks), the experiments (`train_replicas`: noise,
transfer, stability's copies) and stability's dense trunk all train with. A checkpoint is one safetensors
file (tensors + JSON metadata), written atomically at evaluation points at most every
`checkpoint_seconds`; it is used again only if it holds the same replicas (or more of them).

A pass can be watched while it trains (`watch`, lottery.training.tracking.PassWatch): each evaluation goes to
the metric sinks (TensorBoard, MLflow), and each network's curves so far are written, atomically, with each
checkpoint (not at every evaluation: an fsynced file per replica per evaluation would cost a long run several
percent; a checkpoint's cadence costs nothing measurable). The watch only reads the trainer: no result changes.
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from lottery.config import TrainConfig
from lottery.data import Dataset
from lottery.pruning.masks import count
from lottery.training.optim import OptimizerState
from lottery.training.progress import Progress, pass_summary
from lottery.ranks import Ranks
from lottery.errors import UserError
from lottery.storage.files import (NetworkFiles, load_metadata, load_tensors, remove_empty_folder, remove_file, save_json,
                                   save_tensors)
from lottery.training.trainer import ReplicaResult, ReplicaSpec, StackedTrainer
from lottery.training.tracking import PassWatch


def resume(trainer: StackedTrainer, keys: list[str], checkpoint: Path,
           warn: Callable[[str], None] | None = None) -> int | None:
    """Continue from `checkpoint` if it holds these replicas (`keys`), or more of them (replicas of the
    pass that finished before a kill: their rows are left out); else start fresh. A checkpoint is a
    cache: one that cannot be read is reported, removed, and the pass trains from its start.
    Returns the iteration resumed at, or None."""
    if not checkpoint.exists():
        return None
    try:
        meta = json.loads(load_metadata(checkpoint)["meta"])
        saved = list(meta["keys"])
        if not set(keys) <= set(saved):
            return None  # another set of replicas: this pass overwrites it
        device = next(iter(trainer.params.values())).device
        trainer.load_state(load_tensors(checkpoint, device), meta, rows=[saved.index(k) for k in keys])
    except (UserError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as exc:
        remove_file(checkpoint)  # first: a link on the way is refused before the warning says it was removed
        (warn or _warn)(f"checkpoint {checkpoint} is unreadable ({str(exc).splitlines()[0][:120]}); "
                        f"removed it, the pass trains again from its start")
        return None
    return trainer.iteration


def _warn(text: str) -> None:
    print(f"lottery: warning: {text}", file=sys.stderr, flush=True)


def train_with_checkpoints(trainer: StackedTrainer, keys: list[str], checkpoint: Path, until: int,
                           checkpoint_seconds: float = 60.0, on_progress: Callable[[int], None] | None = None,
                           save_until: int | None = None,
                           on_evaluation: Callable[[StackedTrainer], None] | None = None,
                           on_checkpoint: Callable[[StackedTrainer], None] | None = None) -> None:
    """Train to iteration `until`, checkpointing at evaluation points before `save_until` (default: `until`;
    a pass that ends there needs no checkpoint). Call `resume` first to continue an interrupted pass.
    `on_checkpoint(trainer)` runs just before each checkpoint is written."""
    last_save = time.monotonic()
    save_until = until if save_until is None else save_until

    def on_eval(tr: StackedTrainer) -> None:
        nonlocal last_save
        if on_evaluation:  # before the checkpoint: what it writes is never behind a checkpoint's iteration
            on_evaluation(tr)
        if tr.iteration < save_until and time.monotonic() - last_save >= checkpoint_seconds:
            if on_checkpoint:  # before it, too: what it writes is never behind the checkpoint
                on_checkpoint(tr)
            tensors, meta = tr.state()
            meta["keys"] = keys
            save_tensors(checkpoint, tensors, {"meta": json.dumps(meta)})
            last_save = time.monotonic()

    trainer.run(until, on_eval, on_progress)


class TrainingPass:
    """The replicas `specs` (named by `keys`, the same wherever the run directory lies) trained from
    `start_iteration` in one stacked trainer, continuing from `checkpoint` where it holds them.

        run = TrainingPass(model, data, cfg, specs, keys, stream_seeds, checkpoint, ...)
        run.train(cfg.iterations, stops=[k], on_stop=save_theta_k)   # on_stop once per stop, resumed or not
        results = run.results(); ...save them...; run.finish()        # the checkpoint is no longer needed

    `watch` (optional) sees the pass: where it (re)starts, each evaluation, each checkpoint, and its end
    (in `finish`, after the results are saved).
    """

    def __init__(self, model: nn.Module, data: Dataset, cfg: TrainConfig, specs: list[ReplicaSpec], keys: list[str],
                 stream_seeds: list[int], checkpoint: Path, *, start_iteration: int = 0, track_path: bool = False,
                 augment: str = "none", checkpoint_seconds: float = 60.0,
                 warn: Callable[[str], None] | None = None, watch: PassWatch | None = None) -> None:
        self.trainer = StackedTrainer(model, specs, data, cfg, stream_seeds, start_iteration,
                                      track_path=track_path, augment=augment)
        self.keys, self.checkpoint, self.checkpoint_seconds = keys, checkpoint, checkpoint_seconds
        self.start_iteration = start_iteration
        self.resumed_at = resume(self.trainer, keys, checkpoint, warn)
        self.watch, self._results = watch, None
        if watch is not None:
            watch.begin(self.trainer, self.resumed_at)

    @property
    def iteration(self) -> int:
        return self.trainer.iteration

    def train(self, until: int, *, stops: list[int] = (), on_stop: Callable[[StackedTrainer, int], None] | None = None,
              on_progress: Callable[[int], None] | None = None,
              on_evaluation: Callable[[StackedTrainer], None] | None = None) -> None:
        """Train to `until`; at each iteration of `stops` (> 0) not passed yet, call `on_stop(trainer, it)`;
        `on_evaluation(trainer)` at every evaluation point (replayed the same after a resume)."""
        watch, on_checkpoint = self.watch, None
        if watch is not None:
            def evaluated(tr: StackedTrainer, caller: Callable[[StackedTrainer], None] | None = on_evaluation) -> None:
                if caller:
                    caller(tr)
                watch.evaluated(tr)
            on_evaluation, on_checkpoint = evaluated, watch.checkpoint
        for stop in sorted(s for s in stops if 0 < s <= until):
            if self.trainer.iteration <= stop:  # a checkpoint may be at the stop itself: call it all the same
                train_with_checkpoints(self.trainer, self.keys, self.checkpoint, stop, self.checkpoint_seconds,
                                       on_progress, save_until=until, on_evaluation=on_evaluation,
                                       on_checkpoint=on_checkpoint)
                if on_stop:
                    on_stop(self.trainer, stop)
        train_with_checkpoints(self.trainer, self.keys, self.checkpoint, until, self.checkpoint_seconds, on_progress,
                               on_evaluation=on_evaluation, on_checkpoint=on_checkpoint)

    def results(self) -> list[ReplicaResult]:
        self._results = self.trainer.results()
        return self._results

    def finish(self) -> None:
        if self.watch is not None:
            self.watch.end(self._results)
        self._results = None
        finish_pass(self.checkpoint)


def finish_pass(checkpoint: Path) -> None:
    """The pass's results are saved: its checkpoint is no longer needed (nor its folder, once empty)."""
    remove_file(checkpoint)


@dataclass
class NamedReplica:
    """A replica an experiment trains: results go to `folder` (done once folder/metrics.json exists)."""

    folder: Path
    order_seed: int  # the data order (replicas with the same seed see the same batches)
    build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]  # -> (start weights, mask)
    seed: int  # the replica's own random stream (dropout)
    key: str  # names the replica in checkpoints: the same wherever the run directory lies
    extra: dict = field(default_factory=dict)  # more fields for metrics.json
    # -> (optimizer state by buffer and parameter name, its step count); None: the optimizer starts fresh
    optimizer: Callable[[], tuple[OptimizerState, int]] | None = None


def _log_group(replica: NamedReplica, label: str) -> str:
    """How a pass's log line groups a replica: its arm (else the pass label) and level, where it has them."""
    arm = replica.extra.get("arm", label)
    return f"{arm} L{replica.extra['level']}" if "level" in replica.extra else arm


def train_replicas(replicas: list[NamedReplica], model: nn.Module, data: Dataset, cfg: TrainConfig,
                   checkpoint_dir: Path, *, max_per_pass: int, checkpoint_seconds: float = 60.0,
                   progress: bool = True, log: bool = False, save_final: bool = False, label: str = "pass",
                   start_iteration: int = 0, augment: str = "none") -> None:
    """Train every replica not done yet, in passes of `max_per_pass` cut from all replicas (so a pass keeps
    its checkpoint when some of its replicas finished before a kill); each pass resumes after a kill.
    `log`: one timestamped line per finished pass on stderr (per arm and level, as the replicas' extras name them).
    In a process group each rank trains its share (lottery.ranks); all have ended when this returns."""
    ranks = Ranks.current()
    mine, label = ranks.share(replicas), label + ranks.pass_suffix()
    progress, log = progress and ranks.leader, log and ranks.leader
    passes = [mine[i:i + max_per_pass] for i in range(0, len(mine), max_per_pass)]
    for index, chunk in enumerate(passes):
        chunk = [r for r in chunk if not NetworkFiles(r.folder).is_done()]
        if not chunk:
            continue
        seeds = list(dict.fromkeys(r.order_seed for r in chunk))
        specs = []
        for r in chunk:
            start, mask = r.build()
            optimizer, steps = r.optimizer() if r.optimizer else (None, 0)
            specs.append(ReplicaSpec(seeds.index(r.order_seed), start, mask, r.seed, optimizer, steps))
        checkpoint = checkpoint_dir / f"{label}_{index}.safetensors"
        run = TrainingPass(model, data, cfg, specs, [r.key for r in chunk], seeds, checkpoint,
                           start_iteration=start_iteration, augment=augment, checkpoint_seconds=checkpoint_seconds)
        name, started = f"{label} {index + 1}/{len(passes)}", time.monotonic()
        bars = Progress(progress, levels=0, log=log)  # iterations only
        bar = bars.iterations(name, cfg.iterations - start_iteration, run.iteration - start_iteration)
        run.train(cfg.iterations, on_progress=bar)
        bars.end_iterations()
        results = run.results()
        for r, spec, result in zip(chunk, specs, results):
            if save_final:
                save_tensors(NetworkFiles(r.folder).final, result.final)
            kept, total = count(spec.mask)
            save_json(NetworkFiles(r.folder).metrics, {**r.extra, "percent_remaining": 100.0 * kept / total,
                                                  "weights_remaining": kept, "prunable_weights": total,
                                                  **result.metrics()})
        run.finish()
        bars.pass_done(name, pass_summary([_log_group(r, label) for r in chunk], results,
                                          cfg.iterations - start_iteration, time.monotonic() - started))
    ranks.barrier()
    remove_empty_folder(checkpoint_dir)
