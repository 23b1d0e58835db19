"""Shifted copies of a dataset, to ask how different data may be before a ticket stops transferring.

Every shift is fixed by a seed and applied once at load time to all splits alike:
- permute_fraction f: a fixed f share of the input positions trade places (every chosen one moves);
- rotate_degrees a: images rotated by a degrees in pixel space (zero padding, bilinear);
- classes: only the examples of these labels (the output layer keeps all classes).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from lottery.errors import UserError
from lottery.data.raw import RawSplits


def permutation(size: int, fraction: float, seed: int) -> torch.Tensor:
    """Index map that moves round(fraction · size) positions cyclically among themselves."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(size, generator=generator)[:round(fraction * size)]
    index = torch.arange(size)
    if len(chosen) > 1:
        index[chosen] = chosen.roll(1)
    return index


def rotate(x: torch.Tensor, degrees: float, pixels: tuple[float, float]) -> torch.Tensor:
    """Rotate [N, C, H, W] normalized images by `degrees` with black (pixel 0) outside the image."""
    mean, std = pixels
    theta = math.radians(degrees)
    affine = torch.tensor([[math.cos(theta), -math.sin(theta), 0.0], [math.sin(theta), math.cos(theta), 0.0]])
    grid = F.affine_grid(affine.expand(len(x), 2, 3), list(x.shape), align_corners=False)
    rotated = F.grid_sample(x * std + mean, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (rotated - mean) / std


def apply_shifts(raw: RawSplits, permute_fraction: float = 0.0, rotate_degrees: float = 0.0,
                 classes: list[int] | None = None, seed: int = 0) -> RawSplits:
    if raw.graph is not None:  # node indices of a graph: none of these shifts has a meaning there
        if classes or rotate_degrees or permute_fraction:
            raise UserError("data.classes, data.rotate_degrees and data.permute_fraction are for feature and image "
                            "datasets, not for a graph's nodes")
        return raw
    x_train, y_train, x_test, y_test = raw.x_train, raw.y_train, raw.x_test, raw.y_test
    if classes:
        if len(set(classes)) != len(classes) or len(classes) < 2 or not all(0 <= c < raw.num_classes for c in classes):
            raise UserError(f"data.classes must be 2 or more distinct labels in [0, {raw.num_classes}), got {classes}")
        wanted = torch.tensor(classes)
        keep_train, keep_test = torch.isin(y_train, wanted), torch.isin(y_test, wanted)
        x_train, y_train, x_test, y_test = x_train[keep_train], y_train[keep_train], x_test[keep_test], y_test[keep_test]
    if rotate_degrees:
        if raw.pixels is None or x_train.dim() != 4:
            raise UserError("data.rotate_degrees needs an image dataset (mnist, fashion-mnist)")
        x_train, x_test = rotate(x_train, rotate_degrees, raw.pixels), rotate(x_test, rotate_degrees, raw.pixels)
    if permute_fraction:
        index = permutation(x_train[0].numel(), permute_fraction, seed)
        x_train = x_train.flatten(1)[:, index].view_as(x_train)
        x_test = x_test.flatten(1)[:, index].view_as(x_test)
    size = raw.default_val_size if not classes else round(raw.default_val_size * len(x_train) / len(raw.x_train))
    return RawSplits(x_train.contiguous(), y_train, x_test.contiguous(), y_test, raw.num_classes, size, raw.pixels,
                     raw.channel_normalization)
