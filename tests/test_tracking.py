"""Watching a run while it trains (lottery.training.tracking, lottery.reports.live): TensorBoard event files
and an MLflow file store, read back with the real libraries; curves.csv written as it grows; `lottery report`
on a run that `lottery find` is still writing; and none of it changes a result."""
from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import lottery
import lottery.procedure.levels as procedure_module
from lottery import cli
from lottery.storage.files import load_csv, load_json

from conftest import REPO, require

NETWORKS = ["trial_0/level_00/imp", "trial_0/level_01/imp", "trial_0/level_01/reinit"]


def _config() -> lottery.RunConfig:
    config = lottery.get_preset("mnist1d-mlp")
    config.trials, config.arms, config.prune.levels = 1, ["imp", "reinit"], 1
    config.model.hidden = [16, 16]
    config.train.iterations, config.train.eval_every, config.train.test_curves = 40, 10, False
    config.train.lr = 0.05  # one network (level 1's reinit) stops early, at 30: its test set ran there too
    return config


def _options(**kwargs: object) -> lottery.RunOptions:
    return lottery.RunOptions(progress=False, checkpoint_seconds=0, **kwargs)


def _digests(run_dir: Path) -> dict[str, str]:
    """Every result file (tensors, metrics, curves, results.csv) -> its SHA-256."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run_dir.rglob("*"))
            if p.is_file() and p.suffix in (".safetensors", ".json", ".csv") and p.name != "run.json"
            and p.relative_to(run_dir).parts[0] not in ("tensorboard", "mlruns")}


@pytest.fixture(scope="module")
def untracked(tmp_path_factory, mnist1d) -> Path:
    run = tmp_path_factory.mktemp("untracked") / _config().run_name()
    return lottery.find_tickets(_config(), run, data=mnist1d, options=_options())


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, mnist1d) -> Path:
    require("tensorboard"), require("mlflow")
    run = tmp_path_factory.mktemp("tracked") / _config().run_name()
    return lottery.find_tickets(_config(), run, data=mnist1d, options=_options(track=("tensorboard", "mlflow")))


def _curves(run: Path, network: str) -> dict[str, dict[int, float]]:
    """curves.csv as {tag: {step: value}}, the finite values only (what the sinks log)."""
    out: dict[str, dict[int, float]] = {}
    for row in load_csv(run / network / "curves.csv"):
        for column, tag in (("val_loss", "val/loss"), ("val_accuracy", "val/accuracy"),
                            ("test_loss", "test/loss"), ("test_accuracy", "test/accuracy")):
            if math.isfinite(float(row[column])):
                out.setdefault(tag, {})[int(row["iteration"])] = float(row[column])
    return out


def _tensorboard(run: Path, network: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard" / network))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _mlflow(run: Path) -> dict[str, tuple[dict, dict[str, list[tuple[int, float]]], str]]:
    """network -> (params, {metric: [(step, value)] in step order}, status)."""
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3's file store is opt-in
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(run / "mlruns").as_uri())
    experiment = client.get_experiment_by_name(run.name)
    out = {}
    for found in client.search_runs([experiment.experiment_id]):
        history = {key: sorted((m.step, m.value) for m in client.get_metric_history(found.info.run_id, key))
                   for key in found.data.metrics}
        out[found.data.tags["lottery.network"]] = (found.data.params, history, found.info.status)
    return out


def test_tensorboard_event_files_hold_the_curves_of_every_network(tracked):
    early = []
    for network in NETWORKS:
        logged, curves = _tensorboard(tracked, network), _curves(tracked, network)
        for tag, values in curves.items():
            assert dict(logged[tag]) == values, (network, tag)  # float32 both ways: equal, not close
            assert len(logged[tag]) == len(values)  # each step once
        assert set(curves["test/accuracy"]) < set(curves["val/accuracy"])  # test only where measured
        early += [step for step in curves["test/accuracy"] if step < 40]  # an early stop's, logged when the pass ends
        metrics = load_json(tracked / network / "metrics.json")
        assert logged["result/early_stop_test_accuracy"][0][1] == pytest.approx(metrics["early_stop_test_accuracy"])
    assert early == [30]


def test_mlflow_store_holds_the_curves_with_one_run_per_network(tracked):
    runs = _mlflow(tracked)
    assert sorted(runs) == NETWORKS
    run_hash = _config().run_hash()
    for network in NETWORKS:
        params, history, status = runs[network]
        assert status == "FINISHED"
        assert params["run_hash"] == run_hash and params["network"] == network
        assert (params["trial"], params["arm"]) == ("0", network.split("/")[-1])
        for tag, values in _curves(tracked, network).items():
            assert history[tag] == sorted(values.items()), (network, tag)


def test_tracking_changes_no_result_byte(tracked, untracked):
    assert (tracked / "results.csv").read_bytes() == (untracked / "results.csv").read_bytes()
    assert _digests(tracked) == _digests(untracked)


def test_a_resumed_pass_logs_from_where_it_resumed_and_ends_with_the_same_files(tmp_path, mnist1d, untracked,
                                                                                 monkeypatch):
    require("tensorboard"), require("mlflow")
    original = procedure_module.Procedure.record

    def dies_at_level_1(self, network, *args, **kwargs):  # a kill once level 1 trained, before it is saved
        if network.level == 1:
            raise KeyboardInterrupt
        return original(self, network, *args, **kwargs)

    monkeypatch.setattr(procedure_module.Procedure, "record", dies_at_level_1)
    run = tmp_path / _config().run_name()
    options = _options(track=("tensorboard", "mlflow"))
    with pytest.raises(KeyboardInterrupt):
        lottery.find_tickets(_config(), run, data=mnist1d, options=options)
    unfinished = run / "trial_0" / "level_01" / "imp"
    assert not (unfinished / "metrics.json").exists()
    # Its curves so far, as of the pass's last checkpoint (iteration 30: none is written at the end).
    assert [int(r["iteration"]) for r in load_csv(unfinished / "curves.csv")] == [0, 10, 20, 30]
    monkeypatch.setattr(procedure_module.Procedure, "record", original)
    lottery.find_tickets(_config(), run, data=mnist1d, options=options)
    assert _digests(run) == _digests(untracked)
    runs = _mlflow(run)
    for network in NETWORKS:
        curves = _curves(run, network)
        # TensorBoard hides what the killed process logged after its checkpoint (iteration 30; purge_step),
        # so those steps show once; the early stop's test values at 30, logged when the killed pass ended,
        # show twice, with the same value (the documented duplicate). MLflow holds each (metric, step) once.
        logged = _tensorboard(run, network)
        for tag, values in curves.items():
            assert sorted(set(logged[tag])) == sorted(values.items()), (network, tag)
            after = [step for step, _ in logged[tag] if step > 30]
            assert len(after) == len(set(after)), (network, tag)
            assert runs[network][1][tag] == sorted(values.items()), (network, tag)
    assert len(list((run / "tensorboard" / "trial_0" / "level_01" / "imp").glob("events.*"))) == 2  # before, after


def test_an_unknown_or_missing_tracker_is_one_line_exit_2(capsys, monkeypatch, tmp_path):
    out = tmp_path / "runs"
    assert cli.main(["find", "--track", "nonsense", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["lottery: error: --track: unknown tracker 'nonsense'; choose from tensorboard, mlflow"]
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert cli.main(["find", "--track", "mlflow,tensorboard", "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == ["lottery: error: --track tensorboard needs the tensorboard package: "
                     "pip install 'lottery[tensorboard]'"]
    with pytest.raises(lottery.UserError, match="needs the tensorboard package"):
        lottery.find_tickets(_config(), out / "x", options=_options(track="tensorboard"))
    assert not out.exists()


# The run to watch: trial 0's dense network trains at full speed, and everything after it with a pause after
# each step (a sleep: the run is slow, not the CPUs busy), so the test sees networks training for a while.
SLOW_FIND = """
import sys, time
import lottery.procedure.levels as levels, lottery.training.trainer as trainer
record, step, saved = levels.Procedure.record, trainer.StackedTrainer.step, []
def recorded(self, *args, **kwargs):
    record(self, *args, **kwargs)
    saved.append(1)
def slow_step(self):
    step(self)
    if saved:
        time.sleep(0.05)
levels.Procedure.record, trainer.StackedTrainer.step = recorded, slow_step
from lottery.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _wait(condition, what: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"find ended (exit {process.returncode}) before {what}: {process.stderr.read()}")
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def test_a_running_run_shows_growing_curves_live_events_and_a_report(tmp_path, capsys):
    require("tensorboard")
    out = tmp_path / "runs"
    args = ["find", "--trials", "2", "--max-replicas", "1", "--levels", "1", "--iterations", "200",
            "--set", "model.hidden=16,16", "--set", "train.eval_every=10", "--checkpoint-seconds", "0",
            "--track", "tensorboard", "--no-progress", "--out", str(out)]
    find = subprocess.Popen([sys.executable, "-c", SLOW_FIND, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=REPO)
    try:
        run = Path(find.stdout.readline().split("run: ", 1)[1].strip())
        _wait(lambda: (run / "trial_0" / "level_00" / "imp" / "metrics.json").exists(), "finished network", find)
        training = run / "trial_1" / "level_00" / "imp"  # trial 1's dense network: its own pass, after trial 0's
        curves = training / "curves.csv"

        def rows() -> int:
            return len(load_csv(curves)) if curves.exists() else 0  # whole at every read: written atomically

        _wait(lambda: rows() >= 2, "curves.csv", find)
        first = rows()
        _wait(lambda: rows() > first, "growing curves.csv", find)
        assert not (training / "metrics.json").exists()
        steps = [step for step, _ in _tensorboard(run, "trial_1/level_00/imp")["val/loss"]]
        assert steps[:2] == [0, 10] and len(steps) >= first

        assert cli.main(["report", str(run)]) == 0
        text = (run / "report" / "report.md").read_text()
        assert f"**In progress**: lottery find (PID {find.pid}) is writing this run" in text
        assert "| imp | 0 |" in text and "| 1 |\n" in text  # one row: trial 0's; the training network is no result
        assert (run / "report" / "training.png").stat().st_size > 500
        assert find.poll() is None, "find ended before the checks: they did not watch a running run"
    finally:
        find.kill()
        find.wait()
    capsys.readouterr()
    # Killed: the lock is free, and a run without results.csv is still no finished run to report on.
    assert cli.main(["report", str(run)]) == 2
    assert "has no results.csv" in capsys.readouterr().err
