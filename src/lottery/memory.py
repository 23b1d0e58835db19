"""Keep the process's memory flat over long runs.

glibc raises its mmap threshold each time a large block is freed (up to 32 MiB), after which the large,
varying-size evaluation tensors come from the heap and fragment it: a 50,000-iteration LeNet pass grew
by ~100 MB per 500 iterations (measured; 11 GiB after one level). A fixed threshold turns that dynamic
rule off, so large blocks always go back to the system when freed.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import sys

import torch

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
# 4 MiB: RSS plateaus (577 -> 603 MB over 1,600 mixed steps and evaluations, then flat), and training-step
# tensors stay on the heap. 128 KiB was flat from the start but cost ~30% per step (mmap + page faults).
MMAP_THRESHOLD_BYTES = 4 << 20
# glibc's ceiling on 64-bit. Conv nets need it: a Conv-2 activation at batch 60 is 8-16 MB, and with a
# 4 MiB threshold every one of them was a fresh mmap, zeroed page by page (measured: 99 ms per step, 19 s
# of system time in 13 steps; 64 ms at 32 MiB, as with glibc's own rule).
MMAP_THRESHOLD_MAX = 32 << 20

_threshold = 0  # bytes set so far (0: not yet)


def fix_malloc_threshold(largest_tensor_bytes: int = 0) -> bool:
    """Fix glibc's mmap threshold: 4 MiB, or up to twice the largest tensor a training step makes (at
    most 32 MiB), so that a step's tensors come from the heap. Only ever raised within a process. A no-op
    (False) off glibc."""
    global _threshold
    wanted = max(MMAP_THRESHOLD_BYTES, min(MMAP_THRESHOLD_MAX, 2 * largest_tensor_bytes))
    if wanted <= _threshold:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if not libc.mallopt(M_MMAP_THRESHOLD, wanted):
            return False
    except (OSError, AttributeError):  # musl or another libc without mallopt
        return False
    _threshold = wanted
    return True


class Workspace:
    """Scratch tensors reused from call to call, so a hot loop allocates (and page-faults) nothing in
    steady state. `take(key, shape, like)` returns a tensor of that shape (with `like`'s dtype and device)
    backed by the key's buffer, which only ever grows: a smaller request is a prefix view of it. The
    contents are whatever was left there. Owned by one caller (one trainer's forward); never shared, so
    two live results never alias."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def take(self, key: str, shape: tuple[int, ...] | torch.Size, like: torch.Tensor) -> torch.Tensor:
        numel = math.prod(shape)
        buffer = self._buffers.get(key)
        if (buffer is None or buffer.numel() < numel or buffer.dtype != like.dtype
                or buffer.device != like.device):
            buffer = self._buffers[key] = torch.empty(numel, device=like.device, dtype=like.dtype)
        return buffer[:numel].view(shape)

    @property
    def bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())
