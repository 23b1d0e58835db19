from __future__ import annotations

from dataclasses import dataclass

import torch

from lottery.data.graph import Graph


@dataclass
class RawSplits:
    """What a dataset module returns: normalized float32 inputs (or uint8 images with their per-channel
    normalization), int64 labels, before the val split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    default_val_size: int
    pixels: tuple[float, float] | None = None  # (mean, std): pixel = x * std + mean lies in [0, 1]
    # uint8 images normalized on the fly: per-channel (means, stds) of pixels in [0, 1]; None: x is float
    channel_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    # A fixed validation split (Planetoid's 500 nodes) instead of one held out of the training examples.
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    graph: Graph | None = None  # node classification: the examples are node indices of this graph
