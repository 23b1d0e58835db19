"""How a command runs (device, progress output, checkpoints, pass size, live tracking): shared by find and
every experiment."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from lottery.devices import check_device
from lottery.errors import UserError


@dataclass
class RunOptions:
    """How to run, not what to compute: none of these change a result, so none is in the run hash."""

    device: str = "cpu"
    progress: bool = True
    log_passes: bool = False  # one line per finished training pass on stderr: for logs, where bars are noise
    checkpoint_seconds: float = 60.0  # at most this long of training is lost on a kill
    max_replicas: int | None = None  # replicas per training pass; None: as many as memory and speed favour
    # Live metrics while networks train (lottery.training.tracking): "tensorboard" (RUN_DIR/tensorboard),
    # "mlflow" (RUN_DIR/mlruns, a file store), or MetricSink objects of the caller's own. Used by find.
    track: tuple[Any, ...] = ()

    def validate(self) -> None:
        if not isinstance(self.device, str):
            raise UserError(f"device must be a string (cpu, cuda or cuda:N), got {self.device!r}")
        for name in ("progress", "log_passes"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.max_replicas is not None and (isinstance(self.max_replicas, bool) or not isinstance(self.max_replicas, int)):
            raise UserError(f"max replicas must be an int or None, got {self.max_replicas!r}")
        check_device(self.device)
        if not (isinstance(self.checkpoint_seconds, (int, float)) and math.isfinite(self.checkpoint_seconds)
                and self.checkpoint_seconds >= 0):
            raise UserError(f"checkpoint seconds must be a finite number, 0 or more, got {self.checkpoint_seconds}")
        if self.max_replicas is not None and self.max_replicas < 1:
            raise UserError(f"max replicas must be at least 1, got {self.max_replicas}")
        from lottery.training.tracking import check_trackers

        check_trackers(self.trackers)

    @property
    def trackers(self) -> tuple[Any, ...]:
        """`track` as a tuple (track="tensorboard" is that one sink, not its letters)."""
        return (self.track,) if isinstance(self.track, str) else tuple(self.track or ())
