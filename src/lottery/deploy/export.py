"""A ticket you can take away: one safetensors file out of a run, loaded into your own module.

The file holds, for one (trial, level, arm) network of a finished run:
  mask/NAME     the mask of each prunable tensor (bool)
  start/NAME    the state it was trained from (θ0 at level 0; θk, or θ0 when k = 0; the parent's θT under lr-rewind and
                finetune; an arm's own draw), parameters and buffers
  trained/NAME  its trained state θT (pruned weights exactly zero), parameters and buffers
and, as JSON strings in the metadata: what model and data it was made with, its percent remaining
(total and per layer, the denominator stated), its accuracy at early stop, the run's hash and the
command that exported it. Nothing is pickled; a file that is not a ticket is refused in one line.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from lottery.config import DataConfig, ModelConfig
from lottery.pruning.arms import ARMS, TICKET
from lottery.errors import BrokenFile, UserError
from lottery.storage.finished import FinishedRun, open_run
from lottery.pruning.masks import count
from lottery.storage.files import hold_run, load_metadata, load_tensors, remove_stale_temps, save_tensors

FORMAT = "lottery-ticket/1"
PARTS = ("mask", "start", "trained")
Weights = Literal["start", "trained"]


@dataclass
class Ticket:
    """A ticket read from its file: tensors by name, and what the file says of itself."""

    mask: dict[str, torch.Tensor]
    start: dict[str, torch.Tensor]
    trained: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False)  # the file it was read from, to name in errors

    def state(self, weights: Weights = "trained") -> dict[str, torch.Tensor]:
        """Parameters and buffers to load: the trained state, or the start state with the mask applied."""
        if weights not in ("start", "trained"):
            raise UserError(f"weights must be start or trained, got {weights!r}")
        state = dict(self.trained if weights == "trained" else self.start)
        return {n: t * self.mask[n] if n in self.mask else t for n, t in state.items()}


def choose_level(run: FinishedRun, arm: str, tolerance: float) -> int:
    """The sparsest level whose `arm` networks' mean test accuracy at early stop is within `tolerance`
    points (percent) of the dense network's mean; level 0 when no pruned level is."""
    def mean_accuracy(rows: list[dict]) -> float:
        return 100.0 * sum(r["early_stop_test_accuracy"] for r in rows) / len(rows)

    dense = mean_accuracy(run.rows_of("imp", 0))
    matching = [lv for lv in run.levels if lv > 0 and run.rows_of(arm, lv)
                and mean_accuracy(run.rows_of(arm, lv)) >= dense - tolerance]
    return min(matching, key=run.percent) if matching else 0


def export_ticket(run_dir: Path | str, out: Path | str, *, level: int | Literal["best"] = "best", trial: int = 0,
                  arm: str = "imp", tolerance: float = 0.0, command: str | None = None) -> Path:
    """Write one network of a finished run to `out` (see the module doc); returns `out`.
    `level="best"`: the sparsest level within `tolerance` points of the dense network (choose_level)."""
    save_ticket(ticket_of(run_dir, level=level, trial=trial, arm=arm, tolerance=tolerance, command=command), out)
    return Path(out)


def save_ticket(ticket: Ticket, out: Path | str) -> None:
    """Write the ticket to `out` atomically (whole or not at all), first removing the temp files a killed
    export left beside it."""
    remove_stale_temps(Path(out))
    tensors = {f"{part}/{n}": t for part, state in zip(PARTS, (ticket.mask, ticket.start, ticket.trained))
               for n, t in state.items()}
    save_tensors(Path(out), tensors, {"lottery": json.dumps(ticket.info, sort_keys=True, default=list)})


def trained_from(run: FinishedRun, trial: int, level: int, arm: str) -> dict[str, torch.Tensor]:
    """The state the network (trial, level, arm) started its training from, by the rule its writer applied
    (lottery.procedure.tickets.Tickets.arm_start): level 0, θ0; the ticket under `lr-rewind` or `finetune`, the θT
    of the ticket its mask was pruned from; an arm that drew its own start (reinit, same-sign, scratch), that
    draw; every other network, the rewind point θk (θ0 when k = 0)."""
    if level == 0:
        return run.init(trial)
    prune = run.config.prune
    if arm == TICKET and prune.retrain != "rewind":
        return run.final(trial, 0 if prune.one_shot else level - 1, TICKET)
    if ARMS[arm].redrawn:
        return run.arm_start(trial, level, arm)
    return run.start(trial)


def ticket_of(run_dir: Path | str, *, level: int | Literal["best"] = "best", trial: int = 0, arm: str = "imp",
              tolerance: float = 0.0, command: str | None = None) -> Ticket:
    """One network of a finished run, as export_ticket writes it."""
    with hold_run(run_dir, exclusive=False):
        run = open_run(run_dir)
        if not tolerance >= 0:
            raise UserError(f"tolerance must be 0 or more points, got {tolerance}")
        if arm not in run.arms:
            raise UserError(f"arm {arm!r} is not in {run.store.root} (it has {', '.join(run.arms)})")
        if trial not in run.trials:
            raise UserError(f"trial {trial} is not in {run.store.root} (it has {run.trials})")
        chosen = choose_level(run, arm, tolerance) if level == "best" else level
        if not isinstance(chosen, int) or chosen not in run.levels:
            raise UserError(f"level {level} is not in {run.store.root} (it has {run.levels[0]}..{run.levels[-1]})")
        arm = "imp" if chosen == 0 else arm  # the controls of the dense network are the dense network
        if not run.has(trial, chosen, arm):
            raise UserError(f"{run.store.arm_dir(trial, chosen, arm)} has no finished network")
        mask = run.mask(trial, chosen, arm)  # checked against the digest its network recorded when it trained
        start = trained_from(run, trial, chosen, arm)
        trained = run.final(trial, chosen, arm)
        row = next(r for r in run.rows_of(arm, chosen) if r["trial"] == trial)
        kept, total = count(mask)
        if row.get("edges_remaining") is not None:  # a graph model: the percent counts weights, edges apart
            kept, total = kept - row["edges_remaining"], total - row["graph_edges"]
        graph = {k: row[k] for k in ("edges_remaining", "graph_edges", "percent_edges_remaining")
                 if row.get(k) is not None}
        info = {
            "format": FORMAT,
            "model": dataclasses.asdict(run.config.model) | {"class": _recorded_class(run)},
            "data": dataclasses.asdict(run.config.data),
            "source": {"run": str(run.store.root.resolve()), "run_hash": run.config.run_hash(),
                       "preset": run.config.preset, "trial": trial, "level": chosen, "arm": arm,
                       "rewind_iteration": run.config.prune.rewind_iteration},
            "percent_remaining": 100.0 * kept / total,
            "weights_remaining": kept, "prunable_weights": total, **graph,
            "layers": {n: {"kept": int(m.sum()), "total": m.numel(), "percent": 100.0 * float(m.float().mean())}
                       for n, m in mask.items()},
            "early_stop_test_accuracy": row["early_stop_test_accuracy"],
            "early_stop_iteration": row["early_stop_iteration"],
            "command": command or " ".join(shlex.quote(a) for a in ["lottery", *sys.argv[1:]]),
        }
        inputs = _recorded_inputs(run)
        if inputs:  # the model's input shape and classes: the ticket's network can be built without the data
            info["inputs"] = inputs
    return Ticket(mask, start, trained, json.loads(json.dumps(info, default=list)))


def _recorded_inputs(run: FinishedRun) -> dict | None:
    from lottery.storage.runinfo import recorded_inputs

    return recorded_inputs(run.store)


def _recorded_class(run: FinishedRun) -> str | None:
    from lottery.storage.runinfo import recorded_model

    recorded = recorded_model(run.store)
    return recorded.get("class") if recorded else None


def read_ticket(path: Path | str) -> Ticket:
    """A ticket file, checked: a safetensors file (nothing pickled) that says it is a ticket, with a mask,
    start and trained tensor for every masked name."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist: give a ticket file written by `lottery export`")
    try:
        meta = load_metadata(path)
        tensors = load_tensors(path)
    except BrokenFile as exc:  # the store's advice is for a run's own files; this one is the user's
        raise UserError(f"{path} is not a readable lottery ticket file ({exc.reason}); give one written by "
                        f"`lottery export RUN_DIR --out FILE`") from None
    try:
        info = json.loads(meta["lottery"])
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r}")
    except (KeyError, ValueError, TypeError, AttributeError):
        raise UserError(f"{path} is not a lottery ticket file (no '{FORMAT}' metadata); export one with "
                        f"`lottery export RUN_DIR --out FILE`") from None
    parts: dict[str, dict[str, torch.Tensor]] = {p: {} for p in PARTS}
    for key, tensor in tensors.items():
        part, _, name = key.partition("/")
        if part not in parts or not name:
            raise UserError(f"{path} holds an unexpected tensor {key!r}: not a lottery ticket file")
        parts[part][name] = tensor
    missing = [n for n in parts["mask"] if n not in parts["start"] or n not in parts["trained"]]
    if not parts["mask"] or missing or set(parts["start"]) != set(parts["trained"]):
        raise UserError(f"{path} is incomplete ({'no masks' if not parts['mask'] else 'start and trained states differ'}"
                        f"{': ' + missing[0] if missing else ''}): export it again")
    mask = {n: m.bool() for n, m in parts["mask"].items()}
    _check_parts(path, mask, parts["start"], parts["trained"])
    check_info(path, info, mask, sum(t.numel() for t in tensors.values()))
    return Ticket(mask, parts["start"], parts["trained"], info, path)


def _check_parts(path: Path, mask: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
                 trained: dict[str, torch.Tensor]) -> None:
    """The start and trained states hold the same shapes, and each mask the shape of its tensor."""
    for name in sorted(start):
        if start[name].shape != trained[name].shape or (name in mask and mask[name].shape != start[name].shape):
            raise invalid(path, f"{name} has shape {tuple(start[name].shape)} in its start state, "
                                f"{tuple(trained[name].shape)} trained and {tuple(mask[name].shape) if name in mask else 'no'} mask")


def invalid(path: Path | None, detail: str) -> UserError:
    """A ticket file whose contents contradict themselves: one line naming it (a user's file: never 'remove')."""
    return UserError(f"{path or 'the ticket'} is not a valid lottery ticket file ({detail}); export it again with "
                     f"`lottery export RUN_DIR --out FILE`")


# --- the metadata a ticket carries (what ticket_of writes), checked field by field ----------------------------
NUMBER = (int, float)


def _dataclass_types(cls: type) -> dict[str, Any]:
    """The JSON types of a config dataclass's fields, from their annotations."""
    kinds = {"str": str, "int": int, "float": NUMBER, "bool": bool, "list[int]": "ints", "list[str]": "strings"}
    return {f.name: kinds.get(str(f.type), object) for f in dataclasses.fields(cls)}


INFO_TYPES: dict[str, Any] = {
    "format": str, "model": dict, "data": dict, "source": dict, "percent_remaining": NUMBER,
    "weights_remaining": int, "prunable_weights": int, "layers": dict, "early_stop_test_accuracy": NUMBER,
    "early_stop_iteration": int, "command": str, "inputs": dict,
    "edges_remaining": int, "graph_edges": int, "percent_edges_remaining": NUMBER}
INFO_OPTIONAL = {"inputs", "edges_remaining", "graph_edges", "percent_edges_remaining"}
SOURCE_TYPES: dict[str, Any] = {"run": str, "run_hash": str, "preset": str, "trial": int, "level": int, "arm": str,
                                "rewind_iteration": int}
MODEL_TYPES: dict[str, Any] = {**_dataclass_types(ModelConfig), "class": (str, type(None))}
DATA_TYPES: dict[str, Any] = _dataclass_types(DataConfig)
INPUTS_TYPES: dict[str, Any] = {"input_shape": "ints", "num_classes": int}
LAYER_TYPES: dict[str, Any] = {"kept": int, "total": int, "percent": NUMBER}


def _of_type(value: Any, kind: Any) -> bool:
    if kind in ("ints", "strings"):
        item = int if kind == "ints" else str
        return isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return (bool in kinds) if isinstance(value, bool) else isinstance(value, kinds)


def _check_fields(path: Path, value: Any, types: dict[str, Any], what: str, optional: set[str] | frozenset = frozenset(),
                  partial: bool = False) -> None:
    """`value` is an object with exactly the fields of `types` (less `optional` ones; any subset if `partial`),
    each of its type."""
    if not isinstance(value, dict):
        raise invalid(path, f"{what} is {type(value).__name__}, not an object")
    unknown = sorted(set(value) - set(types))
    if unknown:
        raise invalid(path, f"{what} has an unknown field {unknown[0]!r}")
    missing = sorted(set(types) - set(value) - set(optional)) if not partial else []
    if missing:
        raise invalid(path, f"{what} has no {missing[0]!r}")
    for key, item in value.items():
        if not _of_type(item, types[key]):
            raise invalid(path, f"{what}.{key} holds {json.dumps(item)[:40]}")


def check_info(path: Path, info: Any, mask: dict[str, torch.Tensor], numel: int) -> None:
    """A ticket's metadata: the fields ticket_of writes, each of its type, and every count or size bounded by the
    tensors the file holds (`numel` elements in all): a size that lies is named before anything is built of it."""
    _check_fields(path, info, INFO_TYPES, "its metadata", INFO_OPTIONAL)
    _check_fields(path, info["model"], MODEL_TYPES, "model", partial=True)
    if "name" not in info["model"]:
        raise invalid(path, "model has no 'name'")
    _check_fields(path, info["data"], DATA_TYPES, "data", partial=True)
    _check_fields(path, info["source"], SOURCE_TYPES, "source")
    if "inputs" in info:
        _check_fields(path, info["inputs"], INPUTS_TYPES, "inputs")
    for name, layer in info["layers"].items():
        _check_fields(path, layer, LAYER_TYPES, f"layers.{name}")
        if name not in mask or layer["total"] != mask[name].numel() or layer["kept"] != int(mask[name].sum()):
            raise invalid(path, f"layers.{name} does not describe the mask the file holds")
    total = sum(m.numel() for m in mask.values())
    if not 0 <= info["weights_remaining"] <= info["prunable_weights"] <= total:
        raise invalid(path, f"{info['weights_remaining']} of {info['prunable_weights']} weights remaining, in masks "
                            f"of {total}")
    sizes = [*info["model"].get("hidden", []), info["model"].get("depth", 0), *info.get("inputs", {}).get("input_shape", []),
             info.get("inputs", {}).get("num_classes", 1)]
    if any(not 0 <= size <= numel for size in sizes):
        raise invalid(path, f"a size of {max(sizes, key=abs):,} in its model or inputs, for {numel:,} numbers in the file")
    if "inputs" in info and math.prod(info["inputs"]["input_shape"]) > numel:
        raise invalid(path, f"inputs of shape {info['inputs']['input_shape']}, for {numel:,} numbers in the file")


def _as_ticket(ticket: Ticket | Path | str) -> Ticket:
    return ticket if isinstance(ticket, Ticket) else read_ticket(ticket)


def check_fits(ticket: Ticket, model: nn.Module) -> None:
    """One clear error when the model's parameters and buffers are not the ticket's (names and shapes)."""
    ours = {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    theirs = {n: tuple(t.shape) for n, t in ticket.start.items()}
    if ours == theirs:
        return
    differ = sorted(set(ours) ^ set(theirs)) or sorted(n for n in ours if ours[n] != theirs[n])
    name = differ[0]
    raise UserError(f"the ticket does not fit this model: {name} is {list(theirs[name]) if name in theirs else 'absent'} "
                    f"in the ticket and {list(ours[name]) if name in ours else 'absent'} in the model"
                    f"{f' (and {len(differ) - 1} more)' if len(differ) > 1 else ''}")


def load_ticket(ticket: Ticket | Path | str, model: nn.Module, weights: Weights = "trained") -> Ticket:
    """Copy the ticket's state (`trained`, or `start` with the mask applied) into `model`, in place; the
    names and shapes must match (one clear error otherwise). Returns the ticket (its masks: `.mask`)."""
    ticket = _as_ticket(ticket)
    check_fits(ticket, model)
    state = ticket.state(weights)
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            tensor.copy_(state[name].to(tensor.device, tensor.dtype))
    return ticket


def to_torch_prune(model: nn.Module, ticket: Ticket | Path | str) -> nn.Module:
    """The ticket's masks in torch.nn.utils.prune's form: each masked tensor becomes `NAME_orig` and
    `NAME_mask` with a forward pre-hook (prune.custom_from_mask). Load the weights first (load_ticket)."""
    ticket = _as_ticket(ticket)
    check_fits(ticket, model)
    for name, mask in ticket.mask.items():
        module_name, _, attribute = name.rpartition(".")
        module = model.get_submodule(module_name)
        torch_prune.custom_from_mask(module, attribute, mask.to(getattr(module, attribute).device))
    return model
