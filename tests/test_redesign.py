"""The built-in trainer's results did not change when the procedure was rebuilt around one seam (issue 28):
four small runs against fingerprints made before (tests/reference_runs.py, tests/fixtures/reference_runs.json)."""
import json
from pathlib import Path

import pytest

import lottery

from reference_runs import cases, fingerprint, run_case

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "reference_runs.json").read_text())
# Since issue 28, final_train_accuracy is measured on a fixed sample of 10,000 training examples by default
# (train.train_accuracy_examples): MNIST's 55,000 are sampled, MNIST-1D's 4,000 are all used as before.
TRAIN_ACCURACY_SAMPLED = {"lenet300-mnist"}


@pytest.mark.parametrize("name", sorted(cases()))
def test_invariant_7_builtin_results_are_bit_identical_to_before_the_redesign(name, tmp_path, shared_data):
    run = run_case(name, tmp_path, shared_data)
    examples = {r["train_accuracy_examples"] for r in lottery.read_results(run)}
    assert examples == ({10_000} if name in TRAIN_ACCURACY_SAMPLED else {3_667})  # all of MNIST-1D's training set
    got = fingerprint(run)
    expected = dict(REFERENCE[name])
    if name in TRAIN_ACCURACY_SAMPLED:
        del got["results.csv"], expected["results.csv"]
    assert sorted(got) == sorted(expected)  # the same files
    differ = [k for k in expected if got[k] != expected[k]]
    assert not differ, f"changed since the redesign: {differ[:5]}"


def test_a_short_run_measures_train_accuracy_on_a_sample_or_on_everything(tmp_path, mnist):
    config = cases()["lenet300-mnist"]["config"]
    config.trials, config.arms, config.prune.levels, config.train.iterations = 1, ["imp"], 0, 20
    config.train.train_accuracy_examples = 0
    run = lottery.find_tickets(config, tmp_path / "all", data=mnist, options=lottery.RunOptions(progress=False))
    assert lottery.read_results(run)[0]["train_accuracy_examples"] == len(mnist.x_train) == 55_000
