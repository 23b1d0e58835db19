import math

import pytest
import torch

import lottery
from lottery.config import TrainConfig
from lottery.procedure.find import initial_weights
from lottery.order import derive_seed
from lottery.pruning.masks import dense_mask
from lottery.pruning.prune import prune_round
from lottery.storage.files import load_csv, load_json, load_tensors
from lottery.training.trainer import ReplicaSpec, StackedTrainer

from conftest import tiny_config


def _model_fn(data, hidden=(32, 32)):
    config = lottery.ModelConfig(name="mlp", hidden=list(hidden))
    return lambda: lottery.build_model(config, data.input_shape, data.num_classes)


def _sparse_specs(data, n, seed=0):
    fn = _model_fn(data)
    model = fn()
    roles = lottery.prunable_roles(model)
    specs = []
    for i in range(n):
        init = initial_weights(fn, seed, i)
        scores = {k: torch.rand(init[k].shape, generator=torch.Generator().manual_seed(i)) for k in roles}
        mask = prune_round(scores, dense_mask(init, list(roles)), roles, 0.6, 0.3)
        specs.append(ReplicaSpec(i, init, mask))
    return model, specs


@pytest.mark.parametrize("train", [
    TrainConfig(optimizer="adam", lr=1e-2, weight_decay=1e-3, batch_size=32, iterations=60, eval_every=20),
    TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3, batch_size=32,
                iterations=60, eval_every=20),
])
def test_pruned_weights_stay_exactly_zero_and_optimizer_state_cannot_revive_them(mnist1d, train):
    model, specs = _sparse_specs(mnist1d, 2)
    trainer = StackedTrainer(model, specs, mnist1d, train, [11, 12])
    for _ in range(train.iterations):
        trainer.step()
        for name, mask in trainer.masks.items():
            assert torch.all(trainer.params[name].detach()[mask == 0] == 0)
    buffers, _ = trainer.optimizer.state()
    assert buffers  # Adam moments or SGD momentum
    for values in buffers.values():
        for name, value in zip(trainer.params, values):
            if name in trainer.masks:
                assert torch.all(value[trainer.masks[name] == 0] == 0)
    # The kept weights did train.
    first = specs[0].start["layers.0.weight"] * specs[0].mask["layers.0.weight"]
    assert not torch.equal(trainer.params["layers.0.weight"][0].detach(), first)


def test_training_starts_bit_for_bit_from_the_given_weights(mnist1d):
    model, specs = _sparse_specs(mnist1d, 3)
    trainer = StackedTrainer(model, specs, mnist1d, TrainConfig(iterations=10), [1, 2, 3])
    for r, spec in enumerate(specs):
        for name, value in trainer.params.items():
            expected = spec.start[name] * spec.mask[name] if name in spec.mask else spec.start[name]
            assert torch.equal(value[r].detach(), expected)


@pytest.mark.parametrize("precision, optimizer, test_curves", [("float32", "adam", True), ("bf16", "adam", True),
                                                               ("float32", "sgd", True), ("float32", "adam", False)])
def test_stacked_replicas_train_like_networks_trained_one_by_one_bit_for_bit(mnist1d, precision, optimizer,
                                                                              test_curves, device):
    """Invariant 7 at the trainer: alone, in a stack of 3, or beside other networks, the same bits."""
    mnist1d = mnist1d.to(device)
    train = TrainConfig(optimizer=optimizer, lr=3e-3 if optimizer == "adam" else 0.05, batch_size=50,
                        iterations=150, eval_every=50, precision=precision, test_curves=test_curves)
    model, specs = _sparse_specs(mnist1d, 3)
    together = StackedTrainer(model, specs, mnist1d, train, [101, 102, 103])
    together.run(train.iterations)
    stacked = together.results()
    for r, spec in enumerate(specs):
        alone = StackedTrainer(model, [ReplicaSpec(0, spec.start, spec.mask)], mnist1d, train, [101 + r])
        alone.run(train.iterations)
        single = alone.results()[0]
        for name in single.final:
            assert torch.equal(stacked[r].final[name], single.final[name]), name
        assert str(stacked[r].curves) == str(single.curves)  # NaN where the test set did not run
        assert stacked[r].metrics() == single.metrics()


def test_early_stop_metrics_are_the_argmin_of_the_recorded_curve(tmp_path, mnist1d, device):
    config = tiny_config(levels=1)
    config.train.test_curves = True
    options = lottery.RunOptions(progress=False, device=device)
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=options)
    config.train.test_curves = False
    lazy = lottery.find_tickets(config, tmp_path / "lazy", data=mnist1d, options=options)
    rows = lottery.read_results(run)
    assert len(rows) == 2 * 2
    for row in rows:
        folder = run / f"trial_{row['trial']}" / f"level_{row['level']:02d}" / "imp"
        curve = load_csv(folder / "curves.csv")
        losses = [float(c["val_loss"]) for c in curve]
        best = min(range(len(losses)), key=lambda i: (losses[i], i))
        assert row["early_stop_iteration"] == int(curve[best]["iteration"])
        assert row["early_stop_test_accuracy"] == pytest.approx(float(curve[best]["test_accuracy"]), abs=1e-7)
        assert row["final_test_accuracy"] == pytest.approx(float(curve[-1]["test_accuracy"]), abs=1e-7)
        assert int(curve[-1]["iteration"]) == config.train.iterations
    # Evaluating the test set only on the early-stop snapshots gives exactly the same metrics.
    assert lottery.read_results(lazy) == rows


def test_rewinding_restarts_from_theta_k_of_the_dense_run(tmp_path, mnist1d):
    config = tiny_config(levels=1, rewind_iteration=40)
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    fn = _model_fn(mnist1d)
    model = fn()
    init = load_tensors(run / "trial_1" / "init.safetensors")
    dense = StackedTrainer(model, [ReplicaSpec(0, init, dense_mask(init, list(lottery.prunable_roles(model))))],
                           mnist1d, config.train, [derive_seed(config.seed, "order", 1)])
    dense.run(40)
    rewind = load_tensors(run / "trial_1" / "rewind.safetensors")
    for name, value in dense.params.items():  # trained alone vs. stacked with trial 0: float tolerance
        torch.testing.assert_close(value[0].detach(), rewind[name], rtol=1e-5, atol=1e-6)
    curve = load_csv(run / "trial_1" / "level_01" / "imp" / "curves.csv")
    assert int(curve[0]["iteration"]) == 40  # the level trains from iteration k with the same schedule
    # Its first evaluation is of θk under the level's mask.
    mask = {k: v.bool() for k, v in load_tensors(run / "trial_1" / "level_01" / "mask.safetensors").items()}
    start = StackedTrainer(model, [ReplicaSpec(0, rewind, mask)], mnist1d, config.train, [0], start_iteration=40)
    val_loss, _ = start.loss_and_accuracy(mnist1d.x_val, mnist1d.y_val)
    assert float(curve[0]["val_loss"]) == pytest.approx(float(val_loss[0]), rel=1e-5)
    metrics = load_json(run / "trial_1" / "level_01" / "imp" / "metrics.json")
    assert metrics["percent_remaining"] < 100


def test_one_shot_prunes_each_target_from_the_dense_network(tmp_path, mnist1d):
    config = tiny_config(one_shot=[50.0, 10.0])
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    rows = lottery.read_results(run)
    by_level = {r["level"]: r["percent_remaining"] for r in rows}
    assert abs(by_level[1] - 50.0) < 0.1 and abs(by_level[2] - 10.0) < 0.1
    dense = load_tensors(run / "trial_0" / "level_00" / "imp" / "final.safetensors")["layers.0.weight"].abs()
    small = load_tensors(run / "trial_0" / "level_02" / "mask.safetensors")["layers.0.weight"].bool()
    assert dense[small].min() >= dense[~small].max()  # level 2 is chosen from level 0's weights, not level 1's


def test_passes_split_by_max_replicas_give_the_same_results(tmp_path, mnist1d):
    config = tiny_config(levels=1)
    config.trials = 3
    together = lottery.find_tickets(config, tmp_path / "a", data=mnist1d, options=lottery.RunOptions(progress=False))
    split = lottery.find_tickets(config, tmp_path / "b", data=mnist1d,
                                 options=lottery.RunOptions(progress=False, max_replicas=2))
    for a, b in zip(lottery.read_results(together), lottery.read_results(split), strict=True):
        assert a["percent_remaining"] == b["percent_remaining"]
        assert a["final_test_accuracy"] == pytest.approx(b["final_test_accuracy"], abs=0.01)


def test_bf16_training_matches_float32_within_noise(mnist1d):
    accuracies = {}
    for precision in ("float32", "bf16"):
        train = TrainConfig(optimizer="adam", lr=1e-2, batch_size=50, iterations=500, eval_every=100,
                            precision=precision)
        model, specs = _sparse_specs(mnist1d, 3)
        trainer = StackedTrainer(model, specs, mnist1d, train, [1, 2, 3])
        trainer.run(train.iterations)
        accuracies[precision] = sum(r.final_test_accuracy for r in trainer.results()) / 3
    assert accuracies["float32"] > 0.4  # it learned
    assert abs(accuracies["bf16"] - accuracies["float32"]) < 0.03


def test_dropout_acts_in_training_only_and_matches_the_module(mnist1d):
    from lottery.training.forwards import stacked_forward_for
    from lottery.order import ReplicaDraws

    model = lottery.build_model(lottery.ModelConfig(name="mlp", hidden=[64, 64], dropout=0.5),
                                mnist1d.input_shape, mnist1d.num_classes)
    params = {n: p.detach().unsqueeze(0).repeat(2, *[1] * p.dim()) for n, p in model.named_parameters()}
    x = mnist1d.x_val[:32]
    forwards = stacked_forward_for(model)
    model.eval()
    expected = model(x)
    torch.testing.assert_close(forwards.each(params, x.expand(2, *x.shape))[1], expected)
    torch.testing.assert_close(forwards.shared(params, x)[0], expected)
    first, second = forwards.train(params, x.expand(2, *x.shape), ReplicaDraws([1, 2], "cpu").at(0))
    assert not torch.allclose(first, second)  # independent dropout per replica
    assert not torch.allclose(first, expected)
    # A replica's dropout is its own: the same seed gives the same output beside any other replica.
    params3 = {n: p.repeat(2, *[1] * (p.dim() - 1))[:3] for n, p in params.items()}
    again = forwards.train(params3, x.expand(3, *x.shape), ReplicaDraws([9, 7, 1], "cpu").at(0))
    assert torch.equal(again[2], first)
    later = forwards.train(params, x.expand(2, *x.shape), ReplicaDraws([1, 2], "cpu").at(1))
    assert not torch.equal(later[0], first)  # and a fresh mask at every iteration


def test_imp_trains_with_dropout(tmp_path, mnist1d):
    config = tiny_config(levels=1)
    config.model.dropout = 0.3
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    rows = lottery.read_results(run)
    assert len(rows) == 4 and all(r["early_stop_test_accuracy"] > 0.2 for r in rows)  # learns (chance: 0.1)
