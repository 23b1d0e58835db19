"""Run directories, atomic writes, checked reads and the run lock.

Every file appears whole (temp file + fsync + rename) or not at all, with the mode the umask gives. Every
read names the file and the fix when the file is missing or broken. One writer at a time holds a run
directory (an fcntl lock, released on exit and on a kill); readers refuse a run that is being written,
except `lottery report`, which writes only report/ under that folder's own lock and reads only what a writer
has finished (lottery.reports.live).

Layout of a run directory:
  config.toml                       the config (TOML)
  run.json                          the run's hash and the model it was made with (names, shapes, class)
  results.csv                       one row per (arm, trial, level)
  trial_T/init.safetensors          θ0 of trial T
  trial_T/rewind.safetensors        θk of trial T (only when rewinding to k > 0)
  trial_T/level_LL/mask.safetensors the mask trained at level LL (metadata: what it was derived from)
  trial_T/level_LL/ARM/             final.safetensors (θT), curves.csv, metrics.json (written last)
  checkpoints/PASS.safetensors      an interrupted training pass (tensors + JSON metadata); removed when
                                    the pass ends, and the folder with its last pass
  .lock                             the run lock (PID and command of the process holding it)
  report/                           `lottery report`'s figures and report.md, under report/.lock
  tensorboard/, mlruns/             live metrics, with find --track (lottery.training.tracking)
While a network trains, its curves.csv holds its curves so far (rewritten whole at each checkpoint); it is
finished once metrics.json exists.
"""
from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import io
import json
import os
import sys
import tempfile
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from lottery.errors import BrokenFile, RunInUse, UserError, WriteFailed
from lottery.ranks import Ranks


T = TypeVar("T")


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


# --- writes ------------------------------------------------------------------------------------------
def _write_error(path: Path, exc: OSError) -> WriteFailed:
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "free some space and run the same command again: everything finished before is kept"
    else:
        hint = "choose a folder you can write to"
    return WriteFailed(f"cannot write {path}: {reason}; {hint}")


def make_folder(path: Path) -> Path:
    """mkdir -p, or one clear error (a file in the way, no permission, a read-only place)."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise WriteFailed(f"cannot create folder {path}: a file of that name is in the way") from None
    except OSError as exc:
        raise WriteFailed(f"cannot create folder {path}: {exc.strerror or exc}; choose a folder you can write to") from None
    if not path.is_dir():
        raise WriteFailed(f"cannot create folder {path}: a file of that name is in the way")
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _write_error(path, exc) from None
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    atomic_write_bytes(path, st_save(cpu, metadata=metadata))


def save_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def remove_empty_folder(path: Path) -> None:
    with contextlib.suppress(OSError):
        Path(path).rmdir()


# --- checked reads -----------------------------------------------------------------------------------
def remedy(path: Path) -> str:
    """What to do about a broken file, from where it lies in a run directory."""
    path = Path(path)
    name, parent = path.name, path.parent
    if "checkpoints" in path.parts:
        return "delete it: it is a cache, and the pass it belongs to trains again"
    if name == "results.csv":
        return "run the same `lottery find` again to rewrite it from the level folders"
    if name == "config.toml":
        return "restore it (the run's hash is in run.json and in the folder name) or start a new run"
    if name in ("init.safetensors", "rewind.safetensors"):
        return f"remove the folder {parent} and run the same `lottery find` again"
    if name == "mask.safetensors" and parent.name.startswith("level_"):
        return f"remove {parent} and the later levels of {parent.parent.name}, then run the same `lottery find` again"
    if parent.parent.name.startswith("level_"):
        return f"remove the folder {parent} and run the same `lottery find` again to retrain it"
    return f"remove {parent if name == 'metrics.json' else path} and run the command that wrote it again"


def _broken(path: Path, what: str, detail: object) -> BrokenFile:
    text = str(detail).strip().splitlines()[0] if str(detail).strip() else type(detail).__name__
    return BrokenFile(f"{path} is {what} ({text[:120]}); {remedy(path)}", reason=text[:120])


def load_tensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """safetensors only: no pickle is ever loaded. Keys come back sorted: the order safetensors yields
    them in changes from process to process, and no result may depend on it."""
    path = Path(path)
    try:
        tensors = st_load(path.read_bytes())
    except FileNotFoundError:
        raise BrokenFile(f"{path} is missing; {remedy(path)}") from None
    except UserError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise _broken(path, "not a readable safetensors file", exc) from None
    return {k: tensors[k].to(device) for k in sorted(tensors)}


def load_metadata(path: Path) -> dict[str, str]:
    """The JSON-free string metadata of a safetensors file ({} when it has none)."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as handle:
            return dict(handle.metadata() or {})
    except FileNotFoundError:
        raise BrokenFile(f"{path} is missing; {remedy(path)}") from None
    except Exception as exc:
        raise _broken(path, "not a readable safetensors file", exc) from None


def load_json(path: Path, keys: tuple[str, ...] = ()) -> Any:
    """A JSON file (an object holding `keys`, when given)."""
    path = Path(path)
    try:
        value = json.loads(path.read_text())
    except FileNotFoundError:
        raise BrokenFile(f"{path} is missing; {remedy(path)}") from None
    except (OSError, ValueError) as exc:
        raise _broken(path, "not valid JSON", exc) from None
    missing = [k for k in keys if not isinstance(value, dict) or k not in value]
    if missing:
        raise _broken(path, "incomplete", f"no {', '.join(missing)}")
    return value


def load_csv(path: Path, columns: list[str] | tuple[str, ...] = ()) -> list[dict[str, str]]:
    """A CSV file whose header holds `columns` and whose every row is complete."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            header = reader.fieldnames or []
    except FileNotFoundError:
        raise BrokenFile(f"{path} is missing; {remedy(path)}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise _broken(path, "not a readable CSV file", exc) from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise _broken(path, "not the expected table", f"no column {', '.join(missing)}")
    for number, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise _broken(path, "truncated or malformed", f"line {number} has {len(header) - sum(v is None for v in row.values())} of {len(header)} fields")
    return rows


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 of names, dtypes, shapes and bytes, in name order: equal iff the tensors are bit for bit equal."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.flatten().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


# --- the run lock ------------------------------------------------------------------------------------
LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # resolved root -> [fd, exclusive, depth]: nested holds in one process


def _holder(lock_path: Path) -> str:
    try:
        text = lock_path.read_text().strip()
    except OSError:
        return "another process"
    pid, _, command = text.partition(" ")
    return f"PID {pid} ({command})" if pid.isdigit() else "another process"


@contextlib.contextmanager
def hold_run(root: Path | str, *, exclusive: bool = True, command: str = "") -> Iterator[None]:
    """Hold RUN_DIR for writing (`exclusive`: the only holder) or for reading (shared: no writer).

    A writer creates the folder and the lock file; a reader of a run that has no lock file yet takes
    nothing (no writer has ever held it). The OS drops the lock when the process ends, kill included.
    In a torch.distributed group every rank calls this together: rank 0 holds the lock for the group
    (every other command is still refused), and releases it once every rank is done writing.
    """
    ranks = Ranks.current()
    key = str(Path(root).resolve())
    if not (exclusive and ranks.many) or key in _held:
        with _hold_here(root, exclusive=exclusive, command=command):
            yield
        return
    with contextlib.ExitStack() as stack:
        group = f"{command} (rank 0 of a torchrun group of {ranks.size})"
        ranks.leader_first(lambda: stack.enter_context(_hold_here(root, exclusive=True, command=group)))
        if not ranks.leader:
            _held[key] = [None, True, 1]  # the group's lock, held by rank 0: nested holds pass
        try:
            yield
            ranks.barrier()  # every rank's writes are done before the lock goes
        finally:
            if not ranks.leader:
                del _held[key]


@contextlib.contextmanager
def _hold_here(root: Path | str, *, exclusive: bool, command: str) -> Iterator[None]:
    """hold_run for this process alone."""
    root = Path(root)
    if exclusive:
        make_folder(root)
    lock_path = root / LOCK_NAME
    key = str(root.resolve())
    if key in _held and (_held[key][1] or not exclusive):
        _held[key][2] += 1
        try:
            yield
        finally:
            _held[key][2] -= 1
        return
    if not exclusive and not lock_path.exists():
        yield
        return
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY, 0o666)
    except OSError as exc:
        if exclusive:
            raise _write_error(lock_path, exc) from None
        yield  # an unreadable lock file of a read-only copy: read without it
        return
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        action = "run this again when it has finished, or stop it" if exclusive else \
            "it is still being written; run this again when that has finished"
        raise RunInUse(f"{root} is in use by {_holder(lock_path)}: {action}") from None
    previous = _held.get(key)
    _held[key] = [fd, exclusive, 1]
    try:
        if exclusive:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {command or ' '.join(['lottery', *sys.argv[1:2]])}\n".encode())
            remove_temp_files(root)
        yield
    finally:
        if previous is None:
            del _held[key]
        else:
            _held[key] = previous
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def writes_into_run(command: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorate a function whose first argument is a run directory (or a list of them, the first being
    written into): it runs holding that run exclusively."""
    def wrap(function: Callable[..., T]) -> Callable[..., T]:
        @functools.wraps(function)
        def held(first: Any, *args: Any, **kwargs: Any) -> T:
            root = first[0] if isinstance(first, (list, tuple)) and first else first
            if not Path(root).is_dir():
                return function(first, *args, **kwargs)  # the function says what is wrong with it
            with hold_run(root, command=command):
                return function(first, *args, **kwargs)
        return held
    return wrap


def remove_temp_files(root: Path) -> None:
    """Temp files a kill left mid-write: safe to remove while holding the run exclusively. A folder inside with
    a lock of its own (report/) is left to its holder, which may be writing there now."""
    root = Path(root)
    found = list(root.rglob(".*"))
    own = {p.parent for p in found if p.name == LOCK_NAME and p.parent != root}
    for tmp in found:
        if tmp.name.endswith(".tmp") and not own.intersection(tmp.parents):
            with contextlib.suppress(OSError):
                tmp.unlink()


# --- paths -------------------------------------------------------------------------------------------
# File names inside a network's folder: RunStore's methods are the only place that joins them to a path.
FINAL, METRICS, CURVES, MASK, START, PATH_LENGTH = (
    "final.safetensors", "metrics.json", "curves.csv", "mask.safetensors", "start.safetensors", "path.safetensors")


class NetworkFiles:
    """The files of one trained network's folder, wherever it lies: a run's trial_T/level_LL/ARM/, or an
    experiment's replica folder (noise, transfer, stability copies)."""

    def __init__(self, folder: Path | str) -> None:
        self.folder = Path(folder)

    @property
    def final(self) -> Path:
        """θT (parameters and buffers)."""
        return self.folder / FINAL

    @property
    def metrics(self) -> Path:
        """Written last: the network is done once this exists."""
        return self.folder / METRICS

    @property
    def curves(self) -> Path:
        return self.folder / CURVES

    def is_done(self) -> bool:
        return self.metrics.exists()


class RunStore:
    """Paths inside one run directory. Holds no state beyond the root."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def trial_dir(self, trial: int) -> Path:
        return self.root / f"trial_{trial}"

    def init_path(self, trial: int) -> Path:
        return self.trial_dir(trial) / "init.safetensors"

    def rewind_path(self, trial: int) -> Path:
        return self.trial_dir(trial) / "rewind.safetensors"

    def rewind_optimizer_path(self, trial: int) -> Path:
        return self.trial_dir(trial) / "rewind_optimizer.safetensors"

    def level_dir(self, trial: int, level: int) -> Path:
        return self.trial_dir(trial) / f"level_{level:02d}"

    def mask_path(self, trial: int, level: int) -> Path:
        return self.level_dir(trial, level) / MASK

    def arm_dir(self, trial: int, level: int, arm: str) -> Path:
        return self.level_dir(trial, level) / arm

    def final_path(self, trial: int, level: int, arm: str) -> Path:
        """θT of a trained network (parameters and buffers)."""
        return NetworkFiles(self.arm_dir(trial, level, arm)).final

    def metrics_path(self, trial: int, level: int, arm: str) -> Path:
        """A network's metrics, written last: the network is done once this exists."""
        return NetworkFiles(self.arm_dir(trial, level, arm)).metrics

    def curves_path(self, trial: int, level: int, arm: str) -> Path:
        return NetworkFiles(self.arm_dir(trial, level, arm)).curves

    def arm_mask_path(self, trial: int, level: int, arm: str) -> Path:
        """The mask of an arm with a mask of its own (random, init-magnitude, one-shot)."""
        return self.arm_dir(trial, level, arm) / MASK

    def arm_start_path(self, trial: int, level: int, arm: str) -> Path:
        """The start weights of an arm that draws its own (reinit, same-sign)."""
        return self.arm_dir(trial, level, arm) / START

    def path_length_path(self, trial: int, level: int, arm: str) -> Path:
        """Σt |θt+1 − θt| of the ticket's training, for the `path` criterion."""
        return self.arm_dir(trial, level, arm) / PATH_LENGTH

    def is_done(self, trial: int, level: int, arm: str) -> bool:
        return self.metrics_path(trial, level, arm).exists()

    def trajectory_dir(self, trial: int) -> Path:
        """The dense network's weights at each evaluation (kept when a run has the early-bird arm)."""
        return self.arm_dir(trial, 0, "imp") / "trajectory"

    def trajectory_path(self, trial: int, iteration: int) -> Path:
        return self.trajectory_dir(trial) / f"iteration_{iteration:07d}.safetensors"

    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint_paths(self, pass_name: str) -> tuple[Path, Path]:
        base = self.checkpoint_dir / pass_name
        return base.with_suffix(".safetensors"), base.with_suffix(".json")

    @property
    def config_path(self) -> Path:
        return self.root / "config.toml"

    @property
    def run_info_path(self) -> Path:
        return self.root / "run.json"

    @property
    def results_path(self) -> Path:
        return self.root / "results.csv"
