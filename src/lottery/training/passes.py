"""One training pass with checkpoints: train replicas to the end, resumable after a kill.

A checkpoint is one safetensors file (tensors + JSON metadata), written atomically at evaluation
points at most every `checkpoint_seconds`; it is used again only if it belongs to the same replicas.
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
from lottery.storage.files import load_metadata, load_tensors, remove_empty_folder, save_json, save_tensors
from lottery.training.trainer import ReplicaSpec, StackedTrainer


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
        (warn or _warn)(f"checkpoint {checkpoint} is unreadable ({str(exc).splitlines()[0][:120]}); "
                        f"removed it, the pass trains again from its start")
        checkpoint.unlink(missing_ok=True)
        return None
    return trainer.iteration


def _warn(text: str) -> None:
    print(f"lottery: warning: {text}", file=sys.stderr, flush=True)


def train_with_checkpoints(trainer: StackedTrainer, keys: list[str], checkpoint: Path, until: int,
                           checkpoint_seconds: float = 60.0, on_progress: Callable[[int], None] | None = None,
                           snapshot_at: int = 0, on_snapshot: Callable[[StackedTrainer], None] | None = None) -> None:
    """Train to iteration `until`, checkpointing; call `on_snapshot` once at iteration `snapshot_at` (> 0)
    if the pass has not passed it yet. Call `resume` first to continue an interrupted pass."""
    last_save = time.monotonic()

    def on_eval(tr: StackedTrainer) -> None:
        nonlocal last_save
        if tr.iteration < until and time.monotonic() - last_save >= checkpoint_seconds:
            tensors, meta = tr.state()
            meta["keys"] = keys
            save_tensors(checkpoint, tensors, {"meta": json.dumps(meta)})
            last_save = time.monotonic()

    if snapshot_at > 0 and trainer.iteration <= snapshot_at:
        trainer.run(snapshot_at, on_eval, on_progress)
        if on_snapshot:
            on_snapshot(trainer)
    trainer.run(until, on_eval, on_progress)


def finish_pass(checkpoint: Path) -> None:
    """The pass's results are saved: its checkpoint is no longer needed (nor its folder, once empty)."""
    checkpoint.unlink(missing_ok=True)


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
        chunk = [r for r in chunk if not (r.folder / "metrics.json").exists()]
        if not chunk:
            continue
        seeds = list(dict.fromkeys(r.order_seed for r in chunk))
        specs = []
        for r in chunk:
            start, mask = r.build()
            optimizer, steps = r.optimizer() if r.optimizer else (None, 0)
            specs.append(ReplicaSpec(seeds.index(r.order_seed), start, mask, r.seed, optimizer, steps))
        trainer = StackedTrainer(model, specs, data, cfg, seeds, start_iteration, augment=augment)
        keys = [r.key for r in chunk]
        checkpoint = checkpoint_dir / f"{label}_{index}.safetensors"
        resume(trainer, keys, checkpoint)
        name, started = f"{label} {index + 1}/{len(passes)}", time.monotonic()
        bars = Progress(progress, levels=0, log=log)  # iterations only
        bar = bars.iterations(name, cfg.iterations - start_iteration, trainer.iteration - start_iteration)
        train_with_checkpoints(trainer, keys, checkpoint, cfg.iterations, checkpoint_seconds, bar)
        bars.end_iterations()
        results = trainer.results()
        for r, spec, result in zip(chunk, specs, results):
            if save_final:
                save_tensors(r.folder / "final.safetensors", result.final)
            kept, total = count(spec.mask)
            save_json(r.folder / "metrics.json", {**r.extra, "percent_remaining": 100.0 * kept / total,
                                                  "weights_remaining": kept, "prunable_weights": total,
                                                  **result.metrics()})
        finish_pass(checkpoint)
        bars.pass_done(name, pass_summary([_log_group(r, label) for r in chunk], results,
                                          cfg.iterations - start_iteration, time.monotonic() - started))
    ranks.barrier()
    remove_empty_folder(checkpoint_dir)
