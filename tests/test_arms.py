"""Each control arm is built from the ticket's mask at the same level, and only one thing changes."""
import pytest
import torch

import lottery
from lottery.storage.files import load_tensors

from conftest import tiny_config

ALL = ["imp", "reinit", "same-sign", "random", "init-magnitude", "one-shot"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, mnist1d):
    config = tiny_config(levels=2)
    config.arms = ALL
    return lottery.find_tickets(config, tmp_path_factory.mktemp("arms") / "run", data=mnist1d,
                                options=lottery.RunOptions(progress=False))


def _mask(run, arm, level=2, trial=0):
    path = run / f"trial_{trial}" / f"level_{level:02d}" / (f"{arm}/mask.safetensors" if arm != "imp" else "mask.safetensors")
    return {k: v.bool() for k, v in load_tensors(path).items()}


def test_every_arm_of_every_pruned_level_is_in_results(run):
    rows = lottery.read_results(run)
    assert {(r["arm"], r["level"]) for r in rows} == {("imp", 0)} | {(a, lv) for a in ALL for lv in (1, 2)}
    by_level = {}
    for r in rows:
        by_level.setdefault(r["level"], set()).add(r["weights_remaining"])
    assert all(len(v) == 1 for v in by_level.values())  # same count for every arm of a level


def test_random_and_init_magnitude_keep_per_layer_counts_but_differ(run):
    ticket = _mask(run, "imp")
    for arm in ("random", "init-magnitude"):
        other = _mask(run, arm)
        for name in ticket:
            assert int(other[name].sum()) == int(ticket[name].sum())
        assert any(not torch.equal(other[n], ticket[n]) for n in ticket)
    init = load_tensors(run / "trial_0" / "init.safetensors")
    chosen = _mask(run, "init-magnitude")
    for name, m in chosen.items():
        assert init[name].abs()[m].min() >= init[name].abs()[~m].max()


def test_reinit_redraws_and_same_sign_keeps_the_signs_of_theta0(run):
    init = load_tensors(run / "trial_0" / "init.safetensors")
    level = run / "trial_0" / "level_02"
    reinit = load_tensors(level / "reinit" / "start.safetensors")
    same = load_tensors(level / "same-sign" / "start.safetensors")
    for name in _mask(run, "imp"):
        assert not torch.equal(reinit[name], init[name])
        assert torch.equal(torch.sign(same[name]), torch.sign(init[name]))
        assert not torch.equal(same[name].abs(), init[name].abs())
        assert float(reinit[name].std()) == pytest.approx(float(init[name].std()), rel=0.2)  # same distribution
    other_trial = load_tensors(run / "trial_1" / "level_02" / "reinit" / "start.safetensors")
    assert not torch.equal(other_trial["layers.0.weight"], reinit["layers.0.weight"])


def test_one_shot_arm_prunes_the_dense_network_straight_to_the_level(run):
    dense = load_tensors(run / "trial_0" / "level_00" / "imp" / "final.safetensors")
    one_shot = _mask(run, "one-shot")
    for name, m in one_shot.items():
        assert dense[name].abs()[m].min() >= dense[name].abs()[~m].max()
    level_one = {k: v.bool() for k, v in load_tensors(run / "trial_0" / "level_01" / "mask.safetensors").items()}
    assert all(torch.equal(_mask(run, "one-shot", level=1)[n], level_one[n]) for n in level_one)
