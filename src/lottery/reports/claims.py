"""Check a run against the paper's quantitative claims (Frankle & Carbin 2019): LeNet-300-100 on MNIST
here, Conv-2/4/6 on CIFAR-10 in conv_claims.

Each claim is tested from results.csv alone and reported as reproduced yes / no / not-testable, with
this run's value and its spread (mean [min, max] over trials). The thresholds are fixed here, before
any run, from the paper's statements; they are never adjusted to make a run pass.
"""
from __future__ import annotations

from statistics import mean

from lottery.reports.claims_table import ClaimResult, ResultsTable, spread
from lottery.config import RunConfig
from lottery.models import GRAPH_MODELS
from lottery.reports.graph_claims import check_graph_claims, graph_protocol_caveats
from lottery.reports.conv_claims import PAPER_CONV, check_conv_claims, conv_protocol_caveats

PAPER_LADDER = {3: 51.3, 7: 21.1, 9: 13.5, 12: 7.0, 15: 3.6, 16: 2.9, 18: 1.9}


def check_claims(rows: list[dict], config: RunConfig) -> list[ClaimResult]:
    """The paper's claims for the run's setting: its Conv-2/4/6 claims for those nets on CIFAR-10, else its
    LeNet-300-100 claims (not testable outside lenet300-100 on MNIST)."""
    table = ResultsTable(rows)
    if config.model.name in GRAPH_MODELS:
        return check_graph_claims(rows, config)
    if config.model.name in PAPER_CONV and config.data.dataset == "cifar10":
        return check_conv_claims(table, config)
    paper_setting = config.model.name == "lenet300-100" and config.data.dataset == "mnist"
    why_not = "" if paper_setting else f" (the paper's numbers are for lenet300-100 on mnist, this run is {config.model.name} on {config.data.dataset})"
    out = [_ladder(table, config)]
    out.append(_sooner_than_dense(table, why_not))
    out.append(_more_accurate_than_dense(table, why_not))
    out.append(_reinit_vs_ticket_against_dense(table, why_not))
    out.append(_ticket_vs_reinit(table, why_not))
    return out


def _ladder(table: ResultsTable, config: RunConfig) -> ClaimResult:
    claim = "1. percent remaining per level (fc 20% / output 10% per round)"
    paper = ", ".join(f"L{lv}: {p}" for lv, p in PAPER_LADDER.items())
    p = config.prune
    if (config.model.name != "lenet300-100" or p.one_shot or p.scope != "layerwise" or p.ignore
            or (p.rate_hidden, p.rate_output) != (0.2, 0.1)):
        return ClaimResult(claim, paper, "-", "not testable (needs lenet300-100, layerwise 0.2 / 0.1)")
    present = {lv: table.percent(lv) for lv in PAPER_LADDER if table.percent(lv) is not None}
    if not present:
        return ClaimResult(claim, paper, "-", "not testable (no level of the ladder in this run)")
    measured = ", ".join(f"L{lv}: {pc:.1f}" for lv, pc in present.items())
    ok = all(round(pc, 1) == PAPER_LADDER[lv] for lv, pc in present.items())
    missing = [lv for lv in PAPER_LADDER if lv not in present]
    verdict = ("yes" if ok else "no") + (f" (levels {missing} not run)" if missing and ok else "")
    return ClaimResult(claim, paper, measured, verdict)


def _sooner_than_dense(table: ResultsTable, why_not: str) -> ClaimResult:
    claim = "2. at ~21% remaining, early stop comes >= 38% sooner than the dense net (ES iteration ratio <= 0.62)"
    paper = "ratio <= 0.62"
    level = table.level_near(21.1)
    if why_not or level is None or not table.values("imp", 0, "early_stop_iteration"):
        return ClaimResult(claim, paper, "-", "not testable" + (why_not or " (no dense level or no level near 21%)"))
    ratios = table.paired(("imp", level), ("imp", 0), "early_stop_iteration", lambda a, b: a / b)
    return ClaimResult(claim, paper, f"{spread(ratios)} at {table.percent(level):.1f}%",
                       "yes" if mean(ratios) <= 0.62 else "no")


def _more_accurate_than_dense(table: ResultsTable, why_not: str) -> ClaimResult:
    claim = "3. at 13.5% remaining, test accuracy at early stop exceeds the dense net's by > 0.3 points"
    paper = "> +0.3 points"
    level = table.level_near(13.5)
    if why_not or level is None or not table.values("imp", 0, "early_stop_test_accuracy"):
        return ClaimResult(claim, paper, "-", "not testable" + (why_not or " (no dense level or no level near 13.5%)"))
    gains = table.paired(("imp", level), ("imp", 0), "early_stop_test_accuracy", lambda a, b: 100 * (a - b))
    return ClaimResult(claim, paper, f"{spread(gains, '+.2f')} points at {table.percent(level):.1f}%",
                       "yes" if mean(gains) > 0.3 else "no")


def _reinit_vs_ticket_against_dense(table: ResultsTable, why_not: str) -> ClaimResult:
    claim = ("4. reinitialized tickets fall below the dense net from ~21% remaining; winning tickets stay "
             "at or above it down to ~2.9%")
    paper = "reinit < dense at <= 21.1%; imp >= dense at >= 2.9%"
    dense = table.values("imp", 0, "early_stop_test_accuracy")
    reinit_levels = [lv for (arm, lv) in table.by if arm == "reinit" and table.percent(lv) is not None
                     and table.percent(lv) <= 21.1 * 1.1]
    imp_levels = [lv for (arm, lv) in table.by if arm == "imp" and lv > 0 and table.percent(lv) >= 2.9 * 0.95]
    if why_not or not dense or not reinit_levels or not imp_levels:
        return ClaimResult(claim, paper, "-", "not testable" + (why_not or " (needs the dense level, the reinit arm "
                                                                          "at <= 21% and imp levels)"))
    base = mean(dense.values()) * 100
    reinit_margin = max(mean(table.values("reinit", lv, "early_stop_test_accuracy").values()) * 100 - base
                        for lv in reinit_levels)
    imp_margin = min(mean(table.values("imp", lv, "early_stop_test_accuracy").values()) * 100 - base
                     for lv in imp_levels)
    lowest = min(table.percent(lv) for lv in imp_levels)
    measured = (f"reinit minus dense, worst level <= 21%: {reinit_margin:+.2f} points; imp minus dense, "
                f"worst level down to {lowest:.1f}%: {imp_margin:+.2f} points (means over trials)")
    return ClaimResult(claim, paper, measured, "yes" if reinit_margin < 0 and imp_margin >= 0 else "no")


def _ticket_vs_reinit(table: ResultsTable, why_not: str) -> ClaimResult:
    claim = ("5. at ~21% remaining the ticket reaches early stop ~2.5x sooner than its reinitialization and is "
             "~0.5 points more accurate (tested as: ratio >= 2.0 and gain >= 0.25 points)")
    paper = "~2.5x sooner, ~+0.5 points"
    level = table.level_near(21.1)
    if why_not or level is None or not table.values("reinit", level, "early_stop_iteration"):
        return ClaimResult(claim, paper, "-", "not testable" + (why_not or " (needs the reinit arm near 21%)"))
    ratios = table.paired(("reinit", level), ("imp", level), "early_stop_iteration", lambda a, b: a / b)
    gains = table.paired(("imp", level), ("reinit", level), "early_stop_test_accuracy", lambda a, b: 100 * (a - b))
    measured = f"{spread(ratios)}x sooner, {spread(gains, '+.2f')} points at {table.percent(level):.1f}%"
    return ClaimResult(claim, paper, measured, "yes" if mean(ratios) >= 2.0 and mean(gains) >= 0.25 else "no")


def protocol_caveats(config: RunConfig, trials: int) -> list[str]:
    """Where this run departs from the paper's protocol, so a reader can weigh the verdicts."""
    if config.model.name in GRAPH_MODELS:
        return graph_protocol_caveats(config, trials)
    if config.model.name in PAPER_CONV and config.data.dataset == "cifar10":
        return conv_protocol_caveats(config, trials)
    t, notes = config.train, []
    if (t.optimizer, t.lr, t.batch_size, t.eval_every) != ("adam", 1.2e-3, 60, 100):
        notes.append(f"training differs from the paper's Adam 1.2e-3, batch 60, validation every 100: "
                     f"{t.optimizer} {t.lr:g}, batch {t.batch_size}, every {t.eval_every}")
    if t.iterations != 50_000:
        notes.append(f"{t.iterations:,} iterations per level instead of the paper's 50,000: early-stop "
                     f"iterations cannot exceed {t.iterations:,}")
    if trials < 5:
        notes.append(f"{trials} trial(s) instead of the paper's 5")
    return notes


def claims_markdown(results: list[ClaimResult], caveats: list[str] | None = None) -> str:
    lines = ["| claim | paper | this run (mean [min, max] over trials) | reproduced |", "|---|---|---|---|"]
    lines += [f"| {r.claim} | {r.paper} | {r.measured} | {r.verdict} |" for r in results]
    lines += [f"\nNote: {c}." for c in caveats or []]
    return "\n".join(lines)
