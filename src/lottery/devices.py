"""Device names: cpu, cuda, cuda:N, checked before anything runs."""
from __future__ import annotations

import re

import torch

from lottery.errors import UserError

_DEVICE = re.compile(r"cpu|cuda(:\d+)?")


def check_device(name: str) -> str:
    """`name` if it is cpu, or a CUDA device that exists here; else one clear error."""
    if not _DEVICE.fullmatch(name):
        raise UserError(f"unknown device {name!r}; use cpu, cuda or cuda:N")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} asked for, but no CUDA device is available")
        index = int(name.split(":")[1]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: there are {torch.cuda.device_count()} CUDA devices (0..{torch.cuda.device_count() - 1})")
    return name
