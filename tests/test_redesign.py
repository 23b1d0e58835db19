"""The built-in trainer's results did not change when the procedure was rebuilt around one seam (issue 28):
four small runs against fingerprints made before (tests/reference_runs.py, tests/fixtures/reference_runs.json),
one set per kind of machine (the last bits depend on the CPU's kernels)."""
import math
import json
from pathlib import Path

import pytest

import lottery

from reference_runs import cases, fingerprint, machine_kind, result_values, run_case

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "reference_runs.json").read_text())
# Since issue 28, final_train_accuracy is measured on a fixed sample of 10,000 training examples by default
# (train.train_accuracy_examples): MNIST's 55,000 are sampled, MNIST-1D's 4,000 are all used as before.
TRAIN_ACCURACY_SAMPLED = {"lenet300-mnist"}


@pytest.mark.parametrize("name", sorted(cases()))
def test_invariant_7_builtin_results_are_bit_identical_to_before_the_redesign(name, tmp_path, shared_data):
    run = run_case(name, tmp_path, shared_data)
    examples = {r["train_accuracy_examples"] for r in lottery.read_results(run)}
    assert examples == ({10_000} if name in TRAIN_ACCURACY_SAMPLED else {3_667})  # all of MNIST-1D's training set
    machines = REFERENCE["machines"]
    if machine_kind() not in machines:
        _close_to_a_recorded_machine(name, run)
        return
    got = fingerprint(run)
    expected = dict(machines[machine_kind()][name])
    if name in TRAIN_ACCURACY_SAMPLED:
        del got["results.csv"], expected["results.csv"]
    assert sorted(got) == sorted(expected)  # the same files
    differ = [k for k in expected if got[k] != expected[k]]
    assert not differ, f"changed since the redesign: {differ[:5]}"


def _close_to_a_recorded_machine(name: str, run: Path) -> None:
    """A machine whose kernels no fingerprint was made on: its bits are its own, but its numbers are those of
    a recorded machine within what last-bit differences grow into over 100 iterations: the same networks, the
    same masks' sizes, test accuracy within 3 points and validation loss within 0.1 (MNIST-1D's small test set:
    one example is 0.1 points)."""
    got = result_values(run)
    for values in REFERENCE["values"].values():
        expected = values[name]
        assert [(r["arm"], r["trial"], r["level"], r["weights_remaining"]) for r in got] == \
               [(r["arm"], r["trial"], r["level"], r["weights_remaining"]) for r in expected]
        for a, b in zip(got, expected):
            assert abs(a["early_stop_test_accuracy"] - b["early_stop_test_accuracy"]) <= 0.03, (a, b)
            assert math.isclose(a["early_stop_val_loss"], b["early_stop_val_loss"], abs_tol=0.1), (a, b)


def test_the_fixture_names_this_kind_of_machine_or_a_fallback_exists():
    assert REFERENCE["values"], "no result values to compare an unrecorded machine against"
    assert set(REFERENCE["values"]) <= set(REFERENCE["machines"])


def test_a_short_run_measures_train_accuracy_on_a_sample_or_on_everything(tmp_path, mnist):
    config = cases()["lenet300-mnist"]["config"]
    config.trials, config.arms, config.prune.levels, config.train.iterations = 1, ["imp"], 0, 20
    config.train.train_accuracy_examples = 0
    run = lottery.find_tickets(config, tmp_path / "all", data=mnist, options=lottery.RunOptions(progress=False))
    assert lottery.read_results(run)[0]["train_accuracy_examples"] == len(mnist.x_train) == 55_000
