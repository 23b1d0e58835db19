"""A Hugging Face `transformers.TrainerCallback` that trains one `lottery.Network` inside `Trainer.train`.

    for net in imp.networks():
        callback = LotteryTrainerCallback(net)               # watches eval_loss
        trainer = Trainer(model=net.model, args=args, train_dataset=..., eval_dataset=..., callbacks=[callback])
        trainer.train()
        callback.use_best()
        test = trainer.evaluate(test_dataset, metric_key_prefix="test")["test_accuracy"]
        callback.finish(test_accuracy=test)

The optimizer the Trainer builds (wrapped by accelerate) is attached when training begins, so the mask
holds through its steps, weight decay included.
"""
from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from lottery.procedure.user_loop import Network
from lottery.adapters.early_stop import EarlyStopTracker


class LotteryTrainerCallback(TrainerCallback):
    def __init__(self, net: Network, monitor: str = "eval_loss", keep_best: bool = True) -> None:
        self.net, self.monitor = net, monitor
        self.tracker = EarlyStopTracker(net, keep_best)
        self._evaluating_test = False

    def on_train_begin(self, args: Any, state: Any, control: Any, optimizer: Any = None, **kwargs: Any) -> None:
        self.net.attach(optimizer)

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        metrics = metrics or {}
        if self.monitor not in metrics:  # another split evaluated by the user (test_*): not a validation
            return
        others = {k: float(v) for k, v in metrics.items()
                  if k.startswith("eval_") and k != self.monitor and isinstance(v, (int, float))}
        self.tracker.validated(state.global_step, float(metrics[self.monitor]), **others)

    def use_best(self) -> None:
        self.tracker.use_best()

    def finish(self, *, test_accuracy: float, **metrics: float) -> None:
        self.tracker.finish(test_accuracy=test_accuracy, **metrics)
