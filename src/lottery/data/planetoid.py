"""Citation graphs of scientific papers (Cora, CiteSeer) with the standard Planetoid split.

`DATA_DIR/planetoid/{cora,citeseer}.npz`: pickle-free NumPy archives (see ../shared/data/README.md), each
md5-checked on load. Node classification is transductive: one graph, and a split is a set of nodes. So
the examples a trainer sees are node indices (x = int64 [n]), labels are the nodes' topics, and the graph
itself (features, citations) travels with the dataset as `Graph`, on the device, for the model to hold.

Features are the binary bag of words, each row scaled to sum 1 (Kipf & Welling 2017's preprocessing).
"""
from __future__ import annotations

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


def _dense_rows(data: np.ndarray, indices: np.ndarray, indptr: np.ndarray, shape: np.ndarray) -> torch.Tensor:
    """The CSR feature matrix as a dense float32 tensor, each nonzero row scaled to sum 1."""
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    dense = np.zeros(tuple(int(s) for s in shape), dtype=np.float32)
    dense[rows, indices] = data
    dense = torch.from_numpy(dense)
    sums = dense.sum(1, keepdim=True)
    return dense / torch.where(sums > 0, sums, torch.ones_like(sums))


def load_planetoid(folder: Path, name: str) -> RawSplits:
    path = folder / "planetoid" / f"{name}.npz"
    if not path.exists():
        raise UserError(f"{name}: {path} is missing; the Planetoid archives come with ../shared/data/planetoid "
                        f"(see its README); point --data-dir at that folder's parent")
    if md5_of(path) != MD5[name]:
        raise UserError(f"{path}: md5 {md5_of(path)} is not the expected {MD5[name]} (a damaged or other file)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in ARRAYS}
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"{path}: not a Planetoid archive ({str(exc).splitlines()[0][:120]})") from None
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
