"""Pruning at initialization (issue 29): SNIP, GraSP and SynFlow against hand-computed cases, Frankle et al.
2021's shuffle and inverted controls, exact counts for every method, and the arms in a real run."""
import pytest
import torch

import lottery
from lottery.pruning.arms import ARMS, shuffled
from lottery.pruning.saliency import grasp, snip, synflow, synflow_scores
from lottery.storage.files import load_tensors


def test_snip_is_the_gradient_times_the_weight():
    w, x = torch.tensor([[2.0, -3.0], [0.5, 1.0]]), torch.tensor([[1.0, 4.0], [-2.0, 0.25]])
    scores = snip(lambda p: (p["w"] * x).sum(), {"w": w}, ["w"])  # dL/dw = x
    assert torch.equal(scores["w"], (w * x).abs())


def test_grasp_is_the_weight_times_hessian_gradient():
    w, a = torch.tensor([1.0, -2.0, 3.0]), torch.tensor([0.5, 2.0, 1.0])
    # L = ½ Σ a w²: g = a w, H = diag(a), Hg = a² w, score θ ⊙ Hg = a² w²
    scores = grasp(lambda p: 0.5 * (a * p["w"] ** 2).sum(), {"w": w}, ["w"])
    assert torch.allclose(scores["w"], a ** 2 * w ** 2)


def test_synflow_scores_a_two_layer_product_by_hand():
    w1 = torch.tensor([[1.0, -2.0], [3.0, 0.5]])  # 2 -> 2
    w2 = torch.tensor([[-1.0, 2.0]])  # 2 -> 1
    ones = torch.ones(2, dtype=torch.float64)
    scores = synflow_scores(lambda p: p["w2"] @ (p["w1"] @ ones), {"w1": w1, "w2": w2}, ["w1", "w2"])
    # R = Σ_i |w2_i| Σ_j |w1_ij|: dR/dw1_ij = |w2_i|, dR/dw2_i = Σ_j |w1_ij|
    assert torch.allclose(scores["w1"], (w1.abs() * w2.abs().T).double())
    assert torch.allclose(scores["w2"], (w2.abs() * w1.abs().sum(1)).double())


def test_synflow_ends_at_exact_counts_layerwise_and_global_and_inverted_keeps_the_others():
    torch.manual_seed(0)
    init = {"a": torch.randn(20, 10), "b": torch.randn(5, 20)}
    output = lambda p: p["b"] @ (p["a"] @ torch.ones(10, dtype=torch.float64))  # noqa: E731
    _, layerwise = synflow(output, init, ["a", "b"], {"a": 37, "b": 11}, rounds=10)
    assert (int(layerwise["a"].sum()), int(layerwise["b"].sum())) == (37, 11)
    _, pooled = synflow(output, init, ["a", "b"], 60, rounds=10)
    assert int(pooled["a"].sum() + pooled["b"].sum()) == 60
    _, inverted = synflow(output, init, ["a", "b"], 60, rounds=1, invert=True)
    _, once = synflow(output, init, ["a", "b"], 60, rounds=1)
    assert int(inverted["a"].sum() + inverted["b"].sum()) == 60
    assert not torch.equal(inverted["a"], once["a"])


def test_shuffle_keeps_each_tensors_count_and_moves_the_positions():
    """Synaptic-Flow's shuffle() was a no-op; ours must change positions and keep counts."""
    torch.manual_seed(1)
    mask = {"a": torch.rand(30, 30) < 0.2, "b": torch.rand(10, 30) < 0.5}
    out = shuffled(mask, seed=7)
    for n in mask:
        assert int(out[n].sum()) == int(mask[n].sum())
        assert not torch.equal(out[n], mask[n])
    assert all(torch.equal(out[n], shuffled(mask, seed=7)[n]) for n in mask)  # a pure function of the seed


PAI_ARMS = ["imp", "snip", "grasp-global", "synflow-global", "snip-global-shuffle", "synflow-inverted", "early-bird",
            "init-magnitude-global", "grasp-global-inverted"]


def _config() -> lottery.RunConfig:
    config = lottery.get_preset("mnist1d-mlp")
    config.trials, config.arms = 1, list(PAI_ARMS)
    config.model.hidden = [32, 32]
    config.prune.levels = 2
    config.train.iterations, config.train.eval_every, config.train.batch_size = 40, 20, 50
    return config


@pytest.fixture(scope="module")
def pai_run(tmp_path_factory, mnist1d):
    return lottery.find_tickets(_config(), tmp_path_factory.mktemp("pai") / "run", data=mnist1d,
                                options=lottery.RunOptions(progress=False))


def test_every_method_keeps_exactly_the_tickets_count_layerwise_or_in_total(pai_run):
    for level in (1, 2):
        ticket = load_tensors(pai_run / "trial_0" / f"level_{level:02d}" / "mask.safetensors")
        for arm in PAI_ARMS[1:]:
            mask = load_tensors(pai_run / "trial_0" / f"level_{level:02d}" / arm / "mask.safetensors")
            if "global" in arm:
                assert sum(int(m.sum()) for m in mask.values()) == sum(int(m.sum()) for m in ticket.values()), arm
            else:
                assert {n: int(m.sum()) for n, m in mask.items()} == {n: int(m.sum()) for n, m in ticket.items()}, arm
    rows = lottery.read_results(pai_run)
    assert {r["arm"] for r in rows} == set(PAI_ARMS)
    assert all(r["early_stop_test_accuracy"] > 0.15 for r in rows)  # each trained (chance is 0.10)


def test_global_methods_choose_their_own_layer_shares_and_the_shuffle_keeps_them(pai_run):
    level = pai_run / "trial_0" / "level_02"
    ticket, synflow_mask, shuffle = (load_tensors(level / p) for p in (
        "mask.safetensors", "synflow-global/mask.safetensors", "snip-global-shuffle/mask.safetensors"))
    assert {n: int(m.sum()) for n, m in synflow_mask.items()} != {n: int(m.sum()) for n, m in ticket.items()}
    # snip-global-shuffle: the global method's own per-layer counts, other positions
    assert sum(int(m.sum()) for m in shuffle.values()) == sum(int(m.sum()) for m in ticket.values())


def test_invariant_7_init_pruning_arms_are_bit_reproducible_in_any_pass(pai_run, tmp_path, mnist1d):
    again = lottery.find_tickets(_config(), tmp_path / "run", data=mnist1d,
                                 options=lottery.RunOptions(progress=False, max_replicas=1))
    for path in sorted(pai_run.rglob("*.safetensors")):
        other = again / path.relative_to(pai_run)
        a, b = load_tensors(path), load_tensors(other)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), path


def test_the_user_loop_refuses_an_arm_that_needs_training_examples(tmp_path):
    with pytest.raises(lottery.UserError, match="snip"):
        lottery.IMP(lambda: torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "run", arms=["imp", "snip"],
                    verbose=False)


def test_every_init_arm_is_registered_with_its_controls():
    for method in ("snip", "grasp", "synflow", "init-magnitude"):
        for suffix in ("", "-inverted", "-global", "-global-inverted", "-global-shuffle"):
            assert f"{method}{suffix}" in ARMS


def test_the_cost_ledger_counts_each_arms_training_and_finding_in_dense_runs(tmp_path, mnist1d):
    """T = 100 iterations, rewinding to k = 20: each pruned network trains 80; the ticket at level ℓ was found
    by the trunk's trainings before it (100, then 80 more); one-shot by the dense training; random (layer-wise
    counts, from the rates alone) by nothing; SNIP by 10 batches; SynFlow by 100 one-example rounds (100/50)."""
    config = _config()
    config.arms = ["imp", "reinit", "random", "one-shot", "snip-global", "synflow"]
    config.train.iterations, config.prune.rewind_iteration = 100, 20
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    got = {(r["arm"], r["level"]): (r["train_iterations"], r["cost_to_find"], r["cost_total"])
           for r in lottery.read_results(run)}
    assert got[("imp", 0)] == (100, 0.0, 1.0)
    assert got[("imp", 1)] == got[("reinit", 1)] == (80, 1.0, 1.8)
    assert got[("imp", 2)] == got[("reinit", 2)] == (80, 1.8, 2.6)
    assert got[("one-shot", 2)] == (80, 1.0, 1.8)
    assert got[("random", 2)] == (80, 0.0, 0.8)
    assert got[("snip-global", 2)] == (80, 0.1, 0.9)
    assert got[("synflow", 1)] == (80, 0.02, 0.82)
    flops = {(r["arm"], r["level"]): r["train_flops"] for r in lottery.read_results(run)}
    per_iteration = 3 * 50 * 2 * (40 * 32 + 32 * 32 + 32 * 10)  # forward+backward of a batch of 50, dense
    assert flops[("imp", 0)] == 100 * per_iteration and flops[("random", 2)] == 80 * per_iteration
    report = lottery.write_report(run)
    assert (report / "cost.png").exists() and "cost to find" in (report / "report.md").read_text()


def test_the_early_bird_rule_stops_at_the_first_mask_within_epsilon_of_the_last_five():
    from lottery.pruning.arms import early_bird, mask_distance

    reference = {"w": torch.zeros(100, dtype=torch.bool)}
    reference["w"][:50] = True  # keep 50 of 100
    base = torch.arange(100, dtype=torch.float32)
    trajectory = []
    for i in range(12):  # weights whose top 50 settle: before iteration 6 the order keeps changing a lot
        noise = torch.randn(100, generator=torch.Generator().manual_seed(i)) * (100.0 if i < 6 else 0.5)
        trajectory.append((i * 10, {"w": base + noise}))
    mask, found = early_bird(trajectory, reference, window=5, epsilon=0.1)
    assert found["found"] and int(mask["w"].sum()) == 50
    first = next(it for it, d in found["distances"] if d <= 0.1)
    assert found["iteration"] == first == found["distances"][-1][0]
    assert found["iteration"] >= 100  # five settled masks are needed after the noisy ones: iterations 60..100
    assert all(d > 0.1 for _, d in found["distances"][:-1])
    a, b = {"w": torch.tensor([True, False, True, False])}, {"w": torch.tensor([True, True, False, False])}
    assert mask_distance(a, b) == 0.5


def test_an_early_bird_run_keeps_the_trajectory_and_costs_what_the_dense_run_spent_until_the_bird(tmp_path, mnist1d):
    config = _config()
    config.arms = ["imp", "early-bird"]
    config.train.iterations, config.train.eval_every, config.prune.levels = 200, 10, 2
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    assert len(list((run / "trial_0" / "level_00" / "imp" / "trajectory").glob("*.safetensors"))) == 21  # 0..200
    for level in (1, 2):
        ticket = load_tensors(run / "trial_0" / f"level_{level:02d}" / "mask.safetensors")
        bird = load_tensors(run / "trial_0" / f"level_{level:02d}" / "early-bird" / "mask.safetensors")
        assert {n: int(m.sum()) for n, m in bird.items()} == {n: int(m.sum()) for n, m in ticket.items()}
    from lottery.procedure.lineage import read

    found = read(run / "trial_0" / "level_01" / "early-bird" / "mask.safetensors")["found"]
    row = next(r for r in lottery.read_results(run) if r["arm"] == "early-bird" and r["level"] == 1)
    assert row["cost_to_find"] == found["iteration"] / 200
    assert found["distances"] and found["iteration"] <= 200


def test_invariant_2_every_level_starts_from_theta0_not_from_the_last_trained_weights(tmp_path, mnist1d, monkeypatch):
    """Synaptic-Flow's IMP kept training the last level's weights instead of rewinding them. Here every
    pruned level's networks start from θ0 (k = 0) under their mask, bit for bit, what the pass trains first."""
    from lottery.training import passes

    starts = {}
    original = passes.TrainingPass.__init__

    def recording(self, model, data, cfg, specs, keys, *args, **kwargs):
        original(self, model, data, cfg, specs, keys, *args, **kwargs)
        for row, key in enumerate(keys):
            starts[key] = {n: p[row].detach().clone() for n, p in self.trainer.params.items()}

    monkeypatch.setattr(passes.TrainingPass, "__init__", recording)
    config = _config()
    config.arms, config.prune.levels = ["imp", "synflow-global"], 3
    run = lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    init = load_tensors(run / "trial_0" / "init.safetensors")
    for level in (1, 2, 3):
        for arm in ("imp", "synflow-global"):
            mask = load_tensors(run / "trial_0" / f"level_{level:02d}" / (
                "mask.safetensors" if arm == "imp" else f"{arm}/mask.safetensors"))
            start = starts[f"{arm}/0/{level}"]
            for name, keep in mask.items():
                assert torch.equal(start[name], init[name] * keep), (arm, level, name)
    trained = load_tensors(run / "trial_0" / "level_02" / "imp" / "final.safetensors")
    assert not torch.equal(trained["layers.0.weight"], init["layers.0.weight"])  # training did move them


def test_early_bird_added_to_a_run_without_a_trajectory_is_one_line(tmp_path, shared_data):
    from conftest import run_cli

    base = ["find", "mnist1d-mlp", "--levels", "1", "--iterations", "40", "--trials", "1", "--out", str(tmp_path),
            "--no-progress", "--data-dir", str(shared_data), "--set", "model.hidden=16,16"]
    assert run_cli(*base, "--levels", "0").returncode == 0  # level 0 trained without the arm: no trajectory
    result = run_cli(*base, "--arms", "imp,early-bird")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "early-bird" in lines[0] and "Traceback" not in result.stderr


def test_the_user_loop_refuses_the_early_bird_arm(tmp_path):
    with pytest.raises(lottery.UserError, match="early-bird"):
        lottery.IMP(lambda: torch.nn.Sequential(torch.nn.Linear(4, 3)), tmp_path / "run", arms=["imp", "early-bird"],
                    verbose=False)
