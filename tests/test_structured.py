"""Structured tickets (prune.granularity=channel, issue 38): a unit mask is an exact weight mask, the masked network
ignores its dropped channels, unit counts follow the rates, the controls have the ticket's shapes, runs reproduce
bit for bit, and every reader of a run (report, export, noise, attack, stability) works on a structured one."""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lottery
from lottery.experiments.stability import Point, point_mask
from lottery.models.conv import ConvNet
from lottery.models.kws import KeywordCNN
from lottery.models.mlp import MLP
from lottery.models.prunable import prunable_roles
from lottery.models.resnet import ResNet
from lottery.order import derive_seed
from lottery.procedure.tickets import initial_weights
from lottery.pruning.criteria import magnitude
from lottery.pruning.units import UnitGroup, expand_units, kept_units, prune_units_round, unit_groups, unit_scores
from lottery.storage.files import load_tensors, tensor_digest
from lottery.storage.finished import model_and_data, open_run

from conftest import copy_of_run, finished_run, one_line_exit_2, run_main

RATES = {"conv": 0.4, "hidden": 0.2}


def models() -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The registry's architectures that structured pruning serves: residual adds, BatchNorm, a flatten."""
    torch.manual_seed(0)
    return {"resnet": (ResNet(8, 3, 10), torch.randn(2, 3, 32, 32)),
            "kws": (KeywordCNN(1, 10), torch.randn(2, 1, 40, 32)),
            "conv": (ConvNet([64, 64], (3, 32, 32), 10), torch.randn(2, 3, 32, 32)),
            "mlp": (MLP(40, [32, 24], 10), torch.randn(2, 40))}


def traced(model: nn.Module, x: torch.Tensor) -> tuple[dict[str, str], list[UnitGroup], list[str]]:
    roles = prunable_roles(model, None, x)
    groups, left = unit_groups(model, roles, x)
    return roles, groups, left


def dense(model: nn.Module, roles: dict[str, str]) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {n: torch.ones_like(params[n], dtype=torch.bool) for n in roles}


def magnitudes(model: nn.Module, roles: dict[str, str]) -> dict[str, torch.Tensor]:
    """The paper's criterion |θT| of the model's current weights."""
    params = dict(model.named_parameters())
    return {n: magnitude(params[n].detach(), params[n].detach(), params[n].detach()) for n in roles}


def one_round(model: nn.Module, x: torch.Tensor, **kwargs):  # type: ignore[no-untyped-def]
    roles, groups, left = traced(model, x)
    mask = prune_units_round(groups, magnitudes(model, roles), dense(model, roles), RATES["hidden"], RATES["conv"],
                             **kwargs)
    return roles, groups, left, mask


def closed_form(groups: list[UnitGroup], keep: dict[str, torch.Tensor], shapes: dict[str, torch.Size]) -> dict:
    """What a unit mask must be, written as a product: weight [o, i, ...] is kept iff no dropped unit owns row o
    and none owns column i (a row or column shared by two groups goes with either)."""
    rows = {n: torch.zeros(s[0], dtype=torch.bool) for n, s in shapes.items()}
    cols = {n: torch.zeros(s[1] if len(s) > 1 else 1, dtype=torch.bool) for n, s in shapes.items()}
    for g in groups:
        for m in g.members:
            (rows if m.dim == 0 else cols)[m.tensor][m.index[~keep[g.name]].flatten()] = True
    out = {}
    for n, s in shapes.items():
        both = ~rows[n][:, None] & ~cols[n][None, :]
        out[n] = both.reshape(*both.shape, *([1] * (len(s) - 2))).expand(s) if len(s) > 1 else ~rows[n]
    return out


def masked(model: nn.Module, mask: dict[str, torch.Tensor]) -> nn.Module:
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in mask:
                p.mul_(mask[name])
    return model.eval()


def perturb_units(model: nn.Module, groups: list[UnitGroup], units: dict[str, torch.Tensor]) -> None:
    """Large random values in the chosen units' rows, biases and BatchNorm parameters and statistics."""
    state = dict(model.named_parameters()) | dict(model.named_buffers())
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for g in groups:
            chosen = units[g.name]
            for m in g.writers:
                index = m.index[chosen].flatten()
                state[m.tensor].index_copy_(0, index, 10 * torch.randn(state[m.tensor][index].shape, generator=gen))
                bias = state.get(m.tensor.rpartition(".")[0] + ".bias")
                if bias is not None:
                    bias[index] = 10 * torch.randn(len(index), generator=gen)
            for norm in g.norms:
                owner = norm.rpartition(".")[0]
                for local in ("weight", "bias", "running_mean"):
                    state[f"{owner}.{local}"][chosen] = 10 * torch.randn(int(chosen.sum()), generator=gen)


# --- unit masks are exact weight masks --------------------------------------------------------------------

@pytest.mark.parametrize("name", ["resnet", "kws", "conv", "mlp"])
def test_unit_masks_expand_to_exact_weight_masks(name):
    model, x = models()[name]
    roles, groups, left, mask = one_round(model, x)
    keep = kept_units(groups, mask)
    assert all(0 < int(k.sum()) < len(k) for k in keep.values())  # every group lost units and kept some
    shapes = {n: mask[n].shape for n in roles}
    expected = closed_form(groups, keep, shapes)
    for n in roles:
        assert torch.equal(mask[n], expected[n]), n
    for g in groups:  # a dropped unit's rows and columns are all False; a kept one's rows hold a kept weight
        for m in g.members:
            dropped = mask[m.tensor].index_select(m.dim, m.index[~keep[g.name]].flatten())
            assert not dropped.any(), (g.name, m.tensor)
        for m in g.writers:
            kept_rows = mask[m.tensor].index_select(0, m.index[keep[g.name]].flatten())
            assert kept_rows.reshape(len(kept_rows), -1).any(dim=1).all()
    again = expand_units(groups, keep, dense(model, roles))
    assert all(torch.equal(again[n], mask[n]) for n in roles)
    assert all(torch.equal(kept_units(groups, again)[g], keep[g]) for g in keep)
    output = [n for n, kind in roles.items() if kind == "output"]
    assert mask[output[0]].any(dim=1).all()  # every class keeps its row: the outputs are never units


def test_what_the_graph_groups():
    """Facts of the architectures, not of the code: a residual stream is one group (the stem and every block
    writing into it), and the flatten after a conv gives each channel a block of H*W columns."""
    model, x = models()["resnet"]
    _, groups, left = traced(model, x)
    stream = next(g for g in groups if any(m.tensor == "conv.weight" for m in g.writers))
    assert {m.tensor for m in stream.writers} == {"conv.weight", "blocks.0.conv2.weight"}
    assert {m.tensor for m in stream.readers} >= {"blocks.1.conv1.weight", "blocks.1.shortcut.0.weight"}
    assert left == ["fc: its channels are the model's outputs"]
    model, x = models()["conv"]
    _, groups, _ = traced(model, x)
    flat = next(g for g in groups if g.name == "convs.1.weight")
    (reader,) = [m for m in flat.readers if m.tensor == "fcs.0.weight"]
    spatial = reader.index.shape[1]
    assert spatial * flat.size == model.fcs[0].in_features
    assert torch.equal(reader.index, torch.arange(model.fcs[0].in_features).reshape(flat.size, spatial))


@pytest.mark.parametrize("name", ["resnet", "kws", "conv", "mlp"])
def test_the_masked_network_ignores_its_dropped_channels(name):
    model, x = models()[name]
    roles, groups, _, mask = one_round(model, x)
    keep = kept_units(groups, mask)
    masked(model, mask)
    with torch.no_grad():
        before = model(x)
        perturb_units(model, groups, {g: ~k for g, k in keep.items()})
        after = masked(model, mask)(x)
    assert torch.allclose(before, after, rtol=1e-5, atol=1e-5)
    first = groups[0].name  # the check can fail: a kept unit's bias or norm does move the output
    with torch.no_grad():
        perturb_units(model, groups[:1], {first: keep[first] & (torch.cumsum(keep[first].int(), 0) == 1)})
        moved = masked(model, mask)(x)
    assert not torch.allclose(before, moved, rtol=1e-3, atol=1e-3)


# --- unit counts follow the rates -------------------------------------------------------------------------

def test_each_group_keeps_its_kinds_rate_of_its_units_per_round():
    model, x = models()["conv"]
    roles, groups, _ = traced(model, x)
    mask = dense(model, roles)
    counts = {g.name: g.size for g in groups}
    for _ in range(3):
        mask = prune_units_round(groups, magnitudes(model, roles), mask, RATES["hidden"], RATES["conv"])
        keep = kept_units(groups, mask)
        for g in groups:
            n = counts[g.name]
            counts[g.name] = max(1, n - math.floor(RATES[g.kind] * n + 0.5))
            assert int(keep[g.name].sum()) == counts[g.name], (g.name, g.kind)
    assert counts == {"convs.0.weight": 14, "convs.1.weight": 14, "fcs.0.weight": 131, "fcs.1.weight": 131}


def test_a_group_never_empties_and_global_scope_keeps_the_pooled_total():
    torch.manual_seed(0)
    model, x = MLP(40, [2, 3], 10), torch.randn(2, 40)
    roles, groups, _ = traced(model, x)
    mask = prune_units_round(groups, magnitudes(model, roles), dense(model, roles), 0.9, None)
    assert [int(k.sum()) for k in kept_units(groups, mask).values()] == [1, 1]
    model, x = models()["mlp"]
    roles, groups, _ = traced(model, x)
    scores = magnitudes(model, roles)
    mask = prune_units_round(groups, scores, dense(model, roles), 0.2, 0.4, scope="global")
    keep = kept_units(groups, mask)
    total = sum(g.size for g in groups)
    assert sum(int(k.sum()) for k in keep.values()) == total - math.floor(0.2 * total + 0.5)
    per_unit = unit_scores(groups, scores, dense(model, roles), "l1")
    kept_scores = [float(per_unit[g][u]) for g in keep for u in range(len(keep[g])) if keep[g][u]]
    dropped_scores = [float(per_unit[g][u]) for g in keep for u in range(len(keep[g])) if not keep[g][u]]
    assert min(kept_scores) >= max(dropped_scores)  # one threshold across the groups
    assert len({int(k.sum()) / len(k) for k in keep.values()}) > 1  # not the same share of every group
    # Summed |w| grows with fan-in: pooled with 16,384-input neurons, a conv's 27-weight filters all fall below
    # the threshold, and the group keeps only its best unit (one over the pooled total).
    model, x = models()["conv"]
    roles, groups, _ = traced(model, x)
    mask = prune_units_round(groups, magnitudes(model, roles), dense(model, roles), 0.2, 0.4, scope="global")
    keep = kept_units(groups, mask)
    total = sum(g.size for g in groups)
    assert int(keep["convs.0.weight"].sum()) == 1
    assert sum(int(k.sum()) for k in keep.values()) == total - math.floor(0.2 * total + 0.5) + 1


# --- unit scores --------------------------------------------------------------------------------------------

def test_unit_scores_l1_l2_and_bn_gamma():
    model, x = models()["kws"]
    roles, groups, _ = traced(model, x)
    scores, full = magnitudes(model, roles), dense(model, roles)
    weight = model.convs[0].weight.detach().double()
    group = next(g for g in groups if g.name == "convs.0.weight")
    l1 = unit_scores(groups, scores, full, "l1")[group.name]
    l2 = unit_scores(groups, scores, full, "l2")[group.name]
    assert torch.allclose(l1, weight.abs().flatten(1).sum(1))  # the filter's L1 norm
    assert torch.allclose(l2, weight.flatten(1).norm(dim=1))
    gamma = torch.linspace(-2, 1.5, group.size)
    with torch.no_grad():
        model.norms[0].weight.copy_(gamma)
    weights = dict(model.named_parameters())
    assert torch.equal(unit_scores(groups, scores, full, "bn-gamma", weights)[group.name], gamma.abs())
    mask = prune_units_round(groups, scores, full, 0.2, 0.5, how="bn-gamma", weights=weights)
    keep = kept_units(groups, mask)[group.name]
    assert torch.equal(keep, gamma.abs() >= gamma.abs().sort().values[group.size // 2])  # the largest |γ| stay
    resnet, rx = models()["resnet"]
    rroles, rgroups, _ = traced(resnet, rx)
    stream = next(g for g in rgroups if len(g.writers) == 2)  # a residual stream: the writers' rows together
    total = sum(dict(resnet.named_parameters())[m.tensor].detach().double().abs().flatten(1).sum(1)
                for m in stream.writers)
    assert torch.allclose(unit_scores(rgroups, magnitudes(resnet, rroles), dense(resnet, rroles), "l1")[stream.name],
                          total)


# --- groups left dense --------------------------------------------------------------------------------------

class Mixed(nn.Module):
    """Channels normalized together (LayerNorm over channels), attention, and the classes: none is a unit."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.LayerNorm(8)
        self.conv2 = nn.Conv2d(8, 12, 3, padding=1)
        self.conv3 = nn.Conv2d(12, 16, 1)
        self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
        self.fc = nn.Linear(16, 24)
        self.out = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        x = self.conv3(torch.relu(self.conv2(torch.relu(x))))
        seq = x.flatten(2).transpose(1, 2)
        seq, _ = self.attn(seq, seq, seq)
        return self.out(torch.relu(self.fc(seq.mean(1))))


def test_layernorm_attention_and_the_outputs_are_left_dense_and_named():
    torch.manual_seed(0)
    _, groups, left = traced(Mixed(), torch.randn(2, 3, 6, 6))
    assert [g.name for g in groups] == ["conv2.weight", "fc.weight"]
    members = {(m.tensor, m.dim) for g in groups for m in g.members}
    assert members == {("conv2.weight", 0), ("conv3.weight", 1), ("fc.weight", 0), ("out.weight", 1)}
    assert any(line.startswith("conv1:") and "LN" in line for line in left), left
    assert any("MHA" in line for line in left), left
    assert "out: its channels are the model's outputs" in left


# --- a structured run: controls, reproducibility, readers ---------------------------------------------------

FIND = ["fsdd-cnn", "--granularity", "channel", "--trials", "1", "--levels", "2", "--iterations", "30",
        "--arms", "imp,random,scratch", "--max-replicas", "1", "--no-progress",
        "--set", "train.train_accuracy_examples=100", "--set", "train.test_curves=false"]  # evaluation dominates


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shared_data) -> tuple[Path]:
    """One structured run (the fast tier's readers and controls read it)."""
    return (finished_run(tmp_path_factory.mktemp("structured0"), *FIND, "--data-dir", str(shared_data)),)


@pytest.mark.slow  # a second run of the fixture's config (12 s): the second tier, which CI also runs
def test_two_structured_runs_are_bit_identical_and_hash_apart_from_weight_runs(runs, shared_data, tmp_path):
    a, b = runs[0], finished_run(tmp_path, *FIND, "--data-dir", str(shared_data))
    assert a.name == b.name
    files = sorted(p.relative_to(a) for p in a.glob("trial_*/**/*.safetensors"))
    assert any(f.name == "mask.safetensors" for f in files) and any(f.name == "final.safetensors" for f in files)
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    from lottery.cli import _parser, build_config

    def name(*args: str) -> str:
        return build_config(_parser().parse_args(["find", *args])).run_name()

    weight_args = [x for i, x in enumerate(FIND) if x != "--granularity" and FIND[i - 1] != "--granularity"]
    assert name(*FIND) == a.name
    assert name(*weight_args) != a.name


def test_the_random_and_scratch_arms_have_the_tickets_shapes(runs, shared_data):
    run = open_run(runs[0])
    model, model_fn, data, _ = model_and_data(run, shared_data)
    groups = run.unit_groups(model, data.features(data.x_train[:2]))
    for level in (1, 2):
        ticket, random = run.mask(0, level), run.mask(0, level, "random")
        mine, theirs = kept_units(groups, ticket), kept_units(groups, random)
        for g in groups:
            assert int(mine[g.name].sum()) == int(theirs[g.name].sum()) < g.size
        assert any(not torch.equal(mine[g], theirs[g]) for g in mine)  # different units
        assert all(torch.equal(random[n], expand_units(groups, theirs, dense(model, random))[n]) for n in random)
        # scratch: exactly the ticket's mask (no mask of its own; trained under the ticket's digest) ...
        assert not run.store.arm_mask_path(0, level, "scratch").exists()
        metrics = json.loads(run.store.metrics_path(0, level, "scratch").read_text())
        assert metrics["mask_digest"] == tensor_digest(ticket)
        final = run.final(0, level, "scratch")
        assert all(not final[n][~ticket[n]].any() for n in ticket)
        # ... from a fresh draw scaled by sqrt(fan-in / kept fan-in) per row
        fresh = initial_weights(model_fn, derive_seed(run.config.seed, "reinit", "scratch", level), 0)
        start = run.arm_start(0, level, "scratch")
        for n, m in ticket.items():
            rows = m.reshape(m.shape[0], -1)
            factor = torch.sqrt(rows.shape[1] / rows.sum(1).clamp(min=1).double()).float()
            assert torch.allclose(start[n], fresh[n] * factor.view(-1, *[1] * (m.dim() - 1)), rtol=1e-6), n
            if (rows.sum(1) < rows.shape[1]).any():
                assert not torch.allclose(start[n], fresh[n])
            bias = n.rpartition(".")[0] + ".bias"
            if bias in start:
                assert torch.allclose(start[bias], fresh[bias] * factor)


@pytest.mark.slow  # trains stability's copies (about 10 s): the second tier, which CI also runs
def test_stability_draws_the_random_arms_own_units(runs, shared_data, tmp_path):
    """Without the saved random mask, stability draws the one `find` drew: per group of channels, not weights."""
    saved_path = runs[0] / "trial_0" / "level_02" / "random" / "mask.safetensors"
    saved = {n: t.bool() for n, t in load_tensors(saved_path).items()}
    copy = copy_of_run(runs[0], tmp_path)
    (copy / "trial_0" / "level_02" / "random" / "mask.safetensors").unlink()
    run = open_run(copy)
    model, _, data, _ = model_and_data(run, shared_data)
    units = run.unit_groups(model, data.features(data.x_train[:2]))
    drawn = point_mask(run, Point(0, 2, "random", 0), "cpu", units)
    assert all(torch.equal(drawn[n], saved[n]) for n in saved)
    by_weight = point_mask(run, Point(0, 2, "random", 0), "cpu")
    assert any(not torch.equal(by_weight[n], saved[n]) for n in saved)  # the test can fail
    result = run_main("stability", str(copy), "--levels", "2", "--rewind", "0", "--alphas", "2", "--arms", "random",
                      "--train-examples", "20", "--data-dir", str(shared_data), "--no-progress", "--max-replicas", "2")
    assert result.returncode == 0, result.stderr
    for c in (0, 1):
        final = load_tensors(copy / "stability" / "fresh-optimizer" / "k_0" / "trial_0" / "level_02" / "random" /
                         f"copy_{c}" / "final.safetensors")
        assert all(not final[n][~saved[n]].any() and final[n][saved[n]].all() for n in saved)


def test_report_export_noise_and_attack_read_a_structured_run(runs, shared_data, tmp_path):
    run_dir = copy_of_run(runs[0], tmp_path)
    data = ["--data-dir", str(shared_data), "--no-progress"]
    assert run_main("report", str(run_dir)).returncode == 0
    assert (run_dir / "report" / "report.md").exists()
    out = tmp_path / "ticket.safetensors"
    result = run_main("export", str(run_dir), "--level", "2", "--arm", "scratch", "--out", str(out))
    assert result.returncode == 0, result.stderr
    exported, run = load_tensors(out), open_run(run_dir)
    mask, start = run.mask(0, 2), run.arm_start(0, 2, "scratch")
    assert all(torch.equal(exported[f"mask/{n}"].bool(), mask[n]) for n in mask)
    assert all(torch.equal(exported[f"start/{n}"], start[n]) for n in start)  # scratch's own draw, not θ0
    result = run_main("noise", str(run_dir), "--sigmas", "1", "--levels", "2", "--draws", "1", *data)
    assert result.returncode == 0, result.stderr
    result = run_main("attack", str(run_dir), "--method", "fgsm", "--eps", "0.1", "--levels", "2", "--examples", "20",
                      *data)
    assert result.returncode == 0, result.stderr


# --- the user's own loop -------------------------------------------------------------------------------------

def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 16), nn.ReLU(), nn.Linear(16, 4))


def test_the_user_loop_prunes_channels_and_needs_an_example(tmp_path):
    torch.manual_seed(0)
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 4, (32,))
    with pytest.raises(lottery.UserError) as refused:
        lottery.IMP(small_cnn, tmp_path / "none", levels=1, granularity="channel", verbose=False)
    assert "example" in str(refused.value) and "\n" not in str(refused.value)
    imp = lottery.IMP(small_cnn, tmp_path / "run", levels=1, granularity="channel", example=x[:2], rate_conv=0.25,
                      verbose=False)
    for net in imp.networks():
        opt = net.attach(torch.optim.SGD(net.model.parameters(), lr=0.05))
        for _ in range(5):
            loss = F.cross_entropy(net.model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        net.finish(test_accuracy=0.5, val_loss=loss.item())
    assert [r["level"] for r in imp.results()] == [0, 1]
    mask = {n: t.bool() for n, t in load_tensors(imp.run_dir / "trial_0" / "level_01" / "mask.safetensors").items()}
    assert (~mask["0.weight"]).flatten(1).all(1).sum() == 2  # round(0.25 * 8) of conv 1's 8 channels go
    dropped = (~mask["0.weight"]).flatten(1).all(1)
    assert not mask["2.weight"][:, dropped].any() and mask["2.weight"][:, ~dropped].any()
    assert mask["7.weight"].any(1).all()  # the classes stay


# --- refusals -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("args, fragment", [
    (["--pattern", "2:4"], "prune.pattern"),
    (["--one-shot", "50"], "one-shot"),
    (["--arms", "imp,synflow"], "synflow"),
    (["--arms", "imp,snip-global"], "-global"),
    (["--set", "model.hidden=[1]"], "no channel of MLP can be pruned whole"),
    (["--set", "model.hidden=[16]", "--set", "prune.ignore=layers.1.weight"], "left dense by prune.ignore"),
])
def test_what_cannot_be_structured_is_refused_in_one_line(tmp_path, shared_data, args, fragment):
    result = run_main("find", "fsdd-mlp", "--granularity", "channel", "--levels", "1", "--iterations", "10",
                      *args, "--data-dir", str(shared_data), "--out", str(tmp_path))
    one_line_exit_2(result, fragment)
    assert not any(tmp_path.iterdir())


def test_a_graph_model_is_refused_in_one_line(tmp_path, shared_data):
    with warnings.catch_warnings(record=True) as caught:  # a library's warning would be a second stderr line
        warnings.simplefilter("always")
        result = run_main("find", "gcn-cora", "--granularity", "channel", "--levels", "1", "--iterations", "10",
                          "--data-dir", str(shared_data), "--out", str(tmp_path))
    one_line_exit_2(result, "prune.granularity=channel", "GCN")
    assert not [w for w in caught if "torch_pruning" in w.filename], [str(w.message) for w in caught]


def test_transfer_of_a_structured_ticket_trains_a_structured_target(tmp_path):
    """The target run transfer trains for comparison is pruned as the source was (its random arm drops whole
    neurons), and the source's ticket trains on the new data at its own size."""
    source = finished_run(tmp_path, "mnist1d-mlp", "--granularity", "channel", "--trials", "1", "--levels", "1",
                          "--iterations", "20", "--set", "model.hidden=[32,32]", "--arms", "imp", "--no-progress")
    result = run_main("transfer", str(source), "--to", "mnist1d", "--set", "data.permute_fraction=0.5",
                      "--no-progress")
    assert result.returncode == 0, result.stderr
    out = source / "transfer" / "mnist1d-permute0.5"
    target = open_run(out / "target-run")
    assert target.config.prune.granularity == "channel"
    rows = target.mask(0, 1, "random")["layers.0.weight"]
    assert (rows.all(1) | ~rows.any(1)).all() and not rows.all()  # whole neurons, some gone
    metrics = json.loads((out / "sources" / "mnist1d" / "trial_0" / "level_01" / "metrics.json").read_text())
    assert metrics["weights_remaining"] == sum(int(m.sum()) for m in open_run(source).mask(0, 1).values())
