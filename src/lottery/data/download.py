"""Fetch files from public mirrors, verify their MD5 and move them into place atomically."""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import BinaryIO
from pathlib import Path

from lottery.errors import UserError

TIMEOUT_SECONDS = 30


@contextlib.contextmanager
def open_regular(path: Path) -> Iterator[BinaryIO]:
    """A dataset file opened for reading, if it is a regular file: a named pipe or a folder in its place is named,
    never read (a pipe would block forever)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UserError(f"{path} is not a regular file (a folder, a named pipe or a device); restore the dataset file")
        yield handle


def md5_of(path: Path) -> str:
    digest = hashlib.md5()
    with open_regular(path) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def mirrors_from_env(dataset: str, defaults: list[str]) -> list[str]:
    """$LOTTERY_MIRRORS (comma-separated base URLs serving `<base>/<dataset>/<file>`) replaces the defaults."""
    env = os.environ.get("LOTTERY_MIRRORS")
    if not env:
        return defaults
    return [f"{base.rstrip('/')}/{dataset}/" for base in env.split(",") if base.strip()]


def ensure_file(path: Path, md5: str, mirrors: list[str]) -> Path:
    """Return `path`, downloading it first if it is missing. A present file must have the right MD5."""
    if path.exists():
        actual = md5_of(path)
        if actual != md5:
            raise UserError(
                f"{path} has MD5 {actual}, expected {md5}: the file is truncated or not the official one; "
                f"delete it to download it again"
            )
        return path
    with data_folder(path.parent):
        return _download(path, md5, mirrors)


@contextlib.contextmanager
def data_folder(folder: Path) -> Iterator[Path]:
    """Create `folder` (and its parents) for a download; if the download fails, remove the folders it
    created, so a failed download leaves no empty folders behind."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create data folder {folder}: {exc.strerror}") from None
    try:
        yield folder
    except BaseException:
        for made in created:
            with contextlib.suppress(OSError):
                made.rmdir()
        raise


def _download(path: Path, md5: str, mirrors: list[str]) -> Path:
    failures = []
    for base in mirrors:
        url = base + path.name
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            actual = md5_of(tmp)
            if actual != md5:
                failures.append(f"{url}: MD5 {actual}, expected {md5}")
                continue
            os.replace(tmp, path)
            return path
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
        finally:
            tmp.unlink(missing_ok=True)
    raise UserError(
        f"could not get {path.name} ({'; '.join(failures)}); put the official file in {path.parent} "
        f"or pass --data-dir to a folder that has it"
    )
