"""Arms: the ways of producing the network trained at a level. `imp` is the ticket itself; the others
are the paper's controls, each built from the ticket's own mask so that only one thing changes.

- reinit:         the ticket's mask, weights drawn again from the initialization (a fresh seed)
- same-sign:      reinit, but every weight keeps the sign of the ticket's start weights (Zhou et al. 2019)
- random:         a random mask with the ticket's per-layer counts, trained from the ticket's start weights
- init-magnitude: the mask |θ0| picks at the ticket's per-layer counts (pruning before training)
- one-shot:       the mask the criterion picks from the dense network's trained weights, straight to
                  the ticket's per-layer counts (one-shot pruning beside iterative, same sparsity)
- scratch:        the ticket's mask, a fresh draw rescaled to the kept fan-in of each row: for a structured
                  ticket, the smaller dense network trained from scratch (Liu et al., ICLR 2019)
- random-edges:   graph tickets: the ticket's weights and mask over them, a random graph with the ticket's
                  number of edges (is the ticket's subgraph better than any subgraph of its size?)
Each arm is a strategy in a registry (`ARMS`, `register_arm`), like the criteria: what mask it trains under
and what weights it starts from, given the ticket's. Controls never feed the trunk: the next level's mask
always comes from the `imp` arm. In an N:M run
(`prune.pattern`) the other-mask arms keep the pattern too, so that the ticket is compared with masks
it could have been, not with unstructured ones.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from lottery.errors import UserError
from lottery.pruning.masks import Mask
from lottery.order import derive_seed
from lottery.pruning.prune import allowed_by_pattern, keep_top
from lottery.pruning.saliency import GRASP_TEMPERATURE, InitProbe, grasp, snip, synflow
from lottery.pruning.units import UnitGroup, random_units, scratch_start, units_with_counts

Weights = dict[str, torch.Tensor]
TICKET = "imp"  # the arm whose trained weights are pruned for the next level


def mask_with_counts(scores: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor],
                     pattern: tuple[int, int] | None = None, units: list[UnitGroup] | None = None) -> Mask:
    """Per tensor, keep the highest scores, as many as `reference` keeps, chosen among all weights, or
    among those an N:M `pattern` allows (the n best of every m). A reference found under the same pattern
    never keeps more than the pattern allows, so its counts are always met. With `units` (a structured
    run), per group of channels: the units of highest summed score, as many units as `reference` keeps."""
    if units is not None:
        return units_with_counts(units, scores, reference)
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
                        pattern: tuple[int, int] | None, units: list[UnitGroup] | None = None) -> Mask:
    """The `random` arm's mask at (trial, level): every reader that needs it (stability) draws this one.
    Structured (`units`): random units with the ticket's per-group unit counts."""
    seed = derive_seed(run_seed, "random-mask", trial, level)
    if units is not None:
        return random_units(units, reference, seed)
    return random_mask(reference, seed, pattern)


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
    probe: Callable[[], InitProbe] = lambda: _no_probe()  # the network at θ0, for pruning at initialization
    # The dense network's weights at each evaluation of its training, [(iteration, weights)] in order
    # (kept when the run has the early-bird arm).
    trajectory: Callable[[], list[tuple[int, Weights]]] = lambda: []
    roles: Mapping[str, str] = field(default_factory=dict)  # prunable tensor -> kind ("edge": a graph's edges)
    units: list[UnitGroup] | None = None  # a structured run's groups of channels (lottery.pruning.units)


def _no_probe() -> InitProbe:
    raise ValueError("pruning at initialization needs the network and training examples at θ0; this trainer "
                     "gave none")


MaskRule = Callable[[ArmInputs], "Mask | tuple[Mask, dict]"]  # a mask, or (mask, what to record with it)
StartRule = Callable[[ArmInputs], Weights]


@dataclass(frozen=True)
class Arm:
    """How one arm differs from the ticket: its own mask (None: the ticket's) and its own start weights
    (None: the ticket's rewind point θk; else a fresh draw, which starts with a fresh optimizer too)."""

    name: str
    description: str
    mask: MaskRule | None = None
    start: StartRule | None = None
    needs_probe: bool = False  # scores the network at θ0 on training examples (SNIP, GraSP, SynFlow)
    # How its mask is found, for the cost ledger (lottery.storage.ledger): "ticket" (the ticket's mask),
    # "ticket-counts" (the ticket's per-tensor counts), "dense" (from the dense network's training, at the
    # ticket's counts) or "init" (from θ0 alone); `scoring`: the method scoring θ0 (snip, grasp, synflow).
    found_by: str = "ticket-counts"
    scoring: str = ""

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


register_arm(Arm(TICKET, "the ticket: the mask IMP found, trained from the rewind point", found_by="ticket"))
register_arm(Arm("reinit", "the ticket's mask, weights drawn again from the initialization",
                 start=lambda a: a.fresh(), found_by="ticket"))
register_arm(Arm("same-sign", "reinit, every weight with the sign of the ticket's start weight (Zhou et al. 2019)",
                 start=lambda a: same_sign(a.fresh(), a.start()), found_by="ticket"))
register_arm(Arm("random", "a random mask with the ticket's per-layer counts, trained from θk",
                 mask=lambda a: random_control_mask(a.reference, a.run_seed, a.trial, a.level, a.pattern, a.units)))
def random_edges(a: ArmInputs) -> Mask:
    """The ticket's mask over the weights; over the graph's edges, a random one with the ticket's count."""
    edges = {n: a.reference[n] for n, kind in a.roles.items() if kind == "edge"}
    if not edges:
        raise UserError("the random-edges arm is a control for graph models (gcn): this model has no edges to prune")
    return {**a.reference, **random_mask(edges, derive_seed(a.run_seed, "random-edges", a.trial, a.level))}


register_arm(Arm("random-edges", "the ticket's weights, a random graph of the ticket's edge count (graph tickets)",
                 mask=random_edges))
register_arm(Arm("init-magnitude", "the mask |θ0| picks at the ticket's per-layer counts (pruning before training)",
                 mask=lambda a: mask_with_counts({n: a.init()[n].abs() for n in a.reference}, a.reference, a.pattern,
                                                 a.units)))
register_arm(Arm("one-shot", "the mask the criterion picks from the dense network's training, at the ticket's counts",
                 mask=lambda a: mask_with_counts(a.dense_scores(), a.reference, a.pattern, a.units), found_by="dense"))
register_arm(Arm("scratch", "the ticket's architecture from a fresh draw at its own fan-in: structured, the smaller dense "
                 "network trained from scratch (Liu et al., ICLR 2019)",
                 start=lambda a: scratch_start(a.fresh(), a.reference), found_by="ticket"))


# --- pruning at initialization (issue 29) -------------------------------------------------------------------
# Each method scores the network at θ0 (lottery.pruning.saliency) and keeps the ticket's number of weights:
# layer-wise (`snip`: the ticket's count in every tensor) or global (`snip-global`: the ticket's total, the
# method choosing each tensor's share, as the papers do). Frankle et al. 2021's sanity checks are arms too:
# `-shuffle` permutes each tensor's kept positions at random (same per-tensor counts; for a layer-wise mask
# that is the `random` arm), `-inverted` keeps the lowest scores instead of the highest. Every such arm
# trains from the ticket's start (θ0 when k = 0), in the same pass as the ticket.

def shuffled(mask: Mapping[str, torch.Tensor], seed: int) -> Mask:
    """Each tensor's kept positions permuted at random: the same count per tensor, other positions."""
    return random_mask(mask, seed)


def _init_scores(method: str, a: ArmInputs, inverted: bool) -> Weights:
    names = sorted(a.reference)
    if method == "init-magnitude":
        scores = {n: a.init()[n].abs() for n in names}
    else:  # a function of θ0 and the trial's sample alone: computed once per trial, whatever asks
        probe = a.probe()
        if method == "snip":
            scores = probe.remember("snip", lambda: snip(probe.loss, a.init(), names))
        else:
            scores = probe.remember("grasp", lambda: grasp(lambda p: probe.loss(p, GRASP_TEMPERATURE), a.init(), names))
    return {n: -s for n, s in scores.items()} if inverted else scores


def _init_mask(method: str, scope: str, inverted: bool) -> MaskRule:
    def rule(a: ArmInputs) -> Mask:
        names = sorted(a.reference)
        if method == "synflow":
            probe = a.probe()
            keep = ({n: int(a.reference[n].sum()) for n in names} if scope == "layerwise"
                    else sum(int(a.reference[n].sum()) for n in names))
            _, mask = synflow(probe.output, a.init(), names, keep, invert=inverted)
            return mask
        scores = _init_scores(method, a, inverted)
        if scope == "layerwise":
            return mask_with_counts(scores, a.reference, a.pattern, a.units)
        dense = {n: torch.ones_like(a.reference[n], dtype=torch.bool) for n in names}
        return keep_top(scores, dense, names, sum(int(a.reference[n].sum()) for n in names))
    return rule


def _found(method: str, scope: str) -> dict[str, str]:
    """Cost-ledger fields of an init arm: global ones need only θ0 (the ticket's total count is the rate's);
    layer-wise ones take the ticket's per-tensor counts."""
    return {"found_by": "init" if scope == "global" else "ticket-counts",
            "scoring": "" if method == "init-magnitude" else method}


INIT_METHODS = {"snip": "SNIP (Lee et al. 2019): |g ⊙ θ0|", "grasp": "GraSP (Wang et al. 2020): θ0 ⊙ Hg",
                "synflow": "SynFlow (Tanaka et al. 2020), 100 rounds, data-free", "init-magnitude": "|θ0|"}

for _method, _what in INIT_METHODS.items():
    for _scope in ("layerwise", "global"):
        _name = _method if _scope == "layerwise" else f"{_method}-global"
        if _name != "init-magnitude":  # registered above, with the same meaning
            register_arm(Arm(_name, f"{_what}, {_scope}, at the ticket's {'per-tensor counts' if _scope == 'layerwise' else 'total count'}",
                             mask=_init_mask(_method, _scope, False), needs_probe=_method != "init-magnitude",
                             **_found(_method, _scope)))
        register_arm(Arm(f"{_name}-inverted", f"{_what}, {_scope}, keeping the lowest scores (Frankle et al. 2021)",
                         mask=_init_mask(_method, _scope, True), needs_probe=_method != "init-magnitude",
                         **_found(_method, _scope)))
        if _scope == "global":  # a layer-wise mask shuffled is the `random` arm
            register_arm(Arm(f"{_name}-shuffle", f"{_what}, global, each tensor's kept positions shuffled "
                             "(Frankle et al. 2021)",
                             mask=lambda a, rule=_init_mask(_method, _scope, False), name=_name: shuffled(
                                 rule(a), derive_seed(a.run_seed, "shuffle", name, a.trial, a.level)),
                             needs_probe=_method != "init-magnitude", **_found(_method, _scope)))


# --- early-bird tickets (You et al., ICLR 2020) --------------------------------------------------------------
# Theirs: channel pruning, the mask drawn during the dense training as soon as it stops changing, then
# training continued. Ours: the unstructured ticket at each level's per-tensor counts, the mask drawn from the
# dense network's weights |θt| at the first evaluation where it has stopped changing, trained from the
# ticket's start (θ0, or θk) like every other arm.
EARLY_BIRD_WINDOW, EARLY_BIRD_EPSILON = 5, 0.1  # their defaults: the last 5 masks, distance <= 0.1


def mask_distance(a: Mask, b: Mask) -> float:
    """Normalized Hamming distance: the share of weights on which two masks differ."""
    differ = sum(int((a[n] != b[n]).sum()) for n in a)
    return differ / max(1, sum(a[n].numel() for n in a))


def early_bird(trajectory: list[tuple[int, Weights]], reference: Mask, pattern: tuple[int, int] | None = None,
               window: int = EARLY_BIRD_WINDOW, epsilon: float = EARLY_BIRD_EPSILON,
               units: list[UnitGroup] | None = None) -> tuple[Mask, dict]:
    """The mask |θt| gives at `reference`'s per-tensor counts, at the first evaluation t whose mask is within
    `epsilon` of each of the `window` masks before it. Not found: the last evaluation's (the one-shot mask).
    Returns (mask, {"iteration", "found", "distances": [[iteration, max distance to the window], ...]})."""
    masks: list[tuple[int, Mask]] = []
    trace = []
    for iteration, weights in trajectory:
        mask = mask_with_counts({n: weights[n].abs() for n in reference}, reference, pattern, units)
        if len(masks) >= window:
            distance = max(mask_distance(mask, old) for _, old in masks[-window:])
            trace.append([iteration, round(distance, 6)])
            if distance <= epsilon:
                return mask, {"iteration": iteration, "found": True, "distances": trace}
        masks.append((iteration, mask))
    if not masks:
        raise UserError("the early-bird arm needs the dense network's weights at each evaluation, which this run's "
                        "level 0 did not keep (it trained without the arm): start a new run with it, or drop it")
    return masks[-1][1], {"iteration": masks[-1][0], "found": False, "distances": trace}


register_arm(Arm("early-bird", "the mask |θt| of the dense training gives once it stops changing (You et al. 2020), "
                 "at the ticket's per-tensor counts", mask=lambda a: early_bird(a.trajectory(), a.reference, a.pattern, units=a.units),
                 found_by="early-bird"))
