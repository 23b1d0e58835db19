"""Loss and accuracy of a stack of replicas on one set of examples, in large batches, without autograd."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lottery.config import TrainConfig
from lottery.data import Dataset
from lottery.training.forwards import StackedForwards
from lottery.training.replicas import with_shadow
from lottery.training.steps import precision


class Evaluator:
    def __init__(self, forwards: StackedForwards, data: Dataset, cfg: TrainConfig, eval_batch: int,
                 device_type: str) -> None:
        self.forwards, self.data, self.cfg, self.eval_batch, self.device_type = forwards, data, cfg, eval_batch, device_type

    @torch.no_grad()
    def loss_and_accuracy(self, params: dict[str, torch.Tensor], x: torch.Tensor,
                          y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean loss and accuracy per replica of the stacked `params` on (x, y)."""
        count = next(iter(params.values())).shape[0]
        params = with_shadow(params, batched=not self.forwards.one_by_one)  # never a batch of one product
        size = next(iter(params.values())).shape[0]
        total_loss = torch.zeros(size, device=x.device)
        correct = torch.zeros(size, device=x.device)
        for start in range(0, len(x), self.eval_batch):
            xb, yb = self.data.features(x[start:start + self.eval_batch]), y[start:start + self.eval_batch]
            with precision(self.cfg, self.device_type):
                logits = self.forwards.shared(params, xb).float()
            target = yb.unsqueeze(0).expand(size, -1)
            # Row-wise losses, then one sum per replica over a fixed-size row: a reduction over the whole
            # [R, N] block may split rows across threads differently for another R.
            losses = F.cross_entropy(logits.flatten(0, 1), target.flatten(), reduction="none").view(size, -1)
            total_loss += torch.stack([row.sum() for row in losses])
            correct += (logits.argmax(-1) == target).sum(1)
        return total_loss[:count] / max(len(x), 1), correct[:count] / max(len(x), 1)
