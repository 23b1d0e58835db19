"""Early stopping, per replica: the iteration of minimum validation loss and the test accuracy there.

The test accuracy at the early-stop iteration is what the paper reports, but the test set is only
needed once the early-stop iteration is known. So a replica's weights (and buffers) are copied aside
at each new validation minimum, and the test set runs on that copy once, at the end: a copy of the
weights costs far less than a pass over the test set (LeNet-300-100: 1 MB against 5 GFLOP). The value
is bit for bit the one an evaluation at that iteration would have given, because a replica's
evaluation depends on its own tensors only. With full test curves (`train.test_curves`), or at the
last iteration, the test set has been run anyway and its value is kept directly.
"""
from __future__ import annotations

import math

import torch

Tensors = dict[str, torch.Tensor]


class EarlyStop:
    """Best validation loss, its iteration and the test accuracy there, for a stack of replicas."""

    def __init__(self, size: int, start_iteration: int, device: torch.device) -> None:
        self.val_loss = torch.full((size,), math.inf, device=device)
        self.iteration = torch.full((size,), start_iteration, dtype=torch.long, device=device)
        self.test_accuracy = torch.zeros(size, device=device)
        # Whether test_accuracy holds the early-stop value already; where not, `snapshot` holds the weights.
        self.test_known = torch.ones(size, dtype=torch.bool, device=device)
        self.snapshot: Tensors = {}

    def update(self, iteration: int, val_loss: torch.Tensor, tensors: Tensors,
               test_accuracy: torch.Tensor | None) -> None:
        """Record an evaluation; `test_accuracy` is None where the test set was not run."""
        improved = val_loss < self.val_loss
        self.val_loss = torch.where(improved, val_loss, self.val_loss)
        self.iteration = torch.where(improved, torch.full_like(self.iteration, iteration), self.iteration)
        if test_accuracy is not None:
            self.test_accuracy = torch.where(improved, test_accuracy, self.test_accuracy)
            self.test_known |= improved
            return
        self.test_known &= ~improved
        rows = improved.nonzero().flatten().tolist()
        if rows and not self.snapshot:
            self.snapshot = {n: torch.zeros_like(t) for n, t in tensors.items()}
        with torch.no_grad():
            for r in rows:  # row by row, in place: nothing allocated
                for n, t in tensors.items():
                    self.snapshot[n][r].copy_(t[r])

    def pending(self) -> list[int]:
        """Replicas whose early-stop test accuracy is still to be computed from their snapshot."""
        return (~self.test_known).nonzero().flatten().tolist()

    def resolve(self, rows: list[int], test_accuracy: torch.Tensor) -> None:
        self.test_accuracy[rows] = test_accuracy
        self.test_known[rows] = True

    # --- checkpoints ----------------------------------------------------------------------------------
    def state(self, real: slice) -> Tensors:
        out = {"best.val_loss": self.val_loss[real], "best.iteration": self.iteration[real],
               "best.test_accuracy": self.test_accuracy[real], "best.test_known": self.test_known[real]}
        out.update({f"best_state.{n}": t[real] for n, t in self.snapshot.items()})
        return out

    def load_state(self, tensors: Tensors, pick, like: Tensors) -> None:
        """`pick(key, like)` reads a checkpoint tensor for this stack's rows (checked against `like`'s
        shape). Checkpoints written before snapshots existed ran the test set at every new minimum: their
        early-stop test accuracies are all known."""
        val_loss = pick("best.val_loss", self.val_loss)
        iteration = pick("best.iteration", self.iteration)
        test_accuracy = pick("best.test_accuracy", self.test_accuracy)
        known = pick("best.test_known", self.test_known) if "best.test_known" in tensors else torch.ones_like(self.test_known)
        snapshot = {n: pick(f"best_state.{n}", t) for n, t in like.items()} if f"best_state.{next(iter(like))}" in tensors else {}
        if not bool(known.all()) and not snapshot:
            raise ValueError("the checkpoint has replicas awaiting their early-stop test but no snapshot of them")
        self.val_loss, self.iteration, self.test_accuracy, self.test_known = val_loss, iteration, test_accuracy, known
        self.snapshot = snapshot
