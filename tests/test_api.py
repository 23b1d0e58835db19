"""The Python API on a user-defined torch.nn.Module (the vmap path, not the built-in stacked MLP)."""
import torch
from torch import nn

import lottery
from lottery.storage.files import load_tensors

from conftest import tiny_config


class TwoLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 10))
        self.norm_like = nn.Parameter(torch.ones(24))  # a non-Linear parameter named like nothing prunable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body[2](self.body[1](self.body[0](x)) * self.norm_like)
        return self.body[3](h)


def test_a_user_model_runs_imp_and_only_linear_weights_are_pruned(tmp_path, mnist1d):
    config = tiny_config(levels=2)
    run = lottery.find_tickets(config, tmp_path / "run", model_fn=TwoLayer, data=mnist1d,
                               options=lottery.RunOptions(progress=False))
    rows = lottery.read_results(run)
    assert [r["level"] for r in rows] == [0, 0, 1, 1, 2, 2]
    assert rows[0]["prunable_weights"] == 40 * 24 + 24 * 10
    mask = load_tensors(run / "trial_0" / "level_02" / "mask.safetensors")
    assert set(mask) == {"body.1.weight", "body.3.weight"}
    assert round(mask["body.1.weight"].float().mean().item(), 2) == 0.64  # 0.8 ** 2
    final = load_tensors(run / "trial_0" / "level_02" / "imp" / "final.safetensors")
    assert torch.all(final["body.1.weight"][~mask["body.1.weight"].bool()] == 0)
    assert torch.count_nonzero(final["norm_like"]) == 24  # not prunable: never masked
    init = load_tensors(run / "trial_1" / "init.safetensors")
    assert not torch.equal(init["body.1.weight"], load_tensors(run / "trial_0" / "init.safetensors")["body.1.weight"])


def test_a_registered_criterion_is_used_by_name(tmp_path, mnist1d):
    name = "test-smallest-first"
    if name not in lottery.CRITERIA:
        lottery.register_criterion(name, lambda init, rewind, final: -final.abs())
    config = tiny_config(levels=1, criterion=name)
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    final = load_tensors(run / "trial_0" / "level_00" / "imp" / "final.safetensors")
    mask = load_tensors(run / "trial_0" / "level_01" / "mask.safetensors")
    w, m = final["layers.0.weight"].abs(), mask["layers.0.weight"].bool()
    assert w[m].max() <= w[~m].min()  # it kept the smallest weights, as the criterion asked
