"""The compact form of any architecture: the channels a mask disconnects, cut out into a smaller dense module.

`lottery.deploy.compact` walks a chain of layers. This module takes any model Torch-Pruning's dependency graph
can trace (residual adds, depthwise convolutions, flattens, concatenations): the groups of coupled channels
come from `lottery.pruning.units.unit_groups`, and a unit goes when its value is read by no weight: every
column that reads it (and, through a depthwise convolution, the filter row that reads it) is pruned in the
mask. That is exact for any mask: for a structured ticket it is every dropped channel; for an unstructured one
only the few channels it happens to disconnect. The cut itself is Torch-Pruning's (`Group.prune`), on a deep
copy; the copy's outputs are then checked against the masked model's, and a model the graph cannot follow, or
whose cut model would compute something else, comes back as the masked model itself (method "none") with the
reason, never an exception.

Only the mask decides what goes, never the weights: the same mask on a fresh instance of the architecture
gives the same shapes, which is how `load_compact` rebuilds a saved compact model without pickling it.
"""
from __future__ import annotations

import copy
import json
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lottery.deploy.compact import Size
from lottery.errors import BrokenFile, UserError
from lottery.pruning.units import UnitGroup, unit_groups
from lottery.storage.files import load_metadata, load_tensors, save_tensors

FORMAT = "lottery-compact/1"
METHODS = ("depgraph", "none")
# The attributes of a layer that a cut changes: what the module description records.
SHAPE_ATTRIBUTES = ("in_channels", "out_channels", "groups", "in_features", "out_features", "num_features")
# How far the cut model's outputs may be from the masked model's (float reassociation only) before the cut
# is refused: relative to the outputs' scale.
AGREEMENT = 1e-4


@dataclass
class Compacted:
    """A ticket's network with its disconnected channels cut out (see the module doc)."""

    model: nn.Module  # a plain dense nn.Module with fewer channels: a deep copy, the input model is untouched
    removed: dict[str, int]  # group name (UnitGroup.name) -> channels removed, every group found
    parameters_before: int
    parameters_after: int
    method: str  # "depgraph" (channels cut out) or "none" (nothing could be removed: the masked model itself)
    note: str  # one line for the user: what was cut, or why nothing was
    # The module description: per module whose shape changed, its new shape attributes (SHAPE_ATTRIBUTES).
    changed: dict[str, dict[str, int]] = field(default_factory=dict)


def parameter_count(model: nn.Module) -> int:
    """Every parameter of `model` (weights, biases, norms), each shared tensor once."""
    return sum(p.numel() for p in model.parameters())


def masked_copy(model: nn.Module, mask: Mapping[str, torch.Tensor]) -> nn.Module:
    """A deep copy of `model` in eval mode with the mask applied: pruned weights exactly zero, whatever the
    model held."""
    masked = copy.deepcopy(model).eval()
    params = dict(masked.named_parameters())
    unknown = sorted(set(mask) - set(params))
    if unknown:
        raise UserError(f"the mask names {unknown[0]}, which {type(model).__name__} does not have")
    with torch.no_grad():
        for name, keep in mask.items():
            if tuple(keep.shape) != tuple(params[name].shape):
                raise UserError(f"the mask of {name} has shape {list(keep.shape)}, the model's tensor "
                                f"{list(params[name].shape)}")
            params[name].mul_(keep.to(params[name].device, params[name].dtype))
    return masked


def default_roles(model: nn.Module, mask: Mapping[str, torch.Tensor], example: torch.Tensor) -> dict[str, str]:
    """The model's prunable tensors and their kinds (lottery.models.prunable), else the mask's tensors, each
    by its module's type (the model's outputs are still found: unit_groups checks each group on the model)."""
    from lottery.models.prunable import prunable_roles

    try:
        return prunable_roles(model, None, example)
    except Exception:  # noqa: BLE001 - a model prunable_roles cannot read: the mask names the tensors
        modules = dict(model.named_modules())
        return {name: "conv" if isinstance(modules.get(name.rpartition(".")[0]), nn.modules.conv._ConvNd)
                else "hidden" for name in mask}


def removable_units(group: UnitGroup, mask: Mapping[str, torch.Tensor], model: nn.Module) -> torch.Tensor:
    """bool[size]: the units no weight reads. Every column reading the unit is pruned, and so is every depthwise
    filter row over it (a depthwise filter reads the channel it writes). A tensor without a mask is all kept."""
    removable = torch.ones(group.size, dtype=torch.bool)
    modules = dict(model.named_modules())
    for member in group.members:
        module = modules.get(member.tensor.rpartition(".")[0])
        depthwise = isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1
        if member.dim == 0 and not depthwise:
            continue  # a row that writes the unit: pruned or not, it does not read it
        if member.tensor not in mask:
            return torch.zeros(group.size, dtype=torch.bool)
        selected = mask[member.tensor].cpu().index_select(member.dim, member.index.flatten())
        per_index = selected.movedim(member.dim, 0).reshape(member.index.numel(), -1).any(dim=1)
        removable &= ~per_index.reshape(group.size, -1).any(dim=1)
    return removable


def compact_model(model: nn.Module, mask: dict[str, torch.Tensor], example: torch.Tensor,
                  roles: dict[str, str] | None = None) -> Compacted:
    """`model` (holding the ticket's weights; pruned ones need not be zero) with every channel the mask
    disconnects cut out, for any architecture the dependency graph traces; `example`: a few inputs, for the
    trace and the check. Never raises on a model it cannot cut: method "none" with the reason instead."""
    masked = masked_copy(model, mask)
    before = parameter_count(masked)

    def uncut(why: str, removed: dict[str, int] | None = None) -> Compacted:
        return Compacted(masked, removed or {}, before, before, "none", why)

    roles = dict(roles) if roles is not None else default_roles(masked, mask, example)  # the copy: in eval
    try:
        groups, left = unit_groups(masked, roles, example)
    except ValueError as exc:
        return uncut(f"nothing removed: {exc}")
    if not groups:
        return uncut(f"nothing removed: no group of channels can be cut ({'; '.join(left[:2]) or 'none found'})")
    plan = {}
    for group in groups:
        gone = removable_units(group, mask, masked)
        if bool(gone.all()):  # every layer keeps a shape: one unit stays (it feeds nothing)
            gone[0] = False
        plan[group.name] = gone
    removed = {name: int(gone.sum()) for name, gone in plan.items()}
    if not any(removed.values()):
        return uncut("nothing removed: the mask disconnects no channel (an unstructured mask rarely does; a "
                     "channel-granularity ticket does)", removed)
    try:
        cut = _cut(masked, groups, plan, example)
    except Exception as exc:  # noqa: BLE001 - the library's pruner on a model it cannot cut: said, not raised
        return uncut(f"nothing removed: torch-pruning could not cut the channels ({type(exc).__name__}: "
                     f"{str(exc).splitlines()[0][:160] if str(exc) else ''})", removed)
    problem = _disagreement(masked, cut, example)
    if problem:
        return uncut(f"nothing removed: {problem}", removed)
    total = sum(removed.values())
    left = [why for why in left if not why.endswith("the model's outputs")]  # the classes: dense by design
    dense = f"; left dense: {len(left)} group(s) ({left[0]}{', ...' if len(left) > 1 else ''})" if left else ""
    note = (f"{total} of {sum(g.size for g in groups)} channels cut out of {sum(map(bool, removed.values()))} "
            f"of {len(groups)} groups{dense}")
    return Compacted(cut, removed, before, parameter_count(cut), "depgraph", note, describe_changes(masked, cut))


def _cut(masked: nn.Module, groups: list[UnitGroup], plan: Mapping[str, torch.Tensor],
         example: torch.Tensor) -> nn.Module:
    """A copy of `masked` with each group's planned units removed by Torch-Pruning: one graph, built once,
    then one pruning group per unit group, rooted at the group's named writer (in that writer's indices)."""
    import torch_pruning as tp

    cut = copy.deepcopy(masked).eval()
    with warnings.catch_warnings():  # its notes on raw parameters it leaves alone: the groups say what stays dense
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(cut, example_inputs=example)
    for group in groups:
        gone = plan[group.name]
        if not gone.any():
            continue
        module = cut.get_submodule(group.name.rpartition(".")[0])
        root = next(m for m in group.writers if m.tensor == group.name)
        handler = tp.prune_linear_out_channels if isinstance(module, nn.Linear) else tp.prune_conv_out_channels
        indices = sorted(int(i) for i in root.index[gone].flatten())
        graph.get_pruning_group(module, handler, idxs=indices).prune()
    return cut


def _disagreement(masked: nn.Module, cut: nn.Module, example: torch.Tensor) -> str:
    """'' when the cut model computes what the masked model computes on `example` (up to float
    reassociation), else why not."""
    try:
        with torch.no_grad():
            want, got = masked(example), cut(example)
    except Exception as exc:  # noqa: BLE001
        return f"the cut model's forward failed ({type(exc).__name__})"
    if not isinstance(want, torch.Tensor) or not isinstance(got, torch.Tensor) or want.shape != got.shape:
        return "the cut model's outputs are not the masked model's shape"
    scale = float(want.abs().max()) if want.numel() else 0.0
    difference = float((want.float() - got.float()).abs().max()) if want.numel() else 0.0
    if difference > AGREEMENT * max(1.0, scale):
        return f"the cut model's outputs differ from the masked model's by {difference:.2e} (left uncut)"
    return ""


def module_shapes(model: nn.Module) -> dict[str, dict[str, int]]:
    """Module name -> its shape attributes (channels, features, groups) for every module that has any."""
    out = {}
    for name, module in model.named_modules():
        shape = {a: int(getattr(module, a)) for a in SHAPE_ATTRIBUTES if isinstance(getattr(module, a, None), int)}
        if shape:
            out[name] = shape
    return out


def describe_changes(original: nn.Module, compacted: nn.Module) -> dict[str, dict[str, int]]:
    """The module description: per module whose shape changed, its new shape attributes."""
    before, after = module_shapes(original), module_shapes(compacted)
    return {name: shape for name, shape in after.items() if before.get(name) != shape}


def save_compact(path: Path | str, compacted: Compacted, mask: Mapping[str, torch.Tensor],
                 info: Mapping[str, Any] | None = None) -> Path:
    """Write the compact model (its state) and the mask it was cut by to one safetensors file, atomically,
    nothing pickled. The metadata describes each module whose shape changed, so that `load_compact` rebuilds
    and checks it from a fresh instance of the architecture; `info`: anything JSON to carry along."""
    path = Path(path)
    modules = compacted.changed
    tensors = {f"compact/{n}": t for n, t in compacted.model.state_dict().items()}
    tensors |= {f"mask/{n}": m.bool() for n, m in mask.items()}
    description = {"format": FORMAT, "method": compacted.method, "removed": compacted.removed,
                   "parameters_before": compacted.parameters_before, "parameters_after": compacted.parameters_after,
                   "modules": modules, "info": dict(info or {})}
    save_tensors(path, tensors, {"lottery-compact": json.dumps(description, sort_keys=True, default=list)})
    return path


def read_compact(path: Path | str) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, Any]]:
    """(the compact state, the mask, the description) of a file save_compact wrote; anything else is one
    UserError line naming the file."""
    path = Path(path)
    try:
        description = json.loads(load_metadata(path)["lottery-compact"])
        tensors = load_tensors(path)
    except BrokenFile as exc:
        raise UserError(f"{path} is not a readable compact model file ({exc.reason or exc})") from None
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{path} is not a compact model file (no '{FORMAT}' metadata); write one with "
                        f"lottery.deploy.structured.save_compact") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT \
            or not isinstance(description.get("modules"), dict):
        raise UserError(f"{path} is not a compact model file (no '{FORMAT}' metadata)")
    state = {k.partition("/")[2]: t for k, t in tensors.items() if k.startswith("compact/")}
    mask = {k.partition("/")[2]: t.bool() for k, t in tensors.items() if k.startswith("mask/")}
    if not state or len(state) + len(mask) != len(tensors):
        raise UserError(f"{path} holds tensors other than a compact state and its mask: not a compact model file")
    return state, mask, description


def load_compact(path: Path | str, model: nn.Module, example: torch.Tensor) -> nn.Module:
    """The compact model saved in `path`, rebuilt from `model` (a fresh instance of the architecture it was cut
    from; left unchanged): the stored mask applied, the same channels cut, every shape checked against the
    file's description, then its weights loaded. Returned in eval mode."""
    path = Path(path)
    state, mask, description = read_compact(path)
    names = dict(model.named_parameters())
    if any(n not in names or tuple(names[n].shape) != tuple(m.shape) for n, m in mask.items()):
        wrong = next(n for n, m in mask.items() if n not in names or tuple(names[n].shape) != tuple(m.shape))
        raise UserError(f"{path} was not cut from this {type(model).__name__}: its mask of {wrong} does not fit")
    rebuilt = compact_model(model, mask, example)
    if description.get("method") == "depgraph" and rebuilt.method != "depgraph":
        raise UserError(f"{path} cannot be rebuilt from this {type(model).__name__}: {rebuilt.note}")
    described = description["modules"]
    for name in sorted(set(described) | set(rebuilt.changed)):
        if rebuilt.changed.get(name) != described.get(name):
            raise UserError(f"{path} does not fit this {type(model).__name__}: module {name!r} is "
                            f"{rebuilt.changed.get(name, 'unchanged')} after the cut, the file describes "
                            f"{described.get(name, 'it unchanged')}")
    ours = {n: tuple(t.shape) for n, t in rebuilt.model.state_dict().items()}
    theirs = {n: tuple(t.shape) for n, t in state.items()}
    if ours != theirs:
        name = sorted(set(ours) ^ set(theirs) or (n for n in ours if ours[n] != theirs[n]))[0]
        raise UserError(f"{path} does not fit this {type(model).__name__}: {name} is {list(theirs.get(name, []))} "
                        f"in the file, {list(ours.get(name, []))} in the cut model")
    rebuilt.model.load_state_dict(state)
    return rebuilt.model.eval()


def size_of_any(model: nn.Module, example: torch.Tensor, mask: Mapping[str, torch.Tensor] | None = None) -> Size:
    """lottery.deploy.compact.Size for any model (not only a chain): parameters and FLOPs of its Linear and
    Conv layers, found by one forward of one example with hooks (positions: each output's spatial size)."""
    layers = {m: n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.modules.conv._ConvNd))}
    positions: dict[nn.Module, int] = {}

    def record(module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
        shape = output.shape
        count = int(torch.tensor(shape[2:]).prod()) if isinstance(module, nn.modules.conv._ConvNd) \
            else int(torch.tensor(shape[1:-1]).prod())
        positions[module] = positions.get(module, 0) + count

    hooks = [m.register_forward_hook(record) for m in layers]
    try:
        was_training = model.training
        with torch.no_grad():
            model.eval()(example[:1])
        model.train(was_training)
    finally:
        for hook in hooks:
            hook.remove()
    parameters = nonzero = flops = nonzero_flops = 0
    for module, name in layers.items():
        weight = module.weight
        kept = int(mask[f"{name}.weight"].sum()) if mask and f"{name}.weight" in mask else weight.numel()
        biases = module.bias.numel() if module.bias is not None else 0
        parameters += weight.numel() + biases
        nonzero += kept + biases
        flops += 2 * weight.numel() * positions.get(module, 0)
        nonzero_flops += 2 * kept * positions.get(module, 0)
    return Size(parameters, nonzero, flops, nonzero_flops)
