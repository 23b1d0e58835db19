"""IMP inside a trainer: callbacks that connect a `lottery.Network` to Lightning or Hugging Face.

Each adapter does what a hand-written loop does with a Network: attach the trainer's optimizer when
training starts, log each validation, keep the early-stop point (the minimum validation loss: its
iteration and, with `keep_best`, a copy of its weights to test), and finish the network. The extras
`lottery[lightning]` and `lottery[huggingface]` install the libraries; importing this package needs neither.
"""
from lottery.adapters.early_stop import EarlyStopTracker

__all__ = ["EarlyStopTracker", "LotteryCallback", "LotteryTrainerCallback"]


def __getattr__(name: str):  # type: ignore[no-untyped-def]
    """The adapters import their library on first use."""
    if name == "LotteryCallback":
        from lottery.adapters.lightning import LotteryCallback

        return LotteryCallback
    if name == "LotteryTrainerCallback":
        from lottery.adapters.huggingface import LotteryTrainerCallback

        return LotteryTrainerCallback
    raise AttributeError(f"module 'lottery.adapters' has no attribute {name!r}")
