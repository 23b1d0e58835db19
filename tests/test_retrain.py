"""prune.retrain: each mode starts its ticket from exactly the state it claims, and controls keep theirs."""
import pytest
import torch

import lottery
from lottery.storage.files import load_csv, load_tensors
from lottery.training.trainer import ReplicaSpec, StackedTrainer

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


def _retrain_by_hand(config, mnist1d, run, arm, optimizer):
    """Level 1's replica of `arm` trained alone from the run's own saved start, mask and optimizer state."""
    from lottery.training.optim import unflatten_state
    from lottery.order import derive_seed
    from lottery.storage.files import load_metadata

    start = load_tensors(run / "trial_0" / "rewind.safetensors")
    own = run / "trial_0" / "level_01" / arm / "mask.safetensors"
    mask = {n: t.bool() for n, t in load_tensors(own if own.exists() else run / "trial_0" / "level_01" / "mask.safetensors").items()}
    state, steps = None, 0
    if optimizer:
        path = run / "trial_0" / "rewind_optimizer.safetensors"
        state = unflatten_state(load_tensors(path))
        steps = int(load_metadata(path)["optimizer_steps"])
    model = lottery.build_model(config.model, mnist1d.input_shape, mnist1d.num_classes)
    spec = ReplicaSpec(0, start, mask, derive_seed(config.seed, "replica", arm, 0, 1), state, steps)
    trainer = StackedTrainer(model, [spec], mnist1d, config.train, [derive_seed(config.seed, "order", 0)],
                             start_iteration=20)
    trainer.run(config.train.iterations)
    return trainer.results()[0].final


@pytest.mark.parametrize("rewind_optimizer", [False, True])
def test_a_rewound_ticket_starts_from_theta_k_with_the_optimizer_it_claims(tmp_path, mnist1d, rewind_optimizer):
    """Rewinding restores θk's weights and buffers and, with prune.rewind_optimizer, the optimizer's state at k
    (Adam's moments and step count); else a fresh optimizer. Checked by training the ticket again alone from
    exactly that state: bit for bit the run's result, and not with the other optimizer start."""
    config = tiny_config(levels=1, rewind_iteration=20, rewind_optimizer=rewind_optimizer)
    config.trials = 1
    config.arms = ["imp", "random", "reinit"]
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    assert (run / "trial_0" / "rewind_optimizer.safetensors").exists() == rewind_optimizer
    for arm in ("imp", "random"):
        final = load_tensors(run / "trial_0" / "level_01" / arm / "final.safetensors")
        again = _retrain_by_hand(config, mnist1d, run, arm, rewind_optimizer)
        assert all(torch.equal(final[n], again[n]) for n in final), arm
    if rewind_optimizer:
        other = _retrain_by_hand(config, mnist1d, run, "imp", False)
        final = load_tensors(run / "trial_0" / "level_01" / "imp" / "final.safetensors")
        assert not torch.equal(final["layers.0.weight"], other["layers.0.weight"])
        assert (run / "trial_0" / "level_01" / "reinit" / "metrics.json").exists()


def test_rewinding_the_optimizer_needs_a_late_rewind(tmp_path):
    result = run_cli("find", "mnist1d-mlp", "--out", str(tmp_path), "--rewind-optimizer")
    assert result.returncode == 2 and "prune.rewind_optimizer needs prune.retrain=rewind and a rewind iteration" \
        in result.stderr, result.stderr
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("retrain, finetune_lr", [("rewind", 0.0), ("lr-rewind", 0.0), ("finetune", 1e-3)])
def test_an_exported_ticket_starts_where_its_network_started(tmp_path, mnist1d, retrain, finetune_lr):
    """The ticket file's `start` is the state the network trained from in every retrain mode: under lr-rewind and
    finetune the parent's θT, not θk (the defect this test was written for); level 0 θ0; controls theirs."""
    from lottery.deploy.export import ticket_of

    _, run = _run(tmp_path, mnist1d, retrain, finetune_lr)
    trial = run / "trial_0"
    expected = {
        (1, "imp"): trial / ("rewind.safetensors" if retrain == "rewind" else "level_00/imp/final.safetensors"),
        (0, "imp"): trial / "init.safetensors",
        (1, "random"): trial / "rewind.safetensors",
        (1, "reinit"): trial / "level_01" / "reinit" / "start.safetensors",
    }
    for (level, arm), path in expected.items():
        start = ticket_of(run, level=level, arm=arm).start
        want = load_tensors(path)
        assert set(start) == set(want) and all(torch.equal(start[n], want[n]) for n in want), (level, arm)
