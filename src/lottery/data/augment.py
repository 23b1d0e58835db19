"""Augmentation on the device, batched, as a pure function of (stream seed, iteration).

`flip-crop` (the ResNet/VGG protocol on CIFAR-10): pad each image by 4 pixels with zeros, take a random
32x32 crop, flip it horizontally with probability 1/2. The draws for the batch at iteration t come from
a generator seeded by (the trial's stream seed, t), like the data order, so rewinding replays the same
augmented batches and a resumed run sees what the uninterrupted one saw. The arms of a trial share them.
"""
from __future__ import annotations

import torch

from lottery.order import derive_seed

AUGMENTATIONS = ("none", "flip-crop")
PAD = 4


def flip_crop(images: torch.Tensor, seeds: list[int], iteration: int, pad: int = PAD) -> torch.Tensor:
    """images [S, B, C, H, W] (one batch per stream, any dtype) -> the same shape, each image randomly
    cropped from its zero-padded copy and flipped; stream s draws from (seeds[s], iteration)."""
    streams, batch, channels, height, width = images.shape
    draws = []
    for seed in seeds:
        generator = torch.Generator().manual_seed(derive_seed(seed, "flip-crop", iteration))
        shifts = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
        flips = torch.randint(0, 2, (batch, 1), generator=generator)
        draws.append(torch.cat([shifts, flips], 1))
    offsets = torch.stack(draws).to(images.device)  # [S, B, 3]: row offset, column offset, flip (1 = flip)
    flat = images.reshape(streams * batch, channels, height, width)
    padded = torch.nn.functional.pad(flat, (pad, pad, pad, pad))
    rows = offsets[..., 0].reshape(-1, 1) + torch.arange(height, device=images.device)  # [S*B, H]
    columns = torch.arange(width, device=images.device)
    flipped = offsets[..., 2].reshape(-1, 1).bool()
    columns = offsets[..., 1].reshape(-1, 1) + torch.where(flipped, width - 1 - columns, columns)  # [S*B, W]
    index = torch.arange(streams * batch, device=images.device).view(-1, 1, 1)
    out = padded.permute(0, 2, 3, 1)[index, rows.unsqueeze(2), columns.unsqueeze(1)]  # [S*B, H, W, C]
    return out.permute(0, 3, 1, 2).reshape(images.shape)
