import pytest

import lottery
from lottery.config import apply_overrides, from_toml, to_toml
from lottery.validation import validate
from lottery.errors import UserError


def test_overrides_are_typed_and_round_trip_through_toml():
    config = lottery.get_preset("lenet300-mnist")
    apply_overrides(config, ["train.lr=3e-4", "train.milestones=100,200", "prune.ignore=layers.2.weight",
                             "train.nesterov=true"])
    assert config.train.lr == 3e-4 and config.train.milestones == [100, 200]
    assert config.prune.ignore == ["layers.2.weight"] and config.train.nesterov is True
    again = from_toml(to_toml(config))
    assert again == config and again.run_hash() == config.run_hash()


def test_hash_ignores_levels_and_trials_but_not_results_changing_fields():
    a = lottery.get_preset("lenet300-mnist")
    b = lottery.get_preset("lenet300-mnist")
    b.prune.levels, b.trials = 3, 5
    assert a.run_hash() == b.run_hash()
    b.train.lr = 1e-3
    assert a.run_hash() != b.run_hash()


@pytest.mark.parametrize("pair, fragment", [
    ("train.lrr=1", "unknown config key"),
    ("lr=1", "did you mean train.lr"),
    ("train.lr=fast", "must be float"),
    ("train.iterations=1.5", "must be int"),
    ("train.nesterov=maybe", "true or false"),
    ("novalue", "key=value"),
])
def test_bad_overrides_name_the_problem(pair, fragment):
    with pytest.raises(UserError, match=fragment):
        apply_overrides(lottery.get_preset("mnist1d-mlp"), [pair])


@pytest.mark.parametrize("pair, fragment", [
    ("prune.rate_hidden=1.0", "rate_hidden must be in"),
    ("prune.rate_hidden=0", "rate_hidden must be in"),
    ("prune.levels=-1", "levels must be 0 or more"),
    ("prune.scope=everywhere", "scope must be"),
    ("data.dataset=cifar", "unknown dataset"),
    ("prune.rewind_iteration=999999", "rewind iteration"),
    ("prune.one_shot=0", "one-shot percents"),
])
def test_validation_rejects_out_of_range_values(pair, fragment):
    config = lottery.get_preset("mnist1d-mlp")
    apply_overrides(config, [pair])
    with pytest.raises(UserError, match=fragment):
        validate(config)


def test_run_names_of_existing_presets_are_stable():
    # A run directory's name is its config hash: new config fields at their default must not change it,
    # or existing runs would stop resuming.
    assert lottery.get_preset("lenet300-mnist-paper").run_hash() == "46048bbe0f"
    config = lottery.get_preset("lenet300-mnist-paper")
    config.model.dropout = 0.5
    assert config.run_hash() != "46048bbe0f"


def test_fewer_iterations_on_a_preset_scale_its_schedule():
    from lottery.config import scale_schedule

    config = lottery.get_preset("resnet20-cifar10")
    scale_schedule(config, 6256)
    assert config.train.milestones == [3128, 4692] and config.prune.rewind_iteration == 50
    tiny = lottery.get_preset("resnet20-cifar10")
    scale_schedule(tiny, 20)
    assert tiny.train.milestones == [10, 15] and tiny.prune.rewind_iteration == 1
    lottery.validation.validate(tiny)
