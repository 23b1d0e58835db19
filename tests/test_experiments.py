"""noise, attack and transfer on a small real MNIST run (a 32-unit MLP, two trials, arms imp/reinit/random)."""
import pytest
import torch

import lottery
from lottery.experiments.attack import adversarial_examples, attack_run, input_units, robust_accuracy
from lottery.storage.finished import model_and_data, open_run
from lottery.experiments.noise import noise_run, noisy
from lottery.storage.files import load_csv
from lottery.training.forwards import stacked_forward_for
from lottery.experiments.transfer import transfer_run

from conftest import run_main


def small_mnist_config() -> lottery.RunConfig:
    config = lottery.get_preset("lenet300-mnist")
    config.model.name, config.model.hidden = "mlp", [32]
    config.train.iterations, config.train.eval_every = 300, 100
    config.prune.levels, config.trials, config.arms = 1, 2, ["imp", "reinit", "random"]
    return config


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, shared_data):
    return lottery.find_tickets(small_mnist_config(), tmp_path_factory.mktemp("runs") / "small", data_dir=shared_data,
                                options=lottery.RunOptions(progress=False))


def _trained(run_dir, shared_data, level=1):
    run = open_run(run_dir)
    model, _, data, _ = model_and_data(run, shared_data)
    finals = [run.final(t, level, arm) for arm in run.arms for t in run.trials if run.has(t, level, arm)]
    return model, data, {n: torch.stack([f[n] for f in finals]) for n in finals[0]}


def test_attacks_at_zero_are_clean_and_fgsm_lowers_accuracy(small_run, shared_data):
    model, data, params = _trained(small_run, shared_data)
    forwards = stacked_forward_for(model)
    n = 2000  # the first 2,000 test examples: enough to see the attacks apart, a fifth of the time
    with torch.no_grad():
        clean = (forwards.shared(params, data.x_test[:n]).argmax(-1) == data.y_test[:n]).float().mean(1)
    pgd0 = robust_accuracy(forwards.each, params, data, "pgd", 0.0, examples=n)
    fgsm0 = robust_accuracy(forwards.each, params, data, "fgsm", 0.0, examples=n)
    assert torch.equal(pgd0, fgsm0)
    torch.testing.assert_close(pgd0, clean, atol=2e-4, rtol=0)  # same network; two matmul layouts
    fgsm = robust_accuracy(forwards.each, params, data, "fgsm", 0.1, examples=n)
    pgd = robust_accuracy(forwards.each, params, data, "pgd", 0.1, examples=n)
    assert torch.all(fgsm < clean - 0.1)  # a trained net loses accuracy to a signed-gradient step
    assert torch.all(pgd <= fgsm + 0.02)  # the iterated attack is at least about as strong


def test_a_network_s_robust_accuracy_does_not_depend_on_the_networks_attacked_beside_it(small_run, shared_data):
    model, data, params = _trained(small_run, shared_data)
    forward = stacked_forward_for(model).each
    replicas = next(iter(params.values())).shape[0]
    seeds = [100 + r for r in range(replicas)]
    together = robust_accuracy(forward, params, data, "pgd", 0.1, examples=300, steps=3, seeds=seeds)
    last = replicas - 1
    alone = robust_accuracy(forward, {n: p[last:] for n, p in params.items()}, data, "pgd", 0.1, examples=300,
                            steps=3, seeds=seeds[last:])
    assert torch.equal(alone, together[last:])


def test_adversarial_examples_stay_in_the_ball_and_the_pixel_range(small_run, shared_data):
    model, data, params = _trained(small_run, shared_data)
    x, y = data.x_test[:200], data.y_test[:200]
    eps, lower, upper = input_units(data, 0.2, x)
    replicas = next(iter(params.values())).shape[0]
    adv = adversarial_examples(stacked_forward_for(model).each, params, x, y, "pgd", eps, lower, upper,
                               generators=[torch.Generator().manual_seed(r) for r in range(replicas)])
    mean, std = data.pixels
    pixels, clean_pixels = adv * std + mean, x * std + mean
    assert (pixels - clean_pixels).abs().max() <= 0.2 + 1e-5
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5


def test_attack_run_writes_rows_for_every_level_arm_and_trial(small_run, shared_data):
    out = attack_run(small_run, ["fgsm"], [0.1], examples=500, data_dir=shared_data)
    rows = load_csv(out / "attack.csv")
    # level 0: imp only; level 1: three arms; 2 trials; ε ∈ {0, 0.1}
    assert len(rows) == (1 + 3) * 2 * 2
    assert (out / "attack.png").stat().st_size > 0 and "FGSM" in (out / "attack.md").read_text()


def test_noise_scales_with_the_layer_init_std_and_keeps_pruned_weights_zero():
    weights = {"w": torch.zeros(400, 500)}
    mask = {"w": torch.rand(400, 500) < 0.3}
    out = noisy(weights, mask, {"w": 0.05}, 2.0, torch.Generator().manual_seed(0))
    assert torch.all(out["w"][~mask["w"]] == 0)
    assert abs(out["w"][mask["w"]].std().item() - 0.1) < 0.003


def test_noise_run_trains_noisy_tickets_and_measures_inference_noise(small_run, shared_data):
    out = noise_run(small_run, [1.0], levels=[1], draws=2, data_dir=shared_data,
                    options=lottery.RunOptions(progress=False))
    training = load_csv(out / "training.csv")
    assert sorted(r["arm"] for r in training) == ["imp", "imp", "noisy-init", "noisy-init", "reinit", "reinit"]
    inference = load_csv(out / "inference.csv")
    assert len(inference) == 3 * 2 * 2  # arms × trials × (clean, k=1)
    for name in ("training.png", "inference.png", "noise.md"):
        assert (out / name).stat().st_size > 0
    clean = {(r["arm"], int(r["trial"])): float(r["accuracy"]) for r in inference if float(r["sigma"]) == 0}
    final = {(r["arm"], r["trial"]): r["final_test_accuracy"] for r in lottery.read_results(small_run) if r["level"] == 1}
    for key, accuracy in clean.items():
        assert abs(accuracy - final[key]) < 2e-4  # k = 0 is the run's own final accuracy


def test_transfer_trains_the_source_ticket_on_shifted_data(small_run, shared_data):
    target = small_mnist_config().data
    target.permute_fraction = 1.0
    out = transfer_run([small_run], target, data_dir=shared_data, options=lottery.RunOptions(progress=False))
    rows = load_csv(out / "transfer.csv")
    moved = [r for r in rows if r["arm"] == "transfer"]
    assert {(r["source"], r["trial"], r["level"]) for r in moved} == {("mnist", "0", "1"), ("mnist", "1", "1")}
    own = {r["arm"] for r in rows if r["source"] == "mnist-permute1 (own)"}
    assert own == {"imp", "reinit", "random"}
    assert (out / "target-run" / "results.csv").exists() and (out / "transfer.png").stat().st_size > 0
    # The transferred ticket keeps the source mask's sparsity.
    assert float(moved[0]["percent_remaining"]) == pytest.approx(lottery.read_results(small_run)[-1]["percent_remaining"])


def test_experiment_commands_reject_bad_input_in_one_line(small_run, tmp_path):
    cases = [
        ("attack", str(tmp_path)),
        ("attack", str(small_run), "--method", "cw"),
        ("attack", str(small_run), "--eps", "x"),
        ("attack", str(small_run), "--examples", "0"),
        ("noise", str(small_run), "--sigmas", "-1"),
        ("noise", str(small_run), "--levels", "9"),
        ("transfer", str(small_run), "--to", "cifar"),
        ("transfer", str(small_run), "--to", "mnist", "--set", "train.lr=1"),
        ("transfer", str(small_run), "--against", str(small_run), "--to", "fashion-mnist"),
        ("transfer", str(small_run), "--to", "mnist1d"),  # 784 inputs in the source, 40 on the target
    ]
    for args in cases:
        result = run_main(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("lottery: error:"), (args, result.stderr)
    # A ticket that cannot fit the target model is refused before any target run is trained.
    assert not (small_run / "transfer" / "mnist1d").exists()
