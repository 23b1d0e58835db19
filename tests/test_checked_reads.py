"""Invariant 12, issue 37 items 5-10: every read of a run file checks it against what its writer wrote (names,
shapes, types, lineage digests) in one place per kind of file (lottery.storage.expect), and names the damaged
file in one line, exit 2; good files are never rewritten on the way out. Ticket files (outside a run, maybe a
user's) are checked field by field before anything is built of them, and written atomically."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lottery.errors import WriteFailed

from conftest import REPO, copy_of_run, finished_run, one_line_exit_2, run_main

TINY = ["--iterations", "40", "--levels", "2", "--trials", "2", "--arms", "imp,reinit,random", "--set",
        "model.hidden=32,32", "--set", "train.eval_every=10", "--set", "train.batch_size=50", "--no-progress"]
FILES = {"init": "trial_0/init.safetensors", "mask": "trial_0/level_01/mask.safetensors",
         "random mask": "trial_0/level_01/random/mask.safetensors",
         "reinit start": "trial_0/level_01/reinit/start.safetensors", "final": "trial_0/level_01/imp/final.safetensors"}




@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    return finished_run(tmp_path_factory.mktemp("finished"), *TINY)


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    return copy_of_run(finished, tmp_path)


def _damage(path: Path, how: str) -> None:
    """A well-formed safetensors file with the wrong tensors (no digest: a file from before digests is trusted
    by load_tensors itself), or flipped bits in a file that records its digest."""
    data = path.read_bytes()
    if how == "flipped":
        changed = bytearray(data)
        changed[-3] ^= 0x10
        path.write_bytes(bytes(changed))
        return
    tensors = st_load(data)
    if how == "empty":
        tensors = {}
    elif how == "renamed":
        first = sorted(tensors)[0]
        tensors[first + "_x"] = tensors.pop(first)
    elif how == "halved":
        tensors = {n: t[: max(1, t.shape[0] // 2)].clone() for n, t in tensors.items()}
    path.write_bytes(st_save(tensors))


def _unchanged(run: Path, finished: Path) -> None:
    for name in ("results.csv", "run.json", "config.toml"):
        assert (run / name).read_bytes() == (finished / name).read_bytes()


# --- items 5 and 9: export, find and the experiments name a file with the wrong tensors ----------------------
EXPORT_ARM = {"init": "imp", "mask": "imp", "random mask": "random", "reinit start": "reinit", "final": "imp"}


DAMAGES = ["flipped", "renamed", "halved", "empty"]
# Each file and each damage once in `make test`; the whole product in `make test-all` (the 5-minute budget).
EXPORT_CASES = [pytest.param(which, how, marks=() if j == i % len(DAMAGES) else pytest.mark.slow)
                for i, which in enumerate(FILES) for j, how in enumerate(DAMAGES)]


@pytest.mark.parametrize(("which", "how"), EXPORT_CASES)
def test_invariant_12_export_refuses_a_damaged_ticket_file(run_copy, finished, which, how):
    damaged = run_copy / FILES[which]
    _damage(damaged, how)
    out = run_copy.parent / "t.safetensors"
    result = run_main("export", str(run_copy), "--level", "1", "--arm", EXPORT_ARM[which], "--out", str(out))
    one_line_exit_2(result, str(damaged))
    assert not out.exists()
    _unchanged(run_copy, finished)


def _command(name: str, run: Path) -> list[str]:
    return {"find": ["find", "mnist1d-mlp", *TINY, "--levels", "3", "--out", str(run.parent)],
            "noise": ["noise", str(run), "--levels", "0,1", "--draws", "1", "--sigmas", "1", "--no-progress"],
            "stability": ["stability", str(run), "--levels", "1", "--rewind", "0", "--alphas", "2", "--trials", "0",
                          "--no-progress"],
            "attack": ["attack", str(run), "--examples", "5", "--steps", "1", "--eps", "0.1", "--no-progress"],
            "transfer": ["transfer", str(run), "--against", str(run), "--levels", "1", "--no-progress"],
            "compare": ["compare", str(run), str(run), "--labels", "a,b", "--out", str(run.parent / "cmp")]}[name]


@pytest.mark.parametrize(("command", "which", "how"), [  # export: every file and damage, above
    ("find", "init", "renamed"), ("find", "random mask", "empty"), ("noise", "final", "empty"),
    ("stability", "random mask", "halved"), ("attack", "final", "halved"), ("transfer", "mask", "renamed"),
    ("compare", "mask", "halved"),
])
def test_invariant_12_every_reader_names_a_file_with_the_wrong_tensors(run_copy, finished, command, which, how):
    damaged = run_copy / FILES[which]
    _damage(damaged, how)
    one_line_exit_2(run_main(*_command(command, run_copy)), str(damaged), "not the tensors this run's model has")
    _unchanged(run_copy, finished)


def test_invariant_12_export_checks_the_mask_against_the_digest_its_network_trained_under(run_copy, finished):
    """A valid mask of the right shapes, but another one (level 2's in level 1's place): its network's
    metrics.json recorded the digest of the mask it trained under."""
    level_1 = run_copy / FILES["mask"]
    shutil.copyfile(run_copy / "trial_0" / "level_02" / "mask.safetensors", level_1)
    result = run_main("export", str(run_copy), "--level", "1", "--out", str(run_copy.parent / "t.safetensors"))
    one_line_exit_2(result, "contradicts itself", str(level_1))
    _unchanged(run_copy, finished)


# --- item 5: results.csv cut at a line boundary --------------------------------------------------------------
@pytest.mark.parametrize("command", ["report", "export", "noise"])
def test_invariant_12_a_results_table_cut_at_a_line_boundary_is_named(run_copy, command):
    results = run_copy / "results.csv"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text("".join(lines[:-3]))  # whole rows lost: the table still parses
    cut = results.read_bytes()
    args = {"report": ["report", str(run_copy)],
            "export": ["export", str(run_copy), "--level", "1", "--out", str(run_copy.parent / "t.safetensors")],
            "noise": _command("noise", run_copy)}[command]
    line = one_line_exit_2(run_main(*args), str(results), "no row for 3 finished networks")
    assert "run the same `lottery find` again" in line
    assert results.read_bytes() == cut


def test_a_smaller_find_writes_a_smaller_table_that_is_not_refused(run_copy):
    """A later find with fewer trials writes a table of those on purpose: it is not a cut table."""
    assert run_main("find", *TINY, "--trials", "1", "--out", str(run_copy.parent)).returncode == 0
    assert run_main("claims", str(run_copy)).returncode == 0
    result = run_main("export", str(run_copy), "--level", "1", "--out", str(run_copy.parent / "t.safetensors"))
    assert result.returncode == 0, result.stderr


# --- item 8: wrong-typed JSON in metrics files ----------------------------------------------------------------
@pytest.mark.parametrize(("command", "text"), [("export", "42"), ("export", "[]"), ("export", '"a string"'),
                                             ("export", "null"), ("find", "42")])
def test_invariant_12_a_metrics_file_that_is_not_an_object_is_named(run_copy, finished, command, text):
    metrics = run_copy / "trial_0" / "level_01" / "imp" / "metrics.json"
    metrics.write_text(text)
    args = _command("find", run_copy) if command == "find" else \
        ["export", str(run_copy), "--level", "1", "--out", str(run_copy.parent / "t.safetensors")]
    one_line_exit_2(run_main(*args), str(metrics))
    _unchanged(run_copy, finished)


@pytest.mark.parametrize(("command", "field", "value"), [
    ("find", "trial", None), ("export", "level", "1"), ("export", "mask_digest", 7), ("export", "steps", [])])
def test_invariant_12_a_wrong_typed_metrics_field_is_named(run_copy, finished, command, field, value):
    metrics = run_copy / "trial_0" / "level_01" / "random" / "metrics.json"
    record = json.loads(metrics.read_text())
    metrics.write_text(json.dumps({**record, field: value}))
    args = _command("find", run_copy) if command == "find" else \
        ["export", str(run_copy), "--level", "1", "--arm", "random", "--out", str(run_copy.parent / "t.safetensors")]
    one_line_exit_2(run_main(*args), str(metrics), field)
    _unchanged(run_copy, finished)


def test_invariant_12_an_experiment_replicas_metrics_are_typed(run_copy):
    noise = ["noise", str(run_copy), "--levels", "1", "--draws", "1", "--sigmas", "1", "--no-progress"]
    assert run_main(*noise).returncode == 0
    (metrics,) = (run_copy / "noise" / "trial_0" / "level_01").glob("sigma_*/metrics.json")
    metrics.write_text(json.dumps({**json.loads(metrics.read_text()), "sigma": "one"}))
    before = (run_copy / "noise" / "training.csv").read_bytes()
    line = one_line_exit_2(run_main(*noise), str(metrics), "sigma")
    assert f"remove the folder {metrics.parent}" in line
    assert (run_copy / "noise" / "training.csv").read_bytes() == before


# --- item 6: export writes atomically and leaves no temp file ---------------------------------------------------
def test_export_removes_what_a_killed_export_left_and_leaves_no_temp_file(finished, tmp_path):
    out = tmp_path / "ticket.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".{out.name}.{int(dead.stdout)}.1a2b.tmp"
    stale.write_bytes(b"\0" * 4096)
    assert run_main("export", str(finished), "--level", "1", "--out", str(out)).returncode == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]


def test_an_onnx_export_that_fails_midway_leaves_nothing_and_names_the_file(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    from lottery.deploy.bench import to_onnx

    def full_disk(model, args, path, **kwargs):
        Path(path).write_bytes(b"\0" * 4096)  # what a full disk left before
        raise RuntimeError("export failed") from OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch.onnx, "export", full_disk)
    out = tmp_path / "t.onnx"
    with pytest.raises(WriteFailed, match=f"cannot write {out}: No space left on device"):
        to_onnx(torch.nn.Sequential(torch.nn.Linear(4, 2)), torch.randn(3, 4), out)
    assert list(tmp_path.iterdir()) == []


# --- item 7: the same trunk gives the same bytes in any process --------------------------------------------------
TRUNK = """
import sys
from pathlib import Path
from lottery.storage.files import load_tensors, save_tensors
state = load_tensors(Path(sys.argv[1]) / "trial_0" / "init.safetensors")
state.update({f"optimizer.exp_avg.{n}": t * 0.5 for n, t in state.items()})
for k in range(8):  # stability's Trunk writes each state so (save_tensors, these metadata)
    save_tensors(Path(sys.argv[2]) / f"iteration_{k}.safetensors", state,
                 {"optimizer_steps": str(k), "iteration": str(k)})
"""


def test_invariant_7_two_processes_write_the_same_trunk_byte_for_byte(finished, tmp_path):
    """The header's metadata came from a hash map seeded per process: with three keys, two processes agreed
    one time in six; eight files each make a chance agreement negligible."""
    folders = [tmp_path / str(i) for i in (0, 1)]
    workers = [subprocess.Popen([sys.executable, "-c", TRUNK, str(finished), str(folder)], cwd=REPO,
                                env={**os.environ, "PYTHONHASHSEED": str(i)}) for i, folder in enumerate(folders)]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    for k in range(8):
        a, b = (folder / f"iteration_{k}.safetensors" for folder in folders)
        assert a.read_bytes() == b.read_bytes()


# --- item 10: a ticket whose metadata lies ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def ticket(finished, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ticket") / "t.safetensors"
    assert run_main("export", str(finished), "--level", "1", "--out", str(out)).returncode == 0
    return out


def _lying(ticket: Path, folder: Path, change) -> Path:  # type: ignore[no-untyped-def]
    data = ticket.read_bytes()
    length = int.from_bytes(data[:8], "little")
    info = json.loads(json.loads(data[8:8 + length])["__metadata__"]["lottery"])
    change(info)
    path = folder / "lying.safetensors"
    path.write_bytes(st_save(st_load(data), metadata={"lottery": json.dumps(info)}))
    return path


LIES = {
    "no model": (lambda i: i.pop("model"), "no 'model'"),
    "an unknown field": (lambda i: i.update(colour="red"), "unknown field 'colour'"),
    "an unknown model field": (lambda i: i["model"].update(width=3), "unknown field 'width'"),
    "a string for a number": (lambda i: i.update(prunable_weights="many"), "prunable_weights"),
    "a hidden layer of 10^9": (lambda i: i["model"].update(hidden=[10**9, 32]), "1,000,000,000"),
    "another hidden size": (lambda i: i["model"].update(hidden=[16, 32]), "layers.0"),
    "inputs of 10^9": (lambda i: i["inputs"].update(input_shape=[10**9]), "1,000,000,000"),
    "a model that is a list": (lambda i: i.update(model=[]), "model holds []"),
    "layers that are not the masks": (lambda i: i["layers"].update({"layers.0.weight": {"kept": 1, "total": 1,
                                                                                         "percent": 100.0}}),
                                      "layers.0.weight"),
}


@pytest.mark.parametrize("lie", list(LIES))
def test_a_ticket_whose_metadata_lies_is_one_line_in_bench_inference(ticket, tmp_path, lie):
    change, fragment = LIES[lie]
    path = _lying(ticket, tmp_path, change)
    one_line_exit_2(run_main("bench-inference", str(path)), str(path), fragment)
