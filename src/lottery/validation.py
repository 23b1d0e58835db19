"""Every input checked before anything is written: a config's field types (from the dataclasses' annotations),
its ranges (types cannot express them), its names against the registries of arms, criteria, datasets,
augmentations and models, its sizes against the machine; and the Python API's model and data. The CLI,
`find_tickets` and `lottery.IMP` all come here, so a bad input is one clear message wherever it enters.
It lives above config.py and the registries, so that config.py needs none of them (no config <-> models
circle: models/ reads ModelConfig)."""
from __future__ import annotations

import math
import os
import typing
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lottery.config import RETRAINS, RunConfig, check_run_name, field_types
from lottery.data import DATASETS, Dataset
from lottery.data.augment import AUGMENTATIONS
from lottery.errors import UserError
from lottery.models import GRAPH_MODELS, MODELS
from lottery.pruning.arms import ARMS
from lottery.pruning.criteria import CRITERIA
from lottery.pruning.prune import parse_pattern
from lottery.pruning.units import GRANULARITIES, UNIT_SCORES

MAX_LR = 10.0  # above this no optimizer here trains; a larger value is a typo (1e308, inf)
# Results are means over trials (the paper uses 5); every trial lists its networks in memory and trains
# them all, so beyond this a number is a typo, not an experiment.
MAX_TRIALS = 10_000
# Each level trains every arm of every trial again; the paper's deepest runs have 20-30 levels.
MAX_LEVELS = 1_000
# At a microsecond per iteration, 10^15 iterations are 30 years: a typo.
MAX_ITERATIONS = 10 ** 15
# Network-iterations (networks x iterations each) above which `find` says what the run will cost: ~7x a
# paper-sized LeNet run (55 networks x 5 trials x 50,000 iterations).
LONG_RUN = 10 ** 8


def _pattern_ok(text: str) -> bool:
    try:
        parse_pattern(text)
    except ValueError:
        return False
    return True


# --- field types ------------------------------------------------------------------------------------------
def _type_words(kind: Any) -> str:
    """A declared type in words: int -> 'an int', list[int] -> 'a list of ints'."""
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return f"a list of {_type_words(item).split(' ', 1)[1]}s"
    return {int: "an int", float: "a number", str: "a string", bool: "true or false (a bool)"}.get(
        kind, f"a {getattr(kind, '__name__', kind)}")


def _has_type(value: Any, kind: Any) -> bool:
    """Whether `value` is of the declared `kind`: bool is not a number, an int is a float, floats are finite."""
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if kind is bool:
        return isinstance(value, bool)
    if isinstance(value, bool):
        return False
    if kind is float:
        return isinstance(value, (int, float)) and math.isfinite(value)
    return isinstance(value, kind)


def check_field_types(config: RunConfig) -> None:
    """Every field of the config holds a value of its declared type (what the CLI's parser guarantees, checked
    here for configs built in Python: `config.trials = "2"` is named, not met as a TypeError deep in a run)."""
    if not isinstance(config, RunConfig):
        raise UserError(f"config must be a lottery.RunConfig, got {type(config).__name__}")
    for key, kind in field_types(config).items():
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        if not _has_type(value, kind):
            words = "a finite number" if kind is float and isinstance(value, float) else _type_words(kind)
            raise UserError(f"{key} must be {words}, got {value!r}")


def run_dir_inside(out: Path, name: str) -> Path:
    """OUT/NAME, refused unless it lies inside OUT once links and '..' are resolved (invariant 11: the preset in
    the name was checked already; this holds even for a link someone put at OUT/NAME)."""
    if name in ("", ".", "..") or Path(name).name != name:
        raise UserError(f"run directory name {name!r} is not one folder name")
    run_dir = Path(out) / name
    root = Path(os.path.realpath(out))
    if Path(os.path.realpath(run_dir)).parent != root:
        raise UserError(f"{run_dir} leads out of --out {out} (a link?): lottery writes run directories only inside "
                        f"--out; remove it or choose another --out")
    return run_dir


def check_count(name: str, value: int, most: int, why: str, least: int = 1) -> None:
    """A count (trials, alphas, draws ...) within [least, most]; `why` says where the upper bound comes from.
    Shared by the CLI and the experiments, so a number too large for the machine is refused up front."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{name} must be an int, got {value!r}")
    if value < least:
        raise UserError(f"{name} must be at least {least}, got {value}")
    if value > most:
        raise UserError(f"{name} must be at most {most:,} ({why}), got {value:,}")


def validate(config: RunConfig) -> None:
    """Check field types, the run's name, ranges that types cannot express and names against the registries;
    one clear message for the first problem. Ranges hold for every run, whoever trains it; names of datasets and
    models, and what depends on the built-in trainer's data, only where lottery trains (train.loop=builtin): a
    user's loop (lottery.IMP) brings its own data, model and training."""
    check_field_types(config)
    check_run_name(config.preset)
    checks = _procedure_checks(config) + _range_checks(config)
    if config.train.loop != "user":
        checks += _builtin_checks(config)
    for ok, message in checks:
        if not ok:
            raise UserError(message)


def check_builtin_loop(config: RunConfig) -> None:
    """`lottery find` and find_tickets train with the built-in trainer: train.loop=user names a run trained by
    the user's own loop, which only lottery.IMP sets (with train.described). Refused rather than validated as a
    user loop: the CLI has no loop of the user's to run, and training it here would record a built-in run as
    the user's."""
    if config.train.loop == "user":
        raise UserError("train.loop=user is set by lottery.IMP, for runs trained by your own loop; `lottery find` "
                        "and find_tickets train with the built-in trainer (leave train.loop at builtin)")


Checks = list[tuple[bool, str]]


def _procedure_checks(config: RunConfig) -> Checks:
    """What the IMP procedure reads, whoever trains the networks."""
    t, p = config.train, config.prune
    return [
        (t.loop in ("builtin", "user"), f"train.loop must be builtin or user, got {t.loop!r}"),
        (config.trials >= 1, f"trials must be at least 1, got {config.trials}"),
        (config.trials <= MAX_TRIALS, f"trials must be at most {MAX_TRIALS:,} (results are means over trials, the "
                                      f"paper's over 5; each trial trains every network again), got {config.trials:,}"),
        (p.levels >= 0, f"levels must be 0 or more, got {p.levels}"),
        (p.levels <= MAX_LEVELS, f"levels must be at most {MAX_LEVELS:,} (each level trains every arm of every "
                                 f"trial again; the paper's deepest runs have 30), got {p.levels:,}"),
        (all(a in ARMS for a in config.arms), f"unknown arm in {config.arms}; known: {', '.join(ARMS)}"),
        ("imp" in config.arms, f"arms must include imp (the ticket that the controls are built from), got {config.arms}"),
        (len(set(config.arms)) == len(config.arms), f"arms are listed twice in {config.arms}"),
        (not (p.one_shot and "one-shot" in config.arms), "the one-shot arm is for iterative runs; --one-shot runs are one-shot already"),
        (p.criterion in CRITERIA, f"unknown criterion {p.criterion!r}; known: {', '.join(CRITERIA)}"),
        (p.scope in ("layerwise", "global"), f"scope must be layerwise or global, got {p.scope!r}"),
        (0 < p.rate_hidden < 1 or (p.rate_hidden == 0 and p.rate_edge > 0),
         f"prune.rate_hidden must be in (0, 1) (0 only to prune a graph's edges alone), got {p.rate_hidden}"),
        (0 <= p.rate_output < 1, f"prune.rate_output must be in [0, 1), got {p.rate_output}"),
        (0 <= p.rate_edge < 1, f"prune.rate_edge must be in [0, 1), got {p.rate_edge}"),
        (p.rate_conv == -1 or 0 < p.rate_conv < 1,
         f"prune.rate_conv must be in (0, 1), or -1 for the hidden rate, got {p.rate_conv}"),
        (p.rewind_iteration >= 0, f"rewind iteration must be 0 or more, got {p.rewind_iteration}"),
        (all(0 < q < 100 for q in p.one_shot), f"one-shot percents must be in (0, 100), got {p.one_shot}"),
        (len(p.one_shot) <= MAX_LEVELS, f"one-shot percents: at most {MAX_LEVELS:,}, got {len(p.one_shot):,}"),
        (p.retrain in RETRAINS, f"prune.retrain must be one of {', '.join(RETRAINS)}, got {p.retrain!r}"),
        (not p.rewind_optimizer or (p.rewind_iteration > 0 and p.retrain == "rewind"),
         "prune.rewind_optimizer needs prune.retrain=rewind and a rewind iteration k > 0 (at k = 0 the optimizer "
         "is fresh anyway; lr-rewind and finetune keep the trained weights, not the state at k)"),
        (_pattern_ok(p.pattern), f"prune.pattern must be N:M with 0 < N < M (e.g. 2:4), or empty, got {p.pattern!r}"),
        (p.granularity in GRANULARITIES, f"prune.granularity must be one of {', '.join(GRANULARITIES)}, got {p.granularity!r}"),
        (p.unit_score in UNIT_SCORES, f"prune.unit_score must be one of {', '.join(UNIT_SCORES)}, got {p.unit_score!r}"),
        (p.granularity == "weight" or not p.pattern,
         "prune.pattern (N:M) chooses weights inside a row; with prune.granularity=channel whole rows go: use one"),
        (p.granularity == "weight" or not p.one_shot,
         "one-shot mode (--one-shot) prunes weights; with prune.granularity=channel use iterative levels (the "
         "one-shot arm is structured)"),
        (p.granularity == "weight" or not any(a.endswith("-global") or "-global-" in a for a in config.arms),
         "the -global pruning-at-initialization arms choose weights across layers; with prune.granularity=channel "
         "use their layer-wise forms (snip, grasp)"),
        (p.granularity == "weight" or not any(a.startswith("synflow") for a in config.arms),
         "the synflow arms prune weights by iterated rounds of their own; with prune.granularity=channel use snip, "
         "grasp or init-magnitude"),
        (t.loop == "user" or not t.described, "train.described is for runs trained by the user's own loop (train.loop=user)"),
    ]


def _range_checks(config: RunConfig) -> Checks:
    """Ranges meaningful for any run: a batch of 0 or a negative learning rate is wrong whoever reads it (a
    user's loop leaves them at their defaults, which pass)."""
    t, m = config.train, config.model
    return [
        (0 <= m.dropedge < 1, f"model.dropedge must be in [0, 1), got {m.dropedge}"),
        (0 <= m.dropout < 1, f"model.dropout must be in [0, 1), got {m.dropout}"),
        (m.depth == 0 or (m.depth >= 8 and (m.depth - 2) % 6 == 0),
         f"model.depth must be 6n + 2 (20, 32, 44, 56, 110, ...) or 0, got {m.depth}"),
        (all(h >= 1 for h in m.hidden), f"model.hidden sizes must be positive, got {m.hidden}"),
        (t.optimizer in ("adam", "sgd"), f"unknown optimizer {t.optimizer!r}; known: adam, sgd"),
        (0 < t.lr <= MAX_LR, f"train.lr must be in (0, {MAX_LR:g}], got {t.lr}"),
        (0 <= t.weight_decay < 1, f"train.weight_decay must be in [0, 1), got {t.weight_decay}"),
        (0 <= t.momentum < 1, f"train.momentum must be in [0, 1), got {t.momentum}"),
        (t.batch_size >= 1, f"train.batch_size must be at least 1, got {t.batch_size}"),
        (t.iterations >= 1, f"iterations must be at least 1, got {t.iterations}"),
        (t.iterations <= MAX_ITERATIONS, f"iterations must be at most {MAX_ITERATIONS:.0e} (at a microsecond each, "
                                         f"30 years), got {t.iterations:,}"),
        (t.eval_every >= 1, f"train.eval_every must be at least 1, got {t.eval_every}"),
        (t.warmup >= 0, f"train.warmup must be 0 or more, got {t.warmup}"),
        (all(m > 0 for m in t.milestones), f"train.milestones must be positive iterations, got {t.milestones}"),
        (0 < t.gamma <= 1, f"train.gamma must be in (0, 1] (the learning rate is multiplied by it), got {t.gamma}"),
        (t.precision in ("float32", "bf16"), f"train.precision must be float32 or bf16, got {t.precision!r}"),
        (t.batching in ("auto", "loop", "vmap"), f"train.batching must be auto, loop or vmap, got {t.batching!r}"),
        (t.train_accuracy_examples >= 0,
         f"train.train_accuracy_examples must be 0 (all) or more, got {t.train_accuracy_examples}"),
        (t.eval_examples >= -1,
         f"train.eval_examples must be -1 (as many as trained on), 0 (all) or more, got {t.eval_examples}"),
        (0 <= config.data.permute_fraction <= 1,
         f"data.permute_fraction must be in [0, 1], got {config.data.permute_fraction}"),
    ]


def _builtin_checks(config: RunConfig) -> Checks:
    """What only the built-in trainer reads: names against the registries, and the schedule and data it runs.
    (A user's loop may rewind past 50,000 iterations, the default it never reads.)"""
    t, p = config.train, config.prune
    return [
        (config.data.dataset in DATASETS, f"unknown dataset {config.data.dataset!r}; known: {', '.join(DATASETS)}"),
        (config.data.augment in AUGMENTATIONS,
         f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {config.data.augment!r}"),
        (config.model.name in MODELS or config.model.name in GRAPH_MODELS,
         f"unknown model {config.model.name!r}; known: {', '.join([*MODELS, *GRAPH_MODELS])}"),
        (config.model.name in GRAPH_MODELS or ("random-edges" not in config.arms and not p.rate_edge
                                               and not config.model.dropedge),
         f"the random-edges arm, prune.rate_edge and model.dropedge are for graph models ({', '.join(GRAPH_MODELS)}); "
         f"{config.model.name} has no edges"),
        (0 <= p.rewind_iteration < t.iterations,
         f"rewind iteration must be in [0, iterations={t.iterations}), got {p.rewind_iteration}"),
        ((p.finetune_lr > 0) == (p.retrain == "finetune"),
         f"prune.finetune_lr must be set (> 0) with prune.retrain=finetune and only then, got {p.finetune_lr}"),
        (config.data.val_size == -1 or config.data.val_size >= t.batch_size,
         f"data.val_size must be -1 (the dataset's default) or at least one batch (train.batch_size={t.batch_size}): "
         f"early stopping needs a validation set, got {config.data.val_size}"),
    ]


# --- the Python API's model and data ------------------------------------------------------------------------
def check_model_fn(model_fn: object) -> None:
    if model_fn is not None and not callable(model_fn):
        raise UserError(f"model_fn must be a function that builds a torch.nn.Module (e.g. lambda: MyNet()), got "
                        f"{type(model_fn).__name__}")


def check_module(model: object, source: str = "model_fn()") -> nn.Module:
    """What a model function returned: a torch.nn.Module, else one line saying what came out."""
    if not isinstance(model, nn.Module):
        shown = "None (does it end with `return model`?)" if model is None else f"a {type(model).__name__}"
        raise UserError(f"{source} returned {shown}; it must return a torch.nn.Module")
    return model


# Why each split must hold examples: what lottery reads from it.
_SPLIT_USE = {"train": "there is nothing to train on",
              "val": "early stopping needs a validation set (the iteration of minimum validation loss)",
              "test": "the test accuracy at the early-stop iteration is the result"}


def check_data(data: object) -> None:
    """A Dataset whose splits hold examples and labels of the same count, integer labels in 0..num_classes-1,
    inputs of one shape per example and finite values: checked once here, not met as an index error in a loss."""
    if not isinstance(data, Dataset):
        raise UserError(f"data must be a lottery.Dataset (see lottery.load_dataset), got {type(data).__name__}")
    classes = data.num_classes
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 2:
        raise UserError(f"data.num_classes must be an int, 2 or more, got {classes!r}")
    for split, why in _SPLIT_USE.items():
        _check_split(data, split, why)
    shapes = {split: tuple(getattr(data, f"x_{split}").shape[1:]) for split in _SPLIT_USE}
    if len(set(shapes.values())) > 1:
        raise UserError(f"data's examples differ in shape between splits ({', '.join(f'x_{k} {v}' for k, v in shapes.items())})")


def _check_split(data: Dataset, split: str, why: str) -> None:
    x, y = getattr(data, f"x_{split}"), getattr(data, f"y_{split}")
    if not (torch.is_tensor(x) and torch.is_tensor(y)):
        raise UserError(f"data.x_{split} and data.y_{split} must be tensors, got {type(x).__name__} and {type(y).__name__}")
    examples, labels = (len(t) if t.dim() else 0 for t in (x, y))
    if examples != labels:
        raise UserError(f"data.x_{split} holds {examples} examples and data.y_{split} {labels} labels; they must match")
    if len(y) == 0:
        raise UserError(f"data's {split} split is empty: {why}")
    if y.dim() != 1 or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise UserError(f"data.y_{split} must be a 1-D tensor of integer class labels, got {y.dtype} of shape {tuple(y.shape)}")
    low, high = int(y.min()), int(y.max())
    if low < 0 or high >= data.num_classes:
        raise UserError(f"data.y_{split} holds label {low if low < 0 else high}, outside 0..{data.num_classes - 1} "
                        f"(data.num_classes={data.num_classes})")
    if x.dtype.is_floating_point and not bool(torch.isfinite(x).all()):
        raise UserError(f"data.x_{split} holds NaN or infinite values")


def check_logits(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """The module's forward on a tiny batch (no grad, the caller's random state untouched) must give one floating
    tensor of logits [batch, classes]; else one line saying what came out."""
    was_training = model.training
    model.eval()
    devices = [x.device] if x.device.type == "cuda" else []
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            out = model(x)
    except Exception as exc:  # the user's module: report its own message, in one line
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"the model's forward fails on a batch of inputs of shape {tuple(x.shape)}: "
                        f"{type(exc).__name__}: {text[:200]}") from None
    finally:
        model.train(was_training)
    wanted = f"one floating-point tensor of logits [batch, {num_classes}]"
    if not torch.is_tensor(out):
        raise UserError(f"the model's forward returns a {type(out).__name__}; lottery needs {wanted} (wrap the model so "
                        f"that forward returns the logits)")
    if not out.dtype.is_floating_point:
        raise UserError(f"the model's forward returns {out.dtype} values; lottery needs {wanted} (cross-entropy "
                        f"needs scores, not class indices)")
    if tuple(out.shape) != (len(x), num_classes):
        raise UserError(f"the model's forward returns shape {tuple(out.shape)} for a batch of {len(x)}; lottery "
                        f"needs logits [batch, {num_classes}] for the {num_classes} classes of the data")


def validate_inputs(config: RunConfig, *, model_fn: object = None, data: object = None) -> None:
    """The API's inputs, once, before anything is written: the config (types, ranges, names), the model
    function (callable) and the data (see check_data). What needs the model built (its logits, its size against
    the machine, how many levels its tensors allow) follows in the caller, still before anything is written."""
    validate(config)
    check_model_fn(model_fn)
    if data is not None:
        check_data(data)


# --- sizes: what the model allows, what a run costs -----------------------------------------------------------
def kind_rates(config: RunConfig) -> dict[str, float]:
    """The pruning rate per kind of prunable tensor."""
    p = config.prune
    return {"conv": p.rate_hidden if p.rate_conv == -1 else p.rate_conv, "hidden": p.rate_hidden,
            "output": p.rate_output, "edge": p.rate_edge}


def meaningful_levels(config: RunConfig, sizes: dict[str, int], roles: dict[str, str]) -> tuple[int, str]:
    """(levels after which every pruned kind keeps fewer than one weight, the kind that lasts longest). Each level
    keeps (1 - rate) of a kind's weights, so n weights last ln(n) / -ln(1 - rate) levels."""
    totals: dict[str, int] = {}
    for name, kind in roles.items():
        totals[kind] = totals.get(kind, 0) + sizes.get(name, 0)
    rates = kind_rates(config)
    lasting = [(math.ceil(math.log(n) / -math.log1p(-rates[kind])), kind)
               for kind, n in totals.items() if n > 1 and 0 < rates.get(kind, 0) < 1]
    return max(lasting, default=(0, ""))


def check_levels_fit(config: RunConfig, sizes: dict[str, int], roles: dict[str, str]) -> None:
    """Refuse more IMP levels than the model has weights for: past them a level would keep under one weight."""
    if config.prune.one_shot or config.prune.levels == 0:
        return
    most, kind = meaningful_levels(config, sizes, roles)
    if most and config.prune.levels > most:
        weights = sum(sizes.get(n, 0) for n, k in roles.items() if k == kind)
        raise UserError(f"prune.levels={config.prune.levels:,} prunes past the last weight: the {weights:,} {kind} "
                        f"weights at rate {kind_rates(config)[kind]:g} per level keep fewer than one after {most} "
                        f"levels; use at most {most}")


def networks_and_iterations(config: RunConfig) -> tuple[int, int]:
    """(networks the run trains, network-iterations in all): the dense network of each trial, then every arm at
    every pruned level, which trains from the rewind point k."""
    t, p = config.train, config.prune
    pruned_levels = len(p.one_shot) if p.one_shot else p.levels
    pruned = config.trials * pruned_levels * len(config.arms)
    return config.trials + pruned, config.trials * t.iterations + pruned * (t.iterations - p.rewind_iteration)


def long_run_note(config: RunConfig, flops_per_iteration: int = 0) -> str | None:
    """One line on what a very long run will cost (LONG_RUN network-iterations or more), else None."""
    networks, total = networks_and_iterations(config)
    if total < LONG_RUN:
        return None
    flops = f" ≈ {total * flops_per_iteration:.2g} dense FLOPs" if flops_per_iteration else ""
    return (f"note: this run trains {networks:,} networks × up to {config.train.iterations:,} iterations = "
            f"{total:.3g} network-iterations{flops}; it resumes where it stops if interrupted")
