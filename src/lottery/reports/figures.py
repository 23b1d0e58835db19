"""Shared figure helpers: files only, a log percent-remaining axis from 100% down, atomic PNGs.

Figures are made with matplotlib's object API (matplotlib.figure.Figure, saved with its own savefig), never
through pyplot: no backend is chosen or switched and no figure joins pyplot's list, so a user's session (a
notebook, their own open figures) is left as it was.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure

from lottery.storage.files import atomic_write_bytes


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] | None = None,
             **kwargs: Any) -> tuple[Figure, Any]:
    """pyplot.subplots without pyplot: a Figure of its own (no backend, no global figure list) and its axes."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def get_cmap(name: str) -> Colormap:
    return matplotlib.colormaps[name]


def spread(values: list[float]) -> tuple[float, float, float]:
    """(mean, min, max)."""
    return float(np.mean(values)), float(np.min(values)), float(np.max(values))


def percent_axis(ax: Axes, percents: list[float]) -> None:
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


def errorbar_series(ax: Axes, points: list[tuple[float, list[float]]], **style: object) -> list[float]:
    """Plot mean with min/max bars of (x, values) points sorted by x descending; returns the xs."""
    pts = sorted(((x, spread(v)) for x, v in points), reverse=True)
    xs = [x for x, _ in pts]
    mean = np.array([s[0] for _, s in pts])
    low, high = mean - np.array([s[1] for _, s in pts]), np.array([s[2] for _, s in pts]) - mean
    ax.errorbar(xs, mean, yerr=[low, high], capsize=3, **style)
    return xs


def save_figure(fig: Figure, path: Path) -> None:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
