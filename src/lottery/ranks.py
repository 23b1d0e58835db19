"""Many processes, one run: the ranks of a torch.distributed process group share a run's work.

`lottery` takes part in a process group that is already initialized (`torch.distributed.init_process_group`;
the command line does it under torchrun, see `join_torchrun_group`); without one, the process is the only
rank and nothing here does anything. Each rank trains every W-th replica of a pass (`Ranks.share`); rank 0
writes every shared file and holds the run lock for the group; the other ranks wait for it through the
process group (barriers, broadcasts), never by watching the filesystem. A replica's numbers do not depend on
which rank trains it (invariant 7), so a run split over W processes gives the single-process results.

Messages between ranks are JSON in byte tensors: nothing is pickled (torch's object collectives pickle).
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from lottery.errors import UserError

T = TypeVar("T")


class GroupStopped(UserError):
    """Rank 0 stopped with an error that it reports itself: the other ranks stop without repeating it."""


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group: rank `rank` of `size`."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> Ranks:
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        return cls()

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.size > 1

    def share(self, items: Sequence[T]) -> list[T]:
        """This rank's part: every `size`-th item from the `rank`-th. Given the same list, the ranks' parts
        are disjoint and cover it, whatever is already done (so a resumed rank finds its own checkpoints)."""
        return list(items)[self.rank::self.size]

    def pass_suffix(self) -> str:
        """Names this rank's passes apart from the other ranks' (nothing for a lone process)."""
        return f"_rank{self.rank}of{self.size}" if self.many else ""

    def barrier(self) -> None:
        if self.many:
            dist.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's JSON-serializable `value`, on every rank."""
        if not self.many:
            return value
        data = _encode(value) if self.leader else b""
        length = torch.tensor([len(data)], dtype=torch.int64, device=_device())
        dist.broadcast(length, 0)
        buffer = _tensor(data, int(length)) if self.leader else torch.empty(int(length), dtype=torch.uint8,
                                                                            device=_device())
        dist.broadcast(buffer, 0)
        return _decode(buffer)

    def gather(self, value: Any) -> list[Any]:
        """Every rank's JSON-serializable `value`, in rank order, on every rank."""
        if not self.many:
            return [value]
        data = _encode(value)
        lengths = [torch.zeros(1, dtype=torch.int64, device=_device()) for _ in range(self.size)]
        dist.all_gather(lengths, torch.tensor([len(data)], dtype=torch.int64, device=_device()))
        longest = max(int(n) for n in lengths)
        buffers = [torch.empty(longest, dtype=torch.uint8, device=_device()) for _ in range(self.size)]
        dist.all_gather(buffers, _tensor(data, longest))
        return [_decode(b[:int(n)]) for b, n in zip(buffers, lengths)]

    def leader_first(self, action: Callable[[], T]) -> T | None:
        """Run `action` on rank 0 alone while the others wait; an error there stops every rank (rank 0 raises
        it; the others raise GroupStopped, which the command line does not print twice). Returns the action's
        value on rank 0 and None elsewhere."""
        if not self.many:
            return action()
        result, failure = None, None
        if self.leader:
            try:
                result = action()
            except Exception as exc:
                failure = {"kind": type(exc).__name__, "text": str(exc)}
                self.broadcast(failure)
                raise
        failure = self.broadcast(failure)
        if failure is not None:
            raise GroupStopped(f"rank 0 stopped: {failure['text']}")
        return result


def _device() -> torch.device:
    """NCCL moves CUDA tensors only; gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _encode(value: Any) -> bytes:
    return json.dumps(value).encode()


def _tensor(data: bytes, length: int) -> torch.Tensor:
    padded = torch.zeros(length, dtype=torch.uint8)
    if data:
        padded[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    return padded.to(_device())


def _decode(buffer: torch.Tensor) -> Any:
    return json.loads(bytes(buffer.cpu().tolist()).decode())


def under_torchrun() -> bool:
    """Whether torchrun (or another launcher that sets its variables) started this process."""
    return all(name in os.environ for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def join_torchrun_group(device: str) -> str:
    """Join the group torchrun started this process in (gloo for CPU, NCCL for CUDA) and return this rank's
    device: `cuda` becomes `cuda:LOCAL_RANK`. On the CPU the ranks of one machine split its cores between
    them (torchrun's own default is one thread each). A lone process (no torchrun) is left as it is."""
    if not under_torchrun() or (dist.is_available() and dist.is_initialized()):
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if device.startswith("cuda"):
        if device == "cuda":
            device = f"cuda:{local_rank}"
        torch.cuda.set_device(torch.device(device))
        backend = "nccl"
    else:
        torch.set_num_threads(threads_per_rank(local_size))
        backend = "gloo"
    try:
        # torchrun's store outlives a restart of the workers, and gloo finds its peers through keys that
        # are not named by the attempt: after `--max-restarts` the new workers would dial the dead ones'
        # addresses (measured with torch 2.13). Name this attempt's keys apart.
        store, rank, size = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group(backend, store=dist.PrefixStore(f"lottery/attempt_{attempt}", store),
                                rank=rank, world_size=size)
    except (RuntimeError, ValueError) as exc:
        raise UserError(f"cannot join the torchrun group ({backend}): {str(exc).splitlines()[0][:160]}") from None
    return device


def threads_per_rank(local_size: int) -> int:
    """The cores split between this machine's ranks; OMP_NUM_THREADS when the user set it. torchrun sets it
    to 1 itself for several processes per machine: that default gives way to the split."""
    cores = max(1, (os.cpu_count() or 1) // local_size)
    asked = os.environ.get("OMP_NUM_THREADS", "")
    if asked.isdigit() and int(asked) > 0 and not (local_size > 1 and asked == "1"):
        return int(asked)
    return cores


def leave_group() -> None:
    """Leave at once (an error's way out: a barrier could wait on a rank that died)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def finish_group() -> None:
    """Leave when every rank is done: a rank that tore its group down while another still finished its last
    exchange was seen to abort at exit (gloo's 'terminate called without an active exception', torchrun exit 1
    after a finished run)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
