"""Which examples a network is evaluated on: whole sets, or, for a run that trains on fewer examples than a
set holds, a fixed sample of that set as large as what the network trains on.

Why: a smoke run (`--iterations 1`) trained on 60 examples and then evaluated 35,000 (validation at its two
evaluation points, the test set, a training sample), so its evaluations cost a thousand times its training.
The rule `eval_examples = -1` (default) keeps every protocol this project runs whole (a network trained for
at least |set| / batch iterations, 167 for CIFAR-10's test set at batch 60, sees whole sets) and makes a
smoke run cost what its iterations cost. results.csv records how many examples each accuracy used.
"""
from __future__ import annotations

import torch

from lottery.config import TrainConfig
from lottery.order import derive_seed

AUTO = -1  # train.eval_examples: as many as the network trains on (iterations x batch), at most the set


def evaluated_count(cfg: TrainConfig, size: int) -> int:
    """How many of a set's `size` examples every evaluation of this training uses."""
    if cfg.eval_examples == 0:
        return size
    cap = cfg.iterations * cfg.batch_size if cfg.eval_examples == AUTO else cfg.eval_examples
    return max(1, min(size, cap))


def fixed_sample(size: int, count: int, name: str, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """`count` of `size` examples, in index order, the same for every network of every run on this data
    (a permutation seeded by the set's name and size alone); None when that is all of them."""
    if count >= size:
        return None
    order = torch.randperm(size, generator=torch.Generator().manual_seed(derive_seed(name, size)))
    return order[:count].sort().values.to(device)


def take(x: torch.Tensor, y: torch.Tensor, sample: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    return (x, y) if sample is None else (x[sample], y[sample])
