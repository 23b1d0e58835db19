"""`lottery report` on a run that is being written: what has finished so far, and the curves of what trains.

How report coexists with the run's writer (invariant 10: two writers never write the same file):
- report/ has a lock of its own (report/.lock, through hold_run): one report writer at a time, whoever runs
  it (`lottery report`, `find --report`, a Python caller). Nothing else writes into report/: `find` and the
  experiments never do, and a writer taking the run lock leaves report/'s temp files to report's own lock.
- The run itself is only read. When no writer holds it, report holds it shared while it reads (as `claims`
  does): a finished run, read from results.csv as always. When a writer holds it, report takes no run lock and
  reads only files that are written whole (atomically) and final once written: each finished network's
  metrics.json (a network is finished once that file exists; its curves.csv and weights were written before
  it), and the curves.csv so far of the networks still training (rewritten whole at each checkpoint), which
  are drawn apart from the results and never counted as one.
The rows of a running run come from the finished networks' metrics.json, in results.csv's order; the columns
results.csv adds when the run ends (the cost ledger's) are empty until then.
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lottery.errors import RunInUse, UserError
from lottery.storage.files import LOCK_NAME, RunStore, hold_run, links_refused_below, load_csv, read_text, remove_file
from lottery.storage.results import LATER_COLUMNS, LATER_FLOATS, collect_results

_INTS = {"trial", "level", "weights_remaining", "prunable_weights", "early_stop_iteration",
         *(set(LATER_COLUMNS) - LATER_FLOATS)}


@dataclass
class LiveRun:
    """A run another process is writing now, as far as it has got."""

    holder: str  # who holds it, as the run lock names it
    rows: list[dict[str, Any]]  # one per finished network, typed as read_results types results.csv's
    training: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # unfinished network -> curves so far


def _holder(store: RunStore) -> str:
    try:
        pid, _, command = read_text(store.root / LOCK_NAME).strip().partition(" ")
    except (OSError, UserError):
        return "another process"
    return f"{command} (PID {pid})" if pid.isdigit() else "another process"


def _typed(row: dict[str, Any]) -> dict[str, Any]:
    """A metrics.json row as read_results gives a results.csv row: empty later columns None, numbers typed."""
    out = {}
    for key, value in row.items():
        if key == "arm" or value is None or value == "":
            out[key] = None if value == "" else value
        else:
            out[key] = int(value) if key in _INTS else float(value)
    return out


def read_live(store: RunStore, arms: list[str]) -> LiveRun:
    """The finished networks' rows and the training networks' curves so far, from the level folders."""
    folders = [f for f in sorted(store.root.glob("trial_*/level_*/*")) if f.is_dir()]
    found: dict[str, set] = {"trial": set(), "level": set(), "arm": set()}
    training = {}
    for folder in folders:
        try:
            trial, level = int(folder.parent.parent.name[6:]), int(folder.parent.name[6:])
        except ValueError:
            continue
        if store.is_done(trial, level, folder.name):
            found["trial"].add(trial), found["level"].add(level), found["arm"].add(folder.name)
        elif (folder / "curves.csv").exists():
            with contextlib.suppress(OSError, ValueError):  # a folder removed meanwhile, or not a network's
                training[folder.relative_to(store.root).as_posix()] = load_csv(folder / "curves.csv", ("iteration",))
    order = [a for a in arms if a in found["arm"]] + sorted(found["arm"] - set(arms))
    rows = collect_results(store, sorted(found["trial"]), sorted(found["level"]), tuple(order))
    return LiveRun(_holder(store), [_typed(r) for r in rows], training)


@contextlib.contextmanager
def report_hold(store: RunStore, arms: list[str]) -> Iterator[LiveRun | None]:
    """Hold report/ (the one report writer), and the run for reading when no writer has it (yields None: a
    finished run); else yield what the writer has finished so far (LiveRun)."""
    # The run's root, not only report/'s, is where links stop: report/ itself may not be a link out of the run.
    with links_refused_below(store.root), hold_run(store.root / "report", command="lottery report"):
        reading = contextlib.ExitStack()
        try:
            reading.enter_context(hold_run(store.root, exclusive=False))
            live = None
        except RunInUse:
            live = read_live(store, arms)
        with reading:
            yield live
        if live is None:  # the run is finished: a figure of networks that were training then is stale
            remove_file(store.root / "report" / "training.png")


def training_figure(live: LiveRun, path: Path) -> None:
    """Validation accuracy so far of each network still training (one colour per level and arm)."""
    from lottery.reports.figures import save_figure, subplots

    fig, ax = subplots(figsize=(7.2, 4.6))
    colours: dict[str, str] = {}
    for network, curve in sorted(live.training.items()):
        group = "/".join(network.split("/")[1:]) or network  # level_LL/ARM: trials share a colour
        points = [(int(c["iteration"]), 100 * float(c.get("val_accuracy") or "nan")) for c in curve]
        points = [(i, a) for i, a in points if math.isfinite(a)]
        if not points:
            continue
        new = group not in colours
        colours.setdefault(group, f"C{len(colours) % 10}")
        ax.plot([i for i, _ in points], [a for _, a in points], color=colours[group], lw=1, marker="." if len(points) < 30 else None,
                label=group if new else None)
    ax.set_xlabel("training iteration")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title("Networks training now: validation accuracy so far (each trial a line)", fontsize=10)
    ax.grid(alpha=0.3)
    if colours:
        ax.legend(fontsize=7, ncol=2)
    save_figure(fig, path)


def live_section(live: LiveRun, out: Path) -> str:
    """report.md's note on a run in progress (and training.png, when networks are training)."""
    lines = [f"**In progress**: {live.holder} is writing this run. This report shows the {len(live.rows)} "
             f"network{'s' if len(live.rows) != 1 else ''} finished so far (from their metrics.json); results.csv "
             f"and the cost columns come when the run ends. Run `lottery report` again for newer numbers."]
    if live.training:
        training_figure(live, out / "training.png")
        reached = max((int(c[-1]["iteration"]) for c in live.training.values() if c), default=0)
        lines.append(f"\n{len(live.training)} network{'s are' if len(live.training) != 1 else ' is'} training "
                     f"(curves so far, written at each checkpoint; up to iteration {reached}):\n\n"
                     f"![training now](training.png)")
    return "\n".join(lines) + "\n"
