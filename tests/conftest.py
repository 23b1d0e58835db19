"""Shared fixtures. Tests use the real, byte-exact datasets in ../shared/data; in CI a missing dataset fails."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

import lottery

REPO = Path(__file__).resolve().parents[1]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu",
                     help="device for the tests that take one (cpu, cuda, cuda:N); with any but cpu, only those run")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--device") == "cpu":
        return
    kept = [item for item in items if "device" in getattr(item, "fixturenames", ())]
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = kept


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    """Where the device-taking tests run: `pytest --device cuda` (benchmarks/gpu.sh) runs them on a GPU."""
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.fail(f"--device {name}: CUDA is not available here")
    return name


def _shared_data() -> Path | None:
    candidates = [os.environ.get("LOTTERY_TEST_DATA"), REPO.parent / "shared" / "data"]
    for c in candidates:
        if c and (Path(c) / "mnist" / "train-images-idx3-ubyte.gz").exists():
            return Path(c).resolve()  # absolute: tests link to its files from elsewhere
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("../shared/data is missing: CI must not skip the real-data tests")
        pytest.skip("../shared/data not found")
    return path


def require(module: str):  # type: ignore[no-untyped-def]
    """An optional extra that `make test` installs (lightning, transformers): skipped when absent, except in
    CI, where a missing extra is a failure."""
    if os.environ.get("CI"):
        import importlib

        return importlib.import_module(module)
    return pytest.importorskip(module)


@pytest.fixture(scope="session")
def mnist(shared_data: Path) -> lottery.Dataset:
    return lottery.load_dataset("mnist", shared_data, val_size=5000)


@pytest.fixture(scope="session")
def mnist1d() -> lottery.Dataset:
    return lottery.load_dataset("mnist1d")


def tiny_config(**prune: object) -> lottery.RunConfig:
    """A small but real MNIST-1D config: a few hundred iterations, fast on 2 cores."""
    config = lottery.get_preset("mnist1d-mlp")
    config.trials = 2
    config.model.hidden = [32, 32]
    config.train.iterations = 120
    config.train.eval_every = 20
    config.train.batch_size = 50
    config.prune.levels = 2
    config.arms = ["imp"]
    for key, value in prune.items():
        setattr(config.prune, key, value)
    return config


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run a block on n threads whatever the process has (`make test` gives each worker one): for the results
    that must stay bit-exact where several threads add in an order of their own."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_main(*args: str) -> subprocess.CompletedProcess:
    """`lottery ARGS` in this process (lottery.cli.main, stdout and stderr captured): for refusals, which need no
    process of their own and cost a second or two of torch's import each as one. run_cli runs the real console
    command in a process of its own (kills, locks held by another PID, umask, torchrun)."""
    import io

    from lottery import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return subprocess.CompletedProcess(["lottery", *args], code, out.getvalue(), err.getvalue())


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "lottery.cli", *args], capture_output=True, text=True,
                          env=full_env, cwd=cwd, timeout=600)


def one_line_exit_2(result: subprocess.CompletedProcess, *fragments: str) -> str:
    """A refusal as the CLI must give it: exit 2, one `lottery: error:` line holding every fragment, no traceback."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("lottery: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def finished_run(out: Path, *find_args: str, run=None) -> Path:  # type: ignore[no-untyped-def]
    """A finished `lottery find FIND_ARGS` under `out` (in this process unless `run` is run_cli): its run directory."""
    assert (run or run_main)("find", *find_args, "--out", str(out)).returncode == 0
    (run_dir,) = out.iterdir()
    return run_dir


def copy_of_run(run_dir: Path, tmp_path: Path) -> Path:
    """A copy of a finished run for one test to damage, under tmp_path/runs/."""
    copy = tmp_path / "runs" / run_dir.name
    shutil.copytree(run_dir, copy)
    return copy
