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
import stat
import sys
import tempfile
import functools
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
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
    elif exc.errno == errno.EISDIR:
        hint = "a folder of that name is in the way: remove it and run the same command again"
    else:
        hint = "choose a folder you can write to"
    return WriteFailed(f"cannot write {path}: {reason}; {hint}")


# --- links inside a run (invariant 11) ---------------------------------------------------------------
class LinkInRun(UserError):
    """A symbolic link (or a lock that is not a file) inside a run directory: following it would write or
    delete outside the run (checkpoints -> ~/models, .lock -> ~/notes.txt), so lottery refuses it."""


# The run directories this process holds now (hold_run, or links_refused_below), each as given (absolute, not
# resolved: the root itself may be a link the user chose) and resolved (for paths built from root.resolve()).
# The write and delete primitives below check every path under one of them; nested holds repeat an entry.
_run_roots: list[Path] = []


@contextlib.contextmanager
def links_refused_below(root: Path | str) -> Iterator[None]:
    """While this holds, every write, new folder and delete under `root` refuses a link below `root`."""
    forms = [Path(os.path.abspath(root)), Path(os.path.realpath(root))]
    _run_roots.extend(forms)
    try:
        yield
    finally:
        for form in forms:
            _run_roots.remove(form)


def link_refused(link: Path) -> LinkInRun:
    return LinkInRun(f"{link} is a symbolic link; lottery does not follow links inside a run directory: remove it")


def check_no_links(root: Path | str, path: Path | str) -> None:
    """Refuse `path` when it, or a folder on the way to it from `root`, is a symbolic link. Only what lies
    below `root` is checked (not `root`, not a path outside it); parts that do not exist yet are fine: they
    are made as real folders."""
    root, path = Path(os.path.abspath(root)), Path(os.path.abspath(path))
    try:
        below = path.relative_to(root).parts
    except ValueError:
        return
    current = root
    for part in below:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except OSError:  # missing (or under a file): nothing below it exists to be followed
            return
        if stat.S_ISLNK(mode):
            raise link_refused(current)


def _check_inside_runs(path: Path) -> None:
    """check_no_links against every run this process holds (a path outside them all is not checked)."""
    for root in list(_run_roots):
        check_no_links(root, path)


def remove_file(path: Path | str) -> None:
    """Delete a file of a run (a checkpoint, a stale figure); refuses a link on the way, like every write."""
    path = Path(path)
    _check_inside_runs(path)
    path.unlink(missing_ok=True)


def make_folder(path: Path) -> Path:
    """mkdir -p, or one clear error (a file in the way, no permission, a read-only place, a link in a run)."""
    path = Path(path)
    _check_inside_runs(path)
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
    _check_inside_runs(path)  # mkstemp in a linked folder would write outside the run
    make_folder(path.parent)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
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


DIGEST_KEY = "tensors_digest"  # safetensors metadata: tensor_digest of the file's tensors, as written


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """A safetensors file that records the digest of its own tensors (load_tensors checks it: a flipped bit
    is named, never used) and whose header is in a fixed order (the same bytes from every process)."""
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    metadata = {**(metadata or {}), DIGEST_KEY: tensor_digest(cpu)}
    atomic_write_bytes(path, canonical_safetensors(st_save(cpu, metadata=metadata)))


def canonical_safetensors(data: bytes) -> bytes:
    """The same file with its JSON header's keys sorted: safetensors writes metadata from a hash map, whose
    order changes from process to process, so equal tensors and metadata gave different bytes."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes after the header
    return len(text).to_bytes(8, "little") + text + data[8 + length:]


@contextlib.contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """For writers that want a file name, not bytes (torch.onnx.export): yields a temp path beside `path`;
    on success it is synced and renamed over `path`, on any failure removed and `path` left as it was.
    The temp name holds our PID, so that remove_stale_temps can tell a dead writer's leftovers."""
    path = Path(path)
    make_folder(path.parent)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, UserError):
            raise _write_error(path, exc) from None
        raise


def remove_stale_temps(path: Path) -> None:
    """Temp files of `path` (outside any run: an export's --out) left by a writer that was killed: those whose
    PID is no longer running. A live writer's temp file is left alone."""
    path = Path(path)
    with contextlib.suppress(OSError):
        for tmp in path.parent.glob(f".{glob_escape(path.name)}.*.tmp"):
            pid = tmp.name[len(path.name) + 2:].split(".")[0]
            if pid.isdigit() and not _alive(int(pid)) and not tmp.is_symlink():
                tmp.unlink(missing_ok=True)


def glob_escape(name: str) -> str:
    return "".join(f"[{c}]" if c in "*?[]" else c for c in name)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


def remove_empty_folder(path: Path) -> None:
    _check_inside_runs(Path(path))
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
    depth = {"init.safetensors": 1, "rewind.safetensors": 1, "rewind_optimizer.safetensors": 1}.get(
        name, 2 if parent.name.startswith("level_") else 3)
    if _in_run_itself(path, depth):  # trial_T/..., not an experiment's copy of that layout (stability's k_K/trial_T/)
        if depth == 1:
            return f"remove the folder {parent} and run the same `lottery find` again"
        if name == "mask.safetensors" and parent.name.startswith("level_"):
            return f"remove {parent} and the later levels of {parent.parent.name}, then run the same `lottery find` again"
        if parent.parent.name.startswith("level_"):
            return f"remove the folder {parent} and run the same `lottery find` again to retrain it"
    whole_folder = name in (METRICS, FINAL, CURVES)  # a network's files: its folder goes with them
    return f"remove {parent if whole_folder else path} and run the command that wrote it again"


def _in_run_itself(path: Path, depth: int) -> bool:
    """`path` is `depth` folders below a run's root (the folder holding config.toml), under trial_T."""
    parents = path.parents
    return len(parents) > depth and parents[depth - 1].name.startswith("trial_") and \
        (parents[depth] / "config.toml").exists()


def _broken(path: Path, what: str, detail: object) -> BrokenFile:
    text = str(detail).strip().splitlines()[0] if str(detail).strip() else type(detail).__name__
    if len(text) > 120:  # one line: the start of a long detail, cut at a word
        text = text[:117].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return BrokenFile(f"{path} is {what} ({text}); {remedy(path)}", reason=text)


def read_bytes(path: Path, limit: int | None = None) -> bytes:
    """A regular file's bytes (the first `limit` of them): a named pipe, a device or a folder in a file's place
    is named, never read (a pipe would block forever). Raises FileNotFoundError for a missing file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise _broken(path, "unreadable", exc.strerror or exc) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            what = "a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode) else \
                "a device or socket"
            raise BrokenFile(f"{path} is {what}, not a regular file; {remedy(path)}", reason=f"{what}")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read() if limit is None else handle.read(limit)
    except OSError as exc:
        raise _broken(path, "unreadable", exc.strerror or exc) from None
    finally:
        os.close(fd)


def read_text(path: Path) -> str:
    """A regular file's text (UTF-8): anything else is named."""
    data = read_bytes(path)
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise _broken(path, "not UTF-8 text", exc) from None


TensorShapes = Mapping[str, "tuple[int, ...] | torch.Size"]


def load_tensors(path: Path, device: torch.device | str = "cpu", *,
                 expect: TensorShapes | None = None) -> dict[str, torch.Tensor]:
    """safetensors only: no pickle is ever loaded. Keys come back sorted: the order safetensors yields
    them in changes from process to process, and no result may depend on it. The file's tensors must match
    the digest it was written with (files from before digests carry none) and, with `expect`, hold exactly
    those names and shapes: a damaged or foreign file is named with its fix, never used."""
    path = Path(path)
    try:
        data = read_bytes(path)
    except FileNotFoundError:
        raise BrokenFile(f"{path} is missing; {remedy(path)}") from None
    try:
        tensors = st_load(data)
        metadata = _header(data).get("__metadata__") or {}
    except UserError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise _broken(path, "not a readable safetensors file", exc) from None
    recorded = metadata.get(DIGEST_KEY) if isinstance(metadata, dict) else None
    if recorded is not None and recorded != tensor_digest(tensors):
        raise _broken(path, "damaged", "its tensors do not match the digest they were written with")
    if expect is not None:
        check_shapes(path, tensors, expect)
    return {k: tensors[k].to(device) for k in sorted(tensors)}


def check_shapes(path: Path, tensors: Mapping[str, torch.Tensor], expect: TensorShapes, *,
                 extra_allowed: bool = False) -> None:
    """`tensors` (read from `path`) hold every name of `expect` with its shape and, unless `extra_allowed`,
    nothing else; else one error names the first difference."""
    missing = sorted(set(expect) - set(tensors))
    extra = [] if extra_allowed else sorted(set(tensors) - set(expect))
    if missing or extra:
        parts = ([f"no {_some(missing)}"] if missing else []) + ([f"unexpected {_some(extra)}"] if extra else [])
        raise foreign_tensors(path, "; ".join(parts))
    for name in sorted(expect):
        if tuple(tensors[name].shape) != tuple(expect[name]):
            raise foreign_tensors(path, f"{name} has shape {tuple(tensors[name].shape)} where {tuple(expect[name])} belongs")


def foreign_tensors(path: Path, detail: str) -> BrokenFile:
    return BrokenFile(f"{path} is not the tensors this run's model has ({detail}); {remedy(path)}", reason=detail)


def _some(names: list[str]) -> str:
    return ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")


def _header(data: bytes) -> dict:
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    return header


def load_metadata(path: Path) -> dict[str, str]:
    """The JSON-free string metadata of a safetensors file ({} when it has none), without the digest."""
    path = Path(path)
    try:
        head = read_bytes(path, 8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= length <= 100_000_000:  # safetensors' own limit on a header is 100 MB
            raise ValueError(f"a header of {length} bytes")
        metadata = _header(read_bytes(path, 8 + length)).get("__metadata__") or {}
        if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
            raise ValueError("its metadata is not a table of strings")
    except FileNotFoundError:
        raise BrokenFile(f"{path} is missing; {remedy(path)}") from None
    except UserError:
        raise
    except Exception as exc:
        raise _broken(path, "not a readable safetensors file", exc) from None
    return {k: v for k, v in metadata.items() if k != DIGEST_KEY}


JsonTypes = Mapping[str, "type | tuple[type, ...]"]


def load_json(path: Path, keys: tuple[str, ...] = (), types: JsonTypes | None = None) -> Any:
    """A JSON file (an object holding `keys`, when given); with `types`, each of those fields that is present
    holds a value of its type (a JSON number is an int or a float; true/false are not numbers)."""
    path = Path(path)
    try:
        value = json.loads(read_text(path))
    except FileNotFoundError:
        raise BrokenFile(f"{path} is missing; {remedy(path)}") from None
    except ValueError as exc:
        raise _broken(path, "not valid JSON", exc) from None
    if (keys or types) and not isinstance(value, dict):
        raise _broken(path, "not a JSON object", f"it holds {type(value).__name__} {str(value)[:40]}")
    missing = [k for k in keys if k not in value]
    if missing:
        raise _broken(path, "incomplete", f"no {', '.join(missing)}")
    for key, kinds in (types or {}).items():
        if key in value and not _is_instance(value[key], kinds):
            wanted = " or ".join(_type_name(k) for k in (kinds if isinstance(kinds, tuple) else (kinds,)))
            raise _broken(path, "malformed", f"{key} holds {_type_name(type(value[key]))} {json.dumps(value[key])[:40]} "
                                             f"where {wanted} belongs")
    return value


def _is_instance(value: Any, kinds: type | tuple[type, ...]) -> bool:
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _type_name(kind: type) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false", list: "a list",
            dict: "an object", type(None): "null"}.get(kind, kind.__name__)


def load_csv(path: Path, columns: list[str] | tuple[str, ...] = ()) -> list[dict[str, str]]:
    """A CSV file whose header holds `columns` and whose every row is complete."""
    path = Path(path)
    try:
        text = read_text(path)
        reader = csv.DictReader(io.StringIO(text, newline=""))
        rows = list(reader)
        header = reader.fieldnames or []
    except FileNotFoundError:
        raise BrokenFile(f"{path} is missing; {remedy(path)}") from None
    except csv.Error as exc:
        raise _broken(path, "not a readable CSV file", exc) from None
    missing = [c for c in columns if c not in header]
    if missing:
        raise _broken(path, "not the expected table", f"no column {', '.join(missing)}")
    for number, row in enumerate(rows, start=2):
        if None in row or any(v is None for v in row.values()):
            raise _broken(path, "truncated or malformed", f"line {number} has {len(header) - sum(v is None for v in row.values())} of {len(header)} fields")
    if text and not text.endswith("\n"):
        raise _broken(path, "truncated", "its last line is cut")
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


def _holder(fd: int) -> str:
    """The writer the lock file names: a writer writes its PID and command there once it holds the lock."""
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        return "another process"
    pid, _, command = text.partition(" ")
    if not pid.isdigit() or not _alive(int(pid)):
        return "another process"  # a writer that holds the lock but has not written itself there yet
    return f"PID {pid} ({command})"


def _in_use(root: Path, fd: int, exclusive: bool) -> RunInUse:
    """Why the lock was refused, truthfully. Only writers write into the lock file (readers share the lock,
    so records of theirs would race), so it names the last writer, who may be long gone while a reader
    (`report`, `claims`) holds the lock now. When a writer is refused, a shared attempt on the same file
    tells the two apart: it succeeds exactly when no writer holds the lock, that is, when readers do."""
    if exclusive:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            pass  # a writer holds it: the file names it
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return RunInUse(f"{root} is in use by a command reading it (lottery report, claims or another "
                            f"reader): run this again when it has finished")
        action = "run this again when it has finished, or stop it"
    else:
        action = "it is still being written; run this again when that has finished"
    return RunInUse(f"{root} is in use by {_holder(fd)}: {action}")


def _open_lock(lock_path: Path, exclusive: bool) -> int:
    """The lock file itself, never what a link there points to: opened through a link named .lock, the
    link's target would be truncated and given our PID. O_NONBLOCK: a FIFO there cannot hang the open."""
    flags = (os.O_RDWR | os.O_CREAT if exclusive else os.O_RDONLY) | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    not_a_file = LinkInRun(f"{lock_path} is not a regular file; lottery keeps its lock there: remove it")
    try:
        fd = os.open(lock_path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(lock_path):
            raise link_refused(lock_path) from None
        if exc.errno == errno.EISDIR:
            raise not_a_file from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise not_a_file
    return fd


@contextlib.contextmanager
def hold_run(root: Path | str, *, exclusive: bool = True, command: str = "") -> Iterator[None]:
    """Hold RUN_DIR for writing (`exclusive`: the only holder) or for reading (shared: no writer).

    A writer creates the folder and the lock file; a reader of a run that has no lock file yet takes
    nothing (no writer has ever held it). The OS drops the lock when the process ends, kill included.
    In a torch.distributed group every rank calls this together: rank 0 holds the lock for the group
    (every other command is still refused), and releases it once every rank is done writing.
    While held, no write or delete under `root` follows a link below it (links_refused_below).
    """
    with links_refused_below(root), _hold_in_group(root, exclusive=exclusive, command=command):
        yield


@contextlib.contextmanager
def _hold_in_group(root: Path | str, *, exclusive: bool, command: str) -> Iterator[None]:
    """hold_run's lock, for this process or for its torch.distributed group."""
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
    if not exclusive and not os.path.lexists(lock_path):
        yield
        return
    try:
        fd = _open_lock(lock_path, exclusive)
    except OSError as exc:
        if exclusive:
            raise _write_error(lock_path, exc) from None
        yield  # an unreadable lock file of a read-only copy: read without it
        return
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        refusal = _in_use(root, fd, exclusive)
        os.close(fd)
        raise refusal from None
    previous = _held.get(key)
    _held[key] = [fd, exclusive, 1]
    try:
        if exclusive:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {command or ' '.join(['lottery', *sys.argv[1:2]])}\n".encode())
            refuse_links_inside(root)
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


def _run_entries(root: Path) -> Iterator[Path]:
    """Every file, folder and link in a run, except inside a folder with a lock of its own (report/: left to
    its holder, which may be writing there now). Links are listed, never entered (os.walk's default)."""
    top = os.fspath(root)
    for folder, subfolders, names in os.walk(top):
        if folder != top and LOCK_NAME in (*names, *subfolders):
            subfolders[:] = []
            continue
        for name in (*subfolders, *names):
            yield Path(folder) / name


def refuse_links_inside(root: Path) -> None:
    """A writer refuses a run with a link anywhere inside before it starts: it would read through the link
    what it then writes on (a trial folder from elsewhere), and the primitives would refuse it only at its
    first write there, after minutes of training."""
    for path in _run_entries(Path(root)):
        if path.is_symlink():
            raise link_refused(path)


def remove_temp_files(root: Path) -> None:
    """Temp files a kill left mid-write: safe to remove while holding the run exclusively. Nothing outside the
    run is touched: linked folders are not entered, and a temp name that is a link is left alone."""
    for path in _run_entries(Path(root)):
        if path.name.startswith(".") and path.name.endswith(".tmp") and not path.is_symlink():
            with contextlib.suppress(OSError):
                path.unlink()


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
