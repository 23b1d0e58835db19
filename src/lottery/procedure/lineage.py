"""What every mask and result of a run was made from, so that a run directory never contradicts itself.

- A level's mask records a digest of the trained weights it was pruned from (the ticket of the level
  before, or of level 0 for one-shot pruning), with the criterion and its seed.
- A control arm's own mask (random, init-magnitude, one-shot) records a digest of the level's mask.
- A result (metrics.json) records a digest of the mask it was trained under.
`find` checks these before it trains a level; a file whose source changed since it was made is
refused with the folders to remove. Files written before lineage existed carry none and are trusted.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from lottery.errors import BrokenFile
from lottery.storage.expect import (RunShapes, check_prunable, check_trained_under, check_weights, contradiction,
                                    recorded_shapes)
from lottery.storage.files import RunStore, load_metadata, load_tensors, remedy, tensor_digest

KEY = "lineage"
# What record() is given by its writers (tickets.py): a level's mask its parent, criterion and seed; an arm's
# own mask its reference, and the early-bird arm where it was found (lottery.pruning.arms.early_bird_mask).
LINEAGE_TYPES: dict[str, type | tuple[type, ...]] = {
    "parent": str, "criterion": str, "seed": int, "reference": str, "found": dict}
FOUND_TYPES: dict[str, type | tuple[type, ...]] = {"iteration": int, "found": bool, "distances": list}


def record(**fields: object) -> dict[str, str]:
    """safetensors metadata holding the lineage fields."""
    return {KEY: json.dumps(fields, sort_keys=True)}


def read(path: Path) -> dict[str, Any] | None:
    """The lineage a safetensors file recorded, or None (written before lineage existed); every field of the
    type its writer gives it (LINEAGE_TYPES), or the file is named."""
    text = load_metadata(path).get(KEY)
    if text is None:
        return None
    try:
        fields = json.loads(text)
    except ValueError as exc:
        raise _malformed(path, f"its lineage is not JSON: {exc}") from None
    _check_types(path, fields, LINEAGE_TYPES, "lineage")
    if "found" in fields:
        _check_types(path, fields["found"], FOUND_TYPES, "lineage found")
    return fields


def _check_types(path: Path, fields: object, types: dict[str, type | tuple[type, ...]], what: str) -> None:
    if not isinstance(fields, dict):
        raise _malformed(path, f"its {what} is {type(fields).__name__}, not an object")
    for key, kinds in types.items():
        if key in fields and not _of_type(fields[key], kinds):
            raise _malformed(path, f"its {what} field {key} holds {json.dumps(fields[key])[:40]}")


def _of_type(value: object, kinds: type | tuple[type, ...]) -> bool:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    return (bool in kinds) if isinstance(value, bool) else isinstance(value, kinds)


def _malformed(path: Path, detail: str) -> BrokenFile:
    return BrokenFile(f"{path} is malformed ({detail}); {remedy(path)}", reason=detail)


class LineageCheck:
    """Checks one run's files against what they were derived from; digests are computed once per file."""

    def __init__(self, store: RunStore, arms: list[str], one_shot: bool, shapes: RunShapes | None = None) -> None:
        """`shapes`: what the run's files hold (from its model); default: what run.json recorded of it."""
        self.store, self.arms, self.one_shot = store, arms, one_shot
        self._shapes = shapes
        self._digests: dict[Path, str] = {}

    @property
    def shapes(self) -> RunShapes:
        if self._shapes is None:
            self._shapes = recorded_shapes(self.store)
        return self._shapes

    def digest(self, path: Path) -> str:
        """The digest of a mask or of trained weights, once their names and shapes are checked."""
        if path not in self._digests:
            tensors = load_tensors(path)
            (check_prunable if path.name == "mask.safetensors" else check_weights)(path, tensors, self.shapes)
            self._digests[path] = tensor_digest(tensors)
        return self._digests[path]

    def forget(self, path: Path) -> None:
        self._digests.pop(path, None)

    def check_level(self, trial: int, level: int, last_level: int) -> None:
        """Raise if a file of (trial, level) was derived from something other than what is there now."""
        store = self.store
        mask_path = store.mask_path(trial, level)
        if level > 0 and mask_path.exists():
            source = 0 if self.one_shot else level - 1
            parent = store.final_path(trial, source, "imp")
            recorded = read(mask_path)
            if recorded and parent.exists() and recorded.get("parent") != self.digest(parent):
                later = [store.level_dir(trial, lv) for lv in range(level, last_level + 1)
                         if store.level_dir(trial, lv).exists()]
                if self.one_shot:
                    later = [store.level_dir(trial, level)]
                self._refuse(f"{mask_path} was pruned from other trained weights than {parent} holds now", later)
        for arm in self.arms:
            folder = store.arm_dir(trial, level, arm)
            own = store.arm_mask_path(trial, level, arm)
            if own.exists() and mask_path.exists():
                recorded = read(own)
                if recorded and recorded.get("reference") != self.digest(mask_path):
                    self._refuse(f"{own} was made from another mask than {mask_path}", [folder])
            metrics = store.metrics_path(trial, level, arm)
            trained_under = own if own.exists() else mask_path
            if metrics.exists() and trained_under.exists():
                check_trained_under(metrics, trained_under, self.digest(trained_under))

    def _refuse(self, problem: str, folders: list[Path]) -> None:
        raise contradiction(problem, folders)


def mask_lineage(parent: dict[str, torch.Tensor], criterion: str, seed: int) -> dict[str, str]:
    return record(parent=tensor_digest(parent), criterion=criterion, seed=seed)
