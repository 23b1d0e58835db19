"""One run across processes with torchrun (gloo on this CPU): the same files as one process, bit for bit,
one writer per file, the run lock held for the group, and a killed worker restarted with nothing lost."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lottery.errors import RunInUse
from lottery.ranks import Ranks, threads_per_rank
from lottery.storage.files import hold_run, load_metadata, load_tensors, tensor_digest

from conftest import REPO, run_cli

TINY = ["--iterations", "600", "--levels", "3", "--trials", "2", "--arms", "imp,reinit,random",
        "--set", "model.hidden=32,32", "--set", "train.eval_every=20", "--set", "train.batch_size=50",
        "--no-progress", "--checkpoint-seconds", "0"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _torchrun(launcher: list[str], args: list[str], **popen: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two ranks on two cores
    return subprocess.Popen([*TORCHRUN, *launcher, "-m", "lottery", *args], cwd=REPO, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out


def _digest(path: Path) -> str:
    if path.suffix == ".safetensors":  # its tensors and metadata: safetensors orders metadata keys at random
        return tensor_digest(load_tensors(path)) + json.dumps(load_metadata(path), sort_keys=True)
    if path.name == "run.json":  # the environment it records names the threads each process ran on
        info = json.loads(path.read_text())
        return json.dumps({k: v for k, v in info.items() if k not in ("environment", "environments")}, sort_keys=True)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _files(run: Path) -> dict[str, str]:
    """Every result file of a run directory by its path inside it, with its digest."""
    return {str(p.relative_to(run)): _digest(p) for p in sorted(run.rglob("*"))
            if p.is_file() and p.suffix in (".safetensors", ".json", ".csv", ".toml") and p.relative_to(run).parts[0] != "report"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single(tmp_path_factory, shared_data) -> Path:
    """The reference: the same command in one process."""
    out = tmp_path_factory.mktemp("single")
    result = run_cli("find", *TINY, "--data-dir", str(shared_data), "--out", str(out))
    assert result.returncode == 0, result.stderr
    return next(out.iterdir())


def test_a_rank_takes_every_size_th_item_and_the_ranks_cover_the_list():
    items = list(range(7))
    parts = [Ranks(r, 3).share(items) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]]
    assert Ranks().share(items) == items and Ranks().pass_suffix() == "" and Ranks(1, 2).pass_suffix() == "_rank1of2"


def test_ranks_split_the_cores_unless_the_user_set_the_threads(monkeypatch):
    cores = os.cpu_count() or 1
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert threads_per_rank(1) == cores and threads_per_rank(2) == max(1, cores // 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun's own default for several ranks: the split wins
    assert threads_per_rank(2) == max(1, cores // 2)
    assert threads_per_rank(1) == 1  # one rank per machine: torchrun sets nothing, so the user did
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads_per_rank(2) == 3


def test_two_processes_write_the_single_process_run_bit_for_bit_and_a_killed_worker_loses_nothing(
        single, shared_data, tmp_path):
    out = tmp_path / "group"
    proc = _torchrun(["--standalone", "--nproc-per-node", "2", "--max-restarts", "1"],
                     ["find", *TINY, "--data-dir", str(shared_data), "--out", str(out)], start_new_session=True)
    run = out / single.name
    deadline = time.monotonic() + 120
    while not list((run / "checkpoints").glob("level_01_rank*of2.safetensors")):  # mid level 1, both ranks
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.05)
    workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert len(workers) == 2
    os.kill(int(workers[-1]), signal.SIGKILL)
    before = {p: p.stat().st_mtime_ns for p in run.glob("trial_*/level_00/imp/*")}
    assert len(before) == 2 * 3  # both trials' dense networks, done before the kill
    # The group holds the run for its one writer: any other command is refused, naming it.
    with pytest.raises(RunInUse, match="torchrun group of 2"):
        with hold_run(run, exclusive=False):
            pass
    _finish(proc)
    assert _files(run) == _files(single)
    assert {p: p.stat().st_mtime_ns for p in before} == before  # kept, not trained again
    assert not (run / "checkpoints").exists()
    assert "torchrun group of 2" in (run / ".lock").read_text()


@pytest.mark.slow  # second tier (make test-all): more torchrun groups of the same invariant
def test_two_machines_are_two_torchrun_invocations_with_one_rendezvous(single, shared_data, tmp_path):
    port = str(_free_port())
    procs = [_torchrun(["--nnodes", "2", "--node-rank", str(node), "--nproc-per-node", "1",
                        "--master-addr", "127.0.0.1", "--master-port", port],
                       ["find", *TINY, "--data-dir", str(shared_data), "--out", str(tmp_path), "--report"])
             for node in (0, 1)]
    outputs = [_finish(p) for p in procs]
    assert "arm" in outputs[0] and "report:" in outputs[0] and outputs[1] == ""  # rank 0 prints and reports
    assert (tmp_path / single.name / "report" / "report.md").exists()
    assert _files(tmp_path / single.name) == _files(single)


@pytest.mark.slow  # second tier (make test-all): more torchrun groups of the same invariant
def test_experiments_split_their_networks_and_match_one_process(single, shared_data, tmp_path):
    import shutil

    group = tmp_path / single.name
    shutil.copytree(single, group)
    lone = tmp_path / "lone" / single.name
    shutil.copytree(single, lone)
    commands = [["stability", "--levels", "0,2", "--rewind", "0,40", "--alphas", "3", "--train-examples", "500"],
                ["attack", "--method", "fgsm", "--eps", "0.1", "--examples", "200", "--levels", "0,3"],
                ["noise", "--sigmas", "1", "--draws", "2", "--levels", "3"]]
    for command in commands:
        name, *flags = command
        common = [*flags, "--data-dir", str(shared_data), "--no-progress"]
        result = run_cli(name, str(lone), *common)
        assert result.returncode == 0, result.stderr
        _finish(_torchrun(["--standalone", "--nproc-per-node", "2"], [name, str(group), *common]))
    for folder in ("stability", "attack", "noise"):
        ours, theirs = _files(group / folder), _files(lone / folder)
        assert ours and ours == theirs, folder
