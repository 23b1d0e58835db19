"""Progress bars on stderr (a terminal or a notebook): one for levels, one for the iterations of the current training
pass."""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from tqdm import tqdm

if TYPE_CHECKING:
    from lottery.training.trainer import ReplicaResult


def in_notebook() -> bool:
    """Whether this process is an IPython kernel (Jupyter, JupyterLab, VS Code, Colab): its stderr is no terminal,
    but the notebook shows it and honours carriage returns. Told without importing IPython: a kernel has imported
    ipykernel (sys.modules holds None for an import that was blocked)."""
    return sys.modules.get("ipykernel") is not None


def bars_wanted(requested: bool) -> bool:
    """Whether to draw progress bars: when asked for and stderr is a terminal or a notebook's (in a log file or a
    pipe, bars are carriage-return noise). The one place that decides it."""
    if not requested:
        return False
    if in_notebook():
        return True
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except (AttributeError, ValueError):  # a replaced or closed stderr
        return False


class Progress:
    """Bars when `enabled` and stderr is a terminal or a notebook's (bars_wanted); with `log`, or when bars were
    asked for but stderr is neither, one timestamped line per finished training pass (bars or not). In a notebook
    both bars share one line (the pass's bar while it trains, the levels' between passes): a notebook does not
    move the cursor up, so a bar on a second line would print a new line at every refresh."""

    def __init__(self, enabled: bool, levels: int, log: bool = False) -> None:
        bars = bars_wanted(enabled)
        self.enabled, self.log = bars, log or (enabled and not bars)
        self._line = 0 if in_notebook() else 1  # the iterations bar's line
        self._levels = tqdm(total=levels, desc="levels", unit="level", position=0, file=sys.stderr,
                            dynamic_ncols=True) if self.enabled and levels else None
        self._iterations: tqdm | None = None
        self._pending = 0  # levels of the pass in progress, counted when it ends

    def levels_done(self, levels: list[int], skipped: bool) -> None:
        if self._levels is not None:
            self._levels.set_postfix_str(f"level {levels[0]}" + (f"-{levels[-1]}" if len(levels) > 1 else "")
                                         + (" (done before)" if skipped else ""))
            if skipped:
                self._levels.update(len(levels))
            else:
                self._pending = len(levels)

    def iterations(self, name: str, total: int, initial: int) -> Callable[[int], None] | None:
        if not self.enabled:
            return None
        if self._line == 0 and self._levels is not None:
            self._levels.clear()  # the pass's bar takes the levels' line
        self._iterations = tqdm(total=total, initial=initial, desc=name, unit="it", position=self._line, leave=False,
                                file=sys.stderr, dynamic_ncols=True, mininterval=0.5)
        return self._iterations.update

    def end_iterations(self) -> None:
        if self._iterations is not None:
            self._iterations.close()
            self._iterations = None
        if self._levels is not None:
            self._levels.update(self._pending)
            self._pending = 0
            if self._line == 0:
                self._levels.refresh()  # back on its line, whether or not update drew it

    def warn(self, text: str) -> None:
        """Always shown, progress bars or not."""
        if self.enabled:
            tqdm.write(f"lottery: warning: {text}", file=sys.stderr)
        else:
            print(f"lottery: warning: {text}", file=sys.stderr, flush=True)

    def pass_done(self, name: str, summary: str) -> None:
        if not self.log:
            return
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')} {name}: {summary}"
        if self.enabled:
            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def note(self, text: str) -> None:
        if self.enabled:
            tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._levels is not None:
            self._levels.close()


def pass_summary(arms: list[str], results: list[ReplicaResult], iterations: int, seconds: float) -> str:
    """One line for a log: how many networks, how long, and per arm (one label per result) the mean test
    accuracy and iteration at early stop (the pass may have resumed: its time is this process's part)."""
    by_arm: dict[str, list[ReplicaResult]] = {}
    for arm, result in zip(arms, results):
        by_arm.setdefault(arm, []).append(result)
    per_arm = ", ".join(f"{arm} {100 * sum(r.early_stop_test_accuracy for r in rs) / len(rs):.2f}% at "
                        f"{round(sum(r.early_stop_iteration for r in rs) / len(rs))}" for arm, rs in by_arm.items())
    minutes, secs = divmod(round(seconds), 60)
    networks = f"{len(results)} network{'s' if len(results) != 1 else ''}"
    return f"{networks} x {iterations} iterations in {minutes}m{secs:02d}s; test accuracy at early stop (mean): {per_arm}"
