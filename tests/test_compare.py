"""lottery compare: runs on the same axes, and the Jaccard overlap of their masks."""
import torch

import lottery
from lottery.reports.compare import compare_runs, jaccard, random_jaccard
from lottery.storage.files import load_csv

from conftest import run_cli, tiny_config


def test_jaccard_and_its_random_expectation():
    a = {"w": torch.tensor([True, True, False, False])}
    b = {"w": torch.tensor([True, False, True, False])}
    assert jaccard(a, a) == 1.0
    assert jaccard(a, b) == 1 / 3
    # Two random halves of 4 weights: E|A∩B| = 1, E|A∪B| = 3.
    assert random_jaccard(a, b) == 1 / 3
    big = {"w": torch.rand(100_000) < 0.2}
    other = {"w": torch.rand(100_000) < 0.2}
    assert abs(jaccard(big, other) - random_jaccard(big, other)) < 0.01


def test_compare_two_criteria_writes_tables_figures_and_overlaps(tmp_path, mnist1d):
    runs = []
    for criterion in ("magnitude", "movement"):
        config = tiny_config(levels=2, criterion=criterion)
        runs.append(lottery.find_tickets(config, tmp_path / criterion, data=mnist1d,
                                         options=lottery.RunOptions(progress=False)))
    out = compare_runs([*runs, runs[0]], tmp_path / "cmp", labels=["magnitude", "movement", "magnitude-again"])
    for name in ("accuracy.png", "early_stop.png", "compare.md", "compare.csv", "jaccard.csv"):
        assert (out / name).stat().st_size > 0
    table = load_csv(out / "compare.csv")
    assert {r["run"] for r in table} == {"magnitude", "movement", "magnitude-again"}
    overlap = {(r["run_a"], r["run_b"], int(r["level"])): r for r in load_csv(out / "jaccard.csv")}
    assert float(overlap[("magnitude", "movement", 0)]["jaccard_mean"]) == 1.0  # both dense
    assert float(overlap[("magnitude", "magnitude-again", 2)]["jaccard_mean"]) == 1.0  # a run with itself
    moved = overlap[("magnitude", "movement", 2)]
    # Same θ0, different criteria: overlapping far more than random masks, but not identical.
    assert float(moved["jaccard_random_masks"]) < float(moved["jaccard_mean"]) < 1.0
    assert int(moved["trials"]) == 2


def test_compare_bad_input_is_one_line_and_exit_2(tmp_path):
    result = run_cli("compare", str(tmp_path), str(tmp_path / "nope"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "not a finished" in result.stderr
    result = run_cli("compare", str(tmp_path))
    assert result.returncode == 2 and "not a finished" in result.stderr
