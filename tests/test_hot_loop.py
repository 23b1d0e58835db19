"""The hot loop's fast paths compute what the plain ones do: the MLP's backward by hand, the early-stop
test from snapshots, and a training step that allocates nothing large."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import ProfilerActivity, profile

import lottery
from lottery.config import TrainConfig
from lottery.procedure.find import initial_weights
from lottery.pruning.masks import dense_mask
from lottery.models.mlp import MLP
from lottery.order import ReplicaDraws
from lottery.pruning.prune import prune_round
from lottery.training.trainer import ReplicaSpec, StackedTrainer


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_the_mlp_backward_by_hand_gives_autograds_gradients(dropout, device):
    torch.manual_seed(0)
    model = MLP(20, [16, 8], 5, dropout)
    replicas, batch = 3, 7
    params = {n: (0.5 * torch.randn(replicas, *p.shape)).to(device).requires_grad_() for n, p in model.named_parameters()}
    x, y = torch.randn(replicas, batch, 20).to(device), torch.randint(0, 5, (replicas, batch)).to(device)
    logits = model.stacked_forward(params, x, train=True, draws=ReplicaDraws([1, 2, 3], device).at(5))
    (F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / batch).backward()
    by_hand = model.stacked_backprop(replicas, batch, device)(
        {n: p.detach() for n, p in params.items()}, x, y, ReplicaDraws([1, 2, 3], device).at(5))
    for name, p in params.items():
        assert p.grad.abs().max() > 0
        torch.testing.assert_close(by_hand[name], p.grad, rtol=1e-5, atol=1e-6 * float(p.grad.abs().max()))


def _same(curves, other):
    """Curves equal, NaN (not measured) where the other has NaN."""
    return curves.keys() == other.keys() and all(
        torch.equal(torch.tensor(curves[k]).nan_to_num(-1), torch.tensor(other[k]).nan_to_num(-1)) for k in curves)


def _lenet_trainer(data, replicas, train, model=None):
    config = lottery.get_preset("lenet300-mnist")
    fn = lambda: model or lottery.build_model(config.model, data.input_shape, data.num_classes)  # noqa: E731
    roles = lottery.prunable_roles(fn())
    specs = []
    for r in range(replicas):
        init = initial_weights(fn, 0, r)
        mask = prune_round({n: torch.rand(init[n].shape) for n in roles}, dense_mask(init, list(roles)), roles, 0.2, 0.1)
        specs.append(ReplicaSpec(r % 2, init, mask))
    return StackedTrainer(fn(), specs, data, train, [0, 1])


def test_a_training_step_allocates_nothing_large(mnist):
    """Gradients, activations and the batch land in buffers made once: no step tensor is a fresh mapping
    (with autograd, 4 LeNet replicas made a 3.7 MB weight gradient every step)."""
    trainer = _lenet_trainer(mnist, 4, TrainConfig(iterations=100, batch_size=60))
    assert trainer.backprop is not None
    for _ in range(3):
        trainer.step()
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        for _ in range(3):
            trainer.step()
    allocations = [e.cpu_memory_usage for e in prof.events() if e.cpu_memory_usage > 0]
    assert allocations  # the profiler does see allocations (small ones remain)
    assert max(allocations) < 64 * 1024


@pytest.mark.parametrize("batching", ["auto", "vmap"])
def test_the_early_stop_test_from_a_snapshot_is_the_one_measured_at_that_iteration(mnist1d, batching, device):
    """Without test curves, the test set runs once per replica, on the weights kept at its validation
    minimum: the same bits as running it at that iteration."""
    hidden = lottery.ModelConfig(name="mlp", hidden=[32, 32])
    fn = lambda: lottery.build_model(hidden, mnist1d.input_shape, mnist1d.num_classes)  # noqa: E731
    specs = [ReplicaSpec(r, initial_weights(fn, 3, r), dense_mask(initial_weights(fn, 3, r), list(lottery.prunable_roles(fn()))))
             for r in range(2)]
    mnist1d = mnist1d.to(device)
    results = {}
    for curves in (True, False):
        train = TrainConfig(lr=3e-2, batch_size=50, iterations=300, eval_every=20, test_curves=curves, batching=batching)
        trainer = StackedTrainer(fn(), specs, mnist1d, train, [5, 6])
        trainer.run(train.iterations)
        results[curves] = trainer.results()
        if not curves:
            assert trainer.test_evaluations <= 2 * 2  # the end, and once per replica at most
    for full, once in zip(results[True], results[False]):
        assert full.early_stop_iteration < 280  # the snapshot path is taken
        assert once.metrics() == full.metrics()
        best = once.iterations.index(once.early_stop_iteration)
        assert once.curves["test_accuracy"][best] == full.curves["test_accuracy"][best]
        tested = [i for i, a in enumerate(once.curves["test_accuracy"]) if not math.isnan(a)]
        assert tested == sorted({best, len(once.iterations) - 1})


def test_a_checkpoint_with_a_pending_snapshot_resumes_to_the_same_results(mnist1d, device):
    mnist1d = mnist1d.to(device)
    hidden = lottery.ModelConfig(name="mlp", hidden=[32])
    fn = lambda: lottery.build_model(hidden, mnist1d.input_shape, mnist1d.num_classes)  # noqa: E731
    specs = [ReplicaSpec(0, initial_weights(fn, 4, r), dense_mask(initial_weights(fn, 4, r), list(lottery.prunable_roles(fn()))))
             for r in range(2)]
    train = TrainConfig(lr=3e-2, batch_size=50, iterations=200, eval_every=20)
    whole = StackedTrainer(fn(), specs, mnist1d, train, [9])
    whole.run(train.iterations)
    first = StackedTrainer(fn(), specs, mnist1d, train, [9])
    first.run(100)
    assert first.early_stop.pending()  # the checkpoint holds snapshots awaiting their test
    tensors, meta = first.state()
    second = StackedTrainer(fn(), specs, mnist1d, train, [9])
    second.load_state(tensors, meta)
    second.run(train.iterations)
    for a, b in zip(whole.results(), second.results()):
        assert a.metrics() == b.metrics() and _same(a.curves, b.curves)


def test_a_model_with_buffers_resumes_from_a_checkpoint_to_the_same_results(mnist1d, device):
    """BatchNorm statistics are restored from the checkpoint (they were once overwritten by the
    optimizer's state there)."""
    mnist1d = mnist1d.to(device)
    class Normed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(40, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 10))

        def forward(self, x):
            return self.net(x)

    def fn():
        torch.manual_seed(0)
        return Normed()
    start = {**dict(fn().named_parameters()), **dict(fn().named_buffers())}
    specs = [ReplicaSpec(0, {n: t.detach() for n, t in start.items()}, dense_mask(start, ["net.1.weight"]))]
    train = TrainConfig(lr=3e-3, batch_size=50, iterations=60, eval_every=20)
    whole = StackedTrainer(fn(), specs, mnist1d, train, [9])
    whole.run(train.iterations)
    first = StackedTrainer(fn(), specs, mnist1d, train, [9])
    first.run(30)
    tensors, meta = first.state()
    second = StackedTrainer(fn(), specs, mnist1d, train, [9])
    second.load_state(tensors, meta)
    second.run(train.iterations)
    (a,), (b,) = whole.results(), second.results()
    assert a.metrics() == b.metrics()
    for name in a.final:
        assert torch.equal(a.final[name], b.final[name]), name
