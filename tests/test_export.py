"""A ticket taken away: export, load into a fresh module, torch.nn.utils.prune form, compact form, ONNX,
sparse forms; foreign and broken files refused in one line; nothing unpickled."""
from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

import lottery
from lottery.deploy.compact import compact, size_of
from lottery.deploy.bench import masked_and_compact, model_for, to_onnx
from lottery.errors import UserError
from lottery.deploy.export import choose_level, export_ticket, load_ticket, read_ticket, ticket_of, to_torch_prune
from lottery.storage.finished import FinishedRun, model_and_data, open_run
from lottery.deploy.inference import compare_forms, sparse_form

from conftest import run_cli


@pytest.fixture(scope="module")
def sparse_run(tmp_path_factory, shared_data):
    """MNIST, an MLP 784-64-32-10, pruned one-shot to 2% and 10%: deep enough that whole units disconnect."""
    config = lottery.get_preset("lenet300-mnist")
    config.model.name, config.model.hidden = "mlp", [64, 32]
    config.train.iterations, config.train.eval_every = 300, 100
    config.trials, config.arms = 1, ["imp", "reinit"]
    config.prune.one_shot = [10.0, 2.0]
    return lottery.find_tickets(config, tmp_path_factory.mktemp("runs") / "sparse", data_dir=shared_data,
                                options=lottery.RunOptions(progress=False))


@pytest.fixture(scope="module")
def opened(sparse_run, shared_data):
    run = open_run(sparse_run)
    model, model_fn, data, _ = model_and_data(run, shared_data)
    return run, model_fn, data


def test_export_then_load_gives_the_runs_own_network(sparse_run, opened, tmp_path):
    run, model_fn, data = opened
    ticket = read_ticket(export_ticket(sparse_run, tmp_path / "t.safetensors", level=2, command="test"))
    assert ticket.info["source"]["level"] == 2 and ticket.info["command"] == "test"
    assert ticket.info["percent_remaining"] == pytest.approx(run.percent(2))
    assert sum(v["kept"] for v in ticket.info["layers"].values()) == ticket.info["weights_remaining"]
    x = data.features(data.x_test[:500])
    ours = load_ticket(tmp_path / "t.safetensors", model_fn()).trained
    theirs = run.final(0, 2)
    assert all(torch.equal(ours[n], theirs[n]) for n in theirs) and set(ours) == set(theirs)
    model = model_fn().eval()
    load_ticket(ticket, model)
    reference = torch.func.functional_call(model_fn().eval(), theirs, (x,))
    assert torch.equal(model(x), reference)
    start = model_fn()
    load_ticket(ticket, start, weights="start")  # θ0 under the mask
    for name, mask in ticket.mask.items():
        weight = dict(start.named_parameters())[name]
        assert torch.equal(weight, run.init(0)[name] * mask)
    pruned = to_torch_prune(model_fn().eval(), ticket)
    load_ticket(ticket, model_fn())  # the prune form keeps names: weight_orig + weight_mask
    layer = pruned.layers[0]
    assert hasattr(layer, "weight_orig") and torch.equal(layer.weight_mask.bool(), ticket.mask["layers.0.weight"])


def test_best_level_is_the_sparsest_that_matches_the_dense_network(opened):
    run, _, _ = opened
    rows = [{"arm": "imp", "trial": 0, "level": lv, "percent_remaining": p, "early_stop_test_accuracy": a}
            for lv, p, a in [(0, 100.0, 0.95), (1, 50.0, 0.951), (2, 20.0, 0.949), (3, 10.0, 0.93)]]
    fake = FinishedRun(run.store, run.config, rows)
    assert choose_level(fake, "imp", 0.0) == 1
    assert choose_level(fake, "imp", 0.2) == 2
    assert choose_level(fake, "imp", 5.0) == 3
    low = [dict(r, early_stop_test_accuracy=0.5) if r["level"] else r for r in rows]
    assert choose_level(FinishedRun(run.store, run.config, low), "imp", 0.0) == 0


def test_the_compact_model_computes_what_the_masked_model_computes(sparse_run, opened):
    run, model_fn, data = opened
    x = data.features(data.x_test[:1000])
    for level in (1, 2):
        ticket = ticket_of(sparse_run, level=level)
        masked, small, before, after = masked_and_compact(ticket, model_fn(), x)
        assert after.parameters < before.parameters  # whole units disconnect at 10% and 2%
        assert after.flops < before.flops and before.nonzero_parameters < after.parameters
        with torch.no_grad():
            assert torch.allclose(small(x), masked(x), atol=1e-5, rtol=0)
            assert torch.equal(small(x).argmax(1), masked(x).argmax(1))


def test_compact_folds_constant_units_and_removes_dead_channels():
    """By hand: a conv channel that nothing reads, a conv channel that only its bias writes (into a padded
    conv: kept, since the padding makes it no constant), a hidden unit that only its bias writes (folded
    into the next bias), and a unit that feeds nothing."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(4 * 4 * 4, 6), nn.ReLU(), nn.Linear(6, 3)).eval()
    mask = {n: torch.ones_like(p, dtype=torch.bool) for n, p in net.named_parameters() if n.endswith("weight")}
    mask["2.weight"][:, 1] = False  # conv channel 1 of layer 0 is read by nothing
    mask["0.weight"][2] = False  # conv channel 2 of layer 0 is relu(bias), read by a padded conv
    mask["2.weight"][3] = False  # conv channel 3 of layer 2 is relu(bias), read through Flatten by a Linear
    mask["6.weight"][4] = False  # hidden unit 4 is relu(bias): folded into the output bias
    mask["8.weight"][:, 5] = False  # hidden unit 5 feeds nothing
    with torch.no_grad():
        net[0].bias[2], net[2].bias[3], net[6].bias[4] = 0.5, 0.7, 0.3
        for name, m in mask.items():
            dict(net.named_parameters())[name].mul_(m)
    x = torch.randn(5, 3, 8, 8)
    small = compact(net, mask, x)
    assert [small[0].out_channels, small[2].out_channels, small[6].out_features] == [3, 3, 4]
    with torch.no_grad():
        assert torch.allclose(small(x), net(x), atol=1e-6, rtol=0)
    assert size_of(small, x).parameters < size_of(net, x, mask).parameters


def test_compact_handles_batchnorm_and_the_keyword_spotting_cnn():
    """Channels of a BN net: one that only BatchNorm's shift drives (folded through the average pool into
    the output bias), one that nothing reads, one whose weights are all pruned before a padded conv (kept
    unless BatchNorm makes it 0)."""
    torch.manual_seed(1)
    net = lottery.build_model(lottery.ModelConfig(name="kws-cnn"), (1, 40, 49), 10)
    for norm in net.norms:  # trained-looking statistics
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
        norm.weight.data.uniform_(0.5, 1.5)
        norm.bias.data.uniform_(-0.2, 0.5)
    net.train()
    mask = {n: torch.rand_like(p) < 0.5 for n, p in net.named_parameters() if n.endswith("weight") and p.dim() > 1}
    mask["convs.2.weight"][5] = False  # written by nothing: BatchNorm's constant, folded into the fc bias
    mask["fc.weight"][:, 7] = False  # read by nothing
    mask["convs.0.weight"][3] = False  # written by nothing, read by a padded conv
    with torch.no_grad():
        net.norms[0].bias[3] = -5.0  # ... whose constant ReLU makes 0: it goes
        for name, m in mask.items():
            dict(net.named_parameters())[name].mul_(m)
    x = torch.randn(6, 1, 40, 49)
    small = compact(net, mask, x)
    assert net.training  # the model keeps its mode
    assert small[0].out_channels == 15 and small[1].num_features == 15 and small[-1].in_features == 62
    with torch.no_grad():
        assert torch.allclose(small(x), net.eval()(x), atol=1e-5, rtol=0)


def test_sparse_forms_and_onnx_give_the_dense_outputs(sparse_run, opened, tmp_path):
    run, model_fn, data = opened
    ticket = ticket_of(sparse_run, level=2)
    x = data.features(data.x_test[:64])
    masked, small, _, _ = masked_and_compact(ticket, model_fn(), x)
    with torch.no_grad():
        for layout in ("csr", "bsr"):
            form = sparse_form(masked, layout)
            assert torch.allclose(form(x), masked(x), atol=1e-5, rtol=0)
            first = next(i for i, m in enumerate(masked) if isinstance(m, nn.Linear))
            weight = form[first].weight
            assert weight.crow_indices().dtype == weight.col_indices().dtype == torch.int32  # 4-byte indices
            assert layout == "bsr" or weight._nnz() == int(masked[first].weight.ne(0).sum())
        conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 36, 4)).eval()
        conv[0].weight.mul_(torch.rand_like(conv[0].weight) < 0.3)
        images = torch.randn(2, 3, 6, 6)
        for layout in ("csr", "bsr"):
            assert torch.allclose(sparse_form(conv, layout)(images), conv(images), atol=1e-5, rtol=0)
    rows = compare_forms(masked, small, x[:1], x, threads=1)
    assert [r["form"] for r in rows] == ["dense", "compact", "csr", "bsr"]
    assert all(r["max_difference"] < 1e-5 and r["weight_bytes"] > 0 for r in rows)
    assert rows[2]["weight_bytes"] < rows[0]["weight_bytes"]  # 2% of the weights, as CSR
    assert to_onnx(small, x, tmp_path / "t.onnx") < 1e-5
    assert [p.name for p in tmp_path.iterdir()] == ["t.onnx"]  # one file: the weights inside, not beside


def test_a_foreign_broken_or_mismatched_ticket_is_one_clear_error(sparse_run, opened, tmp_path, monkeypatch):
    run, model_fn, _ = opened
    final = run.store.arm_dir(0, 1, "imp") / "final.safetensors"
    with pytest.raises(UserError, match="not a lottery ticket file"):
        read_ticket(final)
    path = export_ticket(sparse_run, tmp_path / "t.safetensors", level=1)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(UserError, match="broken.safetensors is not a readable lottery ticket file .*written by .lottery export"):
        read_ticket(broken)
    foreign = tmp_path / "notes.txt"
    foreign.write_text("not a tensor file\n")
    with pytest.raises(UserError, match="notes.txt is not a readable lottery ticket file") as refused:
        read_ticket(foreign)
    assert "remove" not in str(refused.value)  # a file of the user's: never told to delete it
    other = lottery.build_model(lottery.ModelConfig(name="mlp", hidden=[64, 16]), (1, 28, 28), 10)
    with pytest.raises(UserError, match="layers.1.bias is \\[32\\] in the ticket and \\[16\\] in the model"):
        load_ticket(path, other)

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    assert read_ticket(path).info["source"]["level"] == 1  # safetensors and JSON only
    for args in (["bench-inference", str(broken)], ["export", str(sparse_run), "--level", "9", "--out", "x"]):
        result = run_cli(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_export_cli_writes_a_ticket_and_an_onnx_compact_model(sparse_run, shared_data, tmp_path):
    result = run_cli("export", str(sparse_run), "--out", str(tmp_path / "best.safetensors"))
    assert result.returncode == 0, result.stderr
    assert "ticket: level" in result.stdout and read_ticket(tmp_path / "best.safetensors").mask
    result = run_cli("export", str(sparse_run), "--level", "2", "--format", "onnx", "--data-dir", str(shared_data),
                     "--out", str(tmp_path / "t.onnx"))
    assert result.returncode == 0, result.stderr
    assert "compact:" in result.stdout and (tmp_path / "t.onnx").stat().st_size > 0
    fn, data = model_for(read_ticket(tmp_path / "best.safetensors"), shared_data)
    assert data.name == "mnist" and isinstance(fn(), nn.Module)
