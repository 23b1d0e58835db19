import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, run_cli, run_main

TINY = ["--iterations", "120", "--levels", "2", "--trials", "2", "--arms", "imp,reinit", "--set", "model.hidden=32,32",
        "--set", "train.eval_every=20", "--set", "train.batch_size=50", "--no-progress"]


@pytest.mark.parametrize("args, fragment", [
    (["find", "no-such-preset"], "unknown preset 'no-such-preset'"),
    (["find", "--set", "train.nope=1"], "unknown config key 'train.nope'"),
    (["find", "--iterations", "ten"], "invalid int value"),
    (["find", "--set", "train.lr=abc"], "train.lr must be float"),
    (["find", "--set", "prune.rate_hidden=1.5"], "rate_hidden must be in (0, 1)"),
    (["find", "--levels", "-2"], "levels must be 0 or more"),
    (["find", "--scope", "sideways"], "scope must be layerwise or global"),
    (["find", "--one-shot", "150"], "one-shot percents must be in (0, 100)"),
    (["find", "--device", "tpu"], "unknown device"),
    (["find", "--device", "cudaXYZ"], "unknown device 'cudaXYZ'; use cpu, cuda or cuda:N"),
    (["find", "--set", "train.lr=inf"], "train.lr must be a finite number"),
    (["find", "--set", "train.lr=nan"], "train.lr must be a finite number"),
    (["find", "--set", "train.lr=1e308"], "train.lr must be in (0, 10]"),
    (["find", "--set", "train.weight_decay=inf"], "train.weight_decay must be a finite number"),
    (["find", "--set", "train.weight_decay=5"], "train.weight_decay must be in [0, 1)"),
    (["find", "--set", "train.momentum=1"], "train.momentum must be in [0, 1)"),
    (["find", "--set", "train.gamma=2"], "train.gamma must be in (0, 1]"),
    (["find", "--set", "data.augment=flip-crop"], "data.augment=flip-crop needs images [N, C, H, W]; mnist1d"),
    (["find", "--set", "data.augment=mixup"], "data.augment must be one of none, flip-crop"),
    (["find", "--set", "data.val_size=0"], "data.val_size must be -1 (the dataset's default) or at least one batch"),
    (["find", "--checkpoint-seconds", "nan"], "--checkpoint-seconds must be a finite number"),
    (["find", "--checkpoint-seconds", "-1"], "--checkpoint-seconds must be a finite number, 0 or more"),
    (["find", "--arms", "imp,bogus"], "unknown arm"),
    (["find", "--arms", "reinit"], "arms must include imp"),
    (["find", "--precision", "fp8"], "train.precision must be float32 or bf16"),
    (["find", "--max-replicas", "0"], "--max-replicas must be at least 1"),
    (["report", "/nonexistent/run"], "no results.csv"),
    (["claims", "/nonexistent/run"], "no results.csv"),
])
def test_bad_input_is_one_line_exit_2_and_writes_no_run(tmp_path, args, fragment):
    result = run_main(*args, "--out", str(tmp_path / "runs")) if args[0] == "find" else run_main(*args)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lottery: error:") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "runs").exists()


def test_missing_data_offline_is_one_line_and_leaves_no_run(tmp_path):
    result = run_cli("find", "lenet300-mnist", "--data-dir", str(tmp_path / "empty"), "--out", str(tmp_path / "runs"),
                     env={"LOTTERY_MIRRORS": "http://127.0.0.1:9"})
    assert result.returncode == 2
    assert "could not get train-images-idx3-ubyte.gz" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "runs").exists()
    assert not (tmp_path / "empty").exists()  # a failed download leaves no empty data folder


def test_presets_lists_each_with_one_line():
    result = run_cli("presets")
    assert result.returncode == 0
    names = [line.split()[0] for line in result.stdout.strip().splitlines()]
    assert {"mnist1d-mlp", "lenet300-mnist", "lenet300-fashion"} <= set(names)


def test_find_and_report_on_real_mnist(tmp_path, shared_data):
    out = tmp_path / "runs"
    result = run_cli("find", "lenet300-mnist", "--levels", "2", "--iterations", "60", "--trials", "1",
                     "--set", "train.eval_every=20", "--data-dir", str(shared_data), "--out", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    (run_dir,) = out.iterdir()
    assert result.stdout.startswith(f"run: {run_dir}")
    assert "51.3" not in result.stdout and "64.1" in result.stdout  # level 2: 0.8^2 hidden, 0.9^2 output
    # 60 iterations are far too few: every network is still improving at the end, and find says so.
    assert "note: 3 of 3 networks reached early stop in the last 10% of the 60 iterations" in result.stderr
    # Without bars, a log line per finished pass: when, which, how long, and what it reached.
    passes = [line for line in result.stderr.splitlines() if " level_0" in line]
    assert [line.split()[2] for line in passes] == ["level_00:", "level_01:", "level_02:"], result.stderr
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d level_02: 1 network x 60 iterations in \d+m\d\ds; "
                     r"test accuracy at early stop \(mean\): imp \d+\.\d\d% at \d+$", passes[2]), passes[2]
    report = run_cli("report", str(run_dir))
    assert report.returncode == 0, report.stderr
    for name in ("accuracy.png", "early_stop.png", "curves.png", "report.md"):
        assert (run_dir / "report" / name).stat().st_size > 500
    text = (run_dir / "report" / "report.md").read_text()
    assert "266,200 prunable weights" in text and "| imp | 2 | 64.1 |" in text


def _run_until_killed(out: Path, extra: list[str]) -> None:
    """Start `lottery find`, wait for a mid-pass checkpoint of level 1, then kill it hard."""
    cmd = [sys.executable, "-m", "lottery.cli", "find", *TINY, *extra, "--out", str(out), "--checkpoint-seconds", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=dict(os.environ), cwd=REPO)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if list(out.glob("*/checkpoints/level_01.safetensors")):
                break
            if proc.poll() is not None:
                pytest.fail("the run ended before it could be killed")
            time.sleep(0.005)
        else:
            pytest.fail("no checkpoint appeared")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


@pytest.mark.slow  # 20 s; a killed worker resuming bit for bit is also in test_distributed (fast tier)
def test_a_killed_run_resumes_to_the_same_results(tmp_path):
    straight = tmp_path / "straight"
    assert run_cli("find", *TINY, "--out", str(straight)).returncode == 0
    killed = tmp_path / "killed"
    _run_until_killed(killed, [])
    (run_dir,) = killed.iterdir()
    assert not (run_dir / "results.csv").exists()
    assert (run_dir / "trial_0" / "level_00" / "imp" / "metrics.json").exists()
    resumed = run_cli("find", *TINY, "--out", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    (straight_dir,) = straight.iterdir()
    assert run_dir.name == straight_dir.name
    assert (run_dir / "results.csv").read_text() == (straight_dir / "results.csv").read_text()
    assert not list(run_dir.rglob("*.tmp")) and not (run_dir / "checkpoints").exists()  # no empty folder left


def test_find_warns_when_networks_diverged(tmp_path):
    from lottery.cli import diverged_note
    from lottery.storage.results import RESULT_COLUMNS
    from lottery.storage.files import save_csv

    row = {c: 0 for c in RESULT_COLUMNS} | {"arm": "imp", "percent_remaining": 100.0, "early_stop_val_loss": 0.5}
    save_csv(tmp_path / "results.csv", [row, row | {"trial": 1, "early_stop_val_loss": float("inf")}], RESULT_COLUMNS)
    assert diverged_note(tmp_path) == ("warning: 1 of 2 networks diverged (non-finite validation loss, e.g. imp trial 1 "
                                       "level 0); lower train.lr")
    save_csv(tmp_path / "results.csv", [row], RESULT_COLUMNS)
    assert diverged_note(tmp_path) is None


def test_a_reader_that_closes_the_pipe_early_gets_silence_not_an_error():
    # `lottery claims RUN | head -3`: head exits; the rest of our output has nowhere to go.
    proc = subprocess.Popen([sys.executable, "-m", "lottery.cli", "presets"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # before the command writes anything
    stderr = proc.stderr.read()
    assert proc.wait(timeout=120) == 141 and stderr == b"", stderr
