"""The paper's Conv-2/4/6: weight counts and pruning ladders with a rate per kind of layer."""
import pytest
import torch

import lottery
from lottery.pruning.masks import dense_mask, percent_remaining
from lottery.pruning.prune import prune_round


def _model(name):
    return lottery.build_model(lottery.ModelConfig(name=name), (3, 32, 32), 10)


@pytest.mark.parametrize("name, total, conv", [("conv2", 4_300_992, 38_592), ("conv4", 2_425_024, 259_776),
                                               ("conv6", 2_261_184, 1_144_512)])
def test_conv_weight_counts(name, total, conv):
    model = _model(name)
    roles = lottery.prunable_roles(model)
    params = dict(model.named_parameters())
    assert sum(params[n].numel() for n in roles) == total
    assert sum(params[n].numel() for n, kind in roles.items() if kind == "conv") == conv
    assert [kind for kind in roles.values()].count("output") == 1
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name, rate_conv, expected", [
    ("conv2", 0.1, {11: 8.8, 14: 4.6}),   # the paper's Conv-2 ladder
    ("conv4", 0.1, {12: 9.2}),            # the paper's Conv-4
    ("conv6", 0.15, {7: 26.6, 10: 15.3}), # ours; the paper prints 26.4 and 15.1 (its Conv-6 has 1.7M weights)
])
def test_conv_ladders_follow_the_rates_per_kind(name, rate_conv, expected):
    model = _model(name)
    roles = lottery.prunable_roles(model)
    params = dict(model.named_parameters())
    mask = dense_mask(params, list(roles))
    generator = torch.Generator().manual_seed(0)
    for level in range(1, max(expected) + 1):
        scores = {n: torch.rand(mask[n].shape, generator=generator) for n in roles}
        mask = prune_round(scores, mask, roles, 0.2, 0.1, rate_conv=rate_conv)
        if level in expected:
            assert round(percent_remaining(mask), 1) == expected[level], level


def test_unknown_kinds_are_refused(mnist1d, tmp_path):
    config = lottery.get_preset("mnist1d-mlp")
    with pytest.raises(lottery.UserError, match="unknown kind 'attention'"):
        lottery.find_tickets(config, tmp_path / "run", data=mnist1d, roles={"layers.0.weight": "attention"},
                             options=lottery.RunOptions(progress=False))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("name, total, conv, shortcut", [
    ("vgg16", 14_715_584, 14_710_464, 0), ("vgg19", 20_024_000, 20_018_880, 0),
    ("resnet20", 270_896, 270_256, 2_560),
])
def test_vgg_and_resnet_weight_counts(name, total, conv, shortcut):
    model = _model(name)
    roles = lottery.prunable_roles(model)
    params = dict(model.named_parameters())
    assert sum(params[n].numel() for n in roles) == total
    assert sum(params[n].numel() for n, kind in roles.items() if kind == "conv") == conv
    assert sum(params[n].numel() for n in roles if "shortcut" in n) == shortcut
    assert roles["fc.weight"] == "output"
    assert not any(".bn" in n or n.startswith("bn") for n in roles)  # BatchNorm is never prunable
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_resnet_depth_is_6n_plus_2():
    deep = lottery.build_model(lottery.ModelConfig(name="resnet", depth=32), (3, 32, 32), 10)
    assert sum(1 for m in deep.modules() if isinstance(m, torch.nn.Conv2d)) == 31 + 2  # 31 + fc = 32 layers; 2 shortcuts
    config = lottery.get_preset("mnist1d-mlp")
    config.model.name, config.model.depth = "resnet", 30
    with pytest.raises(lottery.UserError, match="6n \\+ 2"):
        lottery.validation.validate(config)
