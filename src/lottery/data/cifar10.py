"""CIFAR-10 from the official binary release, read without torchvision; pixels stay uint8.

`DATA_DIR/cifar-10/cifar-10-batches-bin/` holds data_batch_1..5.bin and test_batch.bin: 10,000 records
of 3,073 bytes each (1 label byte, then the 1,024 red, 1,024 green and 1,024 blue values, row-major
32x32). Every member's MD5 is checked on every load: all six take about 0.4 s on the project's 2-core
CPU, under the one second above which a cached verdict would pay. When the folder is missing, the
official `cifar-10-binary.tar.gz` is downloaded, its members extracted (regular files
under `cifar-10-batches-bin/` only: no links, no absolute paths, no `..`) into a temporary folder,
checked, and moved into place in one rename.

Images are returned as uint8 [N, 3, 32, 32]; the trainer normalizes each batch on the fly with the
per-channel mean and std of the 50,000 training images (`NORMALIZATION`), so the data in memory is a
quarter of its float32 size.
"""
from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import torch

from lottery.errors import UserError
from lottery.data.download import TIMEOUT_SECONDS, data_folder, md5_of, mirrors_from_env
from lottery.data.raw import RawSplits

FOLDER = "cifar-10-batches-bin"
TARBALL = "cifar-10-binary.tar.gz"
TARBALL_MD5 = "c32a1d4ab5d03f1284b67883e8d87530"  # the official file's; see _fetch
MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
TEST_FILE = "test_batch.bin"
MD5 = {
    "data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25", "data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421", "data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d", "test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
}
RECORD = 1 + 3 * 32 * 32
RECORDS_PER_FILE = 10_000
# Per-channel mean and std of the 50,000 training images in [0, 1] (computed from the files here).
NORMALIZATION = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))


def member_problem(folder: Path) -> str | None:
    """The first member that is missing or has another MD5 than the official one, or None."""
    for name, md5 in MD5.items():
        path = folder / name
        if not path.exists():
            return f"{name} is missing"
        actual = md5_of(path)
        if actual != md5:
            return f"{name} has MD5 {actual}, expected {md5}"
    return None


def verify_members(folder: Path) -> None:
    problem = member_problem(folder)
    if problem:
        raise UserError(f"{folder}: {problem} (truncated or not the official file); delete {folder} to download "
                        f"CIFAR-10 again, or pass --data-dir to a folder with the official cifar-10/{FOLDER}/")


def read_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images [N, 3, 32, 32], int64 labels [N]) from one binary batch file."""
    blob = np.fromfile(path, dtype=np.uint8)
    if blob.size != RECORD * RECORDS_PER_FILE:
        raise UserError(f"{path} has {blob.size} bytes, expected {RECORD * RECORDS_PER_FILE}")
    records = blob.reshape(RECORDS_PER_FILE, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise UserError(f"{path} holds a label {labels.max()}: not a CIFAR-10 batch")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir: Path) -> RawSplits:
    folder = Path(data_dir) / "cifar-10" / FOLDER
    if not folder.exists():
        download(Path(data_dir) / "cifar-10", mirrors_from_env("cifar-10", MIRRORS))
    verify_members(folder)
    train = [read_batch(folder / name) for name in TRAIN_FILES]
    test_x, test_y = read_batch(folder / TEST_FILE)
    x_train = torch.from_numpy(np.concatenate([x for x, _ in train]))
    y_train = torch.from_numpy(np.concatenate([y for _, y in train]))
    return RawSplits(x_train, y_train, torch.from_numpy(test_x.copy()), torch.from_numpy(test_y), 10, 5000,
                     channel_normalization=NORMALIZATION)


def download(parent: Path, mirrors: list[str]) -> Path:
    """Fetch the official tarball into `parent`, check it, extract its members safely and move the folder
    into place atomically. Returns the folder."""
    with data_folder(parent), tempfile.TemporaryDirectory(prefix=".cifar-10.", dir=parent) as work:
        tarball, url = _fetch(Path(work) / TARBALL, mirrors)
        staging = Path(work) / "extracted"
        _extract(tarball, staging)
        problem = member_problem(staging / FOLDER)
        if problem:
            raise UserError(f"the archive from {url} is not the official CIFAR-10: {problem}; nothing was "
                            f"kept. Put the official {FOLDER}/ in {parent} or pass --data-dir")
        os.replace(staging / FOLDER, parent / FOLDER)
    return parent / FOLDER


def _fetch(target: Path, mirrors: list[str]) -> tuple[Path, str]:
    """The first mirror that serves the tarball. Its own MD5 (TARBALL_MD5) holds for the official file
    only; the members' MD5s, checked after extraction, are what decides, so a faithful repack of the
    official members is accepted and anything else is not."""
    failures = []
    for base in mirrors:
        url = base + TARBALL
        try:
            with open(target, "wb") as out, urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
                shutil.copyfileobj(response, out, 1 << 20)
            return target, url
        except (urllib.error.URLError, OSError, ValueError) as exc:
            failures.append(f"{url}: {getattr(exc, 'reason', exc)}")
    raise UserError(f"could not get {TARBALL} ({'; '.join(failures)}); put the official {FOLDER}/ in "
                    f"{target.parent.parent} or pass --data-dir to a folder that has cifar-10/{FOLDER}/")


def _extract(tarball: Path, into: Path) -> None:
    """Only regular files directly under cifar-10-batches-bin/; anything else in the archive is refused."""
    into.mkdir()
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            for member in archive.getmembers():
                parts = Path(member.name).parts
                if member.isdir() and parts == (FOLDER,):
                    continue
                if not member.isfile() or len(parts) != 2 or parts[0] != FOLDER or parts[1] in ("..", "."):
                    raise UserError(f"{tarball.name} holds an unexpected entry {member.name!r}: not the official "
                                    f"archive, refused")
                source = archive.extractfile(member)
                if source is None:
                    raise UserError(f"{tarball.name}: cannot read {member.name!r}")
                (into / FOLDER).mkdir(exist_ok=True)
                with source, open(into / FOLDER / parts[1], "wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{tarball.name} is not a readable tar.gz archive ({exc})") from None
