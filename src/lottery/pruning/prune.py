"""Scores + rates + scope -> the next mask. Counts are exact: ties never change how many are kept."""
from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping

import torch

from lottery.pruning.masks import Mask


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


def parse_pattern(text: str) -> tuple[int, int] | None:
    """"N:M" -> (N, M): at most N weights kept in every group of M consecutive inputs; "" -> None."""
    if not text:
        return None
    n, _, m = text.partition(":")
    if not (n.isdigit() and m.isdigit() and 0 < int(n) < int(m)):
        raise ValueError(f"prune.pattern must be N:M with 0 < N < M (e.g. 2:4), or empty, got {text!r}")
    return int(n), int(m)


def allowed_by_pattern(scores: torch.Tensor, mask: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """The kept weights that an N:M pattern allows: in each group of `m` consecutive weights along the input
    dimension (a row of the weight as [outputs, inputs x kernel]), the `n` of highest score among the kept
    ones (a last, shorter group too). A mask with at most n of every m is its own result."""
    rows = mask.reshape(mask.shape[0], -1) if mask.dim() > 1 else mask.reshape(1, -1)
    width = rows.shape[1]
    padded = -(-width // m) * m
    ranked = torch.where(rows, scores.detach().reshape(rows.shape).float(), torch.full(rows.shape, -math.inf))
    ranked = torch.nn.functional.pad(ranked, (0, padded - width), value=-math.inf).view(rows.shape[0], -1, m)
    top = torch.topk(ranked, n, dim=2).indices  # ties: topk's order, the same on every run
    keep = torch.zeros_like(ranked, dtype=torch.bool).scatter_(2, top, True) & ranked.isfinite()
    return keep.view(rows.shape[0], padded)[:, :width].reshape(mask.shape) & mask


def _allowed(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], names: list[str],
             pattern: tuple[int, int] | None) -> Mask:
    if pattern is None:
        return {n: mask[n] for n in names}
    return {n: allowed_by_pattern(scores[n], mask[n], *pattern) for n in names}


def _keep(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], names: list[str], n_keep: int,
          pattern: tuple[int, int] | None) -> Mask:
    """keep_top within what the pattern allows: the target count, or all the pattern allows if fewer."""
    allowed = _allowed(scores, mask, names, pattern)
    return keep_top(scores, allowed, names, min(n_keep, sum(int(allowed[n].sum()) for n in names)))


def ignored_names(patterns: Iterable[str], names: Iterable[str]) -> list[str]:
    """The prunable tensors that `prune.ignore` leaves dense: names matching any pattern (fnmatch-style,
    case-sensitive: `fc.weight`, `*shortcut*`, `blocks.0.*`), in name order."""
    patterns = list(patterns)
    return sorted(n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns))


def unmatched_patterns(patterns: Iterable[str], names: Iterable[str]) -> list[str]:
    names = list(names)
    return [p for p in patterns if not ignored_names([p], names)]


# Of prunable tensors: convolutions, fully-connected, the output layer, a graph's edges (a GCN's edge weights).
KINDS = ("conv", "hidden", "output", "edge")
POOLED = ("conv", "hidden")  # the kinds a global scope pools under one threshold (rate_hidden)


def kind_rates(rate_hidden: float, rate_output: float, rate_conv: float | None = None,
               rate_edge: float = 0.0) -> dict[str, float]:
    """Rate per kind of prunable tensor; conv layers take the fully-connected rate unless given their own;
    edges their own (0: never pruned)."""
    return {"hidden": rate_hidden, "output": rate_output, "conv": rate_hidden if rate_conv is None else rate_conv,
            "edge": rate_edge}


def prune_round(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], roles: Mapping[str, str],
                rate_hidden: float, rate_output: float, scope: str = "layerwise",
                ignore: tuple[str, ...] | list[str] = (), rate_conv: float | None = None,
                pattern: tuple[int, int] | None = None, rate_edge: float = 0.0) -> Mask:
    """One IMP round: prune its kind's rate of the remaining weights of each tensor (layerwise: conv,
    fully-connected "hidden" and output), or of all conv and hidden tensors together with one threshold
    at `rate_hidden` (global; output tensors keep their own rate). `ignore`d tensors are never pruned.
    With an N:M `pattern` only weights it allows are kept: the first round stops at N/M when the rate asks
    for more; later rounds prune at the rate inside the pattern."""
    rates = kind_rates(rate_hidden, rate_output, rate_conv, rate_edge)
    new: Mask = {n: m.clone() for n, m in mask.items()}
    active = [n for n in sorted(mask) if n not in ignore]  # name order: sums and ties never follow dict order
    if scope == "global":
        pooled = [n for n in active if roles[n] in POOLED]
        if pooled:
            kept = sum(int(mask[n].sum()) for n in pooled)
            new.update(_keep(scores, mask, pooled, kept - prune_count(rate_hidden, kept), pattern))
        active = [n for n in active if roles[n] not in POOLED]
    elif scope != "layerwise":
        raise ValueError(f"unknown scope {scope!r}")
    for n in active:
        kept = int(mask[n].sum())
        new.update(_keep(scores, mask, [n], kept - prune_count(rates[roles[n]], kept), pattern))
    return new


def one_shot_fractions(sizes: Mapping[str, int], roles: Mapping[str, str], rate_hidden: float, rate_output: float,
                       percent: float, ignore: tuple[str, ...] | list[str] = (),
                       rate_conv: float | None = None, rate_edge: float = 0.0) -> dict[str, float]:
    """Per-tensor kept fractions that reach `percent` remaining in one step, keeping the per-layer shape of
    the iterative ladder: a tensor of kind k keeps (1 - rate_k)^n, for the real n that hits the target."""
    # The percent counts weights; a graph's edges follow the same real number of rounds at their own rate.
    weights = {name: size for name, size in sizes.items() if roles[name] != "edge"}
    target = percent / 100.0 * sum(weights.values())
    rates = kind_rates(rate_hidden, rate_output, rate_conv, rate_edge)

    def kept_fraction(name: str, n: float) -> float:
        if name in ignore:
            return 1.0
        return (1 - rates[roles[name]]) ** n

    def kept_at(n: float) -> float:
        return sum(size * kept_fraction(name, n) for name, size in weights.items())

    low, high = 0.0, 1.0
    while kept_at(high) > target and high < 1e4:
        high *= 2
    for _ in range(200):  # bisection on the (real) number of rounds n
        mid = (low + high) / 2
        low, high = (mid, high) if kept_at(mid) > target else (low, mid)
    return {name: kept_fraction(name, high) for name in sizes}


def prune_one_shot(scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor], roles: Mapping[str, str],
                   rate_hidden: float, rate_output: float, percent: float, scope: str = "layerwise",
                   ignore: tuple[str, ...] | list[str] = (), rate_conv: float | None = None,
                   pattern: tuple[int, int] | None = None, rate_edge: float = 0.0) -> Mask:
    """Prune straight to `percent` remaining from one trained network (within an N:M `pattern`, if given)."""
    sizes = {n: int(m.sum()) for n, m in sorted(mask.items())}  # sums in name order: no dict-order rounding
    fractions = one_shot_fractions(sizes, roles, rate_hidden, rate_output, percent, ignore, rate_conv, rate_edge)
    new: Mask = {n: m.clone() for n, m in mask.items()}
    active = [n for n in sorted(mask) if n not in ignore]  # name order: sums and ties never follow dict order
    if scope == "global":
        pooled = [n for n in active if roles[n] in POOLED]
        if pooled:
            n_keep = round(sum(sizes[n] * fractions[n] for n in pooled))
            new.update(_keep(scores, mask, pooled, n_keep, pattern))
        active = [n for n in active if roles[n] not in POOLED]
    for n in active:
        new.update(_keep(scores, mask, [n], round(sizes[n] * fractions[n]), pattern))
    return new
