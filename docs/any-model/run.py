"""The evidence of docs/any-model.md: IMP through lottery.IMP around a plain PyTorch loop, on a model the
presets do not have: an LSTM reading the log-mel spectrogram of a spoken digit (FSDD) frame by frame.

    python docs/any-model/run.py RUN_DIR --data-dir ../shared/data      # resumes where it stopped

Everything lottery does is in the six lines marked `# lottery`; the rest is an ordinary training loop.
"""
from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

import lottery

ITERATIONS, BATCH, LR, EVAL_EVERY = 2000, 32, 3e-3, 100


class SpokenDigitLSTM(nn.Module):
    """[B, 1, 40 mel bands, 49 frames] -> an LSTM over the 49 frames (40 features each) -> 10 digits."""

    def __init__(self, hidden: int = 128) -> None:
        super().__init__()
        self.lstm = nn.LSTM(40, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        frames = x.squeeze(1).transpose(1, 2)  # [B, 49, 40]
        out, _ = self.lstm(frames)
        return self.head(out[:, -1])


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    model.eval()
    logits = model(x)
    model.train()
    return F.cross_entropy(logits, y).item(), (logits.argmax(1) == y).float().mean().item()


def train(net: lottery.Network, data: lottery.Dataset) -> None:
    """A plain loop: Adam, shuffled batches, validation every 100 steps, test accuracy kept at the minimum
    of the validation loss (the paper's early-stop metric)."""
    torch.manual_seed(net.order_seed)  # every arm of a trial sees the same batches
    opt = net.attach(torch.optim.Adam(net.model.parameters(), lr=LR))  # lottery: the mask holds through Adam
    best, step = (math.inf, 0, 0.0), 0
    while step < ITERATIONS:
        for idx in torch.randperm(len(data.x_train)).split(BATCH):
            if step % EVAL_EVERY == 0:
                val_loss, val_acc = evaluate(net.model, data.x_val, data.y_val)
                test_loss, test_acc = evaluate(net.model, data.x_test, data.y_test)
                net.log(step, val_loss=val_loss, val_accuracy=val_acc, test_loss=test_loss, test_accuracy=test_acc)  # lottery
                if val_loss < best[0]:
                    best = (val_loss, step, test_acc)
            if step == ITERATIONS or len(idx) < BATCH:
                break
            loss = F.cross_entropy(net.model(data.x_train[idx]), data.y_train[idx])
            opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(net.model.parameters(), 1.0)
            opt.step()
            step += 1
    val_loss, val_acc = evaluate(net.model, data.x_val, data.y_val)
    test_loss, test_acc = evaluate(net.model, data.x_test, data.y_test)
    net.log(step, val_loss=val_loss, val_accuracy=val_acc, test_loss=test_loss, test_accuracy=test_acc)  # lottery
    if val_loss < best[0]:
        best = (val_loss, step, test_acc)
    _, train_acc = evaluate(net.model, data.x_train, data.y_train)
    net.finish(test_accuracy=best[2], val_loss=best[0], early_stop_iteration=best[1],  # lottery
               final_test_accuracy=test_acc, final_train_accuracy=train_acc)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir")
    parser.add_argument("--data-dir", default="../shared/data")
    parser.add_argument("--levels", type=int, default=10)
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: the LSTM's small products "
                        "gain little from a second thread, and the run can share the machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = lottery.load_dataset("fsdd", args.data_dir)
    imp = lottery.IMP(SpokenDigitLSTM, args.run_dir, levels=args.levels, trials=args.trials,  # lottery
                      arms=["imp", "reinit", "random"], rate=0.2, rate_output=0.1,
                      training={"optimizer": "adam", "lr": LR, "batch": BATCH, "iterations": ITERATIONS,
                                "clip_grad_norm": 1.0, "eval_every": EVAL_EVERY, "data": "fsdd"})
    for net in imp.networks():  # lottery
        started = time.monotonic()
        train(net, data)
        print(f"{time.strftime('%H:%M:%S')} {net}: {time.monotonic() - started:.0f} s", flush=True)
    lottery.write_report(imp.run_dir)


if __name__ == "__main__":
    main()
