"""The built-in trainer's results did not change when the procedure was rebuilt around one seam (issue 28):
four small runs against fingerprints made before (tests/reference_runs.py, tests/fixtures/reference_runs.json)."""
import json
from pathlib import Path

import pytest

from reference_runs import cases, fingerprint, run_case

REFERENCE = json.loads((Path(__file__).parent / "fixtures" / "reference_runs.json").read_text())


@pytest.mark.parametrize("name", sorted(cases()))
def test_invariant_7_builtin_results_are_bit_identical_to_before_the_redesign(name, tmp_path, shared_data):
    got = fingerprint(run_case(name, tmp_path, shared_data))
    expected = REFERENCE[name]
    assert sorted(got) == sorted(expected)  # the same files
    differ = [k for k in expected if got[k] != expected[k]]
    assert not differ, f"changed since the redesign: {differ[:5]}"
