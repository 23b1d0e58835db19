"""Arms: the ways of producing the network trained at a level. `imp` is the ticket itself; the others
are the paper's controls, each built from the ticket's own mask so that only one thing changes.

- reinit:         the ticket's mask, weights drawn again from the initialization (a fresh seed)
- same-sign:      reinit, but every weight keeps the sign of the ticket's start weights (Zhou et al. 2019)
- random:         a random mask with the ticket's per-layer counts, trained from the ticket's start weights
- init-magnitude: the mask |θ0| picks at the ticket's per-layer counts (pruning before training)
- one-shot:       the mask the criterion picks from the dense network's trained weights, straight to
                  the ticket's per-layer counts (one-shot pruning beside iterative, same sparsity)
Each arm is a strategy in a registry (`ARMS`, `register_arm`), like the criteria: what mask it trains under
and what weights it starts from, given the ticket's. Controls never feed the trunk: the next level's mask
always comes from the `imp` arm. In an N:M run
(`prune.pattern`) the other-mask arms keep the pattern too, so that the ticket is compared with masks
it could have been, not with unstructured ones.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from lottery.pruning.masks import Mask
from lottery.order import derive_seed
from lottery.pruning.prune import allowed_by_pattern, keep_top

Weights = dict[str, torch.Tensor]
TICKET = "imp"  # the arm whose trained weights are pruned for the next level


def mask_with_counts(scores: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                     pattern: tuple[int, int] | None = None) -> Mask:
    """Per tensor, keep the highest scores, as many as `reference` keeps, chosen among all weights, or
    among those an N:M `pattern` allows (the n best of every m). A reference found under the same pattern
    never keeps more than the pattern allows, so its counts are always met."""
    out: Mask = {}
    for name, ref in reference.items():
        candidates = torch.ones_like(ref, dtype=torch.bool)
        if pattern is not None:
            candidates = allowed_by_pattern(scores[name], candidates, *pattern)
        out.update(keep_top(scores, {name: candidates}, [name], int(ref.sum())))
    return out


def random_mask(reference: Mapping[str, torch.Tensor], seed: int, pattern: tuple[int, int] | None = None) -> Mask:
    """Random masks with `reference`'s per-tensor counts (within an N:M `pattern`, if given). Each tensor
    draws from a generator of its own, seeded by (seed, tensor name), so the result does not depend on the
    order of `reference`'s keys."""
    scores = {n: torch.rand(m.shape, generator=torch.Generator().manual_seed(derive_seed(seed, n))).to(m.device)
              for n, m in reference.items()}
    return mask_with_counts(scores, reference, pattern)


def random_control_mask(reference: Mapping[str, torch.Tensor], run_seed: int, trial: int, level: int,
                        pattern: tuple[int, int] | None) -> Mask:
    """The `random` arm's mask at (trial, level): every reader that needs it (stability) draws this one."""
    return random_mask(reference, derive_seed(run_seed, "random-mask", trial, level), pattern)


def same_sign(fresh: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Magnitudes of a fresh draw, signs of `reference` (zeros stay zero)."""
    return {n: fresh[n].abs() * torch.sign(reference[n]) for n in fresh}


@dataclass(frozen=True)
class ArmInputs:
    """What an arm builds from at one (trial, level). The callables compute (and cache) on first use."""

    trial: int
    level: int
    run_seed: int
    reference: Mask  # the ticket's mask at this level
    pattern: tuple[int, int] | None  # the run's N:M pattern: controls with a mask of their own keep it
    init: Callable[[], Weights]  # θ0 of the trial
    start: Callable[[], Weights]  # the ticket's start at this level's rewind point (θk)
    fresh: Callable[[], Weights]  # a fresh draw of the model's initialization, this arm's own
    dense_scores: Callable[[], Weights]  # the criterion's scores on the dense network's training


MaskRule = Callable[[ArmInputs], Mask]
StartRule = Callable[[ArmInputs], Weights]


@dataclass(frozen=True)
class Arm:
    """How one arm differs from the ticket: its own mask (None: the ticket's) and its own start weights
    (None: the ticket's rewind point θk; else a fresh draw, which starts with a fresh optimizer too)."""

    name: str
    description: str
    mask: MaskRule | None = None
    start: StartRule | None = None

    @property
    def own_mask(self) -> bool:
        return self.mask is not None

    @property
    def redrawn(self) -> bool:
        return self.start is not None


ARMS: dict[str, Arm] = {}


def register_arm(arm: Arm) -> Arm:
    """Add an arm to the registry (`--arms NAME` and `RunConfig.arms` then accept it)."""
    if arm.name in ARMS:
        raise ValueError(f"arm {arm.name!r} is registered already")
    ARMS[arm.name] = arm
    return arm


register_arm(Arm(TICKET, "the ticket: the mask IMP found, trained from the rewind point"))
register_arm(Arm("reinit", "the ticket's mask, weights drawn again from the initialization",
                 start=lambda a: a.fresh()))
register_arm(Arm("same-sign", "reinit, every weight with the sign of the ticket's start weight (Zhou et al. 2019)",
                 start=lambda a: same_sign(a.fresh(), a.start())))
register_arm(Arm("random", "a random mask with the ticket's per-layer counts, trained from θk",
                 mask=lambda a: random_control_mask(a.reference, a.run_seed, a.trial, a.level, a.pattern)))
register_arm(Arm("init-magnitude", "the mask |θ0| picks at the ticket's per-layer counts (pruning before training)",
                 mask=lambda a: mask_with_counts({n: a.init()[n].abs() for n in a.reference}, a.reference, a.pattern)))
register_arm(Arm("one-shot", "the mask the criterion picks from the dense network's training, at the ticket's counts",
                 mask=lambda a: mask_with_counts(a.dense_scores(), a.reference, a.pattern)))
