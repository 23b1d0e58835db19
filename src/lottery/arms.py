"""Arms: the ways of producing the network trained at a level. `imp` is the ticket itself; the others
are the paper's controls, each built from the ticket's own mask so that only one thing changes.

- reinit:         the ticket's mask, weights drawn again from the initialization (a fresh seed)
- same-sign:      reinit, but every weight keeps the sign of the ticket's start weights (Zhou et al. 2019)
- random:         a random mask with the ticket's per-layer counts, trained from the ticket's start weights
- init-magnitude: the mask |θ0| picks at the ticket's per-layer counts (pruning before training)
- one-shot:       the mask the criterion picks from the dense network's trained weights, straight to
                  the ticket's per-layer counts (one-shot pruning beside iterative, same sparsity)
Controls never feed the trunk: the next level's mask always comes from the `imp` arm. In an N:M run
(`prune.pattern`) the other-mask arms keep the pattern too, so that the ticket is compared with masks
it could have been, not with unstructured ones.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

from .masks import Mask
from .order import derive_seed
from .prune import allowed_by_pattern, keep_top

ARMS = ("imp", "reinit", "same-sign", "random", "init-magnitude", "one-shot")
REDRAWN = ("reinit", "same-sign")  # arms whose start weights are a fresh draw
OWN_MASK = ("random", "init-magnitude", "one-shot")  # arms whose mask differs from the ticket's


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


def same_sign(fresh: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Magnitudes of a fresh draw, signs of `reference` (zeros stay zero)."""
    return {n: fresh[n].abs() * torch.sign(reference[n]) for n in fresh}
