"""Live metrics while a network trains: sinks that receive each network's evaluations as they come.

A training pass logs at its evaluation points only (never per iteration: the hot loop is untouched), for
each replica under its network's name, the folder it is saved in relative to the run directory (e.g.
`trial_0/level_03/imp`):

    val/loss, val/accuracy           at every evaluation
    test/loss, test/accuracy         where the test set was measured: every evaluation with
                                     train.test_curves, else the last one and the early-stop iteration's
                                     (logged when the pass ends, at that earlier step)
    result/<metric>                  the network's early-stop metrics (metrics.json's), at its last step

Sinks (`RunOptions(track=(...))`, `lottery find --track NAME[,NAME]`), each an optional extra whose library
is imported only when its sink is asked for, each writing inside the run directory (invariant 11):

    tensorboard  RUN_DIR/tensorboard/<network>/events.out.tfevents.*: one event writer per network, so that
                 TensorBoard's run selector lists the networks and its charts overlay them per tag.
                 `tensorboard --logdir RUN_DIR/tensorboard`
    mlflow       RUN_DIR/mlruns, an MLflow file store (offline, no server): one experiment named after the
                 run directory, one MLflow run per network, tagged arm/trial/level, its params the run's
                 hash and the network's identity. MLflow 3 keeps the file store in maintenance mode behind
                 MLFLOW_ALLOW_FILE_STORE=true, which this sink sets around its own calls only; to browse it:
                 `MLFLOW_ALLOW_FILE_STORE=true mlflow ui --backend-store-uri file:RUN_DIR/mlruns`

Or any object implementing `MetricSink` (W&B, a test's recorder): the caller opens and closes it.

Tracking is how a command runs, never what it computes: lottery reads nothing the sinks write, and a run's
results (results.csv, metrics.json, curves.csv, weights) are the same bytes with or without it.

Resume. A resumed pass calls `start(network, step)` with the step after its checkpoint (the pass's first
step when it starts over); what was logged before from that step on came from training that is now done
again, with the same bits (invariant 7). TensorBoard's event writer then opens with `purge_step=step`: the
events of the killed process from that step on are hidden from TensorBoard, and the resumed ones shown; a
value logged out of order before the kill (the early-stop iteration's test accuracy, logged when a pass
ends, for a kill between that and metrics.json) can show twice at its step, with the same value. MLflow
has no purge: its sink reads the steps a network already has and logs only the others, so its history has
each (metric, step) once.

Buffering. TensorBoard's writer queues events and writes them from its own thread; the MLflow sink keeps
them in memory. Both reach their files at least every `FLUSH_SECONDS`, before each checkpoint and when a
pass ends: what a reader sees is at most that far behind training.
"""
from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import re
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from lottery.errors import UserError

__all__ = ["FLUSH_SECONDS", "TRACKERS", "MetricSink", "MLflowSink", "PassWatch", "TensorBoardSink",
           "check_trackers", "open_sinks"]

FLUSH_SECONDS = 10.0

# name -> (the module its sink imports, the extra that installs it)
TRACKERS = {"tensorboard": ("tensorboard", "tensorboard"), "mlflow": ("mlflow", "mlflow")}

_NETWORK = re.compile(r"^trial_(\d+)/level_(\d+)/([^/]+)$")  # a find network's folder


class MetricSink:
    """Where a pass's evaluations go. Only `log` must be implemented; the others default to nothing.

    log(network, step, metrics): the metrics of one network at one training iteration (finite floats; a
        metric not measured at that step is left out).
    start(network, step): the network (re)starts logging at `step`: anything logged for it before at that
        step or later is from training done again now (a resume).
    finish(network): the network trained to its end (its results are being saved).
    flush(): make everything logged so far visible to readers.
    close(): flush and release; nothing is logged after it.
    """

    def log(self, network: str, step: int, metrics: dict[str, float]) -> None:
        raise NotImplementedError

    def start(self, network: str, step: int) -> None:
        pass

    def finish(self, network: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.flush()


def identity(network: str) -> dict[str, str]:
    """A network's name and, for a find network, its arm, trial and level."""
    match = _NETWORK.match(network)
    if not match:
        return {"network": network}
    return {"network": network, "arm": match.group(3), "trial": str(int(match.group(1))),
            "level": str(int(match.group(2)))}


# --- which sinks -----------------------------------------------------------------------------------------
def missing_library(name: str) -> str | None:
    """The package tracker `name` needs when it is not installed, else None."""
    module = TRACKERS[name][0]
    return module if importlib.util.find_spec(module) is None else None


def check_trackers(track: Sequence[object], flag: str = "track") -> None:
    """Refuse an unknown tracker name, or one whose library is missing, with one line saying what to install.
    `flag` names the option in the message ("--track" from the command line)."""
    for item in track:
        if isinstance(item, MetricSink):
            continue
        if not isinstance(item, str) or item not in TRACKERS:
            raise UserError(f"{flag}: unknown tracker {item!r}; choose from {', '.join(TRACKERS)}")
        package = missing_library(item)
        if package:
            raise UserError(f"{flag} {item} needs the {package} package: pip install 'lottery[{TRACKERS[item][1]}]'")


def open_sinks(track: Sequence[object], root: Path | str, *, run_hash: str | None = None) -> tuple[list[MetricSink], list[MetricSink]]:
    """The sinks of `track` for the run directory `root`: (all of them, those opened here, which the caller
    closes; a MetricSink given is the caller's own). Nothing is written before the first metric is logged."""
    check_trackers(track)
    root = Path(root)
    sinks, opened = [], []
    for item in dict.fromkeys(track):  # a name given twice is one sink
        if isinstance(item, MetricSink):
            sinks.append(item)
            continue
        sink = TensorBoardSink(root / "tensorboard") if item == "tensorboard" else \
            MLflowSink(root / "mlruns", experiment=root.name, run_hash=run_hash)
        sinks.append(sink)
        opened.append(sink)
    return sinks, opened


# --- TensorBoard ------------------------------------------------------------------------------------------
class TensorBoardSink(MetricSink):
    """One `torch.utils.tensorboard.SummaryWriter` per network, at `folder/<network>`; opened at the network's
    first log (or start), closed when it finishes (its pass ends) or at close()."""

    def __init__(self, folder: Path | str, flush_seconds: float = FLUSH_SECONDS) -> None:
        from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

        self._writer_class, self.folder, self.flush_seconds = SummaryWriter, Path(folder), flush_seconds
        self._writers: dict[str, object] = {}
        self._purge: dict[str, int] = {}

    def _writer(self, network: str):  # type: ignore[no-untyped-def]
        writer = self._writers.get(network)
        if writer is None:
            folder = self.folder / network
            purge = self._purge.pop(network, None)
            if purge is not None and not any(folder.glob("events.out.tfevents.*")):
                purge = None  # nothing logged before: nothing to hide
            writer = self._writer_class(str(folder), purge_step=purge, max_queue=1000,
                                        flush_secs=max(1, round(self.flush_seconds)))
            self._writers[network] = writer
        return writer

    def start(self, network: str, step: int) -> None:
        self.finish(network)
        self._purge[network] = step

    def log(self, network: str, step: int, metrics: dict[str, float]) -> None:
        writer = self._writer(network)
        for tag, value in metrics.items():
            writer.add_scalar(tag, value, global_step=step)

    def finish(self, network: str) -> None:
        writer = self._writers.pop(network, None)
        if writer is not None:
            writer.close()

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()

    def close(self) -> None:
        for network in list(self._writers):
            self.finish(network)


# --- MLflow -----------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _file_store_allowed() -> Iterator[None]:
    """MLflow 3 refuses its file store unless MLFLOW_ALLOW_FILE_STORE is true: set it around our calls only."""
    key = "MLFLOW_ALLOW_FILE_STORE"
    before = os.environ.get(key)
    os.environ[key] = "true"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


class MLflowSink(MetricSink):
    """An MLflow file store at `folder` (offline): experiment `experiment`, one MLflow run per network, found
    again by its `lottery.network` tag when a resumed or later pass logs for it. Metrics are buffered and
    written in batches (a file-store write is about a millisecond), at least every `flush_seconds`."""

    def __init__(self, folder: Path | str, experiment: str, run_hash: str | None = None,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        from mlflow.entities import Metric, Param, RunStatus, RunTag  # needs the mlflow package
        from mlflow.tracking import MlflowClient

        self._Metric, self._Param, self._RunTag, self._finished = Metric, Param, RunTag, RunStatus.to_string(
            RunStatus.FINISHED)
        self.folder, self.experiment, self.run_hash = Path(folder), experiment, run_hash
        self.uri = self.folder.resolve().as_uri()
        self.flush_seconds = flush_seconds
        with _file_store_allowed():
            self.client = MlflowClient(tracking_uri=self.uri)
        self._experiment_id: str | None = None
        self._runs: dict[str, str] | None = None  # network -> MLflow run id, for the runs there are
        self._logged: dict[str, set[tuple[str, int]]] = {}  # (metric, step) a network already has
        self._pending: dict[str, list] = {}
        self._last_flush = time.monotonic()

    def _run_id(self, network: str) -> str:
        with _file_store_allowed():
            if self._runs is None:  # the experiment's runs, read once
                found = self.client.get_experiment_by_name(self.experiment)
                if found is None:
                    try:
                        self._experiment_id = self.client.create_experiment(self.experiment)
                    except Exception:  # created meanwhile (another rank of a torchrun group)
                        found = self.client.get_experiment_by_name(self.experiment)
                        if found is None:
                            raise
                if found is not None:
                    self._experiment_id = found.experiment_id
                self._runs, token = {}, None
                while True:
                    page = self.client.search_runs([self._experiment_id], max_results=1000, page_token=token)
                    for run in page:
                        name = run.data.tags.get("lottery.network")
                        if name is not None:
                            self._runs.setdefault(name, run.info.run_id)
                    token = page.token
                    if not token:
                        break
            run_id = self._runs.get(network)
            if run_id is not None:
                if network not in self._logged:
                    self._logged[network] = {(m.key, m.step) for key in self.client.get_run(run_id).data.metrics
                                             for m in self.client.get_metric_history(run_id, key)}
                return run_id
            who = identity(network)
            tags = {"lottery.network": network, "lottery.run": self.experiment,
                    **{k: v for k, v in who.items() if k != "network"}}
            run = self.client.create_run(self._experiment_id, run_name=network, tags=tags)
            params = {**({"run_hash": self.run_hash} if self.run_hash else {}), **who}
            self.client.log_batch(run.info.run_id, params=[self._Param(k, v) for k, v in params.items()])
            self._runs[network], self._logged[network] = run.info.run_id, set()
            return run.info.run_id

    def log(self, network: str, step: int, metrics: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        self._pending.setdefault(network, []).extend(
            self._Metric(key, float(value), now, int(step)) for key, value in metrics.items())
        if time.monotonic() - self._last_flush >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        for network, metrics in pending.items():
            run_id = self._run_id(network)
            logged = self._logged[network]
            fresh = [m for m in metrics if (m.key, m.step) not in logged]
            logged.update((m.key, m.step) for m in fresh)
            with _file_store_allowed():
                for i in range(0, len(fresh), 1000):  # MLflow takes at most 1000 metrics per batch
                    self.client.log_batch(run_id, metrics=fresh[i:i + 1000])
        self._last_flush = time.monotonic()

    def finish(self, network: str) -> None:
        if network in self._pending:
            self.flush()
        if self._runs is not None and network in self._runs:
            with _file_store_allowed():
                self.client.set_terminated(self._runs[network], status=self._finished)


# --- a pass's view ----------------------------------------------------------------------------------------
CURVE_TAGS = {"val_loss": "val/loss", "val_accuracy": "val/accuracy", "test_loss": "test/loss",
              "test_accuracy": "test/accuracy"}


RESULT_METRICS = ("early_stop_iteration", "early_stop_val_loss", "early_stop_test_accuracy", "final_test_accuracy",
                  "final_train_accuracy")


class PassWatch:
    """What one training pass shows while it trains: each replica's evaluations, sent to `sinks` under its
    network's name (`networks`, one per replica in the pass's order); and, at each checkpoint, each replica's
    curves so far written (atomically) to its `curves` path, the file that holds its whole curves when it
    finishes. A reader sees a complete, growing file; a network is finished only once its metrics.json
    exists, which the pass's caller writes after the final curves."""

    def __init__(self, networks: list[str], sinks: Sequence[MetricSink] = (), curves: list[Path] | None = None) -> None:
        if curves is not None and len(curves) != len(networks):
            raise ValueError(f"{len(curves)} curves paths for {len(networks)} networks")
        self.networks, self.sinks, self.curves = list(networks), list(sinks), curves

    def begin(self, trainer, resumed_at: int | None) -> None:  # type: ignore[no-untyped-def]
        """The pass starts: fresh at its first iteration, or resumed from a checkpoint at `resumed_at`
        (whose evaluations up to it were logged before)."""
        step = trainer.start_iteration if resumed_at is None else resumed_at + 1
        for sink in self.sinks:
            for network in self.networks:
                sink.start(network, step)

    def evaluated(self, trainer) -> None:  # type: ignore[no-untyped-def]
        """An evaluation point: the newest evaluation of each replica (one small copy to the host)."""
        if not self.sinks:
            return
        import torch

        from lottery.training.trainer import CURVES

        latest = torch.stack([trainer.curves[k][-1][:trainer.count] for k in CURVES]).T.tolist()  # [R][curves]
        step = trainer.iteration
        final = step == trainer.cfg.iterations
        for row, network in enumerate(self.networks):
            self._log(network, step, dict(zip(CURVES, latest[row])))
        if final and not trainer.cfg.test_curves:
            # The test set also ran on each replica's early-stop weights, into the curves at that iteration.
            for row, network in enumerate(self.networks):
                at = int(trainer.early_stop.iteration[row])
                if at != step and at in trainer.eval_iterations:
                    index = trainer.eval_iterations.index(at)
                    self._log(network, at, {k: float(trainer.curves[k][index][row]) for k in ("test_loss", "test_accuracy")})

    def _log(self, network: str, step: int, values: dict[str, float]) -> None:
        metrics = {CURVE_TAGS[k]: v for k, v in values.items() if math.isfinite(v)}
        if metrics:
            for sink in self.sinks:
                sink.log(network, step, metrics)

    def checkpoint(self, trainer) -> None:  # type: ignore[no-untyped-def]
        """Before a checkpoint is written: the curves so far on disk, and the sinks flushed, so that neither
        is behind what a resume restores."""
        if self.curves is not None and trainer.eval_iterations:
            import torch

            from lottery.storage.files import save_csv
            from lottery.training.trainer import CURVES

            values = {k: torch.stack(trainer.curves[k]).T.tolist() for k in CURVES}  # [R][evals], as results()
            for row, path in enumerate(self.curves):
                rows = [{"iteration": it, **{k: values[k][row][i] for k in CURVES}}
                        for i, it in enumerate(trainer.eval_iterations)]
                save_csv(path, rows, ["iteration", *CURVES])
        for sink in self.sinks:
            sink.flush()

    def end(self, results: list | None = None) -> None:
        """The pass trained to its end: each network's early-stop metrics logged, and the networks finished."""
        for row, network in enumerate(self.networks):
            if results is not None:
                result = results[row]
                metrics = {f"result/{k}": float(v) for k, v in result.metrics().items()
                           if k in RESULT_METRICS and math.isfinite(v)}
                step = result.iterations[-1] if result.iterations else 0
                for sink in self.sinks:
                    sink.log(network, step, metrics)
            for sink in self.sinks:
                sink.finish(network)
        for sink in self.sinks:
            sink.flush()
