"""Pruning criteria: pure functions (θ0, θk, θT) -> score per weight. Pruning keeps the highest scores."""
from __future__ import annotations

from collections.abc import Callable

import torch

Criterion = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def magnitude(init: torch.Tensor, rewind: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """|θT|: the paper's criterion."""
    return final.abs()


def movement(init: torch.Tensor, rewind: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """|θT − θ0|: keep the weights that moved most in training."""
    return (final - init).abs()


CRITERIA: dict[str, Criterion] = {
    "magnitude": magnitude,
    "movement": movement,
}


def register_criterion(name: str, criterion: Criterion) -> None:
    """Add a criterion usable by name (`prune.criterion`); it must be a pure function of (θ0, θk, θT)."""
    if name in CRITERIA:
        raise ValueError(f"criterion {name!r} is already registered")
    CRITERIA[name] = criterion
