"""The compact form of a ticket: the units and channels its mask disconnects, removed into a smaller dense model.

Works on a chain of layers: an `nn.Sequential` of Linear / Conv2d layers with ReLU, BatchNorm (eval: its
running statistics), MaxPool2d, AdaptiveAvgPool2d, Flatten, Dropout or Identity between them (the
registry's MLPs, Conv-2/4/6 and keyword-spotting CNN give theirs with `.sequential()`).
A hidden unit (a Linear output, a Conv channel) goes when
  - every weight that reads it is pruned: it feeds nothing; or
  - every weight that writes it is pruned: it is a constant (its bias through the BatchNorm and ReLU after
    it). Then its constant is folded into
    the next layer's bias when that layer is Linear (exact up to float rounding); before a padded
    convolution a constant channel is not a constant contribution at the borders, so it goes only when
    the constant is 0.
Removing units can disconnect others: the pass repeats until nothing changes. Inputs and outputs keep their
shape. The compact model computes what the masked model computes, up to the order of float additions.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from lottery.errors import UserError

WEIGHTED = (nn.Linear, nn.Conv2d)
NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)
BETWEEN = (nn.ReLU, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Identity, *NORMS)


@dataclass
class Size:
    """Parameters and multiply-add FLOPs (2 per MAC) of one forward pass of one example."""

    parameters: int
    nonzero_parameters: int  # weights the mask keeps, plus every bias
    flops: int  # dense arithmetic, as a dense kernel runs it
    nonzero_flops: int  # arithmetic on kept weights only: what an ideal sparse kernel would run


def chain_of(model: nn.Module) -> nn.Sequential:
    """The model as a chain of layers, sharing its parameters (not a copy)."""
    chain = model if isinstance(model, nn.Sequential) else getattr(model, "sequential", lambda: None)()
    if not isinstance(chain, nn.Sequential):
        raise UserError(f"the compact form needs a chain of layers: an nn.Sequential, or a model with a "
                        f"sequential() method (the registry's MLPs and Conv-2/4/6); {type(model).__name__} is neither")
    for module in chain:
        if not isinstance(module, (*WEIGHTED, *BETWEEN)):
            raise UserError(f"the compact form handles Linear, Conv2d, ReLU, BatchNorm, MaxPool2d, AdaptiveAvgPool2d, "
                        f"Flatten and Dropout; "
                            f"{type(model).__name__} has {type(module).__name__}")
    if not any(isinstance(m, WEIGHTED) for m in chain):
        raise UserError(f"{type(model).__name__} has no Linear or Conv2d layer")
    return chain


def _names(model: nn.Module, chain: nn.Sequential) -> dict[int, str]:
    """Index in the chain -> the weight's name in the model (the mask's key)."""
    by_tensor = {id(p): n for n, p in model.named_parameters()}
    return {i: by_tensor[id(m.weight)].rpartition(".")[0] for i, m in enumerate(chain) if isinstance(m, WEIGHTED)}


def _output_shapes(chain: nn.Sequential, example: torch.Tensor) -> list[tuple[int, ...]]:
    shapes, x = [], example[:1]
    with torch.no_grad():
        for module in copy.deepcopy(chain).eval():  # a copy: the model's own modules keep their mode
            x = module(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes


def size_of(model: nn.Module, example: torch.Tensor, mask: dict[str, torch.Tensor] | None = None) -> Size:
    """Parameters and FLOPs of the chain (all of its weights kept when there is no mask)."""
    chain = chain_of(model)
    names, shapes = _names(model, chain), _output_shapes(chain, example)
    parameters = nonzero = flops = nonzero_flops = 0
    for i, module in enumerate(chain):
        if not isinstance(module, WEIGHTED):
            continue
        weight = module.weight
        kept = int(mask[f"{names[i]}.weight"].sum()) if mask and f"{names[i]}.weight" in mask else weight.numel()
        biases = module.bias.numel() if module.bias is not None else 0
        positions = shapes[i][1] * shapes[i][2] if isinstance(module, nn.Conv2d) else 1
        parameters += weight.numel() + biases
        nonzero += kept + biases
        flops += 2 * weight.numel() * positions
        nonzero_flops += 2 * kept * positions
    return Size(parameters, nonzero, flops, nonzero_flops)


def compact(model: nn.Module, mask: dict[str, torch.Tensor], example: torch.Tensor) -> nn.Sequential:
    """A smaller dense nn.Sequential computing what `model` (its weights already masked) computes; `example`
    is an input batch (for the shapes at Flatten). The model is not changed."""
    original = chain_of(model)
    names = _names(model, original)
    shapes = _output_shapes(original, example)
    chain = copy.deepcopy(original).eval()
    layers = sorted(names)
    with torch.no_grad():
        for i in layers:
            if f"{names[i]}.weight" in mask:
                chain[i].weight.mul_(mask[f"{names[i]}.weight"].to(chain[i].weight.dtype))
        changed = True
        while changed:
            changed = False
            for a, b in zip(layers[:-1], layers[1:]):
                changed |= _prune_units(chain, a, b, shapes)
    return chain


def _per_unit(chain: nn.Sequential, a: int, b: int, shapes: list[tuple[int, ...]]) -> int:
    """The features per unit of layer a that layer b reads: the spatial size at a Flatten after a conv,
    else 1. Spatial sizes do not change when channels go."""
    flatten = [k for k in range(a + 1, b) if isinstance(chain[k], nn.Flatten)]
    if flatten and isinstance(chain[a], nn.Conv2d):
        _, height, width = shapes[flatten[0] - 1]
        return height * width
    return 1


def _constant_after(chain: nn.Sequential, a: int, b: int, value: torch.Tensor) -> torch.Tensor:
    """Per unit, what a constant output `value` of layer a is when it reaches layer b: through the
    BatchNorms (running statistics) and ReLUs between; pools and Flatten keep a constant a constant."""
    for k in range(a + 1, b):
        module = chain[k]
        if isinstance(module, NORMS):
            value = (value - module.running_mean) / torch.sqrt(module.running_var + module.eps)
            value = value * module.weight + module.bias if module.affine else value
        elif isinstance(module, nn.ReLU):
            value = torch.relu(value)
    return value


def _prune_units(chain: nn.Sequential, a: int, b: int, shapes: list[tuple[int, ...]]) -> bool:
    """Remove the disconnected output units of layer a (the inputs of layer b); True if any went."""
    first, second = chain[a], chain[b]
    per_unit = _per_unit(chain, a, b, shapes)
    units = first.weight.shape[0]
    written = first.weight.reshape(units, -1).ne(0).any(dim=1)
    # The weights of layer b that read each unit: Linear [out, units, per_unit, 1], Conv [out, units, k, k].
    outgoing = second.weight.reshape(second.weight.shape[0], units, per_unit, 1) \
        if isinstance(second, nn.Linear) else second.weight
    reads = outgoing.ne(0).any(dim=3).any(dim=2).any(dim=0)
    bias = first.bias if first.bias is not None else torch.zeros(units, dtype=first.weight.dtype)
    constant = _constant_after(chain, a, b, bias)  # the value of a unit nothing writes, as layer b sees it
    foldable = isinstance(second, nn.Linear) and second.bias is not None
    dead = ~reads | (~written & ((constant == 0) | foldable))
    if not dead.any():
        return False
    fold = ~written & reads & (constant != 0)
    if foldable and fold.any():  # constants that still feed the next layer go into its bias
        second.bias += outgoing[:, fold].sum(dim=(2, 3)) @ constant[fold]
    keep = (~dead).nonzero().flatten()
    if len(keep) == 0:  # one unit stays, so that every layer keeps a shape; it feeds nothing now
        keep = torch.tensor([0])
        second.weight.view(second.weight.shape[0], units, -1)[:, 0] = 0
        if units == 1:
            return False
    _select_outputs(first, keep)
    for k in range(a + 1, b):
        if isinstance(chain[k], NORMS):
            _select_channels(chain[k], keep)
    _select_inputs(second, keep, per_unit)
    return True


def _select_channels(norm: nn.Module, keep: torch.Tensor) -> None:
    for name in ("weight", "bias"):
        if getattr(norm, name, None) is not None:
            setattr(norm, name, nn.Parameter(getattr(norm, name)[keep].clone()))
    for name in ("running_mean", "running_var"):
        if getattr(norm, name, None) is not None:
            setattr(norm, name, getattr(norm, name)[keep].clone())
    norm.num_features = len(keep)


def _select_outputs(layer: nn.Module, keep: torch.Tensor) -> None:
    layer.weight = nn.Parameter(layer.weight[keep].clone())
    if layer.bias is not None:
        layer.bias = nn.Parameter(layer.bias[keep].clone())
    if isinstance(layer, nn.Linear):
        layer.out_features = len(keep)
    else:
        layer.out_channels = len(keep)


def _select_inputs(layer: nn.Module, keep: torch.Tensor, per_unit: int) -> None:
    if isinstance(layer, nn.Linear):
        columns = (keep.unsqueeze(1) * per_unit + torch.arange(per_unit)).flatten()
        layer.weight = nn.Parameter(layer.weight[:, columns].clone())
        layer.in_features = len(columns)
    else:
        layer.weight = nn.Parameter(layer.weight[:, keep].clone())
        layer.in_channels = len(keep)
