"""Shared figure helpers: files only (Agg), a log percent-remaining axis from 100% down, atomic PNGs."""
from __future__ import annotations

import io
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from lottery.storage.files import atomic_write_bytes  # noqa: E402


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, min, max)."""
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def percent_axis(ax: plt.Axes, percents: list[float]) -> None:
    """Log x axis from 100% down (as in the paper), ticked at the levels' own percents."""
    ax.set_xscale("log")
    ax.set_xlim(max(percents) * 1.15, min(percents) / 1.15)
    levels = sorted(set(round(p, 1) for p in percents), reverse=True)
    step = max(1, math.ceil(len(levels) / 9))
    ticks = levels[::step]
    ax.set_xticks(ticks)
    ax.set_xticklabels([f"{t:g}" for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("weights remaining (%, of prunable weights)")
    ax.grid(alpha=0.3)


def errorbar_series(ax: plt.Axes, points: list[tuple[float, list[float]]], **style: object) -> list[float]:
    """Plot mean with min/max bars of (x, values) points sorted by x descending; returns the xs."""
    pts = sorted(((x, spread(v)) for x, v in points), reverse=True)
    xs = [x for x, _ in pts]
    mean = np.array([s[0] for _, s in pts])
    low, high = mean - np.array([s[1] for _, s in pts]), np.array([s[2] for _, s in pts]) - mean
    ax.errorbar(xs, mean, yerr=[low, high], capsize=3, **style)
    return xs


def save_figure(fig: plt.Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
