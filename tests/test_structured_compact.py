"""Structured tickets made physically smaller for any architecture (lottery.deploy.structured): residual adds,
depthwise convolutions, a flatten into a Linear, the speech CNN and an MLP lose every dropped channel and
compute what the masked model computes; the compact file round-trips without pickle; a model the dependency
graph cannot trace comes back uncut, never an exception; the compact models export to ONNX."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from lottery.deploy.structured import Compacted, compact_model, load_compact, masked_copy, save_compact
from lottery.errors import UserError
from lottery.models.conv import ConvNet
from lottery.models.kws import KeywordCNN
from lottery.models.mlp import MLP
from lottery.models.prunable import prunable_roles
from lottery.models.resnet import ResNet
from lottery.pruning.units import UnitGroup, kept_units, prune_units_round, unit_groups


class DepthwiseSeparable(nn.Module):
    """conv -> BN -> ReLU -> depthwise conv -> BN -> ReLU -> 1x1 conv -> BN -> ReLU -> pool -> Linear."""

    def __init__(self, channels: int = 16, num_classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.depthwise = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.bn2 = nn.BatchNorm2d(channels)
        self.pointwise = nn.Conv2d(channels, 2 * channels, 1)
        self.bn3 = nn.BatchNorm2d(2 * channels)
        self.fc = nn.Linear(2 * channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv(x)))
        x = torch.relu(self.bn2(self.depthwise(x)))
        x = torch.relu(self.bn3(self.pointwise(x)))
        return self.fc(x.mean(dim=(2, 3)))


class NumpyStep(nn.Module):
    """A ReLU computed in NumPy: it runs under no_grad, but the dependency graph's traced forward (with
    gradients) cannot call .numpy()."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(8, 16), nn.Linear(16, 16), nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.from_numpy(self.a(x).numpy().clip(0, None))
        return self.c(torch.relu(self.b(h)))


CASES = {
    "resnet": (lambda: ResNet(8, 3, 10), (2, 3, 32, 32)),
    "depthwise": (DepthwiseSeparable, (2, 3, 16, 16)),
    "speech": (lambda: KeywordCNN(1, 10), (2, 1, 40, 49)),
    "convnet": (lambda: ConvNet([64, 64], (3, 32, 32), 10), (2, 3, 32, 32)),
    "mlp": (lambda: MLP(784, [64, 32], 10), (2, 784)),
}


def randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights at a fan-in scale (outputs of order 1), random biases, BatchNorm scales, shifts and
    running statistics: a cut that dropped or misplaced a channel's shift or statistics would show."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            fan_in = math.prod(p.shape[1:]) if p.dim() > 1 else 1
            scale = 1 / math.sqrt(fan_in) if p.dim() > 1 else 0.5
            p.copy_(torch.randn(p.shape, generator=generator) * scale + (1.0 if name.endswith("bn.weight") else 0))
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.3)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
    return model.eval()


def structured_case(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, dict, list[UnitGroup]]:
    """(a randomized model, inputs, a structured mask: two rounds of 50% of units on random scores, its groups)."""
    factory, shape = CASES[name]
    model = randomized(factory(), seed)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed + 1))
    roles = prunable_roles(model, None, x)
    groups, _ = unit_groups(model, roles, x)
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in model.named_parameters() if n in roles}
    generator = torch.Generator().manual_seed(seed + 2)
    for _ in range(2):
        scores = {n: torch.rand(m.shape, generator=generator) for n, m in mask.items()}
        mask = prune_units_round(groups, scores, mask, 0.5, 0.5)
    return model, x, mask, groups


def _layer_channels(module: nn.Module, out: bool) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features if out else module.in_features
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module.num_features
    return module.out_channels if out else module.in_channels


@pytest.mark.parametrize("name", list(CASES))
def test_every_dropped_channel_is_cut_and_the_outputs_stay(name):
    """Outputs within atol 1e-5 of the masked model's: the cut changes only the order of float additions
    (reassociation), never which products are summed."""
    model, x, mask, groups = structured_case(name)
    untouched = copy.deepcopy(model.state_dict())
    compacted = compact_model(model, mask, x)
    assert isinstance(compacted, Compacted) and compacted.method == "depgraph", compacted.note
    assert all(torch.equal(t, untouched[n]) for n, t in model.state_dict().items())  # the input model is untouched
    assert compacted.parameters_after < compacted.parameters_before
    assert compacted.parameters_after == sum(p.numel() for p in compacted.model.parameters())
    kept = kept_units(groups, mask)
    modules = dict(compacted.model.named_modules())
    for group in groups:
        n_kept = int(kept[group.name].sum())
        assert 0 < n_kept < group.size and compacted.removed[group.name] == group.size - n_kept
        for member in group.members:  # every layer over the group's channels holds the kept ones only
            layer = modules[member.tensor.rpartition(".")[0]]
            per_unit = member.index.shape[1]
            assert _layer_channels(layer, member.dim == 0) == n_kept * per_unit, member.tensor
        for norm in group.norms:
            assert modules[norm.rpartition(".")[0]].num_features == n_kept
    with torch.no_grad():
        want, got = masked_copy(model, mask)(x), compacted.model(x)
    assert want.abs().max() > 0.1  # the check is not on outputs that vanish
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["resnet", "depthwise", "speech"])
def test_the_compact_file_round_trips(name, tmp_path):
    model, x, mask, _ = structured_case(name)
    compacted = compact_model(model, mask, x)
    path = save_compact(tmp_path / "c.safetensors", compacted, mask, {"test": name})
    assert compacted.changed and all(compacted.changed.values())  # the description of the modules cut
    loaded = load_compact(path, CASES[name][0](), x)  # a fresh instance: random weights, replaced
    with torch.no_grad():
        assert torch.equal(loaded(x), compacted.model(x))
    assert sum(p.numel() for p in loaded.parameters()) == compacted.parameters_after


def test_a_compact_file_that_does_not_fit_is_one_line_naming_it(tmp_path):
    model, x, mask, _ = structured_case("depthwise")
    path = save_compact(tmp_path / "c.safetensors", compact_model(model, mask, x), mask)
    with pytest.raises(UserError) as wider:
        load_compact(path, DepthwiseSeparable(channels=24), x)
    lying = compact_model(model, mask, x)
    lying.changed["pointwise"]["out_channels"] += 1  # a description the architecture does not give
    save_compact(tmp_path / "lying.safetensors", lying, mask)
    with pytest.raises(UserError, match="module 'pointwise'") as described:
        load_compact(tmp_path / "lying.safetensors", DepthwiseSeparable(), x)
    not_a_file = tmp_path / "x.safetensors"
    not_a_file.write_bytes(b"not safetensors at all")
    with pytest.raises(UserError) as broken:
        load_compact(not_a_file, DepthwiseSeparable(), x)
    for error, named in ((wider, path), (described, tmp_path / "lying.safetensors"), (broken, not_a_file)):
        message = str(error.value)
        assert str(named) in message and len(message.splitlines()) == 1


def test_an_unstructured_mask_loses_only_the_channels_it_disconnects():
    """Exact for any mask: a unit goes only when no weight reads it (outputs within atol 1e-5, float
    reassociation)."""
    model = randomized(MLP(784, [64, 32], 10))
    x = torch.randn(4, 784, generator=torch.Generator().manual_seed(1))
    generator = torch.Generator().manual_seed(2)
    mask = {n: torch.rand(p.shape, generator=generator) < 0.5 for n, p in model.named_parameters() if p.dim() == 2}
    mask["layers.1.weight"][:, [3, 7]] = False  # hidden units 3 and 7 of the first layer: read by nothing
    compacted = compact_model(model, mask, x)
    assert compacted.method == "depgraph" and compacted.removed == {"layers.0.weight": 2, "layers.1.weight": 0}
    assert compacted.model.layers[0].out_features == 62 and compacted.model.layers[1].in_features == 62
    with torch.no_grad():
        torch.testing.assert_close(compacted.model(x), masked_copy(model, mask)(x), atol=1e-5, rtol=0)
    nothing = {n: m.clone() for n, m in mask.items()}
    nothing["layers.1.weight"][:, [3, 7]] = True
    nothing["layers.2.weight"][:] = True
    nothing["layers.1.weight"][:] = True
    uncut = compact_model(model, nothing, x)
    assert uncut.method == "none" and "disconnects no channel" in uncut.note
    assert uncut.parameters_after == uncut.parameters_before


def test_a_model_the_graph_cannot_trace_comes_back_uncut():
    model = NumpyStep().eval()
    x = torch.randn(3, 8)
    mask = {n: torch.zeros_like(p, dtype=torch.bool) for n, p in model.named_parameters() if p.dim() == 2}
    before = copy.deepcopy(model.state_dict())
    compacted = compact_model(model, mask, x)
    assert compacted.method == "none" and "could not trace" in compacted.note and "\n" not in compacted.note
    assert compacted.removed == {} and compacted.parameters_after == compacted.parameters_before
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())
    with torch.no_grad():
        assert torch.equal(compacted.model(x), masked_copy(model, mask)(x))


# One case in the fast tier (the exporter's first import alone costs seconds); the others in the second tier.
@pytest.mark.parametrize("name", ["resnet", pytest.param("depthwise", marks=pytest.mark.slow),
                                  pytest.param("speech", marks=pytest.mark.slow)])
def test_the_compact_model_exports_to_onnx(name, tmp_path):
    """onnxruntime within 1e-4 of PyTorch (a different kernel order)."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from lottery.deploy.bench import to_onnx

    model, x, mask, _ = structured_case(name)
    compacted = compact_model(model, mask, x)
    assert to_onnx(compacted.model, x, tmp_path / "c.onnx") < 1e-4
    onnx.checker.check_model(onnx.load(str(tmp_path / "c.onnx")))


@pytest.mark.parametrize("name, method", [("resnet", "depgraph"), ("speech", "chain"), ("mlp", "chain")])
def test_export_takes_the_form_that_removes_most(name, method):
    """`lottery export --format onnx`'s compaction: a chain of layers keeps the chain compaction when it removes
    as much (it also folds constant units), anything else is cut by the dependency graph; outputs within atol
    1e-5 of the masked model's (float reassociation)."""
    from lottery.deploy.bench import compact_for_export
    from lottery.deploy.export import Ticket

    model, x, mask, _ = structured_case(name)
    state = {n: t.clone() for n, t in model.state_dict().items()}
    form = compact_for_export(Ticket(mask, state, state), CASES[name][0](), x)
    assert form.method == method and form.note and "\n" not in form.note
    assert form.after.parameters < form.before.parameters and form.after.flops < form.before.flops
    assert form.before.nonzero_parameters < form.before.parameters
    with torch.no_grad():
        torch.testing.assert_close(form.model(x), masked_copy(model, mask)(x), atol=1e-5, rtol=0)
