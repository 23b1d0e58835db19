"""A Lightning callback that trains one `lottery.Network` inside `lightning.Trainer.fit`.

    for net in imp.networks():
        callback = LotteryCallback(net)                       # monitor="val_loss" by default
        trainer = L.Trainer(max_steps=1000, callbacks=[callback], ...)
        trainer.fit(MyLightningModule(net.model), train_loader, val_loader)
        callback.use_best()                                   # the early-stop weights, to test
        test = trainer.test(module, test_loader)[0]["test_acc"]
        callback.finish(test_accuracy=test)

Unlike Lightning's own `ModelPruning(use_lottery_ticket_hypothesis=True)`, the rewind covers buffers and,
when the run asks for it, the optimizer's state at k, and every control arm is trained.
"""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl

from lottery.errors import UserError
from lottery.procedure.user_loop import Network
from lottery.adapters.early_stop import EarlyStopTracker


class LotteryCallback(pl.Callback):
    def __init__(self, net: Network, monitor: str = "val_loss", keep_best: bool = True) -> None:
        super().__init__()
        self.net, self.monitor = net, monitor
        self.tracker = EarlyStopTracker(net, keep_best)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if len(trainer.optimizers) != 1:
            raise UserError(f"LotteryCallback attaches one optimizer; this module configures {len(trainer.optimizers)}")
        self.net.attach(trainer.optimizers[0])

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if _scalar(v)}
        if self.monitor not in metrics:
            raise UserError(f"LotteryCallback monitors {self.monitor!r}, which the module does not log "
                            f"(logged: {', '.join(sorted(metrics)) or 'nothing'}); self.log it in validation_step")
        val_loss = metrics.pop(self.monitor)
        self.tracker.validated(trainer.global_step, val_loss, **{k: v for k, v in metrics.items() if k.startswith("val")})

    def use_best(self) -> None:
        self.tracker.use_best()

    def finish(self, *, test_accuracy: float, **metrics: float) -> None:
        self.tracker.finish(test_accuracy=test_accuracy, **metrics)


def _scalar(value: Any) -> bool:
    return getattr(value, "numel", lambda: 1)() == 1
