"""Masks: one bool tensor per prunable weight tensor; True keeps the weight.

Sparsity is always counted from masks (never from zeros in weights), over the prunable tensors only:
the denominator is the number of prunable weights, which `count` reports next to the kept count.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

Mask = dict[str, torch.Tensor]


def dense_mask(params: Mapping[str, torch.Tensor], names: list[str]) -> Mask:
    return {name: torch.ones_like(params[name], dtype=torch.bool) for name in names}


def count(mask: Mapping[str, torch.Tensor]) -> tuple[int, int]:
    """(kept, total) prunable weights."""
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    return kept, total


def percent_remaining(mask: Mapping[str, torch.Tensor]) -> float:
    kept, total = count(mask)
    return 100.0 * kept / total


def apply_mask_(params: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> None:
    """Zero the pruned weights in place."""
    with torch.no_grad():
        for name, m in mask.items():
            params[name].mul_(m)


def layer_counts(mask: Mapping[str, torch.Tensor]) -> dict[str, int]:
    return {name: int(m.sum()) for name, m in mask.items()}
