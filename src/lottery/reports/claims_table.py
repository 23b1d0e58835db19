"""What every claims check reads: a results table indexed by (arm, level), and one verdict per claim."""
from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import dataclass
from statistics import mean
from typing import Callable


@dataclass
class ClaimResult:
    claim: str
    paper: str
    measured: str
    verdict: str  # "yes" | "no" | "not testable ..."


def spread(values: list[float], fmt: str = ".2f") -> str:
    """mean [min, max] of the values (one value as itself)."""
    if not values:
        return "-"
    return f"{mean(values):{fmt}} [{min(values):{fmt}}, {max(values):{fmt}}]" if len(values) > 1 else f"{values[0]:{fmt}}"


class ResultsTable:
    """results.csv rows indexed by (arm, level) -> {trial: row}."""

    def __init__(self, rows: list[dict]) -> None:
        self.by: dict[tuple[str, int], dict[int, dict]] = defaultdict(dict)
        for row in rows:
            self.by[(row["arm"], int(row["level"]))][int(row["trial"])] = row

    def percent(self, level: int) -> float | None:
        rows = self.by.get(("imp", level))
        return float(next(iter(rows.values()))["percent_remaining"]) if rows else None

    def levels(self, arm: str) -> list[int]:
        return sorted(lv for (a, lv) in self.by if a == arm)

    def level_near(self, target: float, tolerance: float = 0.1) -> int | None:
        """The imp level whose weights remaining are nearest `target` %, if within `tolerance` of it (relative)."""
        levels = self.levels("imp")
        if not levels:
            return None
        best = min(levels, key=lambda lv: abs(math.log(self.percent(lv) / target)))
        return best if abs(self.percent(best) / target - 1) <= tolerance else None

    def values(self, arm: str, level: int, metric: str) -> dict[int, float]:
        return {t: float(r[metric]) for t, r in self.by.get((arm, level), {}).items()}

    def paired(self, a: tuple[str, int], b: tuple[str, int], metric: str,
               op: Callable[[float, float], float]) -> list[float]:
        """op(a's value, b's value) for each trial that has both."""
        va, vb = self.values(*a, metric), self.values(*b, metric)
        return [op(va[t], vb[t]) for t in sorted(set(va) & set(vb))]
