"""Every input is checked once, before anything is written (issue 37): a bad value from the CLI is one line
`lottery: error: ...` and exit 2, from the Python API a UserError; no run directory is left behind, no good
file is rewritten, no traceback."""
import dataclasses
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import lottery
from lottery.errors import UserError
from lottery.validation import (MAX_TRIALS, check_field_types, long_run_note, run_dir_inside, validate)

from conftest import copy_of_run, finished_run, one_line_exit_2, run_main, tiny_config

SMALL = ["--iterations", "20", "--levels", "1", "--trials", "1", "--arms", "imp", "--set", "model.hidden=16",
         "--set", "train.eval_every=10", "--set", "train.batch_size=50", "--no-progress"]




def _nothing_in(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("finished"), *SMALL)


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    return copy_of_run(finished, tmp_path)


# --- item 3: a preset's name stays inside --out ------------------------------------------------------------
@pytest.mark.parametrize("name", ["../../outside", "/tmp/anywhere", ".hidden", "a/b", "x" * 101, ""])
def test_invariant_11_a_preset_name_cannot_lead_out_of_out(tmp_path, name):
    work = tmp_path / "work"
    out = work / "runs"
    one_line_exit_2(run_main("find", *SMALL, "--set", f"preset={name}", "--out", str(out)), "cannot name a run directory")
    assert _nothing_in(work) and not (tmp_path / "outside").exists()


def test_invariant_11_a_link_at_the_run_directory_is_refused(tmp_path):
    out, elsewhere = tmp_path / "runs", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (out / "mnist1d-mlp-0123456789").symlink_to(elsewhere)
    with pytest.raises(UserError, match="leads out of --out"):
        run_dir_inside(out, "mnist1d-mlp-0123456789")
    assert run_dir_inside(out, "mnist1d-mlp-abc") == out / "mnist1d-mlp-abc"
    with pytest.raises(UserError, match="not one folder name"):
        run_dir_inside(out, "../mnist1d-mlp-abc")
    config = lottery.get_preset("mnist1d-mlp")
    config.preset = "../../x"
    with pytest.raises(UserError, match="cannot name a run directory"):  # whoever builds a path from it
        config.run_name()


def test_the_api_refuses_a_preset_name_that_is_a_path(tmp_path, mnist1d):
    config = tiny_config()
    config.preset = "../escape"
    with pytest.raises(UserError, match="cannot name a run directory"):
        lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    assert not (tmp_path / "run").exists()


# --- item 4: a failed command never rewrites a good results.csv ------------------------------------------------
def test_invariant_12_a_wrong_typed_metric_is_named_and_results_csv_is_left_alone(run_copy):
    metrics = run_copy / "trial_0" / "level_01" / "imp" / "metrics.json"
    values = json.loads(metrics.read_text())
    values["final_test_accuracy"] = []
    metrics.write_text(json.dumps(values))
    results = run_copy / "results.csv"
    before = results.read_bytes()
    line = one_line_exit_2(run_main("find", *SMALL, "--out", str(run_copy.parent)), str(metrics),
                            "final_test_accuracy")
    assert f"remove the folder {metrics.parent}" in line
    assert results.read_bytes() == before
    assert lottery.read_results(run_copy)[-1]["final_test_accuracy"] >= 0  # still the good table
    shutil.rmtree(metrics.parent)  # the fix the line names works
    assert run_main("find", *SMALL, "--out", str(run_copy.parent)).returncode == 0
    assert len(lottery.read_results(run_copy)) == 2


# --- item 15a: run.json's own damage is blamed on run.json ---------------------------------------------------
def test_a_null_run_hash_blames_run_json_not_config_toml(run_copy):
    info = run_copy / "run.json"
    values = json.loads(info.read_text())
    values["run_hash"] = None
    info.write_text(json.dumps(values))
    line = one_line_exit_2(run_main("find", *SMALL, "--out", str(run_copy.parent)), str(info), "run_hash")
    assert "config.toml" not in line and "edited" not in line


# --- item 11: train.loop=user is no way around validation ----------------------------------------------------
@pytest.mark.parametrize("pair, fragment", [("train.batch_size=0", "train.batch_size must be at least 1"),
                                            ("train.lr=-5", "train.lr must be in")])
def test_ranges_hold_for_a_user_loop_too(pair, fragment):
    config = lottery.get_preset("mnist1d-mlp")
    lottery.config.apply_overrides(config, ["train.loop=user", pair])
    with pytest.raises(UserError, match=fragment):
        validate(config)


def test_the_cli_refuses_train_loop_user(tmp_path):
    one_line_exit_2(run_main("find", *SMALL, "--set", "train.loop=user", "--out", str(tmp_path / "runs")),
                     "lottery.IMP")
    one_line_exit_2(run_main("find", *SMALL, "--set", "train.loop=user", "--set", "train.batch_size=0",
                              "--out", str(tmp_path / "runs")), "train.batch_size")
    assert _nothing_in(tmp_path)


# --- item 12: sizes against the machine and sane caps -------------------------------------------------------------
@pytest.mark.parametrize("args, fragments", [
    (["--trials", "1000000000"], ["trials must be at most 10,000"]),
    (["--levels", "100000"], ["levels must be at most"]),
    (["--iterations", "10000000000000000"], ["iterations must be at most"]),
    (["--set", "model.hidden=1000000000"], ["GiB", "available on cpu"]),
])
def test_absurd_sizes_are_refused_with_figures_before_anything_is_written(tmp_path, args, fragments):
    result = run_main("find", *SMALL, *args, "--out", str(tmp_path / "runs"))
    one_line_exit_2(result, *fragments)
    assert _nothing_in(tmp_path)


def test_levels_past_the_last_weight_are_refused(tmp_path, mnist1d):
    config = tiny_config(levels=200)  # hidden 32, 32: the 320 output weights at 10% last 55 levels
    with pytest.raises(UserError, match="prunes past the last weight: the 320 output weights .* use at most 55"):
        lottery.find_tickets(config, tmp_path / "run", data=mnist1d, options=lottery.RunOptions(progress=False))
    assert not (tmp_path / "run").exists()


def test_a_very_long_run_gets_a_note_of_its_cost_not_a_refusal():
    config = tiny_config()
    assert long_run_note(config) is None
    config.train.iterations = 10 ** 12
    validate(config)
    note = long_run_note(config, flops_per_iteration=1000)
    assert note.startswith("note: this run trains 6 networks") and "network-iterations" in note and "FLOPs" in note


def test_experiment_counts_are_capped_before_the_run_is_touched(run_copy):
    before = sorted(p.relative_to(run_copy) for p in run_copy.rglob("*"))
    one_line_exit_2(run_main("stability", str(run_copy), "--alphas", "100000000", "--no-progress"),
                     "--alphas must be at most")
    one_line_exit_2(run_main("attack", str(run_copy), "--eps", "5", "--no-progress"), "--eps", "[0, 1]")
    one_line_exit_2(run_main("attack", str(run_copy), "--eps", "nan", "--no-progress"), "--eps")
    assert sorted(p.relative_to(run_copy) for p in run_copy.rglob("*")) == before


# --- item 14: the Python API's inputs ------------------------------------------------------------------------------
class IndexOutput(nn.Module):
    """Returns class indices, not logits."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x).argmax(dim=1, keepdim=True).expand(-1, 10)


def _shifted(data: lottery.Dataset, **changes) -> lottery.Dataset:
    return dataclasses.replace(data, **changes)


@pytest.mark.parametrize("case, fragment", [
    ("model returns None", "returned None"),
    ("model is not callable", "model_fn must be a function"),
    ("integer logits", "torch.int64 values"),
    ("label too large", "outside 0..9"),
    ("lengths differ", "they must match"),
    ("empty validation set", "validation"),
    ("data is not a Dataset", "lottery.Dataset"),
    ("trials is a string", "trials must be an int, got '2'"),
    ("lr is nan", "train.lr must be a finite number, got nan"),
    ("train is a dict", "train must be a TrainConfig"),
])
def test_the_api_checks_its_inputs_once_before_anything_is_written(tmp_path, mnist1d, case, fragment):
    config, model_fn, data = tiny_config(), None, mnist1d
    if case == "model returns None":
        model_fn = lambda: None  # noqa: E731
    elif case == "model is not callable":
        model_fn = "mlp"
    elif case == "integer logits":
        model_fn = IndexOutput
    elif case == "label too large":
        data = _shifted(mnist1d, y_train=torch.where(mnist1d.y_train == 3, 10, mnist1d.y_train))
    elif case == "lengths differ":
        data = _shifted(mnist1d, y_test=mnist1d.y_test[:-1])
    elif case == "empty validation set":
        data = _shifted(mnist1d, x_val=mnist1d.x_val[:0], y_val=mnist1d.y_val[:0])
    elif case == "data is not a Dataset":
        data = (mnist1d.x_train, mnist1d.y_train)
    elif case == "trials is a string":
        config.trials = "2"
    elif case == "lr is nan":
        config.train.lr = float("nan")
    elif case == "train is a dict":
        config.train = {"lr": 1e-3}
    with pytest.raises(UserError) as caught:
        lottery.find_tickets(config, tmp_path / "run", model_fn=model_fn, data=data,
                             options=lottery.RunOptions(progress=False))
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "run").exists()


def test_imp_checks_its_model_and_options(tmp_path):
    with pytest.raises(UserError, match="the model function returned None"):
        lottery.IMP(lambda: None, tmp_path / "run", verbose=False)
    model = lambda: nn.Sequential(nn.Linear(40, 16), nn.ReLU(), nn.Linear(16, 10))  # noqa: E731
    with pytest.raises(UserError, match="prune.levels must be an int"):
        lottery.IMP(model, tmp_path / "run", levels="3", verbose=False)
    with pytest.raises(UserError, match="prunes past the last weight"):
        lottery.IMP(model, tmp_path / "run", levels=200, verbose=False)
    with pytest.raises(UserError, match=f"trials must be at most {MAX_TRIALS:,}"):
        lottery.IMP(model, tmp_path / "run", trials=10 ** 9, verbose=False)
    assert not (tmp_path / "run").exists()


def test_every_field_is_checked_against_its_declared_type():
    config = lottery.get_preset("mnist1d-mlp")
    check_field_types(config)
    config.model.hidden = [32, "32"]
    with pytest.raises(UserError, match=r"model.hidden must be a list of ints, got \[32, '32'\]"):
        check_field_types(config)
    config = lottery.get_preset("mnist1d-mlp")
    config.train.nesterov = 1
    with pytest.raises(UserError, match="train.nesterov must be true or false"):
        check_field_types(config)
