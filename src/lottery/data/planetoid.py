"""Citation graphs of scientific papers (Cora, CiteSeer) with the standard Planetoid split.

`DATA_DIR/planetoid/{cora,citeseer}.npz`: pickle-free NumPy archives (see ../shared/data/README.md), each
checked on load: its md5 is the shared archive's, or its content digest (what this loader reads, see
`content_digest`) is. The second admits an archive made by `python -m lottery.data.planetoid_release` from
the public Planetoid release: the same arrays, other bytes (np.savez's zip entries carry times, and the
release has no paper ids). Node classification is transductive: one graph, and a split is a set of nodes. So
the examples a trainer sees are node indices (x = int64 [n]), labels are the nodes' topics, and the graph
itself (features, citations) travels with the dataset as `Graph`, on the device, for the model to hold.

Features are the binary bag of words, each row scaled to sum 1 (Kipf & Welling 2017's preprocessing).
"""
from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from lottery.data.download import md5_of
from lottery.data.graph import Graph
from lottery.data.raw import RawSplits
from lottery.errors import UserError

MD5 = {"cora": "0840c0fee55b222ab3061f533bd6ad97", "citeseer": "9c7ed807a12ac31e61535adc924a3cd8"}
ARRAYS = ("features_data", "features_indices", "features_indptr", "features_shape", "labels", "edges",
          "train", "val", "test", "class_names")
# content_digest of the shared archives' ARRAYS (computed from ../shared/data/planetoid/*.npz, whose md5s are
# above): a converted archive with these arrays, bit for bit, is the same data set.
CONTENT_SHA256 = {"cora": "d99dbccce8de6867740af23d6b62e5e8c36bc682fee052597205cc93173bf031",
                  "citeseer": "c4d81689f8e30910894844c0a9c391efeb2c5f9912fc8aa1e1de65719385a9e3"}


def content_digest(arrays: dict[str, np.ndarray]) -> str:
    """sha256 over the arrays the loader reads, in ARRAYS' order: each one's name, dtype, shape and bytes
    (C order). Independent of the zip container, of compression and of arrays the loader does not read."""
    digest = hashlib.sha256()
    for name in ARRAYS:
        array = np.ascontiguousarray(arrays[name])
        header = json.dumps([name, array.dtype.str, list(array.shape)])
        digest.update(len(header).to_bytes(8, "little") + header.encode())
        digest.update(array.nbytes.to_bytes(8, "little") + array.tobytes())
    return digest.hexdigest()


def _dense_rows(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: np.ndarray) -> torch.Tensor:
    """The CSR feature matrix as a dense float32 tensor, each nonzero row scaled to sum 1."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    dense = np.zeros(tuple(int(s) for s in shape), dtype=np.float32)
    dense[rows, indices] = data
    dense = torch.from_numpy(dense)
    sums = dense.sum(1, keepdim=True)
    return dense / torch.where(sums > 0, sums, torch.ones_like(sums))


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in ARRAYS}


def load_planetoid(folder: Path, name: str) -> RawSplits:
    path = folder / "planetoid" / f"{name}.npz"
    if not path.exists():
        raise UserError(f"{name}: {path} is missing; the Planetoid archives come with ../shared/data/planetoid "
                        f"(see its README), or convert the public Planetoid release with `python -m "
                        f"lottery.data.planetoid_release RAW_DIR DATA_DIR`; point --data-dir at that folder's parent")
    md5 = md5_of(path)
    if md5 == MD5[name]:
        try:
            arrays = _read_arrays(path)
        except (KeyError, ValueError, OSError) as exc:
            raise UserError(f"{path}: not a Planetoid archive ({str(exc).splitlines()[0][:120]})") from None
    else:  # another file: accepted only if what the loader reads is the shared archive's, bit for bit
        try:
            arrays = _read_arrays(path)
            same = content_digest(arrays) == CONTENT_SHA256[name]
        except (KeyError, ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error):  # damaged or foreign
            same = False
        if not same:
            raise UserError(f"{path}: md5 {md5} is not the expected {MD5[name]}, nor are its arrays those of "
                            f"the Planetoid {name} archive (a damaged or other file)")
    labels = torch.from_numpy(arrays["labels"].astype(np.int64))
    graph = Graph(_dense_rows(arrays["features_data"], arrays["features_indices"], arrays["features_indptr"],
                              arrays["features_shape"]),
                  torch.from_numpy(arrays["edges"].astype(np.int64)), labels,
                  tuple(str(c) for c in arrays["class_names"]))
    train, val, test = (torch.from_numpy(arrays[k].astype(np.int64)) for k in ("train", "val", "test"))
    raw = RawSplits(train, labels[train], test, labels[test], num_classes=len(graph.class_names),
                    default_val_size=len(val), x_val=val, y_val=labels[val], graph=graph)
    return raw


def load_cora(folder: Path) -> RawSplits:
    return load_planetoid(folder, "cora")


def load_citeseer(folder: Path) -> RawSplits:
    return load_planetoid(folder, "citeseer")
