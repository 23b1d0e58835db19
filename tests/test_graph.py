"""Graph lottery tickets (issue 30): Cora and CiteSeer, the sparse GCN, edge masks as prunable tensors."""
import shutil

import pytest
import torch
import torch.nn.functional as F

import lottery
from lottery import cli
from lottery.data.graph import Graph
from lottery.models import build_model
from lottery.models.gcn import GATHER_MAX_WIDTH, GCN
from lottery.storage.files import load_tensors

from conftest import torch_threads


@pytest.fixture(scope="module")
def cora(shared_data):
    return lottery.load_dataset("cora", shared_data)


def test_cora_and_citeseer_load_with_the_planetoid_split(shared_data, cora):
    citeseer = lottery.load_dataset("citeseer", shared_data)
    for data, nodes, features, edges, classes, train in ((cora, 2708, 1433, 5278, 7, 140),
                                                          (citeseer, 3327, 3703, 4552, 6, 120)):
        g = data.graph
        assert (g.num_nodes, g.features.shape[1], g.num_edges, data.num_classes) == (nodes, features, edges, classes)
        assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (train, 500, 1000)
        splits = [set(data.x_train.tolist()), set(data.x_val.tolist()), set(data.x_test.tolist())]
        assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])  # disjoint
        assert torch.equal(data.y_test, g.labels[data.x_test]) and bool((data.y_train >= 0).all())
        assert bool((g.edges[0] < g.edges[1]).all())  # each undirected citation once, no self-loops
        assert torch.allclose(g.features.sum(1)[g.features.sum(1) > 0], torch.ones(1))  # rows sum to 1
        assert torch.equal(data.y_train.bincount(), torch.full((classes,), 20))  # 20 labelled papers per topic


def test_a_damaged_or_missing_archive_is_one_line_naming_the_file(shared_data, tmp_path):
    (tmp_path / "planetoid").mkdir()
    with pytest.raises(lottery.UserError, match="cora.npz is missing"):
        lottery.load_dataset("cora", tmp_path)
    damaged = tmp_path / "planetoid" / "cora.npz"
    shutil.copy(shared_data / "planetoid" / "cora.npz", damaged)
    with open(damaged, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(lottery.UserError, match=r"cora.npz: md5 .* is not the expected"):
        lottery.load_dataset("cora", tmp_path)


def _small_graph() -> Graph:
    edges = torch.tensor([[0, 0, 1, 2, 3], [1, 2, 2, 3, 4]])  # a triangle, a path, node 5 isolated
    features = torch.rand(6, 4, generator=torch.Generator().manual_seed(0))
    return Graph(features, edges, torch.tensor([0, 1, 0, 1, 0, 1]), ("a", "b"))


def _dense_reference(model: GCN, graph: Graph, kept_edges: torch.Tensor) -> torch.Tensor:
    """Kipf's GCN with a dense N x N adjacency: normalized by the full graph's degrees, pruned edges removed
    in both directions."""
    n = graph.num_nodes
    full = torch.zeros(n, n)
    full[graph.edges[0], graph.edges[1]] = full[graph.edges[1], graph.edges[0]] = 1
    degree = full.sum(1) + 1
    kept = torch.zeros(n, n)
    i, j = graph.edges[:, kept_edges]
    kept[i, j] = kept[j, i] = 1
    adjacency = (kept + torch.eye(n)) / degree.sqrt()[:, None] / degree.sqrt()[None, :]
    h = adjacency @ (graph.features @ model.layers[0].weight.T) + model.biases[0]
    return adjacency @ (F.relu(h) @ model.layers[1].weight.T) + model.biases[1]


@pytest.mark.parametrize("hidden", [3, GATHER_MAX_WIDTH + 8])  # the gathered and the sparse CSR product
def test_the_sparse_gcn_matches_a_dense_adjacency_and_a_pruned_edge_goes_both_ways(hidden):
    torch.manual_seed(0)
    graph = _small_graph()
    model = GCN(graph, [hidden], 2, dropout=0.5).eval()
    nodes = torch.arange(6)
    with torch.no_grad():
        model.biases[0].normal_(), model.biases[1].normal_()
        assert torch.allclose(model(nodes), _dense_reference(model, graph, torch.ones(5, dtype=torch.bool)), atol=1e-6)
        model.edge_weight[3] = 0.0  # prune the citation (2, 3): both directions, the self-loops stay
        kept = torch.tensor([True, True, True, False, True])
        assert torch.allclose(model(nodes), _dense_reference(model, graph, kept), atol=1e-6)
        assert model.edge_weight.shape == (graph.num_edges,)  # one weight per undirected edge, none per self-loop


def test_a_wide_gcn_trains_to_the_same_bits_twice_and_under_bf16_autocast(cora):
    """UGS's width 512 takes the sparse CSR product of the features: deterministic, and no bf16 kernel is
    needed for it (autocast would otherwise fail on the CPU)."""
    def one_step(bf16: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = build_model(lottery.ModelConfig(name="gcn", hidden=[GATHER_MAX_WIDTH * 2]), cora.input_shape,
                            cora.num_classes, cora.graph).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):  # backward outside, as torch advises
            loss = F.cross_entropy(model(cora.x_train), cora.y_train)
        loss.backward()
        return model(cora.x_train).detach(), model.layers[0].weight.grad
    first, second = one_step(), one_step()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert one_step(bf16=True)[1].abs().sum() > 0


def test_the_edge_weights_are_prunable_as_edges_and_counted_apart(cora):
    model = build_model(lottery.get_preset("gcn-cora").model, cora.input_shape, cora.num_classes, cora.graph)
    roles = lottery.prunable_roles(model, example=cora.x_train[:2])
    assert roles == {"layers.0.weight": "hidden", "layers.1.weight": "output", "edge_weight": "edge"}
    macs = model.inference_macs({})
    assert macs == 2708 * 1433 * 16 + (2 * 5278 + 2708) * 16 + 2708 * 16 * 7 + (2 * 5278 + 2708) * 7


@pytest.fixture(scope="module")
def gcn_run(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("gcn")
    with torch_threads(2):  # the sums of the sparse products on two threads: in index order, the same bits
        assert cli.main(["find", "gcn-cora", "--levels", "2", "--trials", "2", "--iterations", "6", "--no-progress",
                         "--arms", "imp,reinit,random,random-edges", "--out", str(out),
                         "--data-dir", str(shared_data)]) == 0
    (run,) = out.iterdir()
    return run


def test_each_level_prunes_20_percent_of_weights_and_5_percent_of_citations(gcn_run):
    rows = lottery.read_results(gcn_run)
    weights, edges = 1433 * 16 + 16 * 7, 5278
    for row in rows:
        e = edges
        for _ in range(row["level"]):
            e = e - int(0.05 * e + 0.5)
        assert row["graph_edges"] == edges and row["edges_remaining"] == e, row
        assert row["prunable_weights"] == weights  # percent_remaining counts weights only
        assert row["macs"] < row["dense_macs"] or row["level"] == 0
    level2 = [r for r in rows if r["level"] == 2]
    assert {r["arm"] for r in level2} == {"imp", "reinit", "random", "random-edges"}
    assert len({(r["weights_remaining"], r["edges_remaining"]) for r in level2}) == 1  # same counts, every arm
    assert abs(level2[0]["percent_remaining"] - 64.0) < 0.1


def test_random_edges_keeps_the_tickets_weights_and_draws_a_graph_of_its_size(gcn_run):
    level = gcn_run / "trial_0" / "level_02"
    ticket, control = load_tensors(level / "mask.safetensors"), load_tensors(level / "random-edges" / "mask.safetensors")
    assert torch.equal(ticket["layers.0.weight"], control["layers.0.weight"])
    assert int(ticket["edge_weight"].sum()) == int(control["edge_weight"].sum())
    assert not torch.equal(ticket["edge_weight"], control["edge_weight"])


def test_edges_outside_every_labelled_nodes_receptive_field_keep_their_start(gcn_run, cora):
    start = load_tensors(gcn_run / "trial_0" / "init.safetensors")["edge_weight"]
    final = load_tensors(gcn_run / "trial_0" / "level_00" / "imp" / "final.safetensors")["edge_weight"]
    moved = final != start
    share = float(moved.float().mean())
    assert 0.2 < share < 0.9  # a 2-layer GCN's loss reaches the edges within 2 hops of the 140 labelled papers
    near = torch.zeros(cora.graph.num_nodes, dtype=torch.bool)
    near[cora.x_train] = True
    i, j = cora.graph.edges
    one_hop = near.clone()
    one_hop[i[near[j]]] = one_hop[j[near[i]]] = True
    assert not bool(moved[~(one_hop[i] | one_hop[j])].any())  # no gradient ever reached these: exactly θ0


def test_invariant_7_graph_arms_are_bit_reproducible_in_any_pass(gcn_run, tmp_path, shared_data):
    with torch_threads(2):
        assert cli.main(["find", "gcn-cora", "--levels", "2", "--trials", "2", "--iterations", "6", "--no-progress",
                         "--arms", "imp,reinit,random,random-edges", "--out", str(tmp_path), "--max-replicas", "1",
                         "--data-dir", str(shared_data)]) == 0
    (again,) = tmp_path.iterdir()
    for path in sorted(gcn_run.rglob("*.safetensors")):
        a, b = load_tensors(path), load_tensors(again / path.relative_to(gcn_run))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path


def test_report_and_export_work_on_a_graph_run(gcn_run, tmp_path):
    assert cli.main(["report", str(gcn_run)]) == 0
    assert cli.main(["export", str(gcn_run), "--level", "2", "--out", str(tmp_path / "t.safetensors")]) == 0
    assert (tmp_path / "t.safetensors").exists()
    info = lottery.read_ticket(tmp_path / "t.safetensors").info
    assert info["prunable_weights"] == 1433 * 16 + 16 * 7 and info["graph_edges"] == 5278  # weights and edges apart
    assert abs(info["percent_remaining"] - 64.0) < 0.1


@pytest.mark.parametrize("args, message", [
    (["gcn-cora", "--set", "data.dataset=mnist"], "gcn classifies a graph's nodes"),
    (["lenet300-mnist", "--arms", "imp,random-edges"], "random-edges arm"),
    (["gcn-cora", "--set", "data.val_size=300"], "fixed validation split of 500"),
])
def test_graph_misuse_is_one_line_and_exit_2(args, message, shared_data, tmp_path, capsys):
    assert cli.main(["find", *args, "--levels", "0", "--iterations", "2", "--no-progress", "--out", str(tmp_path),
                     "--data-dir", str(shared_data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_weight_decay_on_the_parameters_a_model_names_only_as_torchs_param_groups():
    from lottery.config import TrainConfig
    from lottery.training.optim import ReplicaOptimizer

    torch.manual_seed(0)
    a, b = torch.randn(2, 5, 3), torch.randn(2, 4)  # two replicas of two parameters
    cfg = TrainConfig(optimizer="adam", lr=0.01, weight_decay=0.1)
    ours = ReplicaOptimizer(cfg, [a, b], decayed=[True, False])
    plain = [[a[r].clone().requires_grad_(), b[r].clone().requires_grad_()] for r in range(2)]
    torch_opts = [torch.optim.Adam([{"params": [p[0]], "weight_decay": 0.1}, {"params": [p[1]]}], lr=0.01)
                  for p in plain]
    for _ in range(3):
        grads = [torch.randn_like(a), torch.randn_like(b)]
        ours.step([g[r] for g in grads for r in range(2)])
        for r, opt in enumerate(torch_opts):
            plain[r][0].grad, plain[r][1].grad = grads[0][r].clone(), grads[1][r].clone()
            opt.step()
    for r in range(2):
        assert torch.allclose(a[r], plain[r][0], atol=1e-6) and torch.allclose(b[r], plain[r][1], atol=1e-6)
