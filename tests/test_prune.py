import pytest
import torch

import lottery
from lottery.pruning.masks import count, dense_mask, percent_remaining
from lottery.pruning.prune import prune_count, prune_one_shot, prune_round
from lottery.storage.files import load_tensors

from conftest import tiny_config

PAPER_LADDER = {3: 51.3, 7: 21.1, 9: 13.5, 12: 7.0, 15: 3.6, 16: 2.9, 18: 1.9}


def _lenet():
    model = lottery.build_model(lottery.ModelConfig(name="lenet300-100"), (1, 28, 28), 10)
    params = dict(model.named_parameters())
    return params, lottery.prunable_roles(model)


def test_roles_pick_linear_weights_and_the_last_layer_is_output():
    params, roles = _lenet()
    assert roles == {"layers.0.weight": "hidden", "layers.1.weight": "hidden", "layers.2.weight": "output"}
    assert sum(params[n].numel() for n in roles) == 266_200


def test_layerwise_imp_follows_the_papers_ladder_exactly():
    params, roles = _lenet()
    mask = dense_mask(params, list(roles))
    generator = torch.Generator().manual_seed(0)
    expected = {n: m.numel() for n, m in mask.items()}
    for level in range(1, 19):
        scores = {n: torch.rand(p.shape, generator=generator) for n, p in params.items() if n in roles}
        mask = prune_round(scores, mask, roles, 0.2, 0.1)
        for n in expected:
            rate = 0.2 if roles[n] == "hidden" else 0.1
            expected[n] -= int(rate * expected[n] + 0.5)
            assert int(mask[n].sum()) == expected[n]
        if level in PAPER_LADDER:
            assert round(percent_remaining(mask), 1) == PAPER_LADDER[level], level
    kept, total = count(mask)
    assert total == 266_200 and kept == sum(expected.values())


def test_pruning_removes_the_smallest_scores_and_never_revives():
    params, roles = _lenet()
    mask = dense_mask(params, list(roles))
    scores = {n: params[n].detach().abs() for n in roles}
    first = prune_round(scores, mask, roles, 0.2, 0.1)
    for n in roles:
        kept, dropped = scores[n][first[n]], scores[n][~first[n]]
        assert kept.min() >= dropped.max()
    # Scores that would favour pruned weights cannot bring them back.
    inverted = {n: -scores[n] for n in roles}
    second = prune_round(inverted, first, roles, 0.2, 0.1)
    for n in roles:
        assert not (second[n] & ~first[n]).any()


def test_global_scope_uses_one_threshold_across_hidden_layers_and_honours_ignore():
    params, roles = _lenet()
    mask = dense_mask(params, list(roles))
    scores = {n: params[n].detach().abs() * (10 if n == "layers.1.weight" else 1) for n in roles}
    new = prune_round(scores, mask, roles, 0.5, 0.1, scope="global")
    hidden = ["layers.0.weight", "layers.1.weight"]
    kept = torch.cat([scores[n][new[n]] for n in hidden])
    dropped = torch.cat([scores[n][~new[n]] for n in hidden])
    assert kept.min() >= dropped.max()
    assert sum(int(new[n].sum()) for n in hidden) == 265_200 // 2
    assert new["layers.1.weight"].float().mean() > new["layers.0.weight"].float().mean()  # not per-layer
    ignored = prune_round(scores, mask, roles, 0.5, 0.1, scope="global", ignore=["layers.2.weight"])
    assert bool(ignored["layers.2.weight"].all())


def test_one_shot_reaches_the_target_with_the_ladder_shape():
    params, roles = _lenet()
    mask = dense_mask(params, list(roles))
    scores = {n: params[n].detach().abs() for n in roles}
    for target in (51.3, 21.1, 7.0, 1.9):
        new = prune_one_shot(scores, mask, roles, 0.2, 0.1, target)
        assert abs(percent_remaining(new) - target) < 0.05
        fractions = {n: new[n].float().mean().item() for n in roles}
        assert fractions["layers.2.weight"] > fractions["layers.0.weight"]  # output pruned more gently


def test_an_n_of_m_pattern_keeps_at_most_n_per_group_chosen_by_score_then_the_ladder_inside_it():
    torch.manual_seed(0)
    scores = {"w": torch.rand(8, 12), "out": torch.rand(4, 8)}
    mask = {n: torch.ones_like(s, dtype=torch.bool) for n, s in scores.items()}
    roles = {"w": "hidden", "out": "output"}
    first = prune_round(scores, mask, roles, 0.2, 0.1, pattern=(2, 4))
    for name, m in first.items():
        groups = m.view(m.shape[0], -1, 4)
        assert (groups.sum(2) <= 2).all()
        assert int(m.sum()) == m.numel() // 2  # the rate asks for 80% / 90%: the pattern stops it at 2 of 4
        kept_scores = torch.where(groups, scores[name].view_as(groups), torch.inf).amin(2)
        dropped_scores = torch.where(~groups, scores[name].view_as(groups), -torch.inf).amax(2)
        assert (kept_scores >= dropped_scores).all()  # magnitude chooses within each group
    second = prune_round(scores, first, roles, 0.2, 0.1, pattern=(2, 4))
    assert int(second["w"].sum()) == 48 - prune_count(0.2, 48) and int(second["out"].sum()) == 16 - prune_count(0.1, 16)
    assert all((second[n] <= first[n]).all() for n in second)


def _keeps_2_of_4(mask: dict[str, torch.Tensor]) -> bool:
    return all((m.bool().reshape(m.shape[0], -1, 4).sum(2) <= 2).all() for m in mask.values())


def test_a_pattern_run_gives_n_of_m_masks_at_every_level_for_the_ticket_and_its_mask_controls(tmp_path, mnist1d):
    config = tiny_config(pattern="2:4")
    config.arms = ["imp", "random", "init-magnitude", "one-shot"]
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    percents = []
    for level in range(config.prune.levels + 1):
        folder = run / "trial_0" / f"level_{level:02d}"
        mask = load_tensors(folder / "mask.safetensors")
        assert level == 0 or _keeps_2_of_4(mask)
        percents.append(lottery.percent_remaining({n: m.bool() for n, m in mask.items()}))
        for arm in config.arms[1:]:
            if level == 0:
                continue
            control = load_tensors(folder / arm / "mask.safetensors")
            assert _keeps_2_of_4(control), arm  # a control the ticket could have been: not unstructured
            assert {n: int(m.sum()) for n, m in control.items()} == {n: int(m.sum()) for n, m in mask.items()}
            same_as_ticket = all(torch.equal(control[n], mask[n]) for n in mask)
            assert same_as_ticket == (arm == "one-shot" and level == 1), arm  # one-shot's level 1 is IMP's
    assert percents[0] == 100 and abs(percents[1] - 50) < 1e-9 and percents[2] < percents[1]
    config.prune.pattern = "4:2"
    with pytest.raises(lottery.UserError, match="prune.pattern must be N:M"):
        lottery.find_tickets(config, tmp_path / "bad", data=mnist1d)


def test_a_random_control_in_a_pattern_keeps_the_tickets_counts_and_the_pattern_a_short_last_group_too():
    from lottery.pruning.arms import random_mask
    torch.manual_seed(0)
    scores = {"w": torch.rand(6, 10)}  # rows of 10: groups of 4, 4 and a last one of 2
    dense = {"w": torch.ones(6, 10, dtype=torch.bool)}
    ticket = prune_round(scores, prune_round(scores, dense, {"w": "hidden"}, 0.2, 0.1, pattern=(2, 4)),
                         {"w": "hidden"}, 0.2, 0.1, pattern=(2, 4))
    for seed in range(5):
        control = random_mask(ticket, seed, pattern=(2, 4))
        padded = torch.nn.functional.pad(control["w"], (0, 2)).view(6, 3, 4)
        assert (padded.sum(2) <= 2).all() and int(control["w"].sum()) == int(ticket["w"].sum())
    assert not torch.equal(random_mask(ticket, 0, (2, 4))["w"], random_mask(ticket, 1, (2, 4))["w"])
    assert not _keeps_2_of_4({"w": random_mask({"w": torch.ones(8, 8, dtype=torch.bool).tril()}, 0)["w"]})
