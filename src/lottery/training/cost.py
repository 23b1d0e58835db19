"""What a training iteration costs in FLOPs, for the cost ledger (lottery.storage.ledger).

Dense FLOPs are what the built-in trainer computes: masks multiply, they do not skip, so every network of a
run costs the same per iteration whatever its sparsity. They are counted with torch's FlopCounterMode on one
example's forward (matrix products and convolutions, 2 FLOPs per multiply-add; ops it has no formula for,
such as aten::lstm, count 0, so an LSTM's figure is its head's alone), times 3 for forward and backward,
times the batch. The ledger's main unit does not depend on this count: the cost in dense training runs is
iterations spent over the iterations of one dense training, exact for any model.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

BACKWARD_FACTOR = 3  # forward + backward ≈ 3 forwards (the backward's input and weight gradients)


def forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """FLOPs of the model's forward on one example (evaluation mode, no gradient)."""
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(example[:1])
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def train_flops_per_iteration(model: nn.Module, example: torch.Tensor, batch_size: int) -> int:
    """Dense FLOPs of one training iteration on a batch."""
    return BACKWARD_FACTOR * batch_size * forward_flops(model, example)
