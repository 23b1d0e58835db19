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

import torch

from lottery.errors import UserError
from lottery.storage.files import RunStore, load_json, load_metadata, load_tensors, tensor_digest

KEY = "lineage"


def record(**fields: object) -> dict[str, str]:
    """safetensors metadata holding the lineage fields."""
    return {KEY: json.dumps(fields, sort_keys=True)}


def read(path: Path) -> dict | None:
    """The lineage a safetensors file recorded, or None (written before lineage existed)."""
    text = load_metadata(path).get(KEY)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


class LineageCheck:
    """Checks one run's files against what they were derived from; digests are computed once per file."""

    def __init__(self, store: RunStore, arms: list[str], one_shot: bool) -> None:
        self.store, self.arms, self.one_shot = store, arms, one_shot
        self._digests: dict[Path, str] = {}

    def digest(self, path: Path) -> str:
        if path not in self._digests:
            self._digests[path] = tensor_digest(load_tensors(path))
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
                digest = load_json(metrics).get("mask_digest")
                if digest is not None and digest != self.digest(trained_under):
                    self._refuse(f"{metrics} was trained under another mask than {trained_under}", [folder])

    def _refuse(self, problem: str, folders: list[Path]) -> None:
        names = " ".join(str(f) for f in folders)
        raise UserError(f"the run directory contradicts itself: {problem}; remove {names} and run the same "
                        f"command again")


def mask_lineage(parent: dict[str, torch.Tensor], criterion: str, seed: int) -> dict[str, str]:
    return record(parent=tensor_digest(parent), criterion=criterion, seed=seed)
