"""Criteria: each score is what its name says; the path criterion equals the recorded per-step changes."""
import pytest
import torch

import lottery
from lottery.config import TrainConfig
from lottery.pruning.criteria import CRITERIA, score_weights
from lottery.storage.files import load_tensors
from lottery.training.trainer import StackedTrainer

from conftest import tiny_config
from test_training import _sparse_specs


def test_each_builtin_criterion_scores_what_its_name_says():
    init = {"w": torch.tensor([1.0, -2.0, 0.5, 0.0])}
    final = {"w": torch.tensor([-3.0, -2.5, 0.1, 1.0])}
    path = {"w": torch.tensor([9.0, 0.1, 3.0, 2.0])}
    got = {name: score_weights(name, init, init, final, ["w"], path, seed=3)["w"] for name in CRITERIA
           if not name.startswith("test-")}
    assert torch.equal(got["magnitude"], torch.tensor([3.0, 2.5, 0.1, 1.0]))
    assert torch.equal(got["movement"], torch.tensor([4.0, 0.5, 0.4, 1.0]))
    assert torch.equal(got["magnitude-increase"], torch.tensor([2.0, 0.5, -0.4, 1.0]))
    assert torch.equal(got["large-init"], torch.tensor([1.0, 2.0, 0.5, 0.0]))
    assert torch.equal(got["path"], path["w"])
    again = score_weights("random", init, init, final, ["w"], seed=3)["w"]
    other = score_weights("random", init, init, final, ["w"], seed=4)["w"]
    assert torch.equal(got["random"], again) and not torch.equal(got["random"], other)


def test_path_needs_a_tracked_path():
    w = {"w": torch.ones(3)}
    with pytest.raises(ValueError, match="path"):
        score_weights("path", w, w, w, ["w"])


def test_path_equals_the_sum_of_recorded_per_step_changes(mnist1d):
    model, specs = _sparse_specs(mnist1d, 2)
    train = TrainConfig(optimizer="adam", lr=1e-2, batch_size=32, iterations=40, eval_every=20)
    trainer = StackedTrainer(model, specs, mnist1d, train, [1, 2], track_path=True)
    expected = {n: torch.zeros_like(p) for n, p in trainer.path.items()}
    for _ in range(train.iterations):
        before = {n: trainer.params[n].detach().clone() for n in expected}
        trainer.step()
        for n in expected:
            expected[n] += (trainer.params[n].detach() - before[n]).abs()
    for n in expected:
        torch.testing.assert_close(trainer.path[n], expected[n], rtol=1e-5, atol=1e-7)
        assert torch.all(trainer.path[n][trainer.masks[n] == 0] == 0)  # pruned weights never move
        assert trainer.path[n].sum() > 0


@pytest.mark.parametrize("criterion", ["path", "random", "magnitude-increase"])
def test_imp_runs_with_the_criterion_and_prunes_by_its_scores(tmp_path, mnist1d, criterion):
    config = tiny_config(levels=1, criterion=criterion)
    config.trials = 1
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    level0 = run / "trial_0" / "level_00" / "imp"
    mask = load_tensors(run / "trial_0" / "level_01" / "mask.safetensors")["layers.0.weight"].bool()
    assert round(mask.float().mean().item(), 2) == 0.8
    if criterion == "path":
        score = load_tensors(level0 / "path.safetensors")["layers.0.weight"]
    elif criterion == "magnitude-increase":
        init = load_tensors(run / "trial_0" / "init.safetensors")["layers.0.weight"]
        score = load_tensors(level0 / "final.safetensors")["layers.0.weight"].abs() - init.abs()
    else:
        assert not (level0 / "path.safetensors").exists()  # tracked only when the criterion needs it
        return
    assert score[mask].min() >= score[~mask].max()


def test_path_survives_a_checkpoint_bit_for_bit(mnist1d):
    model, specs = _sparse_specs(mnist1d, 2)
    train = TrainConfig(optimizer="adam", lr=1e-2, batch_size=32, iterations=40, eval_every=20)
    straight = StackedTrainer(model, specs, mnist1d, train, [1, 2], track_path=True)
    straight.run(40)
    first = StackedTrainer(model, specs, mnist1d, train, [1, 2], track_path=True)
    first.run(20)
    tensors, meta = first.state()
    resumed = StackedTrainer(model, specs, mnist1d, train, [1, 2], track_path=True)
    resumed.load_state({k: v.clone() for k, v in tensors.items()}, meta)
    resumed.run(40)
    for n in straight.path:
        assert torch.equal(straight.path[n], resumed.path[n])
