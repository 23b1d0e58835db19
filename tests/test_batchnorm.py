"""BatchNorm in any model: per-replica running statistics, stacked = one by one, rewinding with buffers,
tied weights, and pruned weights that stay exactly zero under SGD + momentum + weight decay + BN."""
import dataclasses

import pytest
import torch
from torch import nn

import lottery
from lottery.config import TrainConfig
from lottery.pruning.masks import dense_mask
from lottery.pruning.prune import prune_round
from lottery.storage.files import load_tensors
from lottery.procedure.tickets import initial_weights
from lottery.training.trainer import ReplicaSpec, StackedTrainer

from conftest import tiny_config


class NormedMLP(nn.Module):
    """A user model with BatchNorm (trained through the generic vmap path)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(40, 48)
        self.bn = nn.BatchNorm1d(48)
        self.fc2 = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


class TiedMLP(nn.Module):
    """Two hidden layers that share one weight tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(40, 32)
        self.a = nn.Linear(32, 32)
        self.b = nn.Linear(32, 32)
        self.b.weight = self.a.weight
        self.out = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.b(torch.relu(self.a(torch.relu(self.inp(x)))))))


@pytest.fixture(scope="module")
def small_cifar(shared_data):
    """CIFAR-10 cut to 4,000 training, 1,000 validation and 1,000 test images, to keep evaluation cheap."""
    data = lottery.load_dataset("cifar10", shared_data, val_size=5000)
    return dataclasses.replace(data, x_train=data.x_train[:4000], y_train=data.y_train[:4000],
                               x_val=data.x_val[:1000], y_val=data.y_val[:1000],
                               x_test=data.x_test[:1000], y_test=data.y_test[:1000])


def _resnet8(data):
    return lambda: lottery.build_model(lottery.ModelConfig(name="resnet", depth=8), data.input_shape, data.num_classes)


def _specs(fn, count, prune=False):
    model = fn()
    roles = lottery.prunable_roles(model)
    specs = []
    for r in range(count):
        start = initial_weights(fn, 0, r)
        mask = dense_mask(start, list(roles))
        if prune:
            scores = {n: torch.rand(start[n].shape, generator=torch.Generator().manual_seed(r)) for n in roles}
            mask = prune_round(scores, mask, roles, 0.5, 0.2)
        specs.append(ReplicaSpec(r, start, mask, seed=r))
    return model, specs


def test_every_replica_has_its_own_running_statistics_used_in_evaluation(mnist1d, device):
    mnist1d = mnist1d.to(device)
    fn = NormedMLP
    model, specs = _specs(fn, 2)
    specs[1].start = {**specs[0].start}  # same weights, other data: only the batches differ
    train = TrainConfig(optimizer="sgd", lr=0.05, batch_size=50, iterations=30, eval_every=30)
    trainer = StackedTrainer(model, specs, mnist1d, train, [1, 2])
    trainer.run(30)
    mean = trainer.buffers["bn.running_mean"]
    assert not torch.equal(mean[0], mean[1])
    assert int(trainer.buffers["bn.num_batches_tracked"][0]) == 30
    # Evaluation uses each replica's own statistics: the module loaded with replica 1's state agrees.
    result = trainer.results()[1]
    reference = fn()
    reference.load_state_dict(result.final)
    reference.to(device).eval()
    loss, accuracy = trainer.loss_and_accuracy(mnist1d.x_val, mnist1d.y_val)
    with torch.no_grad():
        expected = (reference(mnist1d.x_val).argmax(1) == mnist1d.y_val).float().mean()
    assert float(accuracy[1]) == pytest.approx(float(expected), abs=1e-6)


@pytest.mark.parametrize("which", ["user-mlp-bn", "resnet8"])
def test_bn_replicas_trained_stacked_equal_the_same_trained_one_by_one(which, mnist1d, small_cifar, device):
    data, fn = (mnist1d, NormedMLP) if which == "user-mlp-bn" else (small_cifar, _resnet8(small_cifar))
    data = data.to(device)
    iterations, count = (100, 3) if which == "user-mlp-bn" else (20, 2)  # bit for bit: few steps suffice
    train = TrainConfig(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, batch_size=32,
                        iterations=iterations, eval_every=iterations // 2,
                        train_accuracy_examples=500)  # the final train accuracy of 4,000 images cost the most
    model, specs = _specs(fn, count, prune=True)
    together = StackedTrainer(model, specs, data, train, [5, 6, 7][:count])
    together.run(iterations)
    stacked = together.results()
    for r, spec in enumerate(specs):
        alone = StackedTrainer(model, [ReplicaSpec(0, spec.start, spec.mask, spec.seed)], data, train, [5 + r])
        alone.run(iterations)
        single = alone.results()[0]
        assert set(single.final) >= {n for n, _ in model.named_buffers()}
        for name, value in single.final.items():
            assert torch.equal(stacked[r].final[name], value), name
        assert stacked[r].early_stop_iteration == single.early_stop_iteration


def test_pruned_weights_stay_exactly_zero_with_sgd_momentum_weight_decay_and_batchnorm(small_cifar):
    train = TrainConfig(optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-3, batch_size=32,
                        iterations=25, eval_every=25)
    model, specs = _specs(_resnet8(small_cifar), 2, prune=True)
    trainer = StackedTrainer(model, specs, small_cifar, train, [3, 4], augment="flip-crop")
    for _ in range(train.iterations):
        trainer.step()
        for name, mask in trainer.masks.items():
            assert torch.all(trainer.params[name].detach()[mask == 0] == 0), name
    momentum = trainer.optimizer.state()[0]["momentum"]
    for name, value in zip(trainer.params, momentum):
        if name in trainer.masks:
            assert torch.all(value[trainer.masks[name] == 0] == 0)
    assert not torch.equal(trainer.buffers["bn.running_var"][0], specs[0].start["bn.running_var"])


def test_rewinding_restores_the_buffers_with_the_weights(tmp_path, mnist1d):
    config = tiny_config(levels=1, rewind_iteration=40)
    config.trials = 1
    run = lottery.find_tickets(config, tmp_path / "run", model_fn=NormedMLP, data=mnist1d,
                               options=lottery.RunOptions(progress=False))
    rewind = load_tensors(run / "trial_0" / "rewind.safetensors")
    init = load_tensors(run / "trial_0" / "init.safetensors")
    assert {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"} <= set(rewind)
    assert int(rewind["bn.num_batches_tracked"]) == 40 and int(init["bn.num_batches_tracked"]) == 0
    assert not torch.equal(rewind["bn.running_mean"], init["bn.running_mean"])
    # A level starts from exactly θk, buffers included, bit for bit.
    mask = {k: v.bool() for k, v in load_tensors(run / "trial_0" / "level_01" / "mask.safetensors").items()}
    start = StackedTrainer(NormedMLP(), [ReplicaSpec(0, rewind, mask)], mnist1d, config.train, [0], start_iteration=40)
    for name, value in start.buffers.items():
        assert torch.equal(value[0], rewind[name])
    for name, value in start.params.items():
        expected = rewind[name] * mask[name] if name in mask else rewind[name]
        assert torch.equal(value[0].detach(), expected)


def test_a_tied_weight_is_one_prunable_tensor_with_one_mask(tmp_path, mnist1d):
    model = TiedMLP()
    roles = lottery.prunable_roles(model)
    assert roles == {"inp.weight": "hidden", "a.weight": "hidden", "out.weight": "output"}
    config = tiny_config(levels=2)
    config.trials = 1
    run = lottery.find_tickets(config, tmp_path / "run", model_fn=TiedMLP, data=mnist1d,
                               options=lottery.RunOptions(progress=False))
    mask = load_tensors(run / "trial_0" / "level_02" / "mask.safetensors")
    assert set(mask) == set(roles)
    final = load_tensors(run / "trial_0" / "level_02" / "imp" / "final.safetensors")
    assert "b.weight" not in final and torch.all(final["a.weight"][~mask["a.weight"].bool()] == 0)
    trained = TiedMLP()
    trained.load_state_dict({**final, "b.weight": final["a.weight"]})
    assert torch.equal(trained.b.weight, trained.a.weight)
    # Naming the tensor by its other name in roles is the same tensor.
    again = lottery.find_tickets(config, tmp_path / "run2", model_fn=TiedMLP, data=mnist1d,
                                 roles={"inp.weight": "hidden", "b.weight": "hidden", "out.weight": "output"},
                                 options=lottery.RunOptions(progress=False))
    assert torch.equal(load_tensors(again / "trial_0" / "level_02" / "mask.safetensors")["a.weight"], mask["a.weight"])


def test_prune_ignore_takes_patterns_and_refuses_one_that_matches_nothing(tmp_path, small_cifar):
    from lottery.pruning.prune import ignored_names

    roles = lottery.prunable_roles(_resnet8(small_cifar)())
    assert ignored_names(["*shortcut*", "fc.weight"], roles) == [
        "blocks.1.shortcut.0.weight", "blocks.2.shortcut.0.weight", "fc.weight"]
    config = tiny_config(levels=1)
    config.prune.ignore = ["*nothing*"]
    with pytest.raises(lottery.UserError, match="matches none of the prunable tensors"):
        lottery.find_tickets(config, tmp_path / "run", data=lottery.load_dataset("mnist1d"),
                             options=lottery.RunOptions(progress=False))


def test_vmap_batching_is_refused_with_bf16_for_a_batchnorm_model_before_anything_is_written(tmp_path, mnist1d):
    config = tiny_config(levels=1)
    config.train.batching, config.train.precision = "vmap", "bf16"
    with pytest.raises(lottery.UserError, match="batching=vmap with precision bf16"):
        lottery.find_tickets(config, tmp_path / "run", model_fn=NormedMLP, data=mnist1d,
                             options=lottery.RunOptions(progress=False))
    assert not (tmp_path / "run").exists()
    config.train.batching = "sideways"
    with pytest.raises(lottery.UserError, match="train.batching must be"):
        lottery.validation.validate(config)
