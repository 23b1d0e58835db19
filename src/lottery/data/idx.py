"""MNIST and Fashion-MNIST from the four standard IDX .gz files (big-endian), read without torchvision."""
from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

from lottery.errors import UserError
from lottery.data.download import ensure_file, mirrors_from_env
from lottery.data.raw import RawSplits

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

MD5 = {
    "mnist": dict(zip(FILES, (
        "f68b3c2dcbeaaa9fbdd348bbdeb94873", "d53e105ee54ea40749a09fcbcd1e9432",
        "9fb629c4189551a2d022fa330f9573f3", "ec29112dd5afa0611ce80d1b7f02629c"))),
    "fashion-mnist": dict(zip(FILES, (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "25c81989df183df01b3e8a0aad5dffbe",
        "bef4ecab320f06d8554ea6380940ec79", "bb300cfdad3c16e7a12a480ee83cd310"))),
}

MIRRORS = {
    "mnist": ["https://ossci-datasets.s3.amazonaws.com/mnist/", "https://storage.googleapis.com/cvdf-datasets/mnist/",
              "http://yann.lecun.com/exdb/mnist/"],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                      "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/"],
}

# Per-pixel mean and std of the training images in [0, 1]; inputs are (x/255 - mean) / std, float32.
NORMALIZATION = {"mnist": (0.1307, 0.3081), "fashion-mnist": (0.2860, 0.3530)}


def read_idx(path: Path, magic: int, count: int) -> np.ndarray:
    """Read one gzipped IDX file; check the magic number and the item count; uint8 array."""
    try:
        with gzip.open(path, "rb") as handle:
            blob = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{path} is not a readable gzip file ({exc}); delete it to download it again") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(blob) < header or int.from_bytes(blob[:4], "big") != magic:
        raise UserError(f"{path} is not an IDX file with magic {magic:#010x}")
    dims = [int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    if dims[0] != count or len(blob) != header + int(np.prod(dims)):
        raise UserError(f"{path} has shape {dims} and {len(blob)} bytes; expected {count} items")
    return np.frombuffer(blob, dtype=np.uint8, offset=header).reshape(dims)


def load_idx_dataset(name: str, data_dir: Path) -> RawSplits:
    folder = Path(data_dir) / name
    mirrors = mirrors_from_env(name, MIRRORS[name])
    paths = [ensure_file(folder / f, MD5[name][f], mirrors) for f in FILES]
    train_x, train_y = read_idx(paths[0], 0x803, 60000), read_idx(paths[1], 0x801, 60000)
    test_x, test_y = read_idx(paths[2], 0x803, 10000), read_idx(paths[3], 0x801, 10000)
    mean, std = NORMALIZATION[name]

    def images(a: np.ndarray) -> torch.Tensor:  # uint8 [N, 28, 28] -> float32 [N, 1, 28, 28]
        # In place: one float32 array, not four (188 MB each for MNIST's training images; every fresh one
        # is ~46,000 page faults). The same operations in the same order: the same bits.
        return torch.from_numpy(a.copy()).float().div_(255.0).sub_(mean).div_(std).unsqueeze(1)

    def labels(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a.astype(np.int64))

    return RawSplits(images(train_x), labels(train_y), images(test_x), labels(test_y), 10, 5000, (mean, std))


def load_mnist(data_dir: Path) -> RawSplits:
    return load_idx_dataset("mnist", data_dir)


def load_fashion_mnist(data_dir: Path) -> RawSplits:
    return load_idx_dataset("fashion-mnist", data_dir)
