"""What each kind of tensor file of a run must hold, declared once.

A run's tensor files are of three kinds, by what their writer put in them:
  weights    θ0, θk, an arm's start, θT, stability's trunk states: the model's parameters and buffers
  prunable   masks, path lengths, the dense network's trajectory: the prunable tensors, one each
  optimizer  an optimizer's state: per buffer kind (exp_avg, momentum...), one tensor per parameter
Every reader of a run's tensors loads through here (procedure.tickets for `find`, storage.finished for the
commands that read a finished run), so a file with other names or shapes than its writer wrote (a renamed
tensor, halved shapes, no tensors at all) is named with its fix before any of it is used. `load_tensors`
itself refuses flipped bits (the digest a file records of its own tensors).

What is expected comes from the model where the reader has it (RunShapes.of_model), else from what the run
recorded (run.json's parameter names and shapes): a part nobody recorded (a run's buffers, without the model)
is left unchecked rather than guessed. A mask also has a lineage: the network trained under it recorded its
digest (metrics.json's mask_digest), and check_trained_under compares the two.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lottery.errors import BrokenFile, UserError
from lottery.storage.files import (RunStore, check_shapes, foreign_tensors, load_json, load_metadata,
                                   load_tensors, remedy)
from lottery.storage.results import METRIC_TYPES, read_metrics
from lottery.storage.runinfo import recorded_model

Shape = tuple[int, ...]
Shapes = Mapping[str, Shape]


@dataclass(frozen=True)
class RunShapes:
    """The names and shapes of a run's tensors; None where the reader does not know them (then that part is
    not checked, never guessed)."""

    parameters: Shapes | None
    buffers: Shapes | None = None
    prunable: Shapes | None = None

    @classmethod
    def of_model(cls, model: nn.Module, prunable: Iterable[str] | None = None) -> RunShapes:
        """From a module of the run's architecture; `prunable`: the names of its masked tensors (None: unknown)."""
        parameters = {n: tuple(p.shape) for n, p in model.named_parameters()}
        buffers = {n: tuple(b.shape) for n, b in model.named_buffers()}
        return cls(parameters, buffers, None if prunable is None else {n: parameters[n] for n in prunable})

    @property
    def weights(self) -> Shapes | None:
        """Parameters and buffers, when both are known."""
        if self.parameters is None or self.buffers is None:
            return None
        return {**self.parameters, **self.buffers}


# --- the checks, one per kind of file ----------------------------------------------------------------------
def _names(names: Iterable[str]) -> str:
    names = sorted(names)
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")




def check_weights(path: Path, tensors: Mapping[str, torch.Tensor], shapes: RunShapes) -> None:
    """A weights file: exactly the parameters and buffers (the parameters alone when the buffers are unknown)."""
    if shapes.weights is not None:
        check_shapes(path, tensors, shapes.weights)
    elif shapes.parameters is not None:
        check_shapes(path, tensors, shapes.parameters, extra_allowed=True)
    if not tensors:
        raise foreign_tensors(path, "it holds no tensors")


def check_prunable(path: Path, tensors: Mapping[str, torch.Tensor], shapes: RunShapes) -> None:
    """A mask (or path length, or trajectory step): exactly the prunable tensors; when those are unknown, at
    least one tensor, each a parameter of its shape."""
    if not tensors:
        raise foreign_tensors(path, "it holds no tensors")
    if shapes.prunable is not None:
        check_shapes(path, tensors, shapes.prunable)
    elif shapes.parameters is not None:
        check_shapes(path, tensors, {n: shapes.parameters[n] for n in tensors if n in shapes.parameters})
        strangers = set(tensors) - set(shapes.parameters)
        if strangers:
            raise foreign_tensors(path, f"unexpected {_names(strangers)}")


def check_optimizer(path: Path, tensors: Mapping[str, torch.Tensor], shapes: RunShapes, prefix: str = "") -> None:
    """An optimizer's state (lottery.training.optim.flatten_state, under `prefix`): each kind of buffer holds one
    tensor per parameter, of its shape. Tensors without the prefix are another kind's (check_weights')."""
    kinds: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        if key.startswith(prefix):
            kind, _, name = key[len(prefix):].partition(".")
            kinds.setdefault(kind, {})[name] = tensor
    if shapes.parameters is None:
        return
    for kind, by_name in sorted(kinds.items()):
        try:
            check_shapes(path, by_name, shapes.parameters)
        except BrokenFile as exc:
            raise foreign_tensors(path, f"optimizer state {kind}: {exc.reason}") from None


def load_weights(path: Path, shapes: RunShapes, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    tensors = load_tensors(path, device)
    check_weights(path, tensors, shapes)
    return tensors


def load_mask(path: Path, shapes: RunShapes, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    tensors = load_tensors(path, device)
    check_prunable(path, tensors, shapes)
    return {n: t.bool() for n, t in tensors.items()}


def load_prunable(path: Path, shapes: RunShapes, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A path-length file or a trajectory step: one tensor per prunable tensor."""
    tensors = load_tensors(path, device)
    check_prunable(path, tensors, shapes)
    return tensors


def load_weights_and_optimizer(path: Path, shapes: RunShapes, prefix: str,
                               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A state with its optimizer's (stability's trunk): weights beside the optimizer's tensors under `prefix`."""
    tensors = load_tensors(path, device)
    check_weights(path, {n: t for n, t in tensors.items() if not n.startswith(prefix)}, shapes)
    check_optimizer(path, tensors, shapes, prefix)
    return tensors


def optimizer_steps(path: Path) -> int:
    """The step count an optimizer's state file records (its metadata): a missing or non-integer one is named."""
    text = load_metadata(path).get("optimizer_steps", "")
    if not text.isdigit():
        detail = f"optimizer_steps {text[:20]!r} is not a step count"
        raise BrokenFile(f"{path} is malformed ({detail}); {remedy(path)}", reason=detail)
    return int(text)


def load_optimizer(path: Path, shapes: RunShapes, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    tensors = load_tensors(path, device)
    check_optimizer(path, tensors, shapes)
    return tensors


# --- lineage -----------------------------------------------------------------------------------------------
class Contradiction(UserError):
    """Two files of a run that cannot both be right: one was made from another version of the other."""


def contradiction(problem: str, folders: list[Path]) -> Contradiction:
    names = " ".join(str(f) for f in folders)
    return Contradiction(f"the run directory contradicts itself: {problem}; remove {names} and run the same "
                         f"command again")


def recorded_mask_digest(metrics: Path) -> str | None:
    """The digest of the mask a network was trained under, as its metrics.json recorded it (None: not recorded,
    a run from before lineage)."""
    return read_metrics(metrics).get("mask_digest")  # every field checked: a bad file is named before training


def check_trained_under(metrics: Path, mask_path: Path, digest: str) -> None:
    """The network of `metrics` was trained under the mask `mask_path` holds now (its digest: `digest`)."""
    recorded = recorded_mask_digest(metrics)
    if recorded is not None and recorded != digest:
        raise contradiction(f"{metrics} was trained under another mask than {mask_path}", [metrics.parent])


# --- what a run recorded of its model ----------------------------------------------------------------------
def recorded_shapes(store: RunStore) -> RunShapes:
    """The parameter names and shapes run.json recorded when the run was made (model_signature); nothing known
    for a run made before run.json existed. Buffers and the prunable tensors are not recorded there."""
    model = recorded_model(store)
    if model is None:
        return RunShapes(None)
    parameters = model.get("parameters") if isinstance(model, dict) else None
    if not isinstance(parameters, dict) or not all(_is_shape(s) for s in parameters.values()):
        path = store.run_info_path
        raise BrokenFile(f"{path} is malformed (model.parameters is not a table of shapes); {remedy(path)}",
                         reason="model.parameters is not a table of shapes")
    return RunShapes({n: tuple(s) for n, s in parameters.items()})


def _is_shape(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)


# --- an experiment replica's metrics ------------------------------------------------------------------------
def read_replica_metrics(path: Path, keys: Iterable[str], extra_types: Mapping[str, type | tuple[type, ...]]
                         ) -> dict[str, Any]:
    """metrics.json of a network an experiment trained (lottery.training.passes.train_replicas writes the
    network's metrics, METRIC_TYPES, beside the experiment's own fields, `extra_types`): an object holding
    `keys`, each field of its type, or one line naming it and its fix."""
    try:
        return load_json(path, tuple(keys), {**METRIC_TYPES, **extra_types})
    except BrokenFile as exc:
        raise BrokenFile(f"{path} is broken ({exc.reason}); remove the folder {path.parent} and run the same "
                         f"command again to retrain it", reason=exc.reason) from None
