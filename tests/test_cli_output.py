"""A command line you can script and watch: --json documents on stdout, notes on stderr, bars only on a terminal,
--no-progress honoured, --version, no change to the user's matplotlib backend or warning filters, and run.json's
record of the environment a run's bits depend on."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from conftest import REPO, require, run_cli
from lottery import cli

TINY = ["mnist1d-mlp", "--levels", "1", "--iterations", "20", "--trials", "1", "--arms", "imp,reinit",
        "--set", "model.hidden=16,16"]


@pytest.fixture(scope="module")
def found(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess]:
    """One tiny run, made by `lottery find --json` with stderr a pipe: (its run directory, the command's result)."""
    out = tmp_path_factory.mktemp("runs")
    result = run_cli("find", *TINY, "--out", str(out), "--json")
    assert result.returncode == 0, result.stderr
    (run_dir,) = out.iterdir()
    return run_dir, result


def _main(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_find_json_is_one_document_with_the_rows_and_notes_on_stderr(found):
    run_dir, result = found
    doc = json.loads(result.stdout)  # stdout holds the document and nothing else
    assert Path(doc["run_dir"]).resolve() == run_dir.resolve() and doc["config_hash"] == run_dir.name[-10:]
    assert doc["report"] is None
    assert [(r["arm"], r["level"]) for r in doc["rows"]] == [("imp", 0), ("imp", 1), ("reinit", 1)]
    for row in doc["rows"]:
        assert {"percent_remaining", "early_stop_iteration", "early_stop_test_accuracy", "final_test_accuracy",
                "trials", "by_trial"} <= set(row)
        assert row["trials"] == 1 and row["by_trial"][0]["trial"] == 0 and 0 <= row["early_stop_test_accuracy"] <= 1
    # 20 iterations: every network stops late; the note is in the document and on stderr, not among the results.
    assert doc["notes"] and doc["notes"][0].startswith("note: 3 of 3 networks reached early stop")
    assert doc["notes"][0] in result.stderr


def test_find_without_bars_when_stderr_is_a_pipe_logs_each_pass(found):
    _, result = found
    assert "\r" not in result.stderr and "it/s" not in result.stderr and "level/s" not in result.stderr
    passes = [line for line in result.stderr.splitlines() if " level_0" in line]
    assert [line.split()[2] for line in passes] == ["level_00:", "level_01:"], result.stderr


def test_find_prints_results_on_stdout_and_notes_on_stderr(found, capsys):
    run_dir, _ = found
    code, out, err = _main(capsys, "find", *TINY, "--out", str(run_dir.parent), "--no-progress")  # done: it reads
    assert code == 0
    assert out.startswith(f"run: {run_dir}") and "remaining %" in out and "\nreinit " in out
    assert "note:" not in out and "note: 3 of 3 networks reached early stop" in err


def test_version(capsys):
    from lottery._version import __version__

    assert _main(capsys, "--version") == (0, f"lottery {__version__}\n", "")


def test_claims_json(found, capsys):
    run_dir, _ = found
    code, out, err = _main(capsys, "claims", str(run_dir), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert len(doc["claims"]) >= 5 and isinstance(doc["caveats"], list)
    assert all(set(c) == {"claim", "paper", "measured", "verdict"} for c in doc["claims"])


def test_export_json(found, capsys, tmp_path):
    run_dir, _ = found
    code, out, err = _main(capsys, "export", str(run_dir), "--level", "1", "--out", str(tmp_path / "t.safetensors"),
                           "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["out"] == str(tmp_path / "t.safetensors") and doc["format"] == "safetensors" and doc["compact"] is None
    ticket = doc["ticket"]
    assert (ticket["level"], ticket["trial"], ticket["arm"]) == (1, 0, "imp")
    assert ticket["prunable_weights"] == 40 * 16 + 16 * 16 + 16 * 10 and 80 < ticket["percent_remaining"] < 82
    assert 0 <= ticket["early_stop_test_accuracy"] <= 1 and (tmp_path / "t.safetensors").stat().st_size > 0


def test_export_onnx_json(found, capsys, tmp_path):
    require("onnxruntime"), require("onnxscript")  # the export extra: skipped without it, except in CI
    run_dir, _ = found
    code, out, err = _main(capsys, "export", str(run_dir), "--level", "1", "--format", "onnx",
                           "--out", str(tmp_path / "t.onnx"), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["format"] == "onnx" and doc["compact"]["onnxruntime_max_difference"] < 1e-4
    assert doc["compact"]["after"]["parameters"] <= doc["compact"]["before"]["parameters"]


def test_bench_inference_json_and_text(found, capsys, tmp_path, monkeypatch):
    import lottery.deploy.inference as inference

    run_dir, _ = found
    ticket = tmp_path / "t.safetensors"
    assert _main(capsys, "export", str(run_dir), "--level", "1", "--out", str(ticket))[0] == 0
    monkeypatch.setattr(inference, "seconds", lambda fn, x, threads, min_run_time=0.2: 2e-4)  # the shape, not timing
    code, out, err = _main(capsys, "bench-inference", str(ticket), "--json", "--out", str(tmp_path / "b.md"))
    assert code == 0, err
    doc = json.loads(out)
    assert {(r["form"], r["batch"]) for r in doc["forms"]} == {(f, b) for f in ("dense", "compact", "csr", "bsr")
                                                              for b in (1, 256)}
    assert all(r["threads"] == 1 and r["milliseconds"] == pytest.approx(0.2) for r in doc["forms"])
    assert {r["layer"] for r in doc["layers"]} and {"kind", "shape", "density", "milliseconds"} <= set(doc["layers"][0])
    from lottery.deploy.bench import bench_markdown

    markdown = (tmp_path / "b.md").read_text()
    assert markdown == bench_markdown(doc) + "\n" and "| dense | 0.200 | 1,280,000 |" in markdown
    code, out, _ = _main(capsys, "bench-inference", str(ticket))
    assert code == 0 and out == markdown  # the text output is the tables as before


def test_json_errors_stay_one_line_exit_2(capsys, tmp_path):
    code, out, err = _main(capsys, "claims", str(tmp_path / "nothing"), "--json")
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and err.startswith("lottery: error:")


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_attack_draws_bars_on_a_terminal_and_no_progress_turns_them_off(found, capsys, monkeypatch):
    from lottery.training.progress import bars_wanted

    run_dir, _ = found
    args = ["attack", str(run_dir), "--method", "fgsm", "--eps", "0.1", "--examples", "50"]
    assert not bars_wanted(True)  # pytest's stderr is no terminal
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert bars_wanted(True) and not bars_wanted(False)
    assert cli.main(args) == 0
    assert "attack:" in terminal.getvalue() and "\r" in terminal.getvalue()  # a bar
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert cli.main([*args, "--no-progress"]) == 0
    assert "\r" not in terminal.getvalue() and "attack level 1: 2 networks" in terminal.getvalue()
    assert capsys.readouterr().out.count("attack: ") == 2


def test_reports_leave_the_users_matplotlib_backend_and_figures_alone(found):
    run_dir, _ = found
    script = f"""
import matplotlib
matplotlib.use("svg")
import matplotlib.pyplot as plt
plt.figure()
import lottery.reports
from lottery.reports.report import write_report
write_report({str(run_dir)!r})
print(matplotlib.get_backend(), plt.get_fignums())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != "MPLBACKEND"}, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "svg [1]"
    assert (run_dir / "report" / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_inference_leaves_the_warning_filters_alone():
    from lottery.deploy import inference

    before = list(warnings.filters)
    weight = torch.randn(8, 12) * (torch.rand(8, 12) < 0.3)
    for layout in ("csr", "bsr"):
        form = inference.sparse_form(torch.nn.Sequential(torch.nn.Linear(12, 8)), layout)
        inference.sparse_matrix(weight, layout)
        assert form(torch.randn(3, 12)).shape == (3, 8)
    assert list(warnings.filters) == before


def test_run_json_records_the_environment_and_report_prints_it(found, capsys):
    from lottery.environment import describe, environment

    run_dir, _ = found
    env = json.loads((run_dir / "run.json").read_text())["environment"]
    here = environment("cpu")
    assert env == here and env["threads"] == torch.get_num_threads() and env["device"] == "cpu"
    assert {"lottery", "torch", "numpy", "python", "cpu", "cpu_capability"} <= set(env)
    code, out, _ = _main(capsys, "report", str(run_dir))
    assert code == 0 and out.splitlines()[1] == f"made with {describe(env)}"
    assert f"lottery {env['lottery']}, torch {torch.__version__}, numpy" in out
    assert f"{torch.get_num_threads()} thread" in out and out.rstrip().endswith(", cpu")
    assert f"Environment: made with {describe(env)}." in (run_dir / "report" / "report.md").read_text()


def test_a_run_resumed_elsewhere_keeps_its_environment_and_says_so(found, capsys, tmp_path):
    run_dir, _ = found
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    info = json.loads((copy / "run.json").read_text())
    info["environment"]["torch"] = "1.0.0"
    (copy / "run.json").write_text(json.dumps(info))
    for _ in range(2):  # the second time, the same new environment is not recorded again
        code, out, err = _main(capsys, "find", *TINY, "--out", str(tmp_path / "runs"), "--no-progress")
        assert code == 0 and err.count(f"torch 1.0.0 -> {torch.__version__}") == 1, err
    after = json.loads((copy / "run.json").read_text())
    assert after["environment"]["torch"] == "1.0.0" and len(after["environments"]) == 1
    assert after["environments"][0]["torch"] == torch.__version__
    code, out, _ = _main(capsys, "report", str(copy))
    assert "made with lottery" in out and "torch 1.0.0" in out and "resumed with lottery" in out

    del after["environment"], after["environments"]  # a run made before run.json recorded it
    (copy / "run.json").write_text(json.dumps(after))
    code, out, _ = _main(capsys, "report", str(copy))
    assert code == 0 and out.splitlines()[1] == "environment not recorded"
    assert "Environment: environment not recorded." in (copy / "report" / "report.md").read_text()


def test_bars_on_a_terminal_or_in_a_notebook_never_in_a_pipe_or_when_not_asked(monkeypatch):
    import types

    from lottery.training.progress import bars_wanted

    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    read, write = os.pipe()
    with os.fdopen(read) as _, os.fdopen(write, "w") as pipe:
        monkeypatch.setattr(sys, "stderr", pipe)
        assert not bars_wanted(True) and not bars_wanted(False)
        monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))  # an IPython kernel: a notebook
        assert bars_wanted(True) and not bars_wanted(False)
    monkeypatch.delitem(sys.modules, "ipykernel")
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert bars_wanted(True) and not bars_wanted(False)
