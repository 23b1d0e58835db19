"""One training pass with checkpoints: train replicas to the end, resumable after a kill.

A checkpoint is one safetensors file (tensors + JSON metadata), written atomically at evaluation
points at most every `checkpoint_seconds`; it is used again only if it belongs to the same replicas.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .config import TrainConfig
from .data import Dataset
from .masks import count
from .progress import Progress
from .store import load_tensors, save_json, save_tensors
from .train import ReplicaSpec, StackedTrainer


def resume(trainer: StackedTrainer, keys: list[str], checkpoint: Path) -> None:
    """Continue from `checkpoint` if it exists and holds these replicas (`keys`); else start fresh."""
    if checkpoint.exists():
        with safe_open(str(checkpoint), "pt") as handle:
            meta = json.loads(handle.metadata()["meta"])
        if meta.get("keys") == keys:
            device = next(iter(trainer.params.values())).device
            trainer.load_state(load_tensors(checkpoint, device), meta)


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
    """The pass's results are saved: its checkpoint is no longer needed."""
    checkpoint.unlink(missing_ok=True)


@dataclass
class NamedReplica:
    """A replica an experiment trains: results go to `folder` (done once folder/metrics.json exists)."""

    folder: Path
    order_seed: int  # the data order (replicas with the same seed see the same batches)
    build: Callable[[], tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]  # -> (start weights, mask)
    extra: dict = field(default_factory=dict)  # more fields for metrics.json


def train_replicas(replicas: list[NamedReplica], model: nn.Module, data: Dataset, cfg: TrainConfig,
                   checkpoint_dir: Path, *, max_per_pass: int, checkpoint_seconds: float = 60.0,
                   progress: bool = True, save_final: bool = False, label: str = "pass",
                   start_iteration: int = 0) -> None:
    """Train every replica not done yet, `max_per_pass` at a time; each pass resumes after a kill."""
    todo = [r for r in replicas if not (r.folder / "metrics.json").exists()]
    for index in range(0, len(todo), max_per_pass):
        chunk = todo[index:index + max_per_pass]
        seeds = list(dict.fromkeys(r.order_seed for r in chunk))
        specs = []
        for r in chunk:
            start, mask = r.build()
            specs.append(ReplicaSpec(seeds.index(r.order_seed), start, mask))
        trainer = StackedTrainer(model, specs, data, cfg, seeds, start_iteration)
        keys = [str(r.folder) for r in chunk]
        checkpoint = checkpoint_dir / f"{label}_{index // max_per_pass}.safetensors"
        resume(trainer, keys, checkpoint)
        bars = Progress(progress, levels=0)  # iterations only
        bar = bars.iterations(f"{label} {index // max_per_pass + 1}/{-(-len(todo) // max_per_pass)}",
                              cfg.iterations - start_iteration, trainer.iteration - start_iteration)
        train_with_checkpoints(trainer, keys, checkpoint, cfg.iterations, checkpoint_seconds, bar)
        bars.end_iterations()
        for r, spec, result in zip(chunk, specs, trainer.results()):
            if save_final:
                save_tensors(r.folder / "final.safetensors", result.final)
            kept, total = count(spec.mask)
            save_json(r.folder / "metrics.json", {**r.extra, "percent_remaining": 100.0 * kept / total,
                                                  "weights_remaining": kept, "prunable_weights": total,
                                                  **result.metrics()})
        finish_pass(checkpoint)
