"""Invariant 11: the run directory is a trust boundary. A link inside a run (the lock, checkpoints/, a trial or
level folder, report/) is refused with one line naming it, exit code 2, and whatever it points to is left as
it was: no command writes, makes folders or deletes through it. The run root itself may be a link.
Also: a writer refused because a reader holds the run is told so, not given the last writer's PID."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lottery.storage.files import (LinkInRun, atomic_write_bytes, check_no_links, hold_run, make_folder,
                                   remove_empty_folder, remove_file, remove_temp_files)

from conftest import REPO, copy_of_run, finished_run, run_cli, run_main

TINY = ["--iterations", "40", "--levels", "2", "--trials", "2", "--arms", "imp,reinit", "--set", "model.hidden=32,32",
        "--set", "train.eval_every=10", "--set", "train.batch_size=50", "--no-progress"]
OLD = 1_000_000_000  # an mtime far in the past: a write through a link would move it


def _refused(result: subprocess.CompletedProcess, link: Path) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lottery: error:"), result.stderr
    assert "Traceback" not in result.stderr
    assert str(link) in lines[0], lines[0]
    return lines[0]


def _snapshot(place: Path) -> dict[Path, tuple[bytes | None, int]]:
    """`place` and everything under it: each file's bytes, and each file's and folder's mtime (a folder's
    changes when a file in it is made or removed)."""
    paths = [place, *(place.rglob("*") if place.is_dir() else ())]
    return {p: (None if p.is_dir() else p.read_bytes(), p.lstat().st_mtime_ns) for p in paths}


def _untouched(place: Path, before: dict[Path, tuple[bytes | None, int]]) -> None:
    assert _snapshot(place) == before


def _aged(place: Path) -> Path:
    for p in [place, *(place.rglob("*") if place.is_dir() else ())]:
        os.utime(p, (OLD, OLD), follow_symlinks=False)
    return place


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("finished"), *TINY, run=run_cli)


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    return copy_of_run(finished, tmp_path)


@pytest.fixture
def notes(tmp_path) -> Path:
    """A user's file that a link inside a run points to."""
    path = tmp_path / "home" / "notes.txt"
    path.parent.mkdir()
    path.write_text("my notes\n")
    return _aged(path)


# --- the lock -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["report"], ["find", *TINY, "--levels", "3"],  # the rest in make test-all
                                     *(pytest.param(c, marks=pytest.mark.slow) for c in (["claims"], ["noise"],
                                                                                        ["stability"]))])
def test_invariant_11_a_lock_that_is_a_link_is_refused_and_its_target_untouched(run_copy, notes, command):
    lock = run_copy / ".lock"
    lock.unlink(missing_ok=True)
    lock.symlink_to(notes)
    before = _snapshot(notes)
    where = str(run_copy.parent) if command[0] == "find" else str(run_copy)
    args = [*command, "--out", where] if command[0] == "find" else [command[0], where, *command[1:]]
    line = _refused(run_main(*args), lock)
    assert "symbolic link" in line and "remove it" in line
    _untouched(notes, before)
    assert lock.is_symlink()


def test_invariant_11_a_dangling_lock_link_creates_nothing(run_copy, tmp_path):
    lock, target = run_copy / ".lock", tmp_path / "home" / "not-yet.txt"
    lock.unlink(missing_ok=True)
    lock.symlink_to(target)
    _refused(run_main("find", *TINY, "--out", str(run_copy.parent)), lock)
    assert not os.path.lexists(target) and not target.parent.exists()


def test_invariant_11_a_lock_that_is_not_a_file_is_refused_without_hanging(run_copy):
    lock = run_copy / ".lock"
    lock.unlink(missing_ok=True)
    os.mkfifo(lock)  # opened for reading without O_NONBLOCK, a FIFO would wait for a writer forever
    line = _refused(run_main("claims", str(run_copy)), lock)
    assert "not a regular file" in line


def test_invariant_11_the_report_lock_as_a_link_is_refused(run_copy, notes):
    lock = run_copy / "report" / ".lock"
    lock.parent.mkdir(exist_ok=True)
    lock.unlink(missing_ok=True)
    lock.symlink_to(notes)
    before = _snapshot(notes)
    _refused(run_main("report", str(run_copy)), lock)
    _untouched(notes, before)


def test_invariant_11_report_folder_as_a_link_is_refused(run_copy, tmp_path):
    elsewhere = tmp_path / "home" / "figures"
    elsewhere.mkdir(parents=True)
    (elsewhere / "training.png").write_bytes(b"my own figure")
    (elsewhere / "report.md").write_text("my own report\n")
    shutil.rmtree(run_copy / "report", ignore_errors=True)
    (run_copy / "report").symlink_to(elsewhere, target_is_directory=True)
    before = _snapshot(_aged(elsewhere))
    _refused(run_main("report", str(run_copy)), run_copy / "report")
    _untouched(elsewhere, before)


# --- folders of the run ---------------------------------------------------------------------------------------
def test_invariant_11_checkpoints_as_a_link_loses_none_of_its_files(run_copy, tmp_path):
    models = tmp_path / "home" / "models"
    models.mkdir(parents=True)
    (models / "decoy.safetensors").write_bytes(b"a model I care about")
    (models / "pass_0.safetensors").write_bytes(b"another one, named like a pass")
    before = _snapshot(_aged(models))
    shutil.rmtree(run_copy / "checkpoints", ignore_errors=True)
    (run_copy / "checkpoints").symlink_to(models, target_is_directory=True)
    line = _refused(run_main("find", *TINY, "--levels", "3", "--out", str(run_copy.parent)), run_copy / "checkpoints")
    assert "symbolic link" in line
    _untouched(models, before)
    (run_copy / "checkpoints").unlink()  # the fix the line names works
    assert run_cli("find", *TINY, "--levels", "3", "--out", str(run_copy.parent)).returncode == 0
    _untouched(models, before)


@pytest.mark.parametrize("inside", ["trial_0", "trial_1/level_01"])
def test_invariant_11_a_trial_or_level_folder_as_a_link_is_refused_on_resume(run_copy, tmp_path, inside):
    elsewhere = tmp_path / "home" / "elsewhere"
    shutil.copytree(run_copy / inside, elsewhere)  # a folder that reads like the run's own
    before = _snapshot(_aged(elsewhere))
    shutil.rmtree(run_copy / inside)
    (run_copy / inside).symlink_to(elsewhere, target_is_directory=True)
    _refused(run_main("find", *TINY, "--levels", "3", "--out", str(run_copy.parent)), run_copy / inside)
    _untouched(elsewhere, before)


def test_invariant_11_the_run_root_itself_may_be_a_link(finished, tmp_path):
    real = tmp_path / "disk" / finished.name
    shutil.copytree(finished, real)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / finished.name).symlink_to(real, target_is_directory=True)
    assert run_cli("claims", str(tmp_path / "runs" / finished.name)).returncode == 0
    assert run_main("report", str(tmp_path / "runs" / finished.name)).returncode == 0
    assert (real / "report" / "report.md").exists()


# --- the primitives ----------------------------------------------------------------------------------------
def test_invariant_11_writes_folders_and_temp_files_stop_at_a_link_below_a_held_run(tmp_path):
    run, outside = tmp_path / "run", tmp_path / "outside"
    outside.mkdir()
    (outside / ".x.safetensors.1.tmp").write_bytes(b"not the run's temp file")
    before = _snapshot(_aged(outside))
    with hold_run(run, command="test"):
        (run / "checkpoints").symlink_to(outside, target_is_directory=True)  # made after the writer's check
        for touch in (lambda: atomic_write_bytes(run / "checkpoints" / "a.safetensors", b"x"),
                      lambda: make_folder(run / "checkpoints" / "deeper"),
                      lambda: atomic_write_bytes(run / "checkpoints", b"x"),
                      lambda: remove_file(run / "checkpoints" / ".x.safetensors.1.tmp"),
                      lambda: remove_empty_folder(run / "checkpoints")):
            with pytest.raises(LinkInRun, match="checkpoints is a symbolic link"):
                touch()
        atomic_write_bytes(run / "trial_0" / "ok.json", b"{}")  # real folders below the root are fine
    remove_temp_files(run)
    _untouched(outside, before)
    with pytest.raises(LinkInRun, match="checkpoints is a symbolic link"):
        with hold_run(run, command="test"):  # a writer refuses a run with a link inside before it starts
            pass
    atomic_write_bytes(outside / "free.txt", b"a file outside any held run: written as asked")
    assert (outside / "free.txt").read_bytes().startswith(b"a file")


def test_check_no_links_looks_only_below_the_root(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "root").symlink_to(tmp_path / "real", target_is_directory=True)
    check_no_links(tmp_path / "root", tmp_path / "root" / "not" / "made" / "yet")
    check_no_links(tmp_path / "root", tmp_path / "elsewhere" / "file")
    (tmp_path / "real" / "trial_0").symlink_to(tmp_path, target_is_directory=True)
    with pytest.raises(LinkInRun, match="trial_0 is a symbolic link"):
        check_no_links(tmp_path / "root", tmp_path / "root" / "trial_0" / "level_00")


# --- who holds the run (issue 37, 15b) ------------------------------------------------------------------------
def test_a_writer_refused_by_a_reader_is_told_a_reader_holds_the_run(run_copy):
    # The lock file names a writer that is alive (this process) but holds nothing: the refusal must not name it.
    (run_copy / ".lock").write_text(f"{os.getpid()} lottery find\n")
    reader = subprocess.Popen([sys.executable, "-c", "import time; from lottery.storage.files import hold_run\n"
                               f"with hold_run({str(run_copy)!r}, exclusive=False):\n"
                               "    print('held', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert reader.stdout.readline().strip() == "held"
        result = run_main("find", *TINY, "--out", str(run_copy.parent))
        line = _refused(result, run_copy)
        assert "reading it" in line and str(os.getpid()) not in line
        assert run_main("claims", str(run_copy)).returncode == 0  # readers share the run
    finally:
        reader.kill()
        reader.wait()
    assert run_main("find", *TINY, "--out", str(run_copy.parent)).returncode == 0
