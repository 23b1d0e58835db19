"""Which tensors of a model are prunable, and of which kind ("conv", "hidden", "output" or "edge").

The default: the weights that feed a matrix product or a convolution. That is the weight of every Linear
and Conv layer, an attention layer's input projections (`nn.MultiheadAttention.in_proj_weight`; its output
projection is a Linear), every RNN/LSTM/GRU weight matrix (`weight_ih_l0`, `weight_hh_l0`, ...), and a raw
`nn.Parameter` of two or more dimensions that the forward uses in a product (`x @ self.w.T`, found by
tracing one forward when example inputs are given). Never norms, biases or embeddings, unless asked:
`include` takes fnmatch patterns over parameter names or a predicate (name, parameter) -> bool.
A module may declare more, with their kind: `extra_prunable = {"edge_weight": "edge"}` (lottery.models.gcn).

Chosen by module type and use, never by name: BatchNorm scales and biases are also called `weight`/`bias`.
The last prunable tensor in registration order is the output layer. A weight tied between layers is one
prunable tensor (one mask), named canonically (the first name `named_parameters` gives it).
"""
from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.modules.conv._ConvNd)
NEVER_RAW: tuple[type[nn.Module], ...] = (nn.Embedding, nn.EmbeddingBag, nn.modules.batchnorm._NormBase,
                                          nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
Include = Sequence[str] | Callable[[str, nn.Parameter], bool] | None

# Functions whose tensor operands are multiplied (a raw parameter among them feeds a product).
_PRODUCTS = {
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__, torch.mm,
    torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.addmm, torch.Tensor.addmm, torch.baddbmm,
    torch.Tensor.baddbmm, torch.mv, torch.Tensor.mv, torch.einsum, torch.tensordot, torch.inner,
    F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d,
}


def _weights_of(module: nn.Module) -> list[str]:
    """The local names of the product weights of a module of a known type."""
    if isinstance(module, PRUNABLE_TYPES):
        return ["weight"]
    if isinstance(module, nn.MultiheadAttention):
        return [n for n in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
                if getattr(module, n, None) is not None]
    if isinstance(module, nn.RNNBase):
        return [n for n, _ in module.named_parameters(recurse=False) if n.startswith("weight_")]
    return []


class _ProductOperands(TorchFunctionMode):
    """Records the tensors (and the bases of views, such as `w.T`) that enter a product."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func in _PRODUCTS:
            for value in _tensors([*args, *(kwargs or {}).values()]):
                self.seen.add(id(value))
                if value._base is not None:
                    self.seen.add(id(value._base))
        return func(*args, **(kwargs or {}))


def _tensors(values: Iterable[object]) -> Iterable[torch.Tensor]:
    for value in values:
        if isinstance(value, torch.Tensor):
            yield value
        elif isinstance(value, (list, tuple)):
            yield from _tensors(value)


def _used_in_products(model: nn.Module, example: torch.Tensor) -> set[int]:
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]), _ProductOperands() as mode:
            model(example)
    finally:
        model.train(was_training)
    return mode.seen


def _kind(module: nn.Module) -> str:
    return "conv" if isinstance(module, nn.modules.conv._ConvNd) else "hidden"


def prunable_roles(model: nn.Module, include: Include = None, example: torch.Tensor | None = None) -> dict[str, str]:
    """Parameter name -> kind ("conv", "hidden" or "output") of every prunable tensor (see the module doc).
    `example`: a few inputs, to find which raw parameters feed a product; without it every raw parameter
    of two or more dimensions outside embeddings and norms is taken."""
    canonical = {id(p): n for n, p in model.named_parameters()}
    chosen: list[tuple[str, str]] = []  # (canonical name, kind), in registration order
    extras: list[tuple[str, str]] = []  # declared by their modules (`extra_prunable`), never the output layer
    if include is not None:
        matches = (include if callable(include)
                   else lambda name, _p: any(fnmatch.fnmatchcase(name, pattern) for pattern in include))
        owners = {id(p): m for m in model.modules() for p in m.parameters(recurse=False)}
        chosen = [(n, _kind(owners[id(p)])) for n, p in model.named_parameters() if matches(n, p)]
    else:
        used = None
        for module in model.modules():
            local = _weights_of(module)
            if not local and not isinstance(module, NEVER_RAW):
                raw = [n for n, p in module.named_parameters(recurse=False) if p.dim() >= 2]
                if raw and example is not None and used is None:
                    used = _used_in_products(model, example)
                local = [n for n in raw if used is None or id(getattr(module, n)) in used]
            chosen += [(canonical[id(getattr(module, n))], _kind(module)) for n in local]
    # What a module declares prunable besides its product weights, of its own kind (a GCN's edge weights).
    for module in model.modules():
        for local, kind in getattr(module, "extra_prunable", {}).items():
            name = canonical[id(getattr(module, local))]
            if name not in dict(chosen):
                extras.append((name, kind))
    if not chosen:
        raise ValueError("the model has no weights to prune (no Linear, Conv, attention or RNN weight, and no "
                         "matrix parameter used in a product); name them with `include`")
    roles: dict[str, str] = {}
    for i, (name, kind) in enumerate(chosen):
        kind = "output" if i == len(chosen) - 1 else kind
        if name not in roles or kind == "output":
            roles[name] = kind
    roles.update(extras)
    return roles


def describe_prunable(model: nn.Module, roles: dict[str, str]) -> str:
    """One line per prunable tensor, for the start of a run: what is pruned, and the denominator."""
    params = dict(model.named_parameters())
    total = sum(params[n].numel() for n in roles)
    everything = sum(p.numel() for p in model.parameters())
    lines = [f"prunable: {len(roles)} tensors, {total:,} of the model's {everything:,} parameters "
             f"(percent remaining counts these)"]
    lines += [f"  {n} {'x'.join(map(str, params[n].shape))} {kind}" for n, kind in roles.items()]
    return "\n".join(lines)
