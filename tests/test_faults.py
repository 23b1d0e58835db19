"""Broken files, failed writes, a second writer, edited configs and mismatched models: one line naming the
problem and the fix, exit code 2, nothing lost; and the fix it names works."""
import os
import resource
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import lottery
from lottery.storage.files import hold_run

from conftest import REPO, copy_of_run, finished_run, one_line_exit_2, run_cli, run_main

TINY = ["--iterations", "40", "--levels", "2", "--trials", "2", "--arms", "imp,reinit", "--set", "model.hidden=32,32",
        "--set", "train.eval_every=10", "--set", "train.batch_size=50", "--no-progress"]




@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("finished"), *TINY, run=run_cli)


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    return copy_of_run(finished, tmp_path)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def test_a_truncated_ticket_is_named_with_its_fix_and_the_fix_works(run_copy):
    final = run_copy / "trial_0" / "level_01" / "imp" / "final.safetensors"
    _truncate(final)
    line = one_line_exit_2(run_main("find", *TINY, "--levels", "3", "--out", str(run_copy.parent)), str(final))
    folder = final.parent
    assert f"remove the folder {folder}" in line
    shutil.rmtree(folder)
    assert run_cli("find", *TINY, "--levels", "3", "--out", str(run_copy.parent)).returncode == 0


@pytest.mark.parametrize("command", ["noise", "attack", "compare"])
def test_a_garbage_mask_stops_every_experiment_with_one_line(run_copy, command):
    mask = run_copy / "trial_0" / "level_00" / "mask.safetensors"
    mask.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    args = {"noise": ["noise", str(run_copy), "--levels", "0,1", "--draws", "1"],
            "attack": ["attack", str(run_copy), "--examples", "10", "--steps", "1"],
            "compare": ["compare", str(run_copy), str(run_copy), "--labels", "a,b", "--out",
                        str(run_copy.parent / "cmp")]}[command]
    one_line_exit_2(run_main(*args, "--no-progress") if command == "noise" else run_cli(*args), str(mask))


def test_a_bad_metrics_file_is_named_and_removing_its_folder_retrains_it(run_copy, finished):
    metrics = run_copy / "trial_1" / "level_02" / "reinit" / "metrics.json"
    metrics.write_text('{"arm": "reinit", ')
    line = one_line_exit_2(run_main("find", *TINY, "--out", str(run_copy.parent)), str(metrics))
    assert f"remove the folder {metrics.parent}" in line
    shutil.rmtree(metrics.parent)
    assert run_cli("find", *TINY, "--out", str(run_copy.parent)).returncode == 0
    assert (run_copy / "results.csv").read_bytes() == (finished / "results.csv").read_bytes()


@pytest.mark.parametrize("command", ["report", "claims", "attack"])
def test_a_truncated_results_table_is_named_and_find_rewrites_it(run_copy, finished, command):
    results = run_copy / "results.csv"
    text = results.read_text()
    results.write_text(text[:text.index("\n") + 60])  # the header and a cut first row
    line = one_line_exit_2(run_main(command, str(run_copy)), str(results))
    assert "run the same `lottery find` again" in line
    assert run_cli("find", *TINY, "--out", str(run_copy.parent)).returncode == 0
    assert results.read_bytes() == (finished / "results.csv").read_bytes()


def test_a_corrupt_checkpoint_is_a_cache_discarded_with_a_warning(finished, tmp_path):
    out = tmp_path / "runs"
    run_dir = out / finished.name
    shutil.copytree(finished, run_dir)
    shutil.rmtree(run_dir / "trial_0" / "level_02")
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "level_02.safetensors").write_bytes(b"garbage" * 10)
    result = run_cli("find", *TINY, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "checkpoint" in result.stderr and "unreadable" in result.stderr and "Traceback" not in result.stderr
    assert (run_dir / "results.csv").read_bytes() == (finished / "results.csv").read_bytes()
    assert not (run_dir / "checkpoints").exists()


def test_a_write_that_fails_midway_is_one_line_and_keeps_what_was_finished(finished, tmp_path):
    """A file-size limit makes the disk refuse writes (EFBIG, as a full disk gives ENOSPC) during level 1."""
    out = tmp_path / "runs"
    assert run_cli("find", *TINY, "--levels", "0", "--out", str(out)).returncode == 0

    def small_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6000, 6000))  # masks fit, weights do not

    result = subprocess.run([sys.executable, "-m", "lottery.cli", "find", *TINY, "--out", str(out)], cwd=REPO,
                            capture_output=True, text=True, preexec_fn=small_files, timeout=300)
    line = one_line_exit_2(result, "cannot write", "free some space and run the same command again")
    (run_dir,) = out.iterdir()
    assert (run_dir / "trial_1" / "level_00" / "imp" / "metrics.json").exists()  # level 0 is kept
    assert not list(run_dir.rglob("*.tmp")), line
    assert run_cli("find", *TINY, "--out", str(out)).returncode == 0
    assert (run_dir / "results.csv").read_bytes() == (finished / "results.csv").read_bytes()


@pytest.mark.parametrize("where", ["/proc/no-such-place", "a-file"])
def test_an_out_folder_that_cannot_be_made_is_a_user_error(tmp_path, finished, where):
    target = tmp_path / where if where == "a-file" else Path(where)
    if where == "a-file":
        target.write_text("in the way")
    one_line_exit_2(run_main("find", *TINY, "--out", str(target)), "cannot create folder")
    one_line_exit_2(run_main("compare", str(finished), str(finished), "--labels", "a,b", "--out", str(target / "c")),
                     "cannot create folder")


def test_an_edited_config_is_refused_by_every_command(run_copy):
    config = run_copy / "config.toml"
    config.write_text(config.read_text().replace("lr = 0.01", "lr = 0.02"))
    for args in (["find", *TINY, "--out", str(run_copy.parent)], ["report", str(run_copy)], ["claims", str(run_copy)],
                 ["attack", str(run_copy), "--examples", "10"]):
        one_line_exit_2(run_main(*args), f"{config} was edited after the run was made")


def test_a_second_writer_is_refused_and_readers_wait_for_the_writer(run_copy):
    with hold_run(run_copy, command="lottery find"):
        pid = f"PID {os.getpid()} (lottery find)"  # this process holds the run: the refused ones need their own
        one_line_exit_2(run_cli("find", *TINY, "--out", str(run_copy.parent)), "is in use by " + pid)
        one_line_exit_2(run_cli("claims", str(run_copy)), pid, "still being written")
        # report reads what the writer has finished, writing only report/ under its own lock (lottery.reports.live)
        before = {p: p.read_bytes() for p in run_copy.rglob("*") if p.is_file() and p.name != ".lock"}
        assert run_cli("report", str(run_copy)).returncode == 0
        assert f"lottery find (PID {os.getpid()}) is writing this run" in (run_copy / "report" / "report.md").read_text()
        assert {p: p.read_bytes() for p in before} == before
        assert {p for p in run_copy.rglob("*") if p.is_file()} - set(before) <= {run_copy / ".lock", *(run_copy / "report").iterdir()}
    assert run_cli("claims", str(run_copy)).returncode == 0  # released with the holder


def test_a_killed_writer_releases_the_lock(run_copy):
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from lottery.storage.files import hold_run\n"
                               f"with hold_run({str(run_copy)!r}, command='lottery find'):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    assert holder.stdout.readline().strip() == "held"
    one_line_exit_2(run_main("claims", str(run_copy)), f"PID {holder.pid}")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert run_cli("claims", str(run_copy)).returncode == 0


def test_files_take_the_umask_and_no_temp_files_or_empty_folders_stay(run_copy):
    stale = run_copy / "trial_0" / "level_01" / ".final.safetensors.abc123.tmp"
    stale.write_bytes(b"half")
    env_umask = "import os, sys; os.umask(0o027); from lottery.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run([sys.executable, "-c", env_umask, "find", *TINY, "--levels", "3", "--out",
                             str(run_copy.parent)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    new = run_copy / "trial_0" / "level_03" / "imp" / "final.safetensors"
    assert new.stat().st_mode & 0o777 == 0o640
    assert not (run_copy / "checkpoints").exists() and not list(run_copy.rglob("*.tmp"))


@pytest.mark.parametrize("folder", ["lenet300-mnist-50k", "lenet300-fashion-10k"])
def test_the_docs_result_folders_are_runs_that_claims_and_report_read(folder, tmp_path):
    result = run_cli("claims", str(REPO / "docs" / folder))
    assert result.returncode == 0, result.stderr
    assert "| 1. percent remaining per level" in result.stdout
    copy = tmp_path / folder
    shutil.copytree(REPO / "docs" / folder, copy)
    result = run_cli("report", str(copy))
    assert result.returncode == 0, result.stderr
    assert (copy / "report" / "accuracy.png").stat().st_size > 500


class TupleNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(40, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.fc(x)
        return out, out.sum()


class WiderNet(nn.Module):
    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(40, width), nn.ReLU(), nn.Linear(width, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def test_python_api_refuses_a_tuple_output_and_another_model_before_writing(tmp_path, mnist1d):
    config = lottery.get_preset("mnist1d-mlp")
    config.trials, config.prune.levels, config.train.iterations = 1, 0, 40
    options = lottery.RunOptions(progress=False)
    with pytest.raises(lottery.UserError, match="returns a tuple"):
        lottery.find_tickets(config, tmp_path / "tuple", model_fn=TupleNet, data=mnist1d, options=options)
    assert not (tmp_path / "tuple").exists()
    run = lottery.find_tickets(config, tmp_path / "run", model_fn=WiderNet, data=mnist1d, options=options)
    before = sorted(p.name for p in run.rglob("*"))
    with pytest.raises(lottery.UserError, match=r"does not match the run .* layers\.0\.(bias|weight) is \[32"):
        lottery.find_tickets(config, run, model_fn=lambda: WiderNet(32), data=mnist1d, options=options)
    assert sorted(p.name for p in run.rglob("*")) == before
    assert "test_faults.WiderNet" in (run / "run.json").read_text()
