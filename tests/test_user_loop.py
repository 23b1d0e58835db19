"""lottery.IMP: IMP around the user's own training loop (issue 28)."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lottery
from lottery.errors import UserError
from lottery.order import BatchOrder
from lottery.storage.files import load_tensors

from conftest import require


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    with torch.no_grad():
        logits = model(x)
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train_like_the_builtin(net: lottery.Network, data: lottery.Dataset, optimizer: torch.optim.Optimizer,
                           iterations: int, batch: int, eval_every: int) -> None:
    """A plain loop with the built-in trainer's data order and early stop: validation every `eval_every`,
    test accuracy kept at the minimum of the validation loss."""
    torch.manual_seed(net.seed)  # dropout: this network's own stream
    order = BatchOrder(len(data.x_train), batch, [net.order_seed], "cpu")
    best = (math.inf, 0, 0.0)
    net.model.train()
    for it in range(net.start_iteration, iterations + 1):
        if it == net.start_iteration or it % eval_every == 0 or it == iterations:
            val_loss, val_acc = evaluate(net.model, data.x_val, data.y_val)
            _, test_acc = evaluate(net.model, data.x_test, data.y_test)
            net.log(it, val_loss=val_loss, val_accuracy=val_acc, test_accuracy=test_acc)
            if val_loss < best[0]:
                best = (val_loss, it, test_acc)
        if it == iterations:
            break
        idx = order.indices(it)[0]
        loss = F.cross_entropy(net.model(data.features(data.x_train[idx])), data.y_train[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.finish(test_accuracy=best[2], val_loss=best[0], early_stop_iteration=best[1],
               final_test_accuracy=test_acc)


def small_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(40, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 10))


def run_user_loop(run_dir, data, make_optimizer=lambda p: torch.optim.Adam(p, lr=1e-2), stop_at=None,
                  **imp_options) -> tuple[lottery.IMP, list[str]]:
    imp = lottery.IMP(small_mlp, run_dir, verbose=False, **imp_options)
    trained = []
    for net in imp.networks():
        if stop_at is not None and net.key == stop_at:
            raise KeyboardInterrupt  # a kill in the middle of a level
        opt = make_optimizer(net.model.parameters())
        net.attach(opt)
        train_like_the_builtin(net, data, opt, iterations=60, batch=50, eval_every=20)
        trained.append(net.key)
    return imp, trained


def test_the_user_loop_finds_the_builtin_trainers_masks_and_results_on_lenet(tmp_path, mnist):
    """Same model (LeNet-300-100), same θ0, data order, Adam and early stop: the built-in stacked trainer
    (batched matmuls and a backward by hand) and a plain PyTorch loop through lottery.IMP agree to float
    tolerance: the same θ0 bit for bit, trained weights within 1e-4, masks on all but 0.1% of the weights,
    accuracies within 0.5 points and the same early-stop iteration (40 iterations, 1 level). The loop uses
    fused Adam, the kernel the built-in trainer steps with (torch's default foreach Adam differs in the last
    bits). Why so short: the two sum a weight gradient's products in different orders, and Adam divides by
    √v + ε, which multiplies a near-zero gradient's last-bit difference by up to lr/ε ~ 1e5. On an Intel Xeon
    with AMX (MKL's kernels there) the trained weights differ by 1.4e-5 after 20 steps, 0.006 after 100 and
    0.05 after 300 (measured): by then two different networks of the same accuracy, whose masks differ on 5%
    of the weights. On an AMD Zen 4 the kernels happened to agree (3e-6 after 300 steps)."""
    config = lottery.get_preset("lenet300-mnist")
    config.trials, config.arms = 1, ["imp"]
    config.train.iterations, config.train.eval_every, config.train.test_curves = 40, 10, True
    config.train.eval_examples = 0  # whole sets, as the user loop below evaluates (lottery.training.eval_sets)
    config.prune.levels = 1
    builtin = lottery.find_tickets(config, tmp_path / "builtin", data=mnist, options=lottery.RunOptions(progress=False))
    model_fn = lambda: lottery.build_model(config.model, mnist.input_shape, mnist.num_classes)  # noqa: E731
    imp = lottery.IMP(model_fn, tmp_path / "user", levels=1, verbose=False)
    for net in imp.networks():
        opt = net.attach(torch.optim.Adam(net.model.parameters(), lr=config.train.lr, fused=True))
        train_like_the_builtin(net, mnist, opt, config.train.iterations, config.train.batch_size, 10)
    ours, theirs = imp.results(), lottery.read_results(builtin)
    assert [(r["level"], r["weights_remaining"]) for r in ours] == [(r["level"], r["weights_remaining"]) for r in theirs]
    for a, b in zip(ours, theirs):
        assert a["early_stop_iteration"] == b["early_stop_iteration"]
        assert abs(a["early_stop_test_accuracy"] - b["early_stop_test_accuracy"]) < 0.005
    init_a, init_b = (load_tensors(r / "trial_0" / "init.safetensors") for r in (imp.run_dir, builtin))
    assert all(torch.equal(init_a[n], init_b[n]) for n in init_a)  # the same θ0, bit for bit
    for level in ("level_00", "level_01"):
        final_a, final_b = (load_tensors(r / "trial_0" / level / "imp" / "final.safetensors") for r in (imp.run_dir, builtin))
        assert max(float((final_a[n] - final_b[n]).abs().max()) for n in final_a) < 1e-4
    mask_a, mask_b = (load_tensors(r / "trial_0" / "level_01" / "mask.safetensors") for r in (imp.run_dir, builtin))
    differ = sum(int((mask_a[n] != mask_b[n]).sum()) for n in mask_a)
    assert differ <= 0.001 * sum(m.numel() for m in mask_a.values())


@pytest.mark.parametrize("make", [
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, weight_decay=5e-3),
    lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3),
    lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-3),
    lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    lambda p: torch.optim.RMSprop(p, lr=1e-3, momentum=0.5, weight_decay=1e-3),
    lambda p: torch.optim.Adam(p, lr=1e-2, amsgrad=True, weight_decay=1e-3),
    lambda p: torch.optim.Adagrad(p, lr=1e-2, weight_decay=1e-3),
    lambda p: torch.optim.NAdam(p, lr=1e-2, weight_decay=1e-3, decoupled_weight_decay=True),
    lambda p: torch.optim.RAdam(p, lr=1e-2, weight_decay=1e-3),
    lambda p: torch.optim.Adamax(p, lr=1e-2, weight_decay=1e-3),
], ids=["sgd-momentum-wd", "sgd-nesterov", "adam-l2", "adamw", "rmsprop", "adam-amsgrad", "adagrad", "nadam",
        "radam", "adamax-rezeroed"])
def test_invariant_1_pruned_weights_and_optimizer_slots_stay_exactly_zero(tmp_path, mnist1d, make):
    """torch's elementwise optimizers keep a pruned weight and its slots at exactly 0 by themselves, given the
    masked gradient (lottery does not re-zero them after each step); any other optimizer (Adamax here) is
    re-zeroed after every step."""
    imp = lottery.IMP(small_mlp, tmp_path / "run", levels=2, arms=["imp", "random"], verbose=False)
    checked = 0
    for net in imp.networks():
        opt = net.attach(make(net.model.parameters()))
        train_like_the_builtin(net, mnist1d, opt, iterations=40, batch=50, eval_every=20) if net.level == 0 else None
        if net.level == 0:
            continue
        torch.manual_seed(0)
        for _ in range(30):  # gradients everywhere, pruned weights included, before the hooks
            loss = net.model(torch.randn(16, 40)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        params = dict(net.model.named_parameters())
        for name, keep in net.mask.items():
            assert not keep.all()
            p = params[name]
            assert torch.count_nonzero(p[~keep]) == 0
            assert torch.count_nonzero(p[keep]) > 0.99 * keep.sum()  # kept weights train
            slots = [v for v in opt.state[p].values() if isinstance(v, torch.Tensor) and v.shape == p.shape]
            assert slots and all(torch.count_nonzero(v[~keep]) == 0 for v in slots)
            checked += 1
        net.finish(test_accuracy=0.5)
    assert checked == 2 * 2 * 3  # levels 1-2, arms imp and random, three prunable tensors


def test_an_optimizer_from_outside_torch_keeps_the_mask(tmp_path):
    transformers = require("transformers")  # an extra `make test` installs
    from transformers.optimization import Adafactor

    imp = lottery.IMP(small_mlp, tmp_path / "run", levels=1, verbose=False)
    for net in imp.networks():
        opt = net.attach(Adafactor(net.model.parameters(), lr=1e-2, relative_step=False, scale_parameter=False,
                                   weight_decay=1e-2))
        for _ in range(20):
            loss = net.model(torch.randn(16, 40)).pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        params = dict(net.model.named_parameters())
        assert all(torch.count_nonzero(params[n][~m]) == 0 for n, m in net.mask.items())
        net.finish(test_accuracy=0.5)
    assert transformers is not None


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.bn, self.fc2 = nn.Linear(40, 32), nn.BatchNorm1d(32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.bn(self.fc1(x))))


def test_invariant_2_rewinding_restores_weights_buffers_and_optimizer_state_at_k(tmp_path, mnist1d):
    k = 7
    seen: dict[str, dict[str, torch.Tensor]] = {}
    imp = lottery.IMP(BNNet(), tmp_path / "run", levels=1, arms=["imp", "reinit", "random"], rewind_iteration=k,
                      rewind_optimizer=True, verbose=False)
    for net in imp.networks():
        opt = net.attach(torch.optim.SGD(net.model.parameters(), lr=0.05, momentum=0.9))
        if net.level == 1:
            state = {n: t.detach().clone() for n, t in [*net.model.named_parameters(), *net.model.named_buffers()]}
            seen[net.arm] = state
            seen[net.arm + "-momentum"] = {n: opt.state[p]["momentum_buffer"].clone()
                                           for n, p in net.model.named_parameters() if p in opt.state}
            assert net.start_iteration == k
        order = BatchOrder(len(mnist1d.x_train), 50, [net.order_seed], "cpu")
        for it in range(net.start_iteration, 20):
            idx = order.indices(it)[0]
            loss = F.cross_entropy(net.model(mnist1d.x_train[idx]), mnist1d.y_train[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if net.level == 0 and net.steps == k:
                seen["k"] = {n: t.detach().clone() for n, t in [*net.model.named_parameters(), *net.model.named_buffers()]}
                seen["k-momentum"] = {n: opt.state[p]["momentum_buffer"].clone() for n, p in net.model.named_parameters()}
        net.finish(test_accuracy=0.5)
    mask = load_tensors(imp.run_dir / "trial_0" / "level_01" / "mask.safetensors")
    theta_k = seen["k"]
    for name, value in seen["imp"].items():  # the ticket: θk under its mask, buffers (BN statistics) too
        expected = theta_k[name] * mask[name] if name in mask else theta_k[name]
        assert torch.equal(value, expected), name
    assert int(theta_k["bn.num_batches_tracked"]) == k
    for name, value in seen["imp-momentum"].items():  # the optimizer's momentum at k, masked
        assert torch.equal(value, seen["k-momentum"][name] * mask[name] if name in mask else seen["k-momentum"][name])
    assert not seen["reinit-momentum"]  # a fresh draw starts with a fresh optimizer
    assert not torch.equal(seen["reinit"]["fc1.weight"], seen["imp"]["fc1.weight"])
    random_mask = load_tensors(imp.run_dir / "trial_0" / "level_01" / "random" / "mask.safetensors")
    assert torch.equal(seen["random"]["fc1.weight"], theta_k["fc1.weight"] * random_mask["fc1.weight"])


def test_invariant_5_a_kill_mid_level_resumes_to_the_uninterrupted_results(tmp_path, mnist1d):
    options = dict(levels=2, trials=2, arms=["imp", "reinit", "random"])
    whole, _ = run_user_loop(tmp_path / "whole", mnist1d, **options)
    with pytest.raises(KeyboardInterrupt):
        run_user_loop(tmp_path / "cut", mnist1d, stop_at="random/0/1", **options)
    assert not (tmp_path / "cut" / "trial_0" / "level_01" / "random" / "metrics.json").exists()
    resumed, trained = run_user_loop(tmp_path / "cut", mnist1d, **options)
    assert "imp/0/1" not in trained and "random/0/1" in trained  # finished networks are not trained again
    assert (whole.run_dir / "results.csv").read_bytes() == (resumed.run_dir / "results.csv").read_bytes()
    a = load_tensors(whole.run_dir / "trial_1" / "level_02" / "random" / "final.safetensors")
    b = load_tensors(resumed.run_dir / "trial_1" / "level_02" / "random" / "final.safetensors")
    assert all(torch.equal(a[n], b[n]) for n in a)


def test_the_user_loop_run_is_read_by_report_claims_and_export(tmp_path, mnist1d):
    imp, _ = run_user_loop(tmp_path / "run", mnist1d, levels=2, arms=["imp", "reinit"], training={"lr": 1e-2})
    rows = imp.results()
    assert {(r["arm"], r["level"]) for r in rows} == {("imp", 0), ("imp", 1), ("imp", 2), ("reinit", 1), ("reinit", 2)}
    report = lottery.write_report(imp.run_dir)
    text = (report / "report.md").read_text()
    assert "trained by the user's loop" in text and '{"lr": 0.01}' in text
    assert (report / "curves.png").exists()
    ticket = lottery.export_ticket(imp.run_dir, tmp_path / "t.safetensors", level=2)
    assert ticket is not None and (tmp_path / "t.safetensors").exists()
    metrics = json.loads((imp.run_dir / "trial_0" / "level_02" / "imp" / "metrics.json").read_text())
    assert metrics["steps"] == 60 and metrics["early_stop_iteration"] % 20 == 0


def test_another_training_description_is_another_run(tmp_path, mnist1d):
    run_user_loop(tmp_path / "run", mnist1d, levels=0, training={"lr": 1e-2})
    with pytest.raises(UserError, match="different config"):
        next(lottery.IMP(small_mlp, tmp_path / "run", levels=0, training={"lr": 1e-3}, verbose=False).networks())


def test_misuse_is_one_clear_error(tmp_path, mnist1d):
    imp = lottery.IMP(small_mlp, tmp_path / "run", levels=1, verbose=False)
    networks = imp.networks()
    next(networks)
    with pytest.raises(UserError, match="was not finished"):
        next(networks)
    imp = lottery.IMP(small_mlp, tmp_path / "k", levels=1, rewind_iteration=5, verbose=False)
    net = next(imp.networks())
    with pytest.raises(UserError, match="fewer than the rewind iteration"):
        net.finish(test_accuracy=0.5)
    with pytest.raises(UserError, match="fraction"):
        next(lottery.IMP(small_mlp, tmp_path / "pct", levels=0, verbose=False).networks()).finish(test_accuracy=93.0)
    with pytest.raises(UserError, match="reset_parameters"):
        lottery.IMP(RawOnly(), tmp_path / "raw", verbose=False)
    with pytest.raises(UserError, match="torch.optim.Optimizer"):
        next(lottery.IMP(small_mlp, tmp_path / "opt", levels=0, verbose=False).networks()).attach(object())


class RawOnly(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(10, 40) * 0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w.T


def test_a_hand_written_update_keeps_the_mask_with_after_step(tmp_path):
    imp = lottery.IMP(RawOnly, tmp_path / "run", levels=1, verbose=False)
    for net in imp.networks():
        assert list(net.mask) == ["w"]  # a raw matrix used in a product is prunable
        for _ in range(5):
            loss = net.model(torch.randn(8, 40)).pow(2).mean()
            loss.backward()
            with torch.no_grad():
                net.model.w -= 0.1 * (net.model.w.grad + 0.01)  # revives nothing: after_step zeroes it again
                net.model.w.grad = None
            net.after_step()
        assert torch.count_nonzero(net.model.w[~net.mask["w"]]) == 0
        net.finish(test_accuracy=0.1)
