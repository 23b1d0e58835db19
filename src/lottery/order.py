"""Data order: the batch at iteration t is a pure function of (stream seed, t).

Each epoch is a fresh seeded permutation, and the last partial batch of an epoch is dropped. Because
the order depends on nothing else, rewinding to iteration k replays the same batches from k on, and a
resumed run sees exactly the batches the uninterrupted one would have.
"""
from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any tuple of names and numbers (stable across runs and machines)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class BatchOrder:
    """Batch indices for several independent streams (one per trial) at once."""

    def __init__(self, num_examples: int, batch_size: int, stream_seeds: list[int], device: torch.device | str) -> None:
        if batch_size > num_examples:
            raise ValueError(f"batch size {batch_size} exceeds the {num_examples} training examples")
        self.num_examples, self.batch_size = num_examples, batch_size
        self.stream_seeds, self.device = list(stream_seeds), device
        self.steps_per_epoch = num_examples // batch_size
        self._epoch = -1
        self._perms = torch.empty(0)

    def _permutations(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:
            perms = [torch.randperm(self.num_examples, generator=torch.Generator().manual_seed(derive_seed(s, epoch)))
                     for s in self.stream_seeds]
            self._perms, self._epoch = torch.stack(perms).to(self.device), epoch
        return self._perms

    def indices(self, iteration: int) -> torch.Tensor:
        """[streams, batch_size] example indices for the step that starts at `iteration`."""
        epoch, step = divmod(iteration, self.steps_per_epoch)
        start = step * self.batch_size
        return self._permutations(epoch)[:, start:start + self.batch_size]


class ReplicaDraws:
    """Each replica's own random numbers for stochastic layers (dropout), never a draw over the stack.

    Replica r's draws at iteration t come from a generator seeded by (its own seed, t), so they are a pure
    function of the replica's identity and the iteration: not of its neighbours in the pass, of how many
    replicas share the pass, or of where a resumed run restarted.
    """

    def __init__(self, seeds: list[int], device: torch.device | str) -> None:
        self.seeds, self.device = list(seeds), torch.device(device)
        self._generators = [torch.Generator(self.device) for _ in self.seeds]
        self.iteration, self._seeded = -1, False

    def at(self, iteration: int) -> "ReplicaDraws":
        """Restart every replica's stream at `iteration` (seeded when first drawn from: most models draw
        nothing); the draws of one step then follow in layer order."""
        self.iteration, self._seeded = iteration, False
        return self

    def uniform(self, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
        """[replicas, *shape] uniform draws in [0, 1), replica r's from its own stream."""
        if not self._seeded:
            for generator, seed in zip(self._generators, self.seeds):
                generator.manual_seed(derive_seed(seed, "draws", self.iteration))
            self._seeded = True
        return torch.stack([torch.rand(shape, generator=g, device=self.device) for g in self._generators])

    def global_seed(self, replica: int) -> int:
        """A seed for the global generator while replica `replica` alone runs a module that draws from it."""
        return derive_seed(self.seeds[replica], "global", self.iteration)
