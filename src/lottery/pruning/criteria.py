"""Pruning criteria: short pure functions from a weight tensor's history to a score per weight.

Pruning keeps the highest scores. Every criterion takes (θ0, θk, θT) positionally; a criterion that
needs more declares it when registered and then receives it by keyword:
- `path`: Σt |θt+1 − θt| accumulated over the level's training (tracked only when such a criterion
  is chosen);
- `generator`: a torch.Generator seeded from (run seed, trial, level, tensor name), for randomized
  criteria: one per tensor, so the scores never depend on the order in which tensors are visited.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lottery.order import derive_seed

Score = Callable[..., torch.Tensor]
EXTRA_INPUTS = ("path", "generator")


@dataclass(frozen=True)
class Criterion:
    score: Score
    needs: tuple[str, ...] = ()  # extra keyword inputs, a subset of EXTRA_INPUTS


def magnitude(init: torch.Tensor, rewind: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """|θT|: the paper's criterion."""
    return final.abs()


def movement(init: torch.Tensor, rewind: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """|θT − θ0|: keep the weights that moved most between start and end of training."""
    return (final - init).abs()


def magnitude_increase(init: torch.Tensor, rewind: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """|θT| − |θ0|: keep the weights whose magnitude grew most (Zhou et al. 2019)."""
    return final.abs() - init.abs()


def large_init(init: torch.Tensor, rewind: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """|θ0|: keep the weights that started large; training plays no part."""
    return init.abs()


def random_scores(init: torch.Tensor, rewind: torch.Tensor, final: torch.Tensor, *,
                  generator: torch.Generator) -> torch.Tensor:
    """Uniform noise: iterative random pruning, the baseline every criterion has to beat."""
    return torch.rand(final.shape, generator=generator).to(final.device)


def path_length(init: torch.Tensor, rewind: torch.Tensor, final: torch.Tensor, *, path: torch.Tensor) -> torch.Tensor:
    """Σt |θt+1 − θt|: the distance travelled step by step in training. Pruning removes the weights
    that changed least locally, even when they ended far from where they started or near it."""
    return path


CRITERIA: dict[str, Criterion] = {
    "magnitude": Criterion(magnitude),
    "movement": Criterion(movement),
    "magnitude-increase": Criterion(magnitude_increase),
    "large-init": Criterion(large_init),
    "random": Criterion(random_scores, ("generator",)),
    "path": Criterion(path_length, ("path",)),
}


def register_criterion(name: str, score: Score, needs: tuple[str, ...] | list[str] = ()) -> None:
    """Add a criterion usable by name (`prune.criterion`, `--criterion`).

    `score(θ0, θk, θT, **extra)` must be a pure function returning one score per weight; `needs`
    names the extra keyword inputs it takes ("path", "generator").
    """
    if name in CRITERIA:
        raise ValueError(f"criterion {name!r} is already registered")
    unknown = [n for n in needs if n not in EXTRA_INPUTS]
    if unknown:
        raise ValueError(f"unknown criterion inputs {unknown}; known: {', '.join(EXTRA_INPUTS)}")
    CRITERIA[name] = Criterion(score, tuple(needs))


def needs_path(name: str) -> bool:
    return "path" in CRITERIA[name].needs


def score_weights(name: str, init: dict[str, torch.Tensor], rewind: dict[str, torch.Tensor],
                  final: dict[str, torch.Tensor], names: list[str], path: dict[str, torch.Tensor] | None = None,
                  seed: int = 0) -> dict[str, torch.Tensor]:
    """Scores of the tensors `names` under the criterion `name`; extra inputs supplied as declared."""
    criterion = CRITERIA[name]
    out = {}
    for n in names:
        extra: dict[str, object] = {}
        if "path" in criterion.needs:
            if path is None:
                raise ValueError(f"criterion {name!r} needs the path of training, which was not tracked")
            extra["path"] = path[n]
        if "generator" in criterion.needs:
            extra["generator"] = torch.Generator().manual_seed(derive_seed(seed, n))
        out[n] = criterion.score(init[n], rewind[n], final[n], **extra)
    return out
