"""Typed hyperparameters: dataclasses that give CLI overrides, TOML, defaults and a run hash at once."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import tomllib
import typing
from dataclasses import dataclass, field
from typing import Any

from lottery.errors import UserError


@dataclass
class DataConfig:
    dataset: str = "mnist1d"
    val_size: int = -1  # examples held out of the training set; -1: the dataset's default (5,000 for MNIST)
    split_seed: int = 0  # also fixes the permutation of `permute_fraction`
    permute_fraction: float = 0.0  # share of input positions permuted (a fixed permutation); see data.shifts
    rotate_degrees: float = 0.0  # images rotated by this angle
    classes: list[int] = field(default_factory=list)  # only these labels; empty: all
    augment: str = "none"  # none | flip-crop (4-pixel padded random crop + horizontal flip; see data.augment)
    speakers_out: str = ""  # fsdd: test on this speaker, train and validate on the other five; "": the standard split


@dataclass
class ModelConfig:
    name: str = "mlp"
    hidden: list[int] = field(default_factory=lambda: [100, 100])  # used by `mlp`; fixed for named nets
    dropout: float = 0.0  # dropout rate on hidden activations during training (the paper's Section 4)
    depth: int = 0  # `resnet` only: 6n + 2 layers (0: 20)
    dropedge: float = 0.0  # `gcn` only: each kept edge dropped with this probability in training (DropEdge)


@dataclass
class TrainConfig:
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1.2e-3
    momentum: float = 0.9  # sgd only
    nesterov: bool = False  # sgd only
    weight_decay: float = 0.0
    batch_size: int = 60
    iterations: int = 50_000
    eval_every: int = 100
    warmup: int = 0  # iterations of linear learning-rate warmup
    milestones: list[int] = field(default_factory=list)  # iterations where lr *= gamma
    gamma: float = 0.1
    precision: str = "float32"  # float32 | bf16 (bf16 matmuls under autocast, float32 master weights)
    # auto: bit for bit per replica (conv/BN nets one by one, MLPs as batched matmuls); vmap: one vmapped
    # call over the pass, several times faster for conv nets on a GPU but a replica's last bits then
    # depend on what shares its pass; loop: one by one (see lottery.training.forwards).
    batching: str = "auto"
    test_curves: bool = False  # test set at every evaluation; else at the early-stop iteration and the end (same metrics)
    # final_train_accuracy on this many training examples (a fixed sample, the same for every network), so
    # that a short run's last evaluation does not dwarf its training; 0: all of them. results.csv says which.
    train_accuracy_examples: int = 10_000
    # Examples of each set (validation, test, the training sample) every evaluation uses: -1, as many as
    # the network trains on (iterations x batch_size), so a smoke run costs what its iterations cost; 0, whole
    # sets; N, at most N. Runs of >= |set| / batch iterations see whole sets either way (lottery.training.eval_sets).
    eval_examples: int = -1
    # builtin: lottery's stacked trainer with the fields above; user: the user's own loop trains every network
    # (lottery.IMP), and `described` is how the user describes that training (JSON, part of the run hash).
    loop: str = "builtin"
    described: str = ""


RETRAINS = ("rewind", "lr-rewind", "finetune")


@dataclass
class PruneConfig:
    levels: int = 18  # IMP levels after the dense level 0 (not part of the run hash: runs extend)
    criterion: str = "magnitude"
    scope: str = "layerwise"  # layerwise | global
    rate_hidden: float = 0.2  # fraction of the remaining weights pruned per level, hidden layers
    rate_output: float = 0.1  # the same for the output layer
    rate_conv: float = -1.0  # the same for convolutions; -1: the hidden (fully-connected) rate
    rate_edge: float = 0.0  # the same for a graph's edges (a GCN's edge weights); 0: the graph is never pruned
    ignore: list[str] = field(default_factory=list)  # prunable tensors never pruned
    rewind_iteration: int = 0  # 0: reset to θ0 (the paper); k > 0: rewind to θk
    # How a pruned ticket is retrained (lottery.procedure.tickets): rewind (weights to θk, schedule from k),
    # lr-rewind (keep θT, schedule from k; Renda et al. 2020) or finetune (keep θT, `finetune_lr` fixed).
    retrain: str = "rewind"
    finetune_lr: float = 0.0
    # Rewind the optimizer's state (momentum, Adam moments, step count) to iteration k with the weights
    # (retrain=rewind, k > 0). Default: fresh, as open_lth and Frankle et al. (2020) restart it.
    rewind_optimizer: bool = False
    one_shot: list[float] = field(default_factory=list)  # percents remaining; non-empty: one-shot mode
    # "N:M" (e.g. "2:4"): masks keep at most N of every M consecutive inputs of a row, the pattern a GPU's
    # sparse tensor cores run; magnitude (the criterion) chooses within it. "": unstructured.
    pattern: str = ""
    # What one pruning decision removes (lottery.pruning.units): "weight" (the paper), or "channel": a conv's
    # output channel / a linear layer's neuron, with every weight that writes or reads it, so that the ticket
    # is a smaller dense network. `unit_score` turns the criterion's per-weight scores into one per unit:
    # l1 (their sum: with magnitude, the filter's L1 norm), l2, or bn-gamma (|γ| of its BatchNorm).
    granularity: str = "weight"
    unit_score: str = "l1"


@dataclass
class RunConfig:
    preset: str = "custom"
    seed: int = 0
    trials: int = 1  # not part of the run hash: trial t's result does not depend on how many run
    arms: list[str] = field(default_factory=lambda: ["imp"])  # imp plus controls; see lottery.pruning.arms
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)

    # Fields that do not change any single result; excluded from the run hash so runs can grow.
    NOT_HASHED: typing.ClassVar[tuple[str, ...]] = ("preset", "trials", "arms", "prune.levels", "train.test_curves")
    # Fields added after runs existed: hashed only when set away from this value, so that existing run
    # directories keep their names (and resume) when the field appears.
    HASHED_UNLESS: typing.ClassVar[dict[str, Any]] = {"model.dropout": 0.0, "data.permute_fraction": 0.0,
                                                      "data.rotate_degrees": 0.0, "data.classes": [],
                                                      "data.augment": "none", "data.speakers_out": "", "prune.rate_conv": -1.0, "prune.rate_edge": 0.0,
                                                      "model.depth": 0, "model.dropedge": 0.0,
                                                      "train.batching": "auto", "prune.retrain": "rewind",
                                                      "prune.finetune_lr": 0.0, "prune.rewind_optimizer": False,
                                                      "prune.pattern": "", "train.loop": "builtin",
                                                      "prune.granularity": "weight", "prune.unit_score": "l1",
                                                      "train.train_accuracy_examples": 10_000,
                                                      "train.eval_examples": -1,
                                                      "train.described": ""}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def run_hash(self) -> str:
        flat = flatten(self.to_dict())
        for key in self.NOT_HASHED:
            flat.pop(key, None)
        for key, value in self.HASHED_UNLESS.items():
            if flat.get(key) == value:
                flat.pop(key)
        blob = json.dumps(flat, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:10]

    def run_name(self) -> str:
        """The run directory's name, <preset>-<hash>: one path component (an unsafe preset is refused here too,
        so that no caller builds a path that leaves its parent folder; invariant 11)."""
        check_run_name(self.preset)
        return f"{self.preset}-{self.run_hash()}"

    def conv_rate(self) -> float | None:
        """prune.rate_conv, or None when convolutions take the hidden (fully-connected) rate."""
        return None if self.prune.rate_conv == -1 else self.prune.rate_conv

    def levels(self) -> list[int]:
        """The levels this config trains: 0 (dense) and then the IMP or one-shot levels."""
        n = len(self.prune.one_shot) if self.prune.one_shot else self.prune.levels
        return list(range(n + 1))


# The preset names the run directory inside --out: letters, digits, '.', '_' and '-', not starting with '.' (no
# '..', no hidden folder), bounded so that the name plus its hash stays well within a file system's 255 bytes.
RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
MAX_RUN_NAME = 100


def check_run_name(name: object) -> None:
    """Refuse a preset name that is not one plain path component."""
    if not (isinstance(name, str) and RUN_NAME.fullmatch(name) and len(name) <= MAX_RUN_NAME):
        shown = repr(name[:MAX_RUN_NAME + 20]) if isinstance(name, str) else repr(name)
        raise UserError(f"preset name {shown} cannot name a run directory: use letters, digits, '.', '_' and '-' "
                        f"only, not starting with '.', at most {MAX_RUN_NAME} characters")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def field_types(config: RunConfig) -> dict[str, Any]:
    """Dotted key -> declared type, for every settable field."""
    out: dict[str, Any] = {}

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{f.name}.")
            else:
                out[f"{prefix}{f.name}"] = hints[f.name]

    walk(config, "")
    return out


def _coerce(key: str, kind: Any, raw: Any) -> Any:
    """Turn a CLI string (or a TOML value) into the field's declared type, or say what is wrong."""
    origin = typing.get_origin(kind)
    if origin is list:
        (item,) = typing.get_args(kind)
        if isinstance(raw, str):
            parts = [p for p in (s.strip() for s in raw.strip("[]").split(",")) if p]
        elif isinstance(raw, (list, tuple)):
            parts = list(raw)
        else:
            raise UserError(f"{key} must be a list of {item.__name__}, got {raw!r}")
        return [_coerce(key, item, p) for p in parts]
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in ("true", "1", "yes", "on"):
            return True
        if text in ("false", "0", "no", "off"):
            return False
        raise UserError(f"{key} must be true or false, got {raw!r}")
    if kind in (int, float):
        if isinstance(raw, bool):
            raise UserError(f"{key} must be {kind.__name__}, got {raw!r}")
        try:
            value = kind(raw) if kind is float or isinstance(raw, int) else int(str(raw).replace("_", ""))
        except (TypeError, ValueError):
            raise UserError(f"{key} must be {kind.__name__}, got {raw!r}") from None
        if kind is float and not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {raw!r}")
        return value
    if kind is str:
        return str(raw)
    raise UserError(f"{key} has an unsupported type {kind}")  # pragma: no cover


def set_value(config: RunConfig, key: str, raw: Any) -> None:
    """Set a dotted key (e.g. `train.lr`) from a string or TOML value, with type checking."""
    types_ = field_types(config)
    if key not in types_:
        close = [k for k in types_ if k.endswith("." + key) or k.split(".")[-1] == key]
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise UserError(f"unknown config key {key!r}{hint}")
    value = _coerce(key, types_[key], raw)
    *path, last = key.split(".")
    obj: Any = config
    for part in path:
        obj = getattr(obj, part)
    setattr(obj, last, value)


def apply_overrides(config: RunConfig, pairs: list[str]) -> None:
    for pair in pairs:
        if "=" not in pair:
            raise UserError(f"--set expects key=value, got {pair!r}")
        key, raw = pair.split("=", 1)
        set_value(config, key.strip(), raw.strip())


def scale_schedule(config: RunConfig, iterations: int) -> None:
    """--iterations N on a preset keeps the shape of its schedule: warmup, learning-rate milestones and the
    rewind iteration move in proportion (a rewind point stays at iteration 1 or later), so a short run of
    `resnet20-cifar10` warms up, decays and rewinds like the full one, only sooner."""
    t, p, full = config.train, config.prune, config.train.iterations
    if iterations < 1 or iterations == full:
        return
    def scaled(i: int) -> int:
        return round(i * iterations / full)
    t.warmup = scaled(t.warmup)
    t.milestones = [m for m in (scaled(m) for m in t.milestones) if 0 < m < iterations]
    if p.rewind_iteration:
        p.rewind_iteration = min(max(1, scaled(p.rewind_iteration)), iterations - 1) if iterations > 1 else 0


def to_toml(config: RunConfig) -> str:
    def fmt(value: Any) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, str):
            return json.dumps(value)
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, list):
            return "[" + ", ".join(fmt(v) for v in value) + "]"
        return str(value)

    top, sections = [], []
    for key, value in config.to_dict().items():
        if isinstance(value, dict):
            body = "\n".join(f"{k} = {fmt(v)}" for k, v in value.items())
            sections.append(f"[{key}]\n{body}\n")
        else:
            top.append(f"{key} = {fmt(value)}")
    return "\n".join(top) + "\n\n" + "\n".join(sections)


def from_toml(text: str) -> RunConfig:
    try:
        tree = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"config is not valid TOML: {exc}") from None
    config = RunConfig()
    for key, value in flatten(tree).items():
        set_value(config, key, value)
    return config


def copy(config: RunConfig) -> RunConfig:
    return from_toml(to_toml(config))


