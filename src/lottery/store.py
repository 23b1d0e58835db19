"""Run directories and atomic writes: every file appears whole (temp file + fsync + rename) or not at all.

Layout of a run directory:
  config.toml                       the config (TOML); the directory name holds its hash
  results.csv                       one row per (arm, trial, level)
  trial_T/init.safetensors          θ0 of trial T
  trial_T/rewind.safetensors        θk of trial T (only when rewinding to k > 0)
  trial_T/level_LL/mask.safetensors the mask trained at level LL
  trial_T/level_LL/ARM/             final.safetensors (θT), curves.csv, metrics.json (written last)
  checkpoints/PASS.safetensors/.json an interrupted training pass; removed when the pass ends
"""
from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(cpu, metadata=metadata))


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """safetensors only: no pickle is ever loaded. Keys come back sorted: the order safetensors yields
    them in changes from process to process, and no result may depend on it."""
    tensors = st_load(Path(path).read_bytes())
    return {k: tensors[k].to(device) for k in sorted(tensors)}


def save_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def save_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def load_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class RunStore:
    """Paths inside one run directory. Holds no state beyond the root."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def trial_dir(self, trial: int) -> Path:
        return self.root / f"trial_{trial}"

    def init_path(self, trial: int) -> Path:
        return self.trial_dir(trial) / "init.safetensors"

    def rewind_path(self, trial: int) -> Path:
        return self.trial_dir(trial) / "rewind.safetensors"

    def level_dir(self, trial: int, level: int) -> Path:
        return self.trial_dir(trial) / f"level_{level:02d}"

    def mask_path(self, trial: int, level: int) -> Path:
        return self.level_dir(trial, level) / "mask.safetensors"

    def arm_dir(self, trial: int, level: int, arm: str) -> Path:
        return self.level_dir(trial, level) / arm

    def is_done(self, trial: int, level: int, arm: str) -> bool:
        return (self.arm_dir(trial, level, arm) / "metrics.json").exists()

    def checkpoint_paths(self, pass_name: str) -> tuple[Path, Path]:
        base = self.root / "checkpoints" / pass_name
        return base.with_suffix(".safetensors"), base.with_suffix(".json")

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def results_path(self) -> Path:
        return self.root / "results.csv"
