"""Instability analysis (Frankle et al. 2020, "Linear Mode Connectivity and the Lottery Ticket Hypothesis").

For a run's dense network and its masks at chosen levels (the ticket's, and a random mask with the same
per-layer counts), and for each rewind point k:
1. the trunk: the run's dense network trained from θ0 on the trial's own data order to iteration k (the
   very trajectory of the run's level 0; its state at the run's rewind iteration is the run's θk), saved
   with its buffers and optimizer state;
2. two copies start from that state under the mask (weights and buffers; the optimizer fresh, as the
   run's own rewinding does, or as it was at k with `keep_optimizer`), the learning-rate schedule replayed
   from k, and train to the end on two different data orders (batches, augmentation and dropout draws:
   "SGD noise"); all levels, arms, trials and both copies of one k train as replicas of one pass;
3. the networks on the straight line between the two copies' final weights are evaluated at `alphas`
   points, on the test set and on the first `train_examples` training examples; BatchNorm statistics
   are recomputed at every point on those training examples (interpolated statistics fit neither
   the weights nor the data);
4. instability = the largest error along the line minus the mean of the two ends' errors.

Writes RUN_DIR/stability/trunk/ (states at k) and RUN_DIR/stability/<variant>/ (variant: fresh-optimizer
or kept-optimizer, + -same-noise): the copies, stability.csv, paths.csv, figures and stability.md.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch

from lottery.pruning.arms import random_control_mask
from lottery.data import Dataset
from lottery.errors import UserError
from lottery.storage.finished import FinishedRun, ModelFn, model_and_data, open_run
from lottery.training.forwards import stacked_forward_for
from lottery.options import RunOptions
from lottery.experiments.interpolation import alphas_between, error_rates, instability, interpolate, recalibrate_batchnorm
from lottery.pruning.masks import Mask
from lottery.training.optim import OptimizerState, flatten_state, unflatten_state
from lottery.order import derive_seed
from lottery.ranks import Ranks
from lottery.training.passes import NamedReplica, TrainingPass, train_replicas
from lottery.pruning.prune import parse_pattern
from lottery.pruning.units import UnitGroup
from lottery.training.sizing import eval_batch_for, replicas_per_pass
from lottery.experiments.stability_report import write_report
from lottery.errors import BrokenFile
from lottery.validation import check_count
from lottery.storage.expect import load_weights, load_weights_and_optimizer, optimizer_steps, read_replica_metrics
from lottery.storage.files import NetworkFiles, load_json, remedy, save_csv, save_json, save_tensors, writes_into_run
from lottery.training.replicas import ReplicaSpec
from lottery.training.trainer import StackedTrainer

ARMS = ("imp", "random")
DEFAULT_REWIND = (0, 100, 500, 2000)
DEFAULT_TARGETS = (100.0, 21.1, 7.0, 1.9)  # the dense network and three sparsities
STABILITY_COLUMNS = ["trial", "level", "arm", "percent_remaining", "k", "test_instability", "train_instability",
                     "test_error_ends", "train_error_ends", "early_stop_test_accuracy", "early_stop_iteration"]
PATH_COLUMNS = ["trial", "level", "arm", "percent_remaining", "k", "alpha", "test_error", "train_error"]
OPTIMIZER_PREFIX = "optimizer."
# The fields _train_copies gives each copy's metrics.json (NamedReplica extra), beside the network's metrics.
COPY_TYPES: dict[str, type | tuple[type, ...]] = {"trial": int, "level": int, "arm": str, "k": int, "copy": int}
COPY_COLUMNS = ("percent_remaining", "early_stop_test_accuracy", "early_stop_iteration")
# path.json, written by _paths: the settings it was measured with and the errors along the line.
PATH_TYPES: dict[str, type | tuple[type, ...]] = {"alphas": list, "train_examples": int, "test_error": list,
                                                  "train_error": list}


@dataclass(frozen=True)
class Point:
    """Two copies of one network, trained from iteration k on different data orders."""

    trial: int
    level: int
    arm: str
    k: int

    def folder(self, root: Path) -> Path:
        return root / f"k_{self.k}" / f"trial_{self.trial}" / f"level_{self.level:02d}" / self.arm


def variant_name(keep_optimizer: bool, same_noise: bool) -> str:
    return ("kept-optimizer" if keep_optimizer else "fresh-optimizer") + ("-same-noise" if same_noise else "")


MAX_ALPHAS = 1_000


def check_alphas(alphas: int, name: str = "alphas") -> None:
    """The library's bound, which the CLI's --alphas names as its own flag."""
    check_count(name, alphas, MAX_ALPHAS, "each point evaluates the interpolated network on the training sample "
                "and the test set, for every level, arm, trial and rewind point; 30 resolve the barrier", least=2)


@writes_into_run("lottery stability")
def stability_run(run_dir: Path | str, *, levels: list[int] | None = None, rewind: list[int] | None = None,
                  alphas: int = 30, arms: list[str] | None = None, trials: list[int] | None = None,
                  keep_optimizer: bool = False, same_noise: bool = False, train_examples: int = 10_000,
                  data_dir: Path | str | None = None, model_fn: ModelFn | None = None, data: Dataset | None = None,
                  options: RunOptions | None = None) -> Path:
    """The instability analysis of a finished run (see the module doc); returns the output folder.
    `levels` default: those nearest 100, 21.1, 7.0 and 1.9 % remaining; `rewind` default: those of 0,100,500,2000 before the run's last iteration.
    `same_noise` gives both copies the same data order and draws: a control whose instability is 0."""
    options = options or RunOptions()
    options.validate()
    run = open_run(run_dir)
    config = run.config
    if rewind is None:  # the default points the run is long enough for
        rewind = [k for k in DEFAULT_REWIND if k < config.train.iterations]
    rewind = sorted(set(rewind))
    bad = [k for k in rewind if not 0 <= k < config.train.iterations]
    if bad:
        raise UserError(f"rewind points must be in [0, {config.train.iterations}) (the run's iterations), got {bad[0]}")
    levels = run.nearest_levels(DEFAULT_TARGETS) if levels is None else sorted(set(levels))
    missing = [lv for lv in levels if lv not in run.levels]
    if missing:
        raise UserError(f"levels {missing} are not in {run.store.root} (it has {run.levels[0]}..{run.levels[-1]})")
    arms = list(ARMS if arms is None else arms)
    if not arms or any(a not in ARMS for a in arms):
        raise UserError(f"stability arms are {', '.join(ARMS)}, got {', '.join(arms) or 'none'}")
    trials = run.trials if trials is None else sorted(set(trials))
    if any(t not in run.trials for t in trials):
        raise UserError(f"trials {trials} are not all in {run.store.root} (it has {run.trials})")
    check_alphas(alphas)
    try:
        weights = alphas_between(alphas)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if train_examples < 1:
        raise UserError(f"train examples must be at least 1, got {train_examples}")

    model, _, data, _ = model_and_data(run, data_dir, model_fn=model_fn, data=data, device=options.device)
    out = run.store.root / "stability"
    variant = out / variant_name(keep_optimizer, same_noise)
    points = [Point(t, level, arm, k) for k in rewind for level in levels for arm in (["imp"] if level == 0 else arms)
              for t in trials]
    trunk = Trunk(run, out / "trunk", options.device)
    trunk.train(model, data, trials, [k for k in rewind if k > 0], options)
    _train_copies(run, model, data, points, trunk, variant, keep_optimizer, same_noise, options)
    ranks = Ranks.current()  # in a process group each rank measures its share of the paths
    _paths(run, model, data, ranks.share(points), variant, weights, train_examples, options.device)
    ranks.barrier()
    if not ranks.leader:
        return variant
    paths = _paths(run, model, data, points, variant, weights, train_examples, options.device)
    rows = [_summary(p, paths[p], variant) for p in points]
    path_rows = [{**{c: row[c] for c in ("trial", "level", "arm", "percent_remaining", "k")},
                  "alpha": alpha, "test_error": test, "train_error": train}
                 for p, row in zip(points, rows)
                 for alpha, test, train in zip(weights, paths[p]["test_error"], paths[p]["train_error"])]
    save_csv(variant / "stability.csv", rows, STABILITY_COLUMNS)
    save_csv(variant / "paths.csv", path_rows, PATH_COLUMNS)
    write_report(variant, run, rows, path_rows,
                 keep_optimizer=keep_optimizer, same_noise=same_noise, train_examples=min(train_examples, len(data.x_train)),
                 batchnorm=any(True for _ in model.buffers()))
    return variant


class Trunk:
    """The dense network's states on its own training trajectory, at the rewind points."""

    def __init__(self, run: FinishedRun, folder: Path, device: str) -> None:
        self.run, self.folder, self.device = run, folder, device

    def path(self, trial: int, k: int) -> Path:
        return self.folder / f"trial_{trial}" / f"iteration_{k}.safetensors"

    def state(self, trial: int, k: int) -> dict[str, torch.Tensor]:
        """Weights and buffers at iteration k (θ0 at k = 0)."""
        if k == 0:
            return self.run.init(trial, self.device)
        return {n: t for n, t in self._load(trial, k).items() if not n.startswith(OPTIMIZER_PREFIX)}

    def optimizer(self, trial: int, k: int) -> tuple[OptimizerState, int]:
        """The optimizer's state at iteration k, by buffer and parameter name, and its step count."""
        path = self.path(trial, k)
        return unflatten_state(self._load(trial, k), OPTIMIZER_PREFIX), optimizer_steps(path)

    def _load(self, trial: int, k: int) -> dict[str, torch.Tensor]:
        """A trunk state, checked: the run's weights and an optimizer state of its parameters."""
        return load_weights_and_optimizer(self.path(trial, k), self.run.expected(), OPTIMIZER_PREFIX, self.device)

    def train(self, model: torch.nn.Module, data: Dataset, trials: list[int], ks: list[int],
              options: RunOptions) -> None:
        """One pass of the trials' dense networks, as the run's level 0 trained them (same start, data
        order and replica seed), saving the state at each k; resumes after a kill."""
        ranks = Ranks.current()  # in a process group each rank trains its share of the trials
        todo = [t for t in ranks.share(trials) if any(not self.path(t, k).exists() for k in ks)]
        if todo:
            self._train(model, data, todo, ks, options, ranks.pass_suffix())
        ranks.barrier()

    def _train(self, model: torch.nn.Module, data: Dataset, todo: list[int], ks: list[int], options: RunOptions,
               suffix: str) -> None:
        config = self.run.config
        specs = [ReplicaSpec(i, self.run.init(t, self.device), self.run.mask(t, 0, device=self.device),
                             derive_seed(config.seed, "replica", "imp", t, 0)) for i, t in enumerate(todo)]
        seeds = [derive_seed(config.seed, "order", t) for t in todo]
        run = TrainingPass(model, data, config.train, specs, [f"trunk/{t}" for t in todo], seeds,
                           self.folder / f"checkpoint{suffix}.safetensors", augment=config.data.augment,
                           checkpoint_seconds=options.checkpoint_seconds)

        def save_states(trainer: StackedTrainer, k: int) -> None:
            tensors = trainer.tensors(detach=True)
            for row, t in enumerate(todo):
                state = {n: v[row].clone() for n, v in tensors.items()}
                state.update(flatten_state(trainer.optimizer_of(row), OPTIMIZER_PREFIX))
                save_tensors(self.path(t, k), state, {"optimizer_steps": str(trainer.optimizer.steps_taken),
                                                      "iteration": str(k)})

        # The trunk trains only as far as the last rewind point; its states are saved at each on the way.
        todo_ks = [k for k in ks if not all(self.path(t, k).exists() for t in todo)]
        run.train(max(todo_ks), stops=todo_ks, on_stop=save_states)
        run.finish()


def point_mask(run: FinishedRun, point: Point, device: str, units: list[UnitGroup] | None = None) -> Mask:
    """The ticket's mask; for `random`, the run's own random arm's mask where it has one, else the same
    draw that arm would make (random positions, the ticket's count per layer, the run's N:M pattern; in a
    structured run, random units at the ticket's count per group: `units`, from FinishedRun.unit_groups)."""
    if point.arm == "imp":
        return run.mask(point.trial, point.level, "imp", device)
    if run.store.arm_mask_path(point.trial, point.level, "random").exists():
        return run.mask(point.trial, point.level, "random", device)
    reference = run.mask(point.trial, point.level, "imp", device)
    return random_control_mask(reference, run.config.seed, point.trial, point.level,
                               parse_pattern(run.config.prune.pattern), units)


def _train_copies(run: FinishedRun, model: torch.nn.Module, data: Dataset, points: list[Point], trunk: Trunk,
                  variant: Path, keep_optimizer: bool, same_noise: bool, options: RunOptions) -> None:
    """Both copies of every point; one pass (or as many as memory needs) per rewind point k."""
    config = run.config
    # A structured run's random control is drawn per group of channels: the groups, traced once.
    units = run.unit_groups(model, data.features(data.x_train[:2])) if any(p.arm == "random" for p in points) else None
    per_pass = replicas_per_pass(model, options.device, eval_batch_for(model, data.features(data.x_train[:1])),
                                 config.train.batch_size, options.max_replicas)
    for k in sorted({p.k for p in points}):
        replicas = []
        for p in [p for p in points if p.k == k]:
            for copy in (0, 1):
                noise = 0 if same_noise else copy

                def build(p: Point = p) -> tuple[dict[str, torch.Tensor], Mask]:
                    return trunk.state(p.trial, p.k), point_mask(run, p, options.device, units)

                def optimizer(p: Point = p) -> tuple[OptimizerState, int]:
                    return trunk.optimizer(p.trial, p.k)

                key = f"stability/{p.trial}/{p.level}/{p.arm}/{p.k}/{copy}"
                replicas.append(NamedReplica(
                    p.folder(variant) / f"copy_{copy}", derive_seed(config.seed, "stability-order", p.trial, noise),
                    build, derive_seed(config.seed, "stability-replica", p.trial, p.level, p.arm, p.k, noise), key,
                    {"trial": p.trial, "level": p.level, "arm": p.arm, "k": k, "copy": copy},
                    optimizer if keep_optimizer and k > 0 else None))
        train_replicas(replicas, model, data, config.train, variant / "checkpoints", max_per_pass=per_pass,
                       checkpoint_seconds=options.checkpoint_seconds, progress=options.progress,
                       log=options.log_passes, save_final=True,
                       label=f"k{k}", start_iteration=k, augment=config.data.augment)


def _paths(run: FinishedRun, model: torch.nn.Module, data: Dataset, points: list[Point], variant: Path,
           alphas: list[float], train_examples: int, device: str) -> dict[Point, dict[str, list[float]]]:
    """Test and train error along the line between the two copies of every point (saved per point)."""
    example = data.features(data.x_train[:2])
    forwards = stacked_forward_for(model, example, run.config.train.batching)
    eval_batch = eval_batch_for(model, example[:1])
    x_train, y_train = data.x_train[:train_examples], data.y_train[:train_examples]
    bf16 = run.config.train.precision == "bf16"
    device_type = data.x_train.device.type

    def precision() -> contextlib.AbstractContextManager:
        return torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    # Networks evaluated together: their weights within ~1 GiB.
    per_network = 4 * sum(p.numel() for p in model.parameters())
    chunk = max(2, min(len(alphas), 2 ** 30 // max(per_network, 1)))
    out = {}
    for p in points:
        saved = p.folder(variant) / "path.json"
        settings = {"alphas": alphas, "train_examples": len(x_train)}
        if saved.exists():
            record = _read_path(saved)
            if all(record.get(key) == value for key, value in settings.items()):
                out[p] = record
                continue
        a, b = (load_weights(NetworkFiles(p.folder(variant) / f"copy_{c}").final, run.expected(), device)
                for c in (0, 1))
        test, train = [], []
        for start in range(0, len(alphas), chunk):
            nets = interpolate(a, b, alphas[start:start + chunk])
            nets = recalibrate_batchnorm(model, forwards, nets, x_train, run.config.train.batch_size,
                                         data.features, precision())
            test += error_rates(forwards, nets, data.x_test, data.y_test, eval_batch, data.features, precision())
            train += error_rates(forwards, nets, x_train, y_train, eval_batch, data.features, precision())
        out[p] = {**settings, "test_error": test, "train_error": train}
        save_json(saved, out[p])
    return out


def _read_path(path: Path) -> dict:
    """path.json: its fields of their types, the errors one number per alpha."""
    record = load_json(path, tuple(PATH_TYPES), PATH_TYPES)
    lists = [record["alphas"], record["test_error"], record["train_error"]]
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for values in lists for v in values)
    if not numbers or len({len(values) for values in lists}) != 1:
        detail = "its alphas and errors are not lists of numbers of one length"
        raise BrokenFile(f"{path} is malformed ({detail}); {remedy(path)}", reason=detail)
    return record


def _summary(p: Point, path: dict[str, list[float]], variant: Path) -> dict:
    copies = [read_replica_metrics(NetworkFiles(p.folder(variant) / f"copy_{c}").metrics, COPY_COLUMNS, COPY_TYPES)
              for c in (0, 1)]
    test, train = path["test_error"], path["train_error"]
    return {"trial": p.trial, "level": p.level, "arm": p.arm, "percent_remaining": copies[0]["percent_remaining"],
            "k": p.k, "test_instability": instability(test), "train_instability": instability(train),
            "test_error_ends": (test[0] + test[-1]) / 2, "train_error_ends": (train[0] + train[-1]) / 2,
            "early_stop_test_accuracy": sum(c["early_stop_test_accuracy"] for c in copies) / 2,
            "early_stop_iteration": sum(c["early_stop_iteration"] for c in copies) / 2}

