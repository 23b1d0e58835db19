"""The checked reads and writes every run file goes through (invariants 6, 11 and 12): a tensor file records its
own digest and is written in one byte order; a read names a damaged, foreign, wrong-typed or non-regular file;
a write outside a run is atomic and leaves no temp file behind."""
import json
import os
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import save_file

from lottery.errors import BrokenFile, WriteFailed
from lottery.storage.files import (atomic_output, load_csv, load_json, load_metadata, load_tensors,
                                   remove_stale_temps, save_csv, save_tensors)
from lottery.storage.results import read_metrics

from conftest import REPO


def _weights() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return {"b.weight": torch.randn(4, 3, generator=generator), "a.bias": torch.randn(4, generator=generator)}


def test_invariant_12_a_flipped_bit_is_named_never_used(tmp_path):
    path = tmp_path / "final.safetensors"
    save_tensors(path, _weights(), {"lineage": "{}"})
    assert torch.equal(load_tensors(path)["b.weight"], _weights()["b.weight"])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(BrokenFile, match="final.safetensors is damaged"):
        load_tensors(path)


def test_invariant_12_names_and_shapes_are_checked_against_what_the_reader_expects(tmp_path):
    path = tmp_path / "init.safetensors"
    expect = {n: t.shape for n, t in _weights().items()}
    save_file({"b.weight": torch.zeros(2, 3), "a.bias": torch.zeros(4)}, str(path))  # another tool's file: no digest
    with pytest.raises(BrokenFile, match=r"b.weight has shape \(2, 3\) where \(4, 3\) belongs"):
        load_tensors(path, expect=expect)
    save_file({"c.weight": torch.zeros(4, 3), "a.bias": torch.zeros(4)}, str(path))
    with pytest.raises(BrokenFile, match="no b.weight; unexpected c.weight"):
        load_tensors(path, expect=expect)
    save_file({}, str(path))
    with pytest.raises(BrokenFile, match="init.safetensors is not the tensors"):
        load_tensors(path, expect=expect)


def test_tensor_files_are_the_same_bytes_from_every_process(tmp_path):
    """safetensors writes its metadata from a hash map whose order changes per process: the header is sorted."""
    script = ("import sys, torch; from lottery.storage.files import save_tensors; "
              "save_tensors(sys.argv[1], {f't{i}': torch.arange(i + 1.0) for i in range(6)}, "
              "{k: k * 3 for k in ('optimizer_steps', 'iteration', 'lineage', 'trial', 'rewind')})")
    outputs = []
    for i in range(2):
        out = tmp_path / f"{i}.safetensors"
        subprocess.run([sys.executable, "-c", script, str(out)], check=True, cwd=REPO, env={
            **os.environ, "PYTHONHASHSEED": str(i)})
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert load_metadata(tmp_path / "0.safetensors")["trial"] == "trialtrialtrial"
    assert "tensors_digest" not in load_metadata(tmp_path / "0.safetensors")


@pytest.mark.parametrize("value, message", [
    ([], "final_test_accuracy holds a list"), (None, "final_test_accuracy holds null"),
    ("0.9", "final_test_accuracy holds a string"), (True, "final_test_accuracy holds true/false"),
])
def test_invariant_12_a_metrics_field_of_the_wrong_type_is_named(tmp_path, value, message):
    path = tmp_path / "metrics.json"
    good = {"arm": "imp", "trial": 0, "level": 1, "percent_remaining": 51.2, "weights_remaining": 10,
            "prunable_weights": 20, "early_stop_iteration": 40, "early_stop_val_loss": float("nan"),
            "early_stop_test_accuracy": 0.9, "final_test_accuracy": 0.9, "final_train_accuracy": 1}
    path.write_text(json.dumps(good))
    assert read_metrics(path)["final_test_accuracy"] == 0.9
    path.write_text(json.dumps({**good, "final_test_accuracy": value}))
    with pytest.raises(BrokenFile, match=message):
        read_metrics(path)


@pytest.mark.parametrize("document", ["42", "[]", '"text"', "null"])
def test_invariant_12_a_json_file_that_is_not_an_object_is_named(tmp_path, document):
    path = tmp_path / "run.json"
    path.write_text(document)
    with pytest.raises(BrokenFile, match="run.json is not a JSON object"):
        load_json(path, ("run_hash",))


def test_a_named_pipe_in_place_of_a_run_file_is_named_without_blocking(tmp_path):
    readers = {"results.csv": load_csv, "metrics.json": load_json, "mask.safetensors": load_tensors,
               "init.safetensors": load_metadata}
    errors: dict[str, str] = {}

    def read_all() -> None:
        for name, read in readers.items():
            os.mkfifo(tmp_path / name)
            try:
                read(tmp_path / name)
            except BrokenFile as exc:
                errors[name] = str(exc)

    thread = threading.Thread(target=read_all, daemon=True)
    thread.start()
    thread.join(timeout=30)
    assert not thread.is_alive(), "a read blocked on a named pipe"
    assert set(errors) == set(readers)
    assert all("is a named pipe, not a regular file" in e for e in errors.values()), errors


def test_a_csv_cut_mid_line_is_named(tmp_path):
    path = tmp_path / "curves.csv"
    save_csv(path, [{"iteration": 10, "loss": 0.5}, {"iteration": 20, "loss": 0.25}], ["iteration", "loss"])
    assert len(load_csv(path)) == 2
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(BrokenFile, match="curves.csv is truncated"):
        load_csv(path)


def test_atomic_output_leaves_the_old_file_and_no_temp_on_failure(tmp_path):
    out = tmp_path / "model.onnx"
    out.write_bytes(b"the good model")
    with pytest.raises(WriteFailed, match="model.onnx"):
        with atomic_output(out) as tmp:
            tmp.write_bytes(b"half")
            raise OSError(28, "No space left on device")
    assert out.read_bytes() == b"the good model"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]
    with atomic_output(out) as tmp:
        tmp.write_bytes(b"the new model")
    assert out.read_bytes() == b"the new model" and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_a_killed_writers_temp_files_are_removed_and_a_live_ones_kept(tmp_path):
    out = tmp_path / "ticket.safetensors"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".ticket.safetensors.{dead.stdout.strip()}.abcd1234.tmp"
    live = tmp_path / f".ticket.safetensors.{os.getpid()}.abcd1234.tmp"
    other = tmp_path / f".other.safetensors.{dead.stdout.strip()}.abcd1234.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    remove_stale_temps(out)
    assert not stale.exists() and live.exists() and other.exists()


def test_a_named_pipe_for_config_toml_is_named_by_the_commands_without_blocking(tmp_path):
    """Issue 37, item 13: `report` (and every reader of a run's config) blocked forever on a pipe."""
    from conftest import run_main

    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("arm,trial,level\n")
    os.mkfifo(run / "config.toml")
    results: list = []
    thread = threading.Thread(target=lambda: results.append(run_main("report", str(run))), daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "report blocked on a named pipe"
    (result,) = results
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "config.toml is a named pipe" in lines[0], result.stderr
