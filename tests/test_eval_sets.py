"""A smoke run stays a smoke run (issue 31): a network that trains on fewer examples than a set holds is
evaluated on a fixed sample of that set as large as what it trains on; longer runs see whole sets."""
import torch

import lottery
from lottery import cli
from lottery.config import TrainConfig
from lottery.training.eval_sets import evaluated_count, fixed_sample


def test_evaluated_count_follows_the_training_budget_unless_told_otherwise():
    short = TrainConfig(iterations=1, batch_size=60)
    assert evaluated_count(short, 10_000) == 60
    assert evaluated_count(TrainConfig(iterations=167, batch_size=60), 10_000) == 10_000  # 10,020 trained: whole
    assert evaluated_count(TrainConfig(iterations=1, batch_size=60, eval_examples=0), 10_000) == 10_000
    assert evaluated_count(TrainConfig(iterations=1, batch_size=60, eval_examples=500), 10_000) == 500
    assert evaluated_count(TrainConfig(iterations=50_000, eval_examples=500), 300) == 300


def test_a_fixed_sample_is_the_same_every_time_and_spans_the_set():
    a, b = fixed_sample(10_000, 60, "test-sample"), fixed_sample(10_000, 60, "test-sample")
    assert torch.equal(a, b) and len(a.unique()) == 60 and bool((a.diff() > 0).all())
    assert a.max() > 5_000  # not the first 60: MNIST's test set is ordered by source (its first half is easier)
    assert not torch.equal(a, fixed_sample(10_000, 60, "val-sample"))
    assert fixed_sample(10_000, 10_000, "test-sample") is None


def test_a_smoke_run_evaluates_samples_as_large_as_its_training_and_says_so(tmp_path, shared_data, capsys):
    args = ["find", "lenet300-mnist", "--levels", "1", "--iterations", "2", "--trials", "1", "--no-progress",
            "--data-dir", str(shared_data)]
    assert cli.main([*args, "--out", str(tmp_path / "smoke")]) == 0
    assert "each evaluation used a fixed sample of at most 120 examples" in capsys.readouterr().err
    (run,) = (tmp_path / "smoke").iterdir()
    rows = lottery.read_results(run)
    assert len(rows) == 2  # the dense network and the ticket
    for row in rows:
        assert (row["val_examples"], row["test_examples"], row["train_accuracy_examples"]) == (120, 120, 120)
        # accuracies are counts out of 120
        assert abs(row["early_stop_test_accuracy"] * 120 - round(row["early_stop_test_accuracy"] * 120)) < 1e-3

    assert cli.main([*args, "--out", str(tmp_path / "whole"), "--set", "train.eval_examples=0"]) == 0
    assert "fixed sample" not in capsys.readouterr().err
    (run,) = (tmp_path / "whole").iterdir()
    for row in lottery.read_results(run):
        assert (row["val_examples"], row["test_examples"], row["train_accuracy_examples"]) == (5_000, 10_000, 10_000)


def test_a_negative_eval_examples_below_minus_one_is_one_line_and_exit_2(capsys, shared_data, tmp_path):
    assert cli.main(["find", "lenet300-mnist", "--levels", "0", "--iterations", "2", "--set", "train.eval_examples=-2",
                     "--data-dir", str(shared_data), "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.eval_examples" in err[0]
    assert not any(tmp_path.iterdir())  # no half-written run
