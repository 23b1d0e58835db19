"""Scores + rates + scope -> the next mask. Counts are exact: ties never change how many are kept."""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping

import torch

from .masks import Mask


def prune_count(rate: float, kept: int) -> int:
    """How many of `kept` weights one round at `rate` removes (rounded half up)."""
    return math.floor(rate * kept + 0.5)


def keep_top(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], names: list[str],
             n_keep: int) -> Mask:
    """Among the kept weights of `names` (pooled), keep the `n_keep` highest scores; one threshold.
    Tensors are pooled in name order, so ties resolve the same way whatever order `names` come in."""
    names = sorted(names)
    flat_scores = torch.cat([scores[n].detach().flatten().float() for n in names])
    flat_mask = torch.cat([mask[n].flatten() for n in names])
    # Already-pruned weights get -inf so they are never chosen back.
    ranked = torch.where(flat_mask, flat_scores, torch.full_like(flat_scores, -math.inf))
    new_flat = torch.zeros_like(flat_mask)
    if n_keep > 0:
        new_flat[torch.topk(ranked, n_keep, sorted=False).indices] = True
    out, start = {}, 0
    for n in names:
        size = mask[n].numel()
        out[n] = new_flat[start:start + size].view_as(mask[n]).clone()
        start += size
    return out


def ignored_names(patterns: Iterable[str], names: Iterable[str]) -> list[str]:
    """The prunable tensors that `prune.ignore` leaves dense: names matching any pattern (fnmatch-style,
    case-sensitive: `fc.weight`, `*shortcut*`, `blocks.0.*`), in name order."""
    patterns = list(patterns)
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def unmatched_patterns(patterns: Iterable[str], names: Iterable[str]) -> list[str]:
    names = list(names)
    return [p for p in patterns if not ignored_names([p], names)]


KINDS = ("conv", "hidden", "output")  # of prunable tensors: convolutions, fully-connected, the output layer
POOLED = ("conv", "hidden")  # the kinds a global scope pools under one threshold (rate_hidden)


def kind_rates(rate_hidden: float, rate_output: float, rate_conv: float | None = None) -> dict[str, float]:
    """Rate per kind of prunable tensor; conv layers take the fully-connected rate unless given their own."""
    return {"hidden": rate_hidden, "output": rate_output, "conv": rate_hidden if rate_conv is None else rate_conv}


def prune_round(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], roles: Mapping[str, str],
                rate_hidden: float, rate_output: float, scope: str = "layerwise",
                ignore: tuple[str, ...] | list[str] = (), rate_conv: float | None = None) -> Mask:
    """One IMP round: prune its kind's rate of the remaining weights of each tensor (layerwise: conv,
    fully-connected "hidden" and output), or of all conv and hidden tensors together with one threshold
    at `rate_hidden` (global; output tensors keep their own rate). `ignore`d tensors are never pruned."""
    rates = kind_rates(rate_hidden, rate_output, rate_conv)
    new: Mask = {n: m.clone() for n, m in mask.items()}
    active = [n for n in sorted(mask) if n not in ignore]  # name order: sums and ties never follow dict order
    if scope == "global":
        pooled = [n for n in active if roles[n] in POOLED]
        if pooled:
            kept = sum(int(mask[n].sum()) for n in pooled)
            new.update(keep_top(scores, mask, pooled, kept - prune_count(rate_hidden, kept)))
        active = [n for n in active if roles[n] not in POOLED]
    elif scope != "layerwise":
        raise ValueError(f"unknown scope {scope!r}")
    for n in active:
        kept = int(mask[n].sum())
        new.update(keep_top(scores, mask, [n], kept - prune_count(rates[roles[n]], kept)))
    return new


def one_shot_fractions(sizes: Mapping[str, int], roles: Mapping[str, str], rate_hidden: float, rate_output: float,
                       percent: float, ignore: tuple[str, ...] | list[str] = (),
                       rate_conv: float | None = None) -> dict[str, float]:
    """Per-tensor kept fractions that reach `percent` remaining in one step, keeping the per-layer shape of
    the iterative ladder: a tensor of kind k keeps (1 - rate_k)^n, for the real n that hits the target."""
    target = percent / 100.0 * sum(sizes.values())
    rates = kind_rates(rate_hidden, rate_output, rate_conv)

    def kept_fraction(name: str, n: float) -> float:
        if name in ignore:
            return 1.0
        return (1 - rates[roles[name]]) ** n

    def kept_at(n: float) -> float:
        return sum(size * kept_fraction(name, n) for name, size in sizes.items())

    low, high = 0.0, 1.0
    while kept_at(high) > target and high < 1e4:
        high *= 2
    for _ in range(200):  # bisection on the (real) number of rounds n
        mid = (low + high) / 2
        low, high = (mid, high) if kept_at(mid) > target else (low, mid)
    return {name: kept_fraction(name, high) for name in sizes}


def prune_one_shot(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], roles: Mapping[str, str],
                   rate_hidden: float, rate_output: float, percent: float, scope: str = "layerwise",
                   ignore: tuple[str, ...] | list[str] = (), rate_conv: float | None = None) -> Mask:
    """Prune straight to `percent` remaining from one trained network."""
    sizes = {n: int(m.sum()) for n, m in sorted(mask.items())}  # sums in name order: no dict-order rounding
    fractions = one_shot_fractions(sizes, roles, rate_hidden, rate_output, percent, ignore, rate_conv)
    new: Mask = {n: m.clone() for n, m in mask.items()}
    active = [n for n in sorted(mask) if n not in ignore]  # name order: sums and ties never follow dict order
    if scope == "global":
        pooled = [n for n in active if roles[n] in POOLED]
        if pooled:
            n_keep = round(sum(sizes[n] * fractions[n] for n in pooled))
            new.update(keep_top(scores, mask, pooled, n_keep))
        active = [n for n in active if roles[n] not in POOLED]
    for n in active:
        new.update(keep_top(scores, mask, [n], round(sizes[n] * fractions[n])))
    return new
