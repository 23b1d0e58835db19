"""Instability analysis: the line between two copies, BatchNorm recalibration, and the copies' starts."""
import pytest
import torch
from torch import nn

import lottery
from lottery.training.forwards import stacked_forward_for
from lottery.experiments.interpolation import instability, interpolate, recalibrate_batchnorm
from lottery.pruning.masks import dense_mask
from lottery.storage.finished import open_run
from lottery.experiments.stability import Trunk, stability_run
from lottery.storage.files import load_csv, load_json, load_tensors
from lottery.procedure.tickets import initial_weights
from lottery.training.trainer import ReplicaSpec, StackedTrainer

from conftest import run_cli, tiny_config
from test_batchnorm import NormedMLP

OPTIONS = lottery.RunOptions(progress=False)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, mnist1d):
    """A tiny finished run that rewinds to iteration 20 (2 trials, levels 0-1)."""
    config = tiny_config(levels=1, rewind_iteration=20)
    return lottery.find_tickets(config, tmp_path_factory.mktemp("stability") / "run", data=mnist1d, options=OPTIONS)


def _rows(folder):
    return load_csv(folder / "stability.csv")


def test_the_line_between_the_copies_starts_and_ends_at_the_copies_own_errors(finished, mnist1d):
    out = lottery.stability_run(finished, levels=[0, 1], rewind=[0, 20], alphas=5, data=mnist1d, options=OPTIONS)
    paths = load_csv(out / "paths.csv")
    assert len(paths) == 2 * 3 * 2 * 5  # trials x (dense, imp, random at level 1) x rewind points x alphas
    checked = 0
    for row in _rows(out):
        folder = out / f"k_{row['k']}" / f"trial_{row['trial']}" / f"level_{int(row['level']):02d}" / row["arm"]
        path = load_json(folder / "path.json")
        ends = [1.0 - load_json(folder / f"copy_{c}" / "metrics.json")["final_test_accuracy"] for c in (0, 1)]
        assert [path["test_error"][0], path["test_error"][-1]] == ends  # bit for bit
        assert float(row["test_instability"]) == instability(path["test_error"]) >= 0
        checked += 1
    assert checked == 12
    # Different data orders: the copies differ.
    a, b = (load_tensors(out / "k_0" / "trial_0" / "level_00" / "imp" / f"copy_{c}" / "final.safetensors") for c in (0, 1))
    assert not torch.equal(a["layers.0.weight"], b["layers.0.weight"])
    for name in ("stability.md", "path.png", "instability_vs_k.png", "instability_vs_sparsity.png"):
        assert (out / name).stat().st_size > 0
    # Masks: the copies of a pruned level keep their pruned weights at exactly zero.
    mask = load_tensors(finished / "trial_0" / "level_01" / "mask.safetensors")
    final = load_tensors(out / "k_20" / "trial_0" / "level_01" / "imp" / "copy_1" / "final.safetensors")
    assert all(bool((final[n][m == 0] == 0).all()) for n, m in mask.items())


def test_copies_that_share_their_data_order_are_identical_and_have_zero_instability(finished, mnist1d):
    out = stability_run(finished, levels=[1], rewind=[20], alphas=4, arms=["imp"], same_noise=True, data=mnist1d,
                        options=OPTIONS)
    assert out.name == "fresh-optimizer-same-noise"
    for row in _rows(out):
        assert float(row["test_instability"]) == 0.0 and float(row["train_instability"]) == 0.0
    folder = out / "k_20" / "trial_1" / "level_01" / "imp"
    a, b = (load_tensors(folder / f"copy_{c}" / "final.safetensors") for c in (0, 1))
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_the_trunk_is_the_runs_own_trajectory_and_keeps_the_optimizer(finished, mnist1d):
    trunk = Trunk(open_run(finished), finished / "stability" / "trunk", "cpu")
    rewind = load_tensors(finished / "trial_1" / "rewind.safetensors")
    state = trunk.state(1, 20)
    assert set(state) == set(rewind) and all(torch.equal(state[n], rewind[n]) for n in rewind)
    optimizer, steps = trunk.optimizer(1, 20)
    assert steps == 20 and set(optimizer) == {"exp_avg", "exp_avg_sq"}
    assert float(optimizer["exp_avg_sq"]["layers.0.weight"].abs().sum()) > 0


def test_a_start_with_the_optimizer_state_continues_the_uninterrupted_training_bit_for_bit(mnist1d):
    config = tiny_config()
    model = lottery.build_model(config.model, mnist1d.input_shape, mnist1d.num_classes)
    start = initial_weights(lambda: lottery.build_model(config.model, mnist1d.input_shape, mnist1d.num_classes), 0, 0)
    mask = dense_mask(start, [n for n in start if n.endswith("weight")])
    whole = StackedTrainer(model, [ReplicaSpec(0, start, mask)], mnist1d, config.train, [7])
    whole.run(60)
    first = StackedTrainer(model, [ReplicaSpec(0, start, mask)], mnist1d, config.train, [7])
    first.run(30)
    at_30 = {n: t[0].clone() for n, t in first.tensors(detach=True).items()}
    resumed = StackedTrainer(model, [ReplicaSpec(0, at_30, mask, 0, first.optimizer_of(0), 30)], mnist1d,
                             config.train, [7], start_iteration=30)
    resumed.run(60)
    assert all(torch.equal(resumed.params[n][0], whole.params[n][0]) for n in whole.params)
    fresh = StackedTrainer(model, [ReplicaSpec(0, at_30, mask)], mnist1d, config.train, [7], start_iteration=30)
    fresh.run(60)
    assert not torch.equal(fresh.params["layers.0.weight"][0], whole.params["layers.0.weight"][0])


def test_interpolation_is_exact_at_the_ends_and_keeps_pruned_weights_at_zero():
    a = {"w": torch.randn(4, 5) * torch.tensor([1.0, 0, 1, 1, 0]), "n": torch.tensor(3)}
    b = {"w": torch.randn(4, 5) * torch.tensor([1.0, 0, 1, 1, 0]), "n": torch.tensor(5)}
    line = interpolate(a, b, [0.0, 0.3, 1.0])
    assert torch.equal(line["w"][0], a["w"]) and torch.equal(line["w"][2], b["w"])
    assert bool((line["w"][:, :, 1] == 0).all()) and torch.allclose(line["w"][1], 0.7 * a["w"] + 0.3 * b["w"])
    assert line["n"].tolist() == [3, 3, 3]


def test_batchnorm_recalibration_changes_the_statistics_and_nothing_else(mnist1d):
    model = NormedMLP()
    nets = [initial_weights(NormedMLP, 0, t) for t in range(2)]
    for net in nets:  # statistics as far from the data's as interpolated ones can be
        net["bn.running_mean"] += 5.0
    stacked = interpolate(nets[0], nets[1], [0.0, 0.5, 1.0])
    before = {n: t.clone() for n, t in stacked.items()}
    x = mnist1d.x_train[:1000]
    after = recalibrate_batchnorm(model, stacked_forward_for(model, x[:2]), stacked, x, 100)
    buffers = {n for n, _ in model.named_buffers()}
    assert buffers == {"bn.running_mean", "bn.running_var", "bn.num_batches_tracked"}
    for name, value in after.items():
        if name in buffers:
            assert not torch.equal(value, before[name]), name
        else:
            assert value is stacked[name] and torch.equal(value, before[name]), name
    assert all(torch.equal(stacked[n], before[n]) for n in before)  # the input is left as it was
    assert after["bn.num_batches_tracked"].tolist() == [10, 10, 10]
    # The statistics are the average of the per-batch statistics, as plain PyTorch computes them.
    plain = NormedMLP()
    plain.load_state_dict({n: t[1] for n, t in stacked.items()})
    plain.bn.reset_running_stats()
    plain.bn.momentum = None
    with torch.no_grad():
        for start in range(0, 1000, 100):
            plain(x[start:start + 100])
    assert torch.allclose(after["bn.running_mean"][1], plain.bn.running_mean, atol=1e-6)
    assert torch.allclose(after["bn.running_var"][1], plain.bn.running_var, atol=1e-5)
    assert plain.bn.momentum is None and model.bn.momentum == 0.1  # the module's own momentum is restored


def test_a_batchnorm_model_runs_through_the_analysis(tmp_path, mnist1d):
    config = tiny_config(levels=1)
    config.trials = 1
    run = lottery.find_tickets(config, tmp_path / "run", model_fn=NormedMLP, data=mnist1d, options=OPTIONS)
    out = stability_run(run, levels=[1], rewind=[0], alphas=3, arms=["imp"], model_fn=NormedMLP, data=mnist1d,
                        train_examples=500, options=OPTIONS)
    row = _rows(out)[0]
    assert 0 <= float(row["test_instability"]) < 1 and "BatchNorm statistics recomputed" in (out / "stability.md").read_text()


@pytest.mark.parametrize("flags, problem", [
    (["--rewind", "120"], "rewind points must be in [0, 120)"),
    (["--alphas", "1"], "--alphas must be at least 2, got 1"),
    (["--levels", "7"], "levels [7] are not in"),
    (["--arms", "reinit"], "stability arms are imp, random"),
    (["--max-replicas", "0"], "--max-replicas must be at least 1, got 0"),
    (["--checkpoint-seconds", "inf"], "--checkpoint-seconds must be a finite number"),
])
def test_bad_stability_input_is_one_line_and_exit_2(finished, flags, problem):
    result = run_cli("stability", str(finished), *flags)
    assert result.returncode == 2 and problem in result.stderr and len(result.stderr.strip().splitlines()) == 1, \
        result.stderr


def test_stability_without_bars_logs_one_line_per_pass(finished):
    result = run_cli("stability", str(finished), "--levels", "1", "--rewind", "10", "--alphas", "2", "--arms", "imp",
                     "--max-replicas", "2", "--checkpoint-seconds", "0", "--no-progress")
    assert result.returncode == 0, result.stderr
    passes = [line.split(" ", 2)[2] for line in result.stderr.splitlines() if " k10 " in line]
    # 2 trials x 2 copies, 2 per pass: two passes from iteration 10 to 120
    assert [p.split(":")[0] for p in passes] == ["k10 1/2", "k10 2/2"], result.stderr
    assert all(p.startswith(("k10 1/2: 2 networks x 110 iterations in ", "k10 2/2: 2 networks x 110 iterations in "))
               and " imp L1 " in p for p in passes), passes


def test_stability_of_a_folder_that_is_no_run(tmp_path):
    result = run_cli("stability", str(tmp_path))
    assert result.returncode == 2 and "not a finished `lottery find` run" in result.stderr


def test_the_2020_claims_follow_the_measured_instability():
    from lottery.experiments.stability_report import stability_claims

    def rows(dense_barrier, ticket_error):
        out = []
        for t in range(3):
            out.append(dict(trial=t, level=0, arm="imp", k=0, percent_remaining=100.0,
                            test_instability=dense_barrier, test_error_ends=0.020 + 0.001 * t))
            out.append(dict(trial=t, level=5, arm="imp", k=0, percent_remaining=32.8,
                            test_instability=0.004, test_error_ends=ticket_error))
        return out

    verdicts = [c[3] for c in stability_claims(rows(0.005, 0.018), "lenet300-100", "mnist")]
    assert verdicts == ["yes", "yes"]
    verdicts = [c[3] for c in stability_claims(rows(0.025, 0.025), "lenet300-100", "mnist")]
    assert verdicts == ["no", "no"]  # unstable dense; a ticket worse than every dense trial is not matching
    assert stability_claims(rows(0.005, 0.018), "conv2", "cifar10") == []


def test_one_trial_is_reported_as_one_trial_not_as_a_spread():
    from lottery.experiments.stability_report import over_trials

    one = [dict(trial=0, arm="imp"), dict(trial=0, arm="imp")]
    three = [dict(trial=t, arm="imp") for t in range(3)]
    assert over_trials(one) == "one trial"
    assert over_trials(three) == "mean, min/max over 3 trials"
    assert over_trials(three, None) == "mean over 3 trials"


def test_a_rerun_trains_only_what_is_missing_and_gives_the_same_numbers(finished, mnist1d):
    import shutil

    out = stability_run(finished, levels=[1], rewind=[20], alphas=3, arms=["random"], data=mnist1d, options=OPTIONS)
    before = (out / "stability.csv").read_text()
    folder = out / "k_20" / "trial_0" / "level_01" / "random"
    shutil.rmtree(folder / "copy_1")
    (folder / "path.json").unlink()
    kept = (folder / "copy_0" / "final.safetensors").stat().st_mtime_ns
    again = stability_run(finished, levels=[1], rewind=[20], alphas=3, arms=["random"], data=mnist1d, options=OPTIONS)
    assert (again / "stability.csv").read_text() == before
    assert (folder / "copy_0" / "final.safetensors").stat().st_mtime_ns == kept  # not trained again
