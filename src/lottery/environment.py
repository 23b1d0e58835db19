"""What a run's bits depend on beyond its config: library versions, the CPU, threads, the device.

Invariant 7 holds on one host: the same config gives the same bits for a given torch / numpy / Python, CPU
(and the kernels torch picks for it: its CPU capability), thread count and device. run.json records this
environment when a run is made, so that a reader can tell which results are comparable bit for bit.
"""
from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

# The fields that decide the bits, in the order describe() names them.
FIELDS = ("lottery", "torch", "numpy", "python", "cpu", "cpu_capability", "threads", "device", "cuda_device")


def lottery_version() -> str:
    try:
        from lottery._version import __version__
    except ImportError:  # a source tree without the version module: ask the installed metadata
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("lottery")
        except PackageNotFoundError:
            return "unknown"
    return str(__version__)


def cpu_model() -> str:
    """/proc/cpuinfo's "model name" (Linux), else platform.processor(), else "unknown"."""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return " ".join(value.split())
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def environment(device: Any = "cpu") -> dict[str, Any]:
    """The environment this process computes in, on `device` (a name or torch.device); JSON-able."""
    import numpy
    import torch

    device = str(device)
    env: dict[str, Any] = {"lottery": lottery_version(), "torch": torch.__version__, "numpy": numpy.__version__,
                           "python": platform.python_version(), "cpu": cpu_model(),
                           "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                           "threads": torch.get_num_threads(), "device": device}
    if device.startswith("cuda") and torch.cuda.is_available():
        env["cuda_device"] = torch.cuda.get_device_name(torch.device(device))
        env["cuda"] = torch.version.cuda
    return env


def differences(recorded: dict[str, Any], here: dict[str, Any]) -> list[str]:
    """The fields that differ, as `name recorded -> here` (empty: the same environment)."""
    keys = dict.fromkeys((*FIELDS, *sorted(set(recorded) | set(here))))
    return [f"{key} {recorded.get(key, 'none')} -> {here.get(key, 'none')}"
            for key in keys if recorded.get(key) != here.get(key)]


def describe(env: dict[str, Any] | None) -> str:
    """One line: "lottery 0.2.0, torch 2.13.0, numpy 2.4.6, Python 3.11.7 on AMD EPYC (AVX512), 2 threads, cpu"."""
    if not env:
        return "environment not recorded"
    get = lambda key: env.get(key, "?")  # noqa: E731
    device = str(get("device"))
    if env.get("cuda_device"):
        device += f" ({env['cuda_device']})"
    threads = env.get("threads")
    return (f"lottery {get('lottery')}, torch {get('torch')}, numpy {get('numpy')}, Python {get('python')} on "
            f"{get('cpu')} ({get('cpu_capability')}), {threads} thread{'s' if threads != 1 else ''}, {device}")
