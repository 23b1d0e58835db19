"""The early-stop point of a network trained by someone else's loop: what every adapter keeps."""
from __future__ import annotations

import math

import torch

from lottery.procedure.user_loop import Network


class EarlyStopTracker:
    """Logs each validation of `net` and keeps the one of minimum validation loss (its iteration, and with
    `keep_best` a copy of its weights). `use_best()` puts those weights in the model to test them (the
    paper's metric: test accuracy at early stop); `finish()` puts the final weights θT back, which the next
    level prunes, and finishes the network."""

    def __init__(self, net: Network, keep_best: bool = True) -> None:
        self.net, self.keep_best = net, keep_best
        self.best_val_loss, self.best_iteration = math.inf, 0
        self._best: dict[str, torch.Tensor] | None = None
        self._final: dict[str, torch.Tensor] | None = None

    def _state(self) -> dict[str, torch.Tensor]:
        return {n: t.detach().clone() for n, t in self.net.model.state_dict(keep_vars=True).items()
                if isinstance(t, torch.Tensor)}

    def validated(self, iteration: int, val_loss: float, **metrics: float) -> None:
        """One validation at `iteration` (optimizer steps); accuracy logged as val_acc or eval_accuracy is
        written as val_accuracy, the column `lottery report` plots."""
        for name in ("val_acc", "eval_accuracy", "eval_acc"):
            if name in metrics and "val_accuracy" not in metrics:
                metrics["val_accuracy"] = metrics.pop(name)
        self.net.log(iteration, val_loss=val_loss, **metrics)
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_iteration = float(val_loss), int(iteration)
            if self.keep_best:
                self._best = self._state()

    @torch.no_grad()
    def use_best(self) -> None:
        """The early-stop weights into the model (the final ones are kept aside for `finish`)."""
        if self._final is None:
            self._final = self._state()
        if self._best is not None:
            self.net.model.load_state_dict(self._best)

    @torch.no_grad()
    def finish(self, *, test_accuracy: float, **metrics: float) -> None:
        """Finish the network with the test accuracy measured at early stop (after `use_best`)."""
        if self._final is not None:
            self.net.model.load_state_dict(self._final)
        self.net.finish(test_accuracy=test_accuracy, val_loss=self.best_val_loss if math.isfinite(self.best_val_loss)
                        else None, early_stop_iteration=self.best_iteration, **metrics)
