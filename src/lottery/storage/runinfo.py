"""A run directory's identity: its config, its hash and the model it was made with.

`config.toml` holds the config and `run.json` the hash it had when the run was made, with the model's
class and parameter names and shapes, and the environment its bits depend on (lottery.environment). Every
command checks them before it reads or writes anything else: an edited config.toml, or another model, is
refused with one line instead of being silently used.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lottery.config import RunConfig, flatten, from_toml, to_toml
from lottery.environment import differences, environment
from lottery.errors import BrokenFile, UserError
from lottery.storage.files import RunStore, atomic_write_text, load_json, read_text, remedy, save_json

FORMAT = 1
_NAME_HASH = re.compile(r"-([0-9a-f]{10})$")  # `lottery find` names run directories <preset>-<hash>


def model_signature(model: nn.Module) -> dict[str, Any]:
    """The model's class and its parameter names and shapes: what a run's tensors must fit."""
    cls = type(model)
    return {"class": f"{cls.__module__}.{cls.__qualname__}",
            "parameters": {n: list(p.shape) for n, p in model.named_parameters()}}


def read_config(store: RunStore) -> RunConfig:
    """config.toml, parsed and checked against the run's recorded hash."""
    path = store.config_path
    try:
        text = read_text(path)  # a regular file's UTF-8 text: a named pipe is named, never read
    except FileNotFoundError:
        raise BrokenFile(f"{path} is missing: {store.root} is not a `lottery find` run directory, or its config "
                         f"was removed; {remedy(path)}") from None
    try:
        config = from_toml(text)
    except UserError as exc:
        raise BrokenFile(f"{path} is not a valid run config ({exc}); {remedy(path)}") from None
    recorded = recorded_hash(store)
    if recorded is not None and recorded != config.run_hash():
        raise UserError(f"{path} was edited after the run was made (its hash is now {config.run_hash()}, the run's "
                        f"is {recorded}): the results in {store.root} belong to the original config; restore it, "
                        f"or run the new config in another directory")
    return config


_HASH = re.compile(r"[0-9a-f]{10}")


def read_run_info(store: RunStore) -> dict[str, Any]:
    """run.json, its fields checked against what claim() writes: a damaged field is blamed on run.json, never
    on the config it is compared with."""
    path = store.run_info_path
    info = load_json(path, ("run_hash",))

    def broken(field: str, wanted: str) -> BrokenFile:
        shown = json.dumps(info[field])[:40]
        return BrokenFile(f"{path} is malformed ({field} holds {shown} where {wanted} belongs); {remedy(path)}",
                          reason=f"{field} holds {shown}")

    if not (isinstance(info["run_hash"], str) and _HASH.fullmatch(info["run_hash"])):
        raise broken("run_hash", "the run's 10-digit hex hash")
    # A field may be absent (run.json from before it was kept), never null: claim() writes none as null.
    model = info.get("model")
    if "model" in info and not (isinstance(model, dict) and isinstance(model.get("class"), str)
                                and isinstance(model.get("parameters"), dict)):
        raise broken("model", "an object with class and parameters")
    for field in ("inputs", "environment"):
        if field in info and not isinstance(info[field], dict):
            raise broken(field, "an object")
    if "environments" in info and not isinstance(info["environments"], list):
        raise broken("environments", "a list")
    return info


def recorded_hash(store: RunStore) -> str | None:
    """The hash the run was made with: run.json's, else the directory name's suffix, else unknown."""
    if store.run_info_path.exists():
        return str(read_run_info(store)["run_hash"])
    match = _NAME_HASH.search(store.root.name)
    return match.group(1) if match else None


def recorded_model(store: RunStore) -> dict[str, Any] | None:
    if not store.run_info_path.exists():
        return None
    return read_run_info(store).get("model")


def check_model(store: RunStore, model: nn.Module) -> None:
    """Refuse a model that is not the one the run was made with (names, shapes and class)."""
    recorded = recorded_model(store)
    if recorded is None:
        return
    here = model_signature(model)
    if here == recorded:
        return
    if here["parameters"] != recorded["parameters"]:
        theirs, ours = recorded["parameters"], here["parameters"]
        differ = sorted(set(theirs) ^ set(ours)) or [n for n in theirs if theirs[n] != ours[n]]
        name = differ[0]
        detail = (f"{name} is {ours.get(name, 'absent')} here and {theirs.get(name, 'absent')} in the run")
    else:
        detail = f"the run was made with {recorded['class']}, this is {here['class']}"
    raise UserError(f"the model does not match the run in {store.root}: {detail}; use the run's own model, "
                    f"or another directory for this one")


def claim(store: RunStore, config: RunConfig, model: nn.Module, inputs: dict[str, Any] | None = None,
          device: str | torch.device | None = None) -> None:
    """Make `store` this config's run directory, or check that it already is (call holding the lock).
    Everything is checked before anything is written. `inputs` ({"input_shape", "num_classes"}) is recorded
    in run.json, so that what reads the run later (a ticket's inference benchmark, ONNX export) can build the
    model without the dataset. run.json also records the environment the run is made in (lottery.environment:
    versions, CPU, threads, `device`, default the model's); a run resumed in another one keeps it, adds the new
    one to "environments" and says on stderr that the bits may differ."""
    if store.config_path.exists():
        existing = read_config(store)
        if existing.run_hash() != config.run_hash():
            raise UserError(f"{store.root} holds a run with a different config ({config_difference(existing, config)}); "
                            f"choose another --out")
    check_model(store, model)
    here = environment(device if device is not None else next((p.device for p in model.parameters()), "cpu"))
    if not store.config_path.exists():
        atomic_write_text(store.config_path, to_toml(config))
    if not store.run_info_path.exists():
        save_json(store.run_info_path, {"format": FORMAT, "run_hash": config.run_hash(),
                                        "model": model_signature(model), **({"inputs": inputs} if inputs else {}),
                                        "environment": here})
        return
    info = read_run_info(store)
    changed = False
    if inputs and "inputs" not in info:  # a run made before it was kept
        info["inputs"], changed = inputs, True
    recorded = info.get("environment")
    differ = differences(recorded, here) if isinstance(recorded, dict) else None
    if differ is None or differ:
        later = info.get("environments") if isinstance(info.get("environments"), list) else []
        if here not in later:
            info["environments"], changed = [*later, here], True
    if differ:
        shown = "; ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
        print(f"lottery: note: {store.root} was made in another environment ({shown}): what this command adds may "
              f"differ from what the first one would have computed in its last bits", file=sys.stderr, flush=True)
    if changed:
        save_json(store.run_info_path, info)


def recorded_environment(store: RunStore) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(the environment the run was made in, or None when run.json predates it; the other environments it was
    resumed in, in order)."""
    if not store.run_info_path.exists():
        return None, []
    info = read_run_info(store)
    made = info.get("environment") if isinstance(info.get("environment"), dict) else None
    later = [e for e in info.get("environments", []) if isinstance(e, dict)] \
        if isinstance(info.get("environments"), list) else []
    return made, later


def recorded_inputs(store: RunStore) -> dict[str, Any] | None:
    """{"input_shape": [...], "num_classes": n} of the run's data, where run.json recorded it."""
    if not store.run_info_path.exists():
        return None
    return read_run_info(store).get("inputs")


def config_difference(theirs: RunConfig, ours: RunConfig) -> str:
    a, b = flatten(theirs.to_dict()), flatten(ours.to_dict())
    keys = [k for k in sorted(set(a) | set(b)) if k not in RunConfig.NOT_HASHED and a.get(k) != b.get(k)]
    shown = ", ".join(f"{k} = {b.get(k)!r} here, {a.get(k)!r} there" for k in keys[:3])
    return shown + (f" and {len(keys) - 3} more" if len(keys) > 3 else "") if keys else "another hash"


def open_run_config(run_dir: Path | str) -> tuple[RunStore, RunConfig]:
    """The store and checked config of an existing run directory."""
    store = RunStore(run_dir)
    if not store.root.is_dir():
        raise UserError(f"{store.root} does not exist")
    return store, read_config(store)
