"""prune.retrain: each mode starts its ticket from exactly the state it claims, and controls keep theirs."""
import pytest
import torch

import lottery
from lottery.store import load_csv, load_tensors
from lottery.train import ReplicaSpec, StackedTrainer

from conftest import run_cli, tiny_config


def _run(tmp_path, mnist1d, retrain, finetune_lr=0.0):
    config = tiny_config(levels=1, rewind_iteration=20, retrain=retrain, finetune_lr=finetune_lr)
    config.trials = 1
    config.arms = ["imp", "random", "reinit"]
    return config, lottery.find_tickets(config, tmp_path / retrain, data=mnist1d,
                                        options=lottery.RunOptions(progress=False))


def _first_val_loss(run, arm):
    return float(load_csv(run / "trial_0" / "level_01" / arm / "curves.csv")[0]["val_loss"])


def _val_loss_of(config, mnist1d, start, mask):
    """The validation loss of `start` under `mask`, as a trainer evaluates it before its first step."""
    model = lottery.build_model(config.model, mnist1d.input_shape, mnist1d.num_classes)
    trainer = StackedTrainer(model, [ReplicaSpec(0, start, mask)], mnist1d, config.train, [0], start_iteration=20)
    return float(trainer.loss_and_accuracy(mnist1d.x_val, mnist1d.y_val)[0][0])


@pytest.mark.parametrize("retrain, finetune_lr", [("lr-rewind", 0.0), ("finetune", 1e-3)])
def test_the_ticket_starts_from_its_trained_weights_and_the_random_control_from_theta_k(tmp_path, mnist1d,
                                                                                       retrain, finetune_lr):
    config, run = _run(tmp_path, mnist1d, retrain, finetune_lr)
    trained = load_tensors(run / "trial_0" / "level_00" / "imp" / "final.safetensors")
    mask = {n: t.bool() for n, t in load_tensors(run / "trial_0" / "level_01" / "mask.safetensors").items()}
    assert _first_val_loss(run, "imp") == _val_loss_of(config, mnist1d, trained, mask)
    rewind = load_tensors(run / "trial_0" / "rewind.safetensors")
    random_mask = {n: t.bool() for n, t in load_tensors(run / "trial_0" / "level_01" / "random" / "mask.safetensors").items()}
    assert _first_val_loss(run, "random") == _val_loss_of(config, mnist1d, rewind, random_mask)


def test_finetune_trains_at_its_own_fixed_rate(tmp_path, mnist1d):
    """A vanishing fine-tuning rate leaves the ticket where it started (θT under the mask); the reinit
    control in the same level still trains on the run's schedule."""
    config, run = _run(tmp_path, mnist1d, "finetune", 1e-12)
    start = load_tensors(run / "trial_0" / "level_00" / "imp" / "final.safetensors")
    final = load_tensors(run / "trial_0" / "level_01" / "imp" / "final.safetensors")
    for name, value in final.items():
        kept = value != 0
        assert torch.allclose(value[kept], start[name][kept], atol=1e-6), name
    reinit = load_csv(run / "trial_0" / "level_01" / "reinit" / "curves.csv")
    assert float(reinit[-1]["val_loss"]) < float(reinit[0]["val_loss"]) - 0.1


def test_retrain_modes_are_checked(tmp_path):
    for flags, problem in [(["--retrain", "finetune"], "finetune_lr must be set"),
                           (["--finetune-lr", "0.001"], "finetune_lr must be set"),
                           (["--set", "prune.retrain=late"], "prune.retrain must be one of")]:
        result = run_cli("find", "mnist1d-mlp", "--out", str(tmp_path), *flags)
        assert result.returncode == 2 and problem in result.stderr, result.stderr
        assert not any(tmp_path.iterdir())
