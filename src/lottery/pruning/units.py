"""Structured pruning: units (a conv's output channels, a linear layer's neurons) pruned whole.

A unit mask is an ordinary weight mask underneath. Removing unit c of a group zeroes
  - the rows that write it: output channel c of every conv / linear layer whose output is that channel, and
  - the columns that read it: input channel c of every layer that consumes it (after a flatten, the c-th
    block of columns).
With both zeroed, the channel's value (a bias, a BatchNorm shift) is computed but read by no weight, so the
masked network computes exactly what the physically smaller network computes: masks, resume, the ledger and
every experiment keep working, and `lottery.deploy.structured` can cut the channel out afterwards.

Which channels belong together is found by Torch-Pruning's dependency graph (DepGraph, Fang et al., CVPR
2023), a maintained library, rather than by a tracer of our own:
  - residual adds: every layer writing into one residual stream, and every layer reading it, is one group;
    a stream's channel goes from all of them at once;
  - concatenations and splits: the graph offsets the indices; a unit is a channel of the part it belongs to;
  - depthwise convolutions: their one filter per channel is both a reader and a writer of the channel (its
    row c), so a channel goes through the depthwise conv with its filter.
Groups are left dense, and say so, when removing a channel would change what the rest computes, or the
library cannot say: a channel normalized together with others (LayerNorm, GroupNorm), the model's outputs
(the classes), grouped convolutions other than depthwise, attention (`nn.MultiheadAttention`: heads are not
units here), recurrent layers, embeddings, raw parameters, and layers left dense by `prune.ignore`. Every group
is then checked on the model itself: its removed channels are perturbed and the output must not move.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from lottery.errors import UserError
from lottery.order import derive_seed
from lottery.pruning.masks import Mask
from lottery.pruning.prune import POOLED, kind_rates, prune_count

UNIT_SCORES = ("l1", "l2", "bn-gamma")
GRANULARITIES = ("weight", "channel")


@dataclass(frozen=True)
class Member:
    """One prunable tensor's share of a group: along `dim` (0: rows, the outputs; 1: columns, the inputs),
    unit u covers the indices `index[u]` (one index per unit, or a block of them after a flatten)."""

    tensor: str
    dim: int
    index: torch.Tensor  # long [units, indices per unit]


@dataclass(frozen=True)
class UnitGroup:
    """Channels that are pruned together, `size` of them. `writers` compute a channel (their rows score it),
    `readers` consume it; `norms` are the BatchNorm scales over it (network slimming's score)."""

    name: str  # the first writer's tensor, e.g. "blocks.0.conv1.weight"
    kind: str  # "conv" or "hidden": the rate it prunes at
    size: int
    writers: tuple[Member, ...]
    readers: tuple[Member, ...]
    norms: tuple[str, ...] = ()

    @property
    def members(self) -> tuple[Member, ...]:
        return self.writers + self.readers


# Torch-Pruning node types a channel may pass through unchanged, per channel.
_PASS = ("ELEMENTWISE", "CONCAT", "SPLIT", "RESHAPE", "UNBIND", "EXPAND", "SLICE", "PRELU", "IN")


def _tp():  # type: ignore[no-untyped-def]
    import torch_pruning  # a core dependency; imported here so that unstructured runs never pay for it
    return torch_pruning


def unit_groups(model: nn.Module, roles: Mapping[str, str], example: torch.Tensor,
                ignore: Iterable[str] = ()) -> tuple[list[UnitGroup], list[str]]:
    """(the groups of `model`'s prunable units, one line per group left dense and why). `example`: a few
    inputs for tracing. Groups come in name order."""
    tp = _tp()
    ignore = set(ignore)
    model, example = _traceable_copy(model), example.cpu()  # traced on the CPU: the check draws CPU tensors
    names = {id(m): n for n, m in model.named_modules()}
    try:
        with warnings.catch_warnings():  # its notes on parameters it leaves alone: we say what stays dense
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
        roots = list(graph.get_all_groups(root_module_types=[nn.modules.conv._ConvNd, nn.Linear]))
    except Exception as exc:  # the library's tracer on a model it cannot follow: a clear line, not its traceback
        raise ValueError(f"the dependency graph (torch-pruning) could not trace {type(model).__name__}: "
                         f"{type(exc).__name__}: {str(exc)[:200]}") from None
    groups, left = [], []
    seen: set[tuple[str, int]] = set()
    for root in roots:
        first = root.items[0].dep.target
        handler = root.items[0].dep.handler
        size = _channels(first.module, _is_out(handler))
        key = (names.get(id(first.module), "?"), size)
        made = _group(graph, first.module, handler, size, roles, names, ignore, tp)
        if isinstance(made, str):
            left.append(f"{key[0]}: {made}")
            continue
        if (made.name, made.size) in seen:
            continue
        seen.add((made.name, made.size))
        groups.append(made)
    checked = []
    for group in sorted(groups, key=lambda g: g.name):
        problem = _reaches_output(model, group, example)
        if problem:
            left.append(f"{group.name}: {problem}")
        else:
            checked.append(group)
    return checked, sorted(set(left))


def _traceable_copy(model: nn.Module) -> nn.Module:
    """A CPU copy in eval mode: tracing and the exactness check never touch the caller's module."""
    return copy.deepcopy(model).cpu().eval()


def _is_out(handler) -> bool:  # type: ignore[no-untyped-def]
    return getattr(handler, "__name__", "") == "prune_out_channels"


def _channels(module: nn.Module, out: bool) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels if out else module.in_channels
    return 0


def _group(graph, module: nn.Module, handler, size: int, roles: Mapping[str, str], names: dict[int, str],  # type: ignore[no-untyped-def]
           ignore: set[str], tp) -> UnitGroup | str:
    """The group of `size` units rooted at `module`'s channels, or why it stays dense."""
    if size <= 1:
        return "a single channel"
    per_unit: dict[tuple[str, int], list[list[int]]] = {}
    norms: list[str] = []
    for unit in range(size):
        group = graph.get_pruning_group(module, handler, idxs=[unit])
        for item in group.items:
            target, out = item.dep.target, _is_out(item.dep.handler)
            kind = target.type.name
            if kind in _PASS:
                continue
            name = names.get(id(target.module))
            if kind == "BN":
                if unit == 0 and getattr(target.module, "weight", None) is not None:
                    norms.append(f"{name}.weight")
                continue
            if kind not in ("CONV", "LINEAR", "DEPTHWISE_CONV"):
                return f"its channels reach a {kind} layer ({name or type(target.module).__name__}), which " \
                       f"structured pruning leaves dense"
            weight = f"{name}.weight"
            if weight not in roles:
                return f"its channels reach {weight}, which is not a prunable tensor"
            if weight in ignore:
                return f"its channels reach {weight}, left dense by prune.ignore"
            if roles[weight] == "output" and out:
                return "its channels are the model's outputs"
            dim = _dim(target.module, out)
            if dim is None:
                return f"{weight} is a grouped convolution (groups={target.module.groups}), not depthwise"
            per_unit.setdefault((weight, dim), []).append(sorted(int(i) for i in item.idxs))
    members = []
    for (weight, dim), lists in sorted(per_unit.items()):
        if len(lists) != size or len({len(x) for x in lists}) != 1:
            return f"{weight} does not map one block of indices to each channel"
        members.append(Member(weight, dim, torch.tensor(lists, dtype=torch.long)))
    writers = tuple(m for m in members if m.dim == 0)  # rows: the channel's own filters (depthwise ones too)
    readers = tuple(m for m in members if m not in writers)
    if not writers:
        return "no prunable layer writes its channels"
    writer_name = min(m.tensor for m in writers)
    kind = "conv" if any(roles[m.tensor] == "conv" for m in writers) else "hidden"
    return UnitGroup(writer_name, kind, size, writers, readers, tuple(sorted(set(norms))))


def _dim(module: nn.Module, out: bool) -> int | None:
    """The weight dimension a channel of `module`'s outputs (out) or inputs lies along."""
    if isinstance(module, nn.Linear):
        return 0 if out else 1
    transposed = isinstance(module, nn.modules.conv._ConvTransposeNd)
    if module.groups == 1:
        return (1 if out else 0) if transposed else (0 if out else 1)
    if not transposed and module.groups == module.in_channels == module.out_channels:
        return 0  # depthwise: filter c reads channel c and writes channel c
    return None


def _reaches_output(model: nn.Module, group: UnitGroup, example: torch.Tensor) -> str:
    """Check on the model itself that the group's removed channels are read by no weight outside its
    members: with half its units' columns zeroed, perturbing those units' rows, biases and norms must
    leave the output unchanged. '' when exact, else why not."""
    drop = torch.zeros(group.size, dtype=torch.bool)
    drop[: max(1, group.size // 2)] = True
    base = copy.deepcopy(model).eval()
    params = dict(base.named_parameters())
    with torch.no_grad():
        for m in group.readers:
            params[m.tensor].index_fill_(m.dim, m.index[drop].flatten(), 0)
        perturbed = copy.deepcopy(base)
        state = dict(perturbed.named_parameters()) | dict(perturbed.named_buffers())
        generator = torch.Generator().manual_seed(0)
        for m in group.writers:
            tensor, index = state[m.tensor], m.index[drop].flatten()
            shape = tensor.index_select(m.dim, index).shape
            tensor.index_copy_(m.dim, index, (torch.randn(shape, generator=generator) * 10).to(tensor.dtype))
            bias = state.get(m.tensor.rpartition(".")[0] + ".bias")
            if bias is not None:
                bias[index] = torch.randn(index.numel(), generator=generator) * 10
        for norm in group.norms:
            owner = norm.rpartition(".")[0]
            sel = torch.arange(group.size)[drop]
            for local in ("weight", "bias", "running_mean"):
                tensor = state.get(f"{owner}.{local}")
                if tensor is not None:
                    tensor[sel] = torch.randn(sel.numel(), generator=generator) * 10
        try:
            a, b = base(example), perturbed(example)
        except Exception as exc:  # noqa: BLE001 - a model that fails here is left dense, said why
            return f"the check's forward failed ({type(exc).__name__})"
    if not isinstance(a, torch.Tensor) or not torch.allclose(a, b, rtol=1e-5, atol=1e-5):
        return "its removed channels still reach the output (read by an operation the graph does not see)"
    return ""


# --- unit masks ------------------------------------------------------------------------------------------

def kept_units(groups: Iterable[UnitGroup], mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Group name -> bool[size]: a unit is kept while any weight of a row that writes it is kept."""
    out = {}
    for group in groups:
        kept = torch.zeros(group.size, dtype=torch.bool)
        for m in group.writers:
            rows = mask[m.tensor].cpu().index_select(m.dim, m.index.flatten())
            per_index = rows.reshape(rows.shape[0], -1).any(dim=1) if m.dim == 0 else rows.any()
            kept |= per_index.reshape(group.size, -1).any(dim=1)
        out[group.name] = kept
    return out


def expand_units(groups: Iterable[UnitGroup], keep: Mapping[str, torch.Tensor],
                 like: Mapping[str, torch.Tensor]) -> Mask:
    """The weight mask of a unit mask: `like` (a weight mask) with every row writing and every column reading
    a dropped unit set to False."""
    out = {n: m.clone() for n, m in like.items()}
    for group in groups:
        dropped = ~keep[group.name].cpu()
        if not dropped.any():
            continue
        for m in group.members:
            index = m.index[dropped].flatten().to(out[m.tensor].device)
            out[m.tensor].index_fill_(m.dim, index, False)
    return out


def unit_scores(groups: Iterable[UnitGroup], scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                how: str, weights: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Group name -> a score per unit from the per-weight `scores` of the rows that write it (kept weights
    only): "l1" their sum (the criterion summed over the unit: with magnitude, the filter's L1 norm), "l2" the
    root of their sum of squares, "bn-gamma" |γ| of the BatchNorm over the unit (network slimming; a group
    without one scores by l1)."""
    if how not in UNIT_SCORES:
        raise ValueError(f"unknown unit score {how!r}; known: {', '.join(UNIT_SCORES)}")
    out = {}
    for group in groups:
        if how == "bn-gamma" and group.norms and weights is not None:
            out[group.name] = sum(weights[n].detach().float().abs().cpu() for n in group.norms)
            continue
        total = torch.zeros(group.size, dtype=torch.float64)
        for m in group.writers:
            s = (scores[m.tensor].detach().double() * mask[m.tensor]).cpu().index_select(m.dim, m.index.flatten())
            s = s.reshape(s.shape[0], -1)
            s = s.square() if how == "l2" else s
            total += s.sum(dim=1).reshape(group.size, -1).sum(dim=1)
        out[group.name] = total.sqrt() if how == "l2" else total
    return out


def keep_top_units(scores: torch.Tensor, kept: torch.Tensor, n_keep: int) -> torch.Tensor:
    """Among the kept units, the `n_keep` of highest score (ties: the lower index)."""
    n_keep = max(1, min(n_keep, int(kept.sum())))
    ranked = torch.where(kept, scores.double(), torch.full_like(scores, -math.inf, dtype=torch.float64))
    order = sorted(range(len(ranked)), key=lambda i: (-float(ranked[i]), i))  # no topk tie order: explicit
    out = torch.zeros_like(kept)
    out[order[:n_keep]] = True
    return out


def prune_units_round(groups: list[UnitGroup], scores: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor],
                      rate_hidden: float, rate_conv: float | None, scope: str = "layerwise", how: str = "l1",
                      weights: Mapping[str, torch.Tensor] | None = None, rate_output: float = 0.0) -> Mask:
    """One structured IMP round: each group loses its kind's rate of its remaining units (layerwise), or
    the conv and hidden groups together lose `rate_hidden` of their units under one threshold (global). A
    group always keeps one unit. The output layer's rows are classes: it loses only the columns that read a
    dropped unit (`rate_output` does not apply)."""
    rates = kind_rates(rate_hidden, rate_output, rate_conv)
    kept = kept_units(groups, mask)
    per_unit = unit_scores(groups, scores, mask, how, weights)
    keep = dict(kept)
    if scope == "global":
        pooled = [g for g in groups if g.kind in POOLED]
        total = sum(int(kept[g.name].sum()) for g in pooled)
        n_keep = total - prune_count(rate_hidden, total)
        candidates = sorted(((-float(per_unit[g.name][u]), g.name, u) for g in pooled for u in range(g.size)
                             if kept[g.name][u]))
        chosen = {(name, u) for _, name, u in candidates[:n_keep]}
        for g in pooled:
            keep[g.name] = torch.tensor([(g.name, u) in chosen for u in range(g.size)], dtype=torch.bool)
            if not keep[g.name].any():  # a group never empties: its best unit stays
                keep[g.name] = keep_top_units(per_unit[g.name], kept[g.name], 1)
    elif scope != "layerwise":
        raise ValueError(f"unknown scope {scope!r}")
    else:
        for g in groups:
            n = int(kept[g.name].sum())
            keep[g.name] = keep_top_units(per_unit[g.name], kept[g.name], n - prune_count(rates[g.kind], n))
    return expand_units(groups, keep, mask)


def units_with_counts(groups: list[UnitGroup], scores: Mapping[str, torch.Tensor],
                      reference: Mapping[str, torch.Tensor], how: str = "l1") -> Mask:
    """Per group, the units of highest score (from per-weight `scores`, all weights counted), as many as
    `reference` keeps: a control's structured mask at the ticket's per-layer unit counts."""
    full = {n: torch.ones_like(m, dtype=torch.bool) for n, m in reference.items()}
    counts = kept_units(groups, reference)
    per_unit = unit_scores(groups, scores, full, how)
    keep = {g.name: keep_top_units(per_unit[g.name], torch.ones(g.size, dtype=torch.bool), int(counts[g.name].sum()))
            for g in groups}
    return expand_units(groups, keep, full)


def random_units(groups: list[UnitGroup], reference: Mapping[str, torch.Tensor], seed: int) -> Mask:
    """Random units with `reference`'s per-group unit counts; each group draws from its own generator,
    seeded by (seed, group name)."""
    full = {n: torch.ones_like(m, dtype=torch.bool) for n, m in reference.items()}
    counts = kept_units(groups, reference)
    keep = {}
    for g in groups:
        scores = torch.rand(g.size, generator=torch.Generator().manual_seed(derive_seed(seed, g.name)))
        keep[g.name] = keep_top_units(scores, torch.ones(g.size, dtype=torch.bool), int(counts[g.name].sum()))
    return expand_units(groups, keep, full)


def scratch_start(fresh: Mapping[str, torch.Tensor], mask: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A fresh draw of the full model rescaled to the masked architecture's own initialization: each row of a
    prunable tensor (and its bias) times sqrt(fan-in / kept fan-in), the factor by which a layer with only the
    kept inputs draws larger weights under any fan-in initializer (Kaiming, PyTorch's default, LeCun). For a
    structured ticket this is the smaller dense network trained from scratch (Liu et al., ICLR 2019)."""
    out = {n: t.clone() for n, t in fresh.items()}
    for name, m in mask.items():
        if m.dim() < 2:
            continue
        rows = m.reshape(m.shape[0], -1)
        kept = rows.sum(dim=1).clamp(min=1).to(torch.float64)
        factor = (rows.shape[1] / kept).sqrt().to(out[name].dtype)
        out[name] = out[name] * factor.view(-1, *([1] * (m.dim() - 1)))
        bias = name.rpartition(".")[0] + ".bias"
        if bias in out and out[bias].shape == (m.shape[0],):
            out[bias] = out[bias] * factor
    return out


def describe_units(groups: list[UnitGroup], left: list[str], mask: Mapping[str, torch.Tensor] | None = None) -> str:
    """One line per group (its units, kept of total when a mask is given) and per group left dense."""
    kept = kept_units(groups, mask) if mask is not None else None
    lines = [f"structured: {len(groups)} groups of channels pruned whole"]
    for g in groups:
        count = f"{int(kept[g.name].sum())}/{g.size}" if kept is not None else str(g.size)
        members = ", ".join(sorted({m.tensor.rpartition('.')[0] for m in g.members}))
        lines.append(f"  {g.name.rpartition('.')[0]}: {count} {g.kind} units ({members})")
    lines += [f"  left dense: {why}" for why in left]
    return "\n".join(lines)


def run_units(model: nn.Module, roles: Mapping[str, str], example: torch.Tensor | None, granularity: str,
              ignore: Iterable[str] = ()) -> tuple[list[UnitGroup] | None, str]:
    """A run's groups of channels and their description, or (None, "") for weight granularity. A model whose
    channels cannot be pruned whole is refused in one line, before anything is written."""
    if granularity == "weight":
        return None, ""
    if example is None:
        raise UserError("prune.granularity=channel traces the model: give `example` (a few inputs)")
    try:
        groups, left = unit_groups(model, roles, example, ignore)
    except ValueError as exc:
        raise UserError(f"prune.granularity=channel: {exc}") from None
    if not groups:
        raise UserError(f"prune.granularity=channel: no channel of {type(model).__name__} can be pruned whole ("
                        f"{'; '.join(left[:3]) or 'no conv or linear layer feeds another'})")
    return groups, describe_units(groups, left)
