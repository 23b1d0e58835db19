"""Small runs of the built-in trainer whose every result was fingerprinted before the procedure was rebuilt
around one seam (issue 28). `test_redesign.py` runs them again and compares bit for bit.

Bits depend on the CPU: MKL and oneDNN pick their kernels by vendor and instruction set, so the same code
gives other last bits on an AMD Zen 4 than on an Intel Xeon with AMX (measured: every case differs, while
old and new code agree on each machine). The fixture holds one set of fingerprints per machine kind
(`machine_kind()`), each made with the code from before the redesign (commit 5c01582), plus the results'
values, which an unrecorded kind of machine is compared against within a stated tolerance.

Add this machine's kind, running the code of a commit whose results are trusted:
    git worktree add /tmp/before 5c01582
    PYTHONPATH=/tmp/before/src python tests/reference_runs.py ../shared/data   # merges into the fixture
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import sys
from pathlib import Path

import platform
import re

import torch
from torch import nn

import lottery
from lottery.storage.files import load_tensors, tensor_digest


class ConvBN1d(nn.Module):
    """A user model with Conv1d and BatchNorm (the one-by-one path with running statistics)."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Unflatten(1, (1, 40)), nn.Conv1d(1, 8, 5), nn.BatchNorm1d(8), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(8 * 36, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _mlp(arms: list[str], levels: int, **prune: object) -> lottery.RunConfig:
    config = lottery.get_preset("mnist1d-mlp")
    config.trials, config.arms = 2, arms
    config.model.hidden = [48, 32]
    config.train.iterations, config.train.eval_every, config.train.batch_size = 100, 20, 50
    config.prune.levels = levels
    for key, value in prune.items():
        setattr(config.prune, key, value)
    return config


def cases() -> dict[str, dict]:
    """name -> keyword arguments of `lottery.find_tickets` (besides the run directory and data)."""
    every_arm = _mlp(["imp", "reinit", "same-sign", "random", "init-magnitude", "one-shot"], 2)
    rewound = _mlp(["imp", "reinit", "random"], 1, rewind_iteration=20, rewind_optimizer=True)
    rewound.train.optimizer, rewound.train.lr, rewound.train.weight_decay = "sgd", 0.05, 1e-4
    conv = _mlp(["imp", "reinit"], 1)
    conv.train.iterations = 40
    lenet = lottery.get_preset("lenet300-mnist")
    lenet.trials, lenet.arms = 2, ["imp", "random"]
    lenet.train.iterations, lenet.train.eval_every = 60, 20
    lenet.prune.levels = 1
    for config in (every_arm, rewound, conv, lenet):
        config.train.eval_examples = 0  # whole sets, as the fixture's code evaluated (lottery.training.eval_sets)
    return {"mlp-every-arm": {"config": every_arm}, "mlp-sgd-rewind-k20": {"config": rewound},
            "convbn-user-model": {"config": conv, "model_fn": ConvBN1d}, "lenet300-mnist": {"config": lenet}}


# The columns the fixture was made with; later columns (train_accuracy_examples) are left out of its md5.
FIXTURE_COLUMNS = ["arm", "trial", "level", "percent_remaining", "weights_remaining", "prunable_weights",
                   "early_stop_iteration", "early_stop_val_loss", "early_stop_test_accuracy",
                   "final_test_accuracy", "final_train_accuracy"]


def _fixture_columns_csv(run: Path) -> bytes:
    """results.csv as the fixture's code wrote it: its columns only, the values' text unchanged."""
    with open(run / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=FIXTURE_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def fingerprint(run: Path) -> dict[str, str]:
    """results.csv's md5 (and its rows without final_train_accuracy) and a digest of every tensor file."""
    out = {"results.csv": hashlib.md5(_fixture_columns_csv(run)).hexdigest()}
    rows = lottery.read_results(run)
    out["results-without-train-accuracy"] = hashlib.md5(json.dumps(
        [{k: r[k] for k in FIXTURE_COLUMNS if k != "final_train_accuracy"} for r in rows]).encode()).hexdigest()
    for path in sorted(run.rglob("*.safetensors")):
        out[str(path.relative_to(run))] = tensor_digest(load_tensors(path))
    return out


def machine_kind() -> str:
    """What decides the last bits here: the CPU vendor, whether it has AMX, torch's CPU capability and version."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    vendor = re.search(r"vendor_id\s*:\s*(\S+)", info)
    amx = "amx" if re.search(r"\bamx_tile\b", info) else "no-amx"
    return (f"{vendor.group(1) if vendor else platform.machine()} {amx} {torch.backends.cpu.get_cpu_capability()} "
            f"torch-{torch.__version__.split('+')[0]}")


def result_values(run: Path) -> list[dict]:
    """The results' numbers (for a machine without fingerprints of its own)."""
    return [{k: r[k] for k in FIXTURE_COLUMNS if k != "final_train_accuracy"} for r in lottery.read_results(run)]


def run_case(name: str, root: Path, data_dir: Path) -> Path:
    kwargs = dict(cases()[name])
    config = kwargs.pop("config")
    return lottery.find_tickets(config, root / name, data_dir=data_dir,
                                options=lottery.RunOptions(progress=False), **kwargs)


if __name__ == "__main__":
    import tempfile

    data_dir = Path(sys.argv[1])
    fixture = Path(__file__).parent / "fixtures" / "reference_runs.json"
    known = json.loads(fixture.read_text()) if fixture.exists() else {"machines": {}, "values": {}}
    prints, values = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in cases():
            run = run_case(name, Path(tmp), data_dir)
            prints[name], values[name] = fingerprint(run), result_values(run)
    known["machines"][machine_kind()] = prints
    known["values"].setdefault(machine_kind(), values)
    fixture.write_text(json.dumps(known, indent=1, sort_keys=True) + "\n")
    print(f"{fixture}: fingerprints for {machine_kind()}")
