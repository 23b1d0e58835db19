"""Datasets as in-memory tensors on the device: train / validation / test, never a per-sample loader."""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from lottery.errors import UserError
from lottery.data.cifar10 import load_cifar10
from lottery.data.fsdd import load_fsdd
from lottery.data.idx import load_fashion_mnist, load_mnist
from lottery.data.mnist1d import load_mnist1d
from lottery.data.graph import Graph
from lottery.data.planetoid import load_citeseer, load_cora
from lottery.data.raw import RawSplits
from lottery.data.shifts import apply_shifts


@dataclass
class Dataset:
    """Normalized float32 inputs and int64 labels, already on the device the trainer uses."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    pixels: tuple[float, float] | None = None  # (mean, std): pixel = x * std + mean lies in [0, 1]; None: no pixel space
    # uint8 images (CIFAR-10) stay uint8 in memory; `features` normalizes a batch per channel on the fly.
    channel_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # Node classification (Cora, CiteSeer): the examples are node indices of this graph, which the model holds.
    graph: Graph | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the network sees: float32 inputs; uint8 images are scaled to [0, 1] and normalized with the
        per-channel training mean and std."""
        if x.dtype != torch.uint8:
            return x
        if self.channel_normalization is None:
            return x.float() / 255.0
        mean, std = (torch.tensor(v, device=x.device).view(-1, 1, 1) for v in self.channel_normalization)
        return (x.float() / 255.0 - mean) / std

    def as_float(self) -> "Dataset":
        """The same data with every split already normalized to float32 (for code that needs it whole)."""
        if self.x_train.dtype != torch.uint8:
            return self
        splits = {k: getattr(self, k) for k in ("y_train", "y_val", "y_test")}
        xs = {k: self.features(getattr(self, k)) for k in ("x_train", "x_val", "x_test")}
        return Dataset(self.name, num_classes=self.num_classes, pixels=None, graph=self.graph, **xs, **splits)

    def to(self, device: torch.device | str) -> "Dataset":
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return Dataset(self.name, num_classes=self.num_classes, pixels=self.pixels,
                       channel_normalization=self.channel_normalization,
                       graph=self.graph.to(device) if self.graph is not None else None, **moved)


DatasetLoader = Callable[[Path], RawSplits]

DATASETS: dict[str, DatasetLoader] = {
    "mnist1d": load_mnist1d,
    "mnist": load_mnist,
    "fashion-mnist": load_fashion_mnist,
    "cifar10": load_cifar10,
    "fsdd": load_fsdd,
    "cora": load_cora,
    "citeseer": load_citeseer,
}


def default_data_dir() -> Path:
    """--data-dir, else $LOTTERY_DATA, else ~/.cache/lottery (the CLI passes --data-dir through)."""
    env = os.environ.get("LOTTERY_DATA")
    return Path(env) if env else Path.home() / ".cache" / "lottery"


def split_validation(
    x: torch.Tensor, y: torch.Tensor, val_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hold out `val_size` training examples, chosen by a seeded permutation (deterministic)."""
    if not 0 <= val_size < len(x):
        raise UserError(f"validation size {val_size} must be in [0, {len(x)}) for this dataset")
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:val_size].sort().values, order[val_size:].sort().values
    return x[train_idx], y[train_idx], x[val_idx], y[val_idx]


def load_dataset(
    name: str,
    data_dir: Path | str | None = None,
    val_size: int = -1,
    split_seed: int = 0,
    device: torch.device | str = "cpu",
    *,
    permute_fraction: float = 0.0,
    rotate_degrees: float = 0.0,
    classes: list[int] | None = None,
    speakers_out: str = "",
) -> Dataset:
    """Load (downloading if needed) a registered dataset, shift it if asked (see `data.shifts`), split
    off validation, move to `device`. `speakers_out` (fsdd only): test on this speaker, train on the others."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")
    folder = Path(data_dir) if data_dir else default_data_dir()
    if speakers_out and name != "fsdd":
        raise UserError(f"data.speakers_out holds out a speaker of fsdd; {name} has no speakers")
    raw = load_fsdd(folder, speakers_out) if speakers_out else DATASETS[name](folder)
    raw = apply_shifts(raw, permute_fraction, rotate_degrees, classes, seed=split_seed)
    size = raw.default_val_size if val_size < 0 else val_size
    if raw.x_val is not None:  # the dataset's own validation split
        if size != len(raw.x_val):
            raise UserError(f"{name} has a fixed validation split of {len(raw.x_val)} examples; data.val_size must be "
                            f"{len(raw.x_val)} or -1, got {val_size}")
        x_train, y_train, x_val, y_val = raw.x_train, raw.y_train, raw.x_val, raw.y_val
    else:
        x_train, y_train, x_val, y_val = split_validation(raw.x_train, raw.y_train, size, split_seed)
    return Dataset(name, x_train, y_train, x_val, y_val, raw.x_test, raw.y_test, raw.num_classes,
                   raw.pixels, raw.channel_normalization, raw.graph).to(device)


def load_data(config: "DataConfig", data_dir: Path | str | None = None) -> Dataset:  # noqa: F821
    """The dataset a `DataConfig` describes, shifts included."""
    return load_dataset(config.dataset, data_dir, config.val_size, config.split_seed,
                        permute_fraction=config.permute_fraction, rotate_degrees=config.rotate_degrees,
                        classes=list(config.classes), speakers_out=config.speakers_out)


__all__ = ["DATASETS", "Dataset", "Graph", "RawSplits", "default_data_dir", "load_data", "load_dataset", "split_validation"]
