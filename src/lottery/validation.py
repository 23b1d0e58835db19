"""A config checked against what exists: ranges types cannot express, and names against the registries of
arms, criteria, datasets, augmentations and models. It lives above config.py and the registries, so that
config.py needs none of them (no config <-> models circle: models/ reads ModelConfig)."""
from __future__ import annotations

from lottery.config import RETRAINS, RunConfig
from lottery.data import DATASETS
from lottery.data.augment import AUGMENTATIONS
from lottery.errors import UserError
from lottery.models import GRAPH_MODELS, MODELS
from lottery.pruning.arms import ARMS
from lottery.pruning.criteria import CRITERIA
from lottery.pruning.prune import parse_pattern

MAX_LR = 10.0  # above this no optimizer here trains; a larger value is a typo (1e308, inf)


def _pattern_ok(text: str) -> bool:
    try:
        parse_pattern(text)
    except ValueError:
        return False
    return True


def validate(config: RunConfig) -> None:
    """Check ranges that types cannot express, and names against the registries; one clear message for the
    first problem."""
    t, p = config.train, config.prune
    user_loop = t.loop == "user"
    procedure: list[tuple[bool, str]] = [
        (t.loop in ("builtin", "user"), f"train.loop must be builtin or user, got {t.loop!r}"),
        (config.trials >= 1, f"trials must be at least 1, got {config.trials}"),
        (p.levels >= 0, f"levels must be 0 or more, got {p.levels}"),
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
        (p.retrain in RETRAINS, f"prune.retrain must be one of {', '.join(RETRAINS)}, got {p.retrain!r}"),
        (not p.rewind_optimizer or (p.rewind_iteration > 0 and p.retrain == "rewind"),
         "prune.rewind_optimizer needs prune.retrain=rewind and a rewind iteration k > 0 (at k = 0 the optimizer "
         "is fresh anyway; lr-rewind and finetune keep the trained weights, not the state at k)"),
        (_pattern_ok(p.pattern), f"prune.pattern must be N:M with 0 < N < M (e.g. 2:4), or empty, got {p.pattern!r}"),
        (user_loop or not t.described, "train.described is for runs trained by the user's own loop (train.loop=user)"),
    ]
    # What only the built-in trainer reads: a user's loop brings its own data, model and training.
    training: list[tuple[bool, str]] = [
        (config.data.dataset in DATASETS, f"unknown dataset {config.data.dataset!r}; known: {', '.join(DATASETS)}"),
        (config.data.augment in AUGMENTATIONS,
         f"data.augment must be one of {', '.join(AUGMENTATIONS)}, got {config.data.augment!r}"),
        (config.model.name in MODELS or config.model.name in GRAPH_MODELS,
         f"unknown model {config.model.name!r}; known: {', '.join([*MODELS, *GRAPH_MODELS])}"),
        (0 <= config.model.dropedge < 1, f"model.dropedge must be in [0, 1), got {config.model.dropedge}"),
        (config.model.name in GRAPH_MODELS or ("random-edges" not in config.arms and not p.rate_edge
                                               and not config.model.dropedge),
         f"the random-edges arm, prune.rate_edge and model.dropedge are for graph models ({', '.join(GRAPH_MODELS)}); "
         f"{config.model.name} has no edges"),
        (0 <= config.model.dropout < 1, f"model.dropout must be in [0, 1), got {config.model.dropout}"),
        (config.model.depth == 0 or (config.model.depth >= 8 and (config.model.depth - 2) % 6 == 0),
         f"model.depth must be 6n + 2 (20, 32, 44, 56, 110, ...) or 0, got {config.model.depth}"),
        (all(h >= 1 for h in config.model.hidden), f"model.hidden sizes must be positive, got {config.model.hidden}"),
        (t.optimizer in ("adam", "sgd"), f"unknown optimizer {t.optimizer!r}; known: adam, sgd"),
        (0 < t.lr <= MAX_LR, f"train.lr must be in (0, {MAX_LR:g}], got {t.lr}"),
        (0 <= t.weight_decay < 1, f"train.weight_decay must be in [0, 1), got {t.weight_decay}"),
        (0 <= t.momentum < 1, f"train.momentum must be in [0, 1), got {t.momentum}"),
        (t.batch_size >= 1, f"train.batch_size must be at least 1, got {t.batch_size}"),
        (t.iterations >= 1, f"iterations must be at least 1, got {t.iterations}"),
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
        (0 <= p.rewind_iteration < t.iterations,
         f"rewind iteration must be in [0, iterations={t.iterations}), got {p.rewind_iteration}"),
        ((p.finetune_lr > 0) == (p.retrain == "finetune"),
         f"prune.finetune_lr must be set (> 0) with prune.retrain=finetune and only then, got {p.finetune_lr}"),
        (0 <= config.data.permute_fraction <= 1,
         f"data.permute_fraction must be in [0, 1], got {config.data.permute_fraction}"),
        (config.data.val_size == -1 or config.data.val_size >= t.batch_size,
         f"data.val_size must be -1 (the dataset's default) or at least one batch (train.batch_size={t.batch_size}): "
         f"early stopping needs a validation set, got {config.data.val_size}"),
    ]
    checks = procedure + ([] if user_loop else training)
    for ok, message in checks:
        if not ok:
            raise UserError(message)
