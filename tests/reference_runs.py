"""Small runs of the built-in trainer whose results were recorded before the procedure was rebuilt around one
seam. `test_redesign.py` runs them again and compares their numbers within a stated tolerance.

Only numbers, never bits: the last bits of training depend on the host (MKL and oneDNN pick kernels by
vendor, instruction set and cache sizes; two AMD hosts of one "kind" were seen to differ), so bits recorded
on one host prove nothing on another. Bit-exactness is tested within one host instead (test_reproducible,
test_distributed, test_faults: two runs, pass sizes, ranks and kills give byte-identical files).

Record the values again, running the code of a commit whose results are trusted:
    git worktree add /tmp/before 5c01582
    PYTHONPATH=/tmp/before/src python tests/reference_runs.py ../shared/data
"""
from __future__ import annotations

import json
import platform
import sys
from pathlib import Path

import torch
from torch import nn

import lottery


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
        config.train.eval_examples = 0  # whole sets, as the recorded code evaluated (lottery.training.eval_sets)
    return {"mlp-every-arm": {"config": every_arm}, "mlp-sgd-rewind-k20": {"config": rewound},
            "convbn-user-model": {"config": conv, "model_fn": ConvBN1d}, "lenet300-mnist": {"config": lenet}}


# The columns compared; final_train_accuracy is left out (it is measured on a sample since the values were made).
COLUMNS = ["arm", "trial", "level", "percent_remaining", "weights_remaining", "prunable_weights",
           "early_stop_iteration", "early_stop_val_loss", "early_stop_test_accuracy", "final_test_accuracy"]


def result_values(run: Path) -> list[dict]:
    return [{k: r[k] for k in COLUMNS} for r in lottery.read_results(run)]


def run_case(name: str, root: Path, data_dir: Path) -> Path:
    kwargs = dict(cases()[name])
    config = kwargs.pop("config")
    return lottery.find_tickets(config, root / name, data_dir=data_dir,
                                options=lottery.RunOptions(progress=False), **kwargs)


if __name__ == "__main__":
    import tempfile

    data_dir = Path(sys.argv[1])
    fixture = Path(__file__).parent / "fixtures" / "reference_runs.json"
    with tempfile.TemporaryDirectory() as tmp:
        values = {name: result_values(run_case(name, Path(tmp), data_dir)) for name in cases()}
    made_on = f"{platform.processor() or platform.machine()} torch-{torch.__version__}"
    fixture.write_text(json.dumps({"made_on": made_on, "made_with": "see reference_runs.py", "values": values},
                                  indent=1, sort_keys=True) + "\n")
    print(f"{fixture}: values made on {made_on}")
