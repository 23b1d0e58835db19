"""`lottery bench-inference`: every form of a structured ticket (PyTorch dense, compact, CSR, BSR; ONNX Runtime
float32 and int8) with its accuracy, and a verdict that names one of them. Shapes and accuracies only: nothing
here is timed (the timer runs with a tiny budget on a small batch; the verdict's code path is the real one)."""
from __future__ import annotations

import json

import pytest

import lottery.deploy.bench as bench
import lottery.deploy.onnx_file as onnx_file
import lottery.deploy.inference as inference
from conftest import finished_run, require, run_main

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def structured_ticket(tmp_path_factory, shared_data):
    """A channel-granularity keyword-spotting CNN ticket (level 1, 20 iterations: accuracy is near chance, which
    is all these tests need), exported to a ticket file."""
    out = tmp_path_factory.mktemp("structured")
    run_dir = finished_run(out / "runs", "fsdd-cnn", "--data-dir", str(shared_data), "--granularity", "channel",
                           "--levels", "1", "--trials", "1", "--iterations", "20", "--arms", "imp", "--no-progress")
    ticket = out / "t.safetensors"
    assert run_main("export", str(run_dir), "--level", "1", "--out", str(ticket)).returncode == 0
    return ticket


@pytest.fixture
def quick_timer(monkeypatch):
    """The real timer on a small batch with a tiny budget: the measurement's shape, in seconds instead of minutes."""
    timer = inference.seconds
    monkeypatch.setattr(inference, "seconds", lambda fn, x, threads, min_run_time=0.2: timer(fn, x, threads, 0.001))
    monkeypatch.setattr(bench, "FULL_BATCH", 16)


def test_every_form_has_an_accuracy_and_the_verdict_names_one_of_them(structured_ticket, shared_data, quick_timer,
                                                                     tmp_path):
    require("onnxruntime")
    result = run_main("bench-inference", str(structured_ticket), "--data-dir", str(shared_data), "--threads", "1",
                      "--tolerance", "0.5", "--json", "--out", str(tmp_path / "b.md"))
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    forms = {(r["runtime"], r["form"], r["precision"]) for r in doc["forms"]}
    assert {("pytorch", "dense", "fp32"), ("pytorch", "compact", "fp32"), ("pytorch", "csr", "fp32"),
            ("onnxruntime", "dense", "fp32"), ("onnxruntime", "compact", "fp32"),
            ("onnxruntime", "compact", "int8")} <= forms, doc["skipped"]
    assert {r["batch"] for r in doc["forms"]} == {1, 16} and {r["threads"] for r in doc["forms"]} == {1}
    for row in doc["forms"]:  # each form scored on the test set, beside its speed
        assert 0 <= row["accuracy"] <= 1 and row["examples_per_second"] > 0 and row["max_difference"] >= 0
        dense = next(r for r in doc["forms"] if (r["runtime"], r["form"], r["batch"]) == ("pytorch", "dense", 1))
        assert row["accuracy_delta"] == pytest.approx(row["accuracy"] - dense["accuracy"])
    bytes_of = {(r["runtime"], r["form"], r["precision"]): r["weight_bytes"] for r in doc["forms"]}
    assert bytes_of[("onnxruntime", "compact", "int8")] < bytes_of[("onnxruntime", "compact", "fp32")]
    assert "static" in doc["int8"] and doc["calibration"] == "the first 256 training examples"
    assert doc["compact"]["method"] in {"chain", "depgraph"}  # channels cut out: a structured ticket compacts
    assert doc["sizes"]["compact"]["parameters"] < doc["sizes"]["dense"]["parameters"]

    verdict = doc["verdict"]
    assert verdict["tolerance_points"] == 0.5 and verdict["accuracy_measured"]
    assert {(s["batch"], s["threads"]) for s in verdict["settings"]} == {(1, 1), (16, 1)}
    for setting in verdict["settings"]:
        fastest = setting["fastest"]
        assert (fastest["runtime"], fastest["form"], fastest["precision"]) in forms and fastest["speedup"] > 0
        assert isinstance(setting["within_tolerance"], bool)
        assert setting["within_tolerance"] == (100 * setting["accuracy_delta"] >= -0.5 - 1e-9)
        if not setting["within_tolerance"]:
            safe = setting["fastest_within_tolerance"]
            assert (safe["runtime"], safe["form"], safe["precision"]) in forms
    names = {r["layer"] for r in doc["layers"]}
    assert {r["layer"] for r in verdict["layers"]} == names == {"convs.0", "convs.1", "convs.2", "fc"}
    assert all(r["keep"] in {"dense", "csr", "bsr"} for r in verdict["layers"])

    markdown = (tmp_path / "b.md").read_text()
    assert markdown == bench.bench_markdown(doc) + "\n"
    verdict_text = markdown[markdown.index("**Verdict**"):]
    assert "| ort compact int8 |" in markdown and "batch 1, 1 thread:" in verdict_text
    assert "layers, batch 16, 1 thread:" in verdict_text and len(verdict_text.splitlines()) == 5


def test_a_model_onnx_cannot_take_still_gets_its_pytorch_forms(structured_ticket, quick_timer, monkeypatch):
    """The exporter fails (as it does on a model with operators ONNX lacks): the PyTorch forms are measured, the
    ONNX Runtime ones named as skipped with the reason; no data at hand: accuracy is said not measured."""
    def refuse(*args, **kwargs):
        raise RuntimeError("an operator ONNX has no counterpart for\nmore detail")

    monkeypatch.setattr(onnx_file, "export_onnx", refuse)
    result = run_main("bench-inference", str(structured_ticket), "--threads", "1", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {r["runtime"] for r in doc["forms"]} == {"pytorch"}
    assert {r["form"] for r in doc["forms"]} == {"dense", "compact", "csr", "bsr"}
    skipped = {s["form"]: s["reason"] for s in doc["skipped"]}
    assert set(skipped) == {"ort dense", "ort compact"}
    assert all("an operator ONNX has no counterpart for" in why and "\n" not in why for why in skipped.values())
    assert all(r["accuracy"] is None and r["accuracy_delta"] is None and 0 <= r["agreement"] <= 1
               for r in doc["forms"])
    assert not doc["verdict"]["accuracy_measured"]
    assert all(s["within_tolerance"] is None for s in doc["verdict"]["settings"])
    text = bench.bench_markdown(doc)
    assert "Accuracy not measured" in text and "Not measured: ort dense: torch.onnx.export failed" in text


def test_without_onnxruntime_one_line_says_so(structured_ticket, quick_timer, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime raises ImportError
    from lottery.deploy.runtime import onnx_forms

    forms, skipped, int8 = onnx_forms(None, None, None, None, None)  # type: ignore[arg-type]
    assert forms == [] and int8 is None and len(skipped) == 1
    assert "onnxruntime is not installed" in skipped[0]["reason"] and "lottery[export]" in skipped[0]["reason"]


def test_thread_counts_and_tolerance_are_checked_before_measuring(structured_ticket):
    assert bench.thread_counts(None)[0] == 1 and bench.thread_counts([1, 1, 2]) == [1, 2]
    for args, fragment in ((["--threads", "0"], "--threads"), (["--threads", "two"], "--threads"),
                           (["--tolerance", "-1"], "--tolerance")):
        result = run_main("bench-inference", str(structured_ticket), *args)
        assert result.returncode == 2 and fragment in result.stderr and len(result.stderr.strip().splitlines()) == 1
