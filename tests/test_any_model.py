"""Any nn.Module in the built-in trainer (issue 28): dropout, an LSTM, a transformer with
nn.MultiheadAttention and raw parameters run through find_tickets with every arm, prune what feeds a
product, and give each replica its own result whatever shares its pass (invariant 7)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import lottery
from lottery.storage.files import load_tensors

from conftest import tiny_config

EVERY_ARM = ["imp", "reinit", "same-sign", "random", "init-magnitude", "one-shot"]


class DropoutMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(40, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class LSTMClassifier(nn.Module):
    """MNIST-1D's 40 values as 8 steps of 5."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, 16, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.view(len(x), 8, 5))
        return self.head(out[:, -1])


class TinyTransformer(nn.Module):
    """8 tokens of 5 values, a learned position embedding (raw, not prunable), one encoder layer."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(5, 16)
        self.position = nn.Parameter(torch.randn(1, 8, 16) * 0.02)
        self.encoder = nn.TransformerEncoderLayer(16, 2, dim_feedforward=32, dropout=0.1, batch_first=True)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(x.view(len(x), 8, 5)) + self.position)
        return self.head(h.mean(1))


class RawWeights(nn.Module):
    """Weights as raw parameters used in products (x @ w.T), and a raw scale that is not."""

    def __init__(self) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(24, 40) * 0.15)
        self.scale = nn.Parameter(torch.ones(1, 24))
        self.w2 = nn.Parameter(torch.randn(10, 24) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x @ self.w1.T * self.scale) @ self.w2.T


PRUNED = {
    DropoutMLP: {"net.0.weight": "hidden", "net.3.weight": "output"},
    LSTMClassifier: {"lstm.weight_ih_l0": "hidden", "lstm.weight_hh_l0": "hidden", "head.weight": "output"},
    TinyTransformer: {"embed.weight": "hidden", "encoder.self_attn.in_proj_weight": "hidden",
                      "encoder.self_attn.out_proj.weight": "hidden", "encoder.linear1.weight": "hidden",
                      "encoder.linear2.weight": "hidden", "head.weight": "output"},
    RawWeights: {"w1": "hidden", "w2": "output"},
}


def test_the_default_prunable_tensors_are_the_ones_that_feed_a_product(mnist1d):
    for model_class, expected in PRUNED.items():
        model = model_class()
        assert lottery.prunable_roles(model, example=mnist1d.x_train[:2]) == expected, model_class.__name__
    model = TinyTransformer()
    assert lottery.prunable_roles(model, include=["*linear*.weight", "head.weight"]) == {
        "encoder.linear1.weight": "hidden", "encoder.linear2.weight": "hidden", "head.weight": "output"}
    assert "encoder.norm1.weight" in lottery.prunable_roles(model, include=lambda n, p: "norm" in n or n == "head.weight")


@pytest.mark.parametrize("model_class", list(PRUNED), ids=lambda c: c.__name__)
def test_invariant_7_any_module_runs_every_arm_and_each_replica_is_its_own(tmp_path, mnist1d, model_class):
    config = tiny_config(levels=1)
    config.arms, config.train.iterations = EVERY_ARM, 30
    options = lottery.RunOptions(progress=False)
    together = lottery.find_tickets(config, tmp_path / "together", model_fn=model_class, data=mnist1d, options=options)
    alone = lottery.find_tickets(config, tmp_path / "alone", model_fn=model_class, data=mnist1d,
                                 options=lottery.RunOptions(progress=False, max_replicas=1))
    rows = lottery.read_results(together)
    assert len(rows) == 2 + 2 * len(EVERY_ARM)
    assert (together / "results.csv").read_bytes() == (alone / "results.csv").read_bytes()
    mask = load_tensors(together / "trial_1" / "level_01" / "mask.safetensors")
    assert set(mask) == set(PRUNED[model_class])
    for arm in EVERY_ARM:
        own = together / "trial_1" / "level_01" / arm / "mask.safetensors"
        m = load_tensors(own) if own.exists() else mask
        final = load_tensors(together / "trial_1" / "level_01" / arm / "final.safetensors")
        assert all(torch.count_nonzero(final[n][~m[n].bool()]) == 0 for n in m), arm
        other = load_tensors(alone / "trial_1" / "level_01" / arm / "final.safetensors")
        assert all(torch.equal(final[n], other[n]) for n in final), arm


def test_dropout_draws_differ_between_replicas_and_trials(tmp_path, mnist1d):
    """Dropout trains replica by replica under each replica's own seed: two trials from the same θ0 would
    still part ways; here two trials (own θ0 and order) give different networks, and the dense level's
    results match a run that trains only trial 0."""
    config = tiny_config(levels=0)
    config.train.iterations = 30
    both = lottery.find_tickets(config, tmp_path / "both", model_fn=DropoutMLP, data=mnist1d,
                                options=lottery.RunOptions(progress=False))
    config.trials = 1
    one = lottery.find_tickets(config, tmp_path / "one", model_fn=DropoutMLP, data=mnist1d,
                               options=lottery.RunOptions(progress=False))
    a, b = (load_tensors(r / "trial_0" / "level_00" / "imp" / "final.safetensors") for r in (both, one))
    assert all(torch.equal(a[n], b[n]) for n in a)
