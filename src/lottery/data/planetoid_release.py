"""Convert the public Planetoid release of Cora or CiteSeer into the archive `lottery` reads.

    python -m lottery.data.planetoid_release RAW_DIR OUT_DATA_DIR [--name cora|citeseer]

RAW_DIR holds the release's files (github kimiyoung/planetoid, folder data/): ind.NAME.{x,y,tx,ty,allx,ally,graph},
Python 2 pickles of scipy.sparse CSR matrices (features), NumPy arrays (one-hot labels) and a defaultdict of
adjacency lists (the citations), and ind.NAME.test.index, a text file with one test node index per line.
Without --name, every data set of the two whose files RAW_DIR holds is converted.

The result, OUT_DATA_DIR/planetoid/NAME.npz (written atomically), is the pickle-free archive that
`lottery find gcn-cora --data-dir OUT_DATA_DIR` reads, in the format of ../shared/data/README.md
("planetoid/"), made with Kipf & Welling's preprocessing (github tkipf/gcn, gcn/utils.py, load_data):

- nodes 0..len(allx)-1 are allx's rows; the test nodes follow, tx's row i being node test.index[i] (the
  release stores the test rows in test.index's order; load_data moves them into place);
- CiteSeer's test indices skip 15 papers that are in no split (load_data's "isolated nodes" fix): their
  feature rows are zero and their label is -1; the same step is a no-op on Cora, whose test indices are
  contiguous;
- labels are the one-hot rows' classes (-1 for an all-zero row); train = range(len(y)),
  val = range(len(y), len(y) + 500), test = test.index's nodes. load_data's idx_test lists the same nodes
  sorted; the archive keeps test.index's order, as the shared archives do (the order of a fixed evaluation
  sample depends on it, and the content digest compares it);
- edges: each undirected citation once as (i, j) with i < j, self-loops dropped, duplicates merged, sorted.
  (load_data's networkx graph adds the self-loops back in its adjacency; the GCN here adds its own.)

class_names are the shared archives' topic orders, written out below (the release has one-hot columns and
no names). paper_ids is "" for every node: the release has no paper ids (the shared archives matched them
from LINQS's files, which is not reproduced here). So the new file's bytes, and its md5, differ from the
shared archive's; the loader accepts it by its content digest, the arrays it reads, which match bit for bit.

This is the only module of the package that loads a pickle, and it loads only the release's files, each with
a restricted unpickler (`_ReleaseUnpickler`).
"""
from __future__ import annotations

import argparse
import codecs
import os
import pickle
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lottery.data.planetoid import ARRAYS, CONTENT_SHA256, content_digest
from lottery.errors import UserError

NAMES = ("cora", "citeseer")
PARTS = ("x", "y", "tx", "ty", "allx", "ally", "graph")
VAL_SIZE = 500  # load_data's validation nodes: the 500 after the training nodes
# The topic of each one-hot column, as the shared archives name them (read from their class_names).
CLASS_NAMES = {
    "cora": ["Theory", "Reinforcement_Learning", "Genetic_Algorithms", "Neural_Networks", "Probabilistic_Methods",
             "Case_Based", "Rule_Learning"],
    "citeseer": ["AI", "ML", "IR", "DB", "Agents", "HCI"],
}


def _latin1_encode(text: str, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    """Python 3's protocol-2 pickles spell a bytes object as _codecs.encode(text, 'latin1'); nothing else."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refuses _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1", errors)


def _allowed() -> dict[tuple[str, str], Any]:
    """Each global a pickle of the release may name, and the object it gets. Names are as the pickle spells
    them (Python 2's modules, and Python 3's where a file was re-pickled); the objects are resolved here,
    never by importing what the file names (scipy.sparse.csr and numpy.core are deprecated aliases)."""
    import scipy.sparse

    try:
        from numpy._core import multiarray  # NumPy 2
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray  # type: ignore[no-redef]
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("collections", "defaultdict"): defaultdict,  # the graph: {node: [neighbours]}, default_factory list
        ("_codecs", "encode"): _latin1_encode,
    }
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(module, "_reconstruct")] = multiarray._reconstruct  # an ndarray's pickle
        allowed[(module, "scalar")] = multiarray.scalar  # a NumPy scalar (a sparse matrix's shape may hold them)
    for module in ("scipy.sparse.csr", "scipy.sparse._csr"):
        allowed[(module, "csr_matrix")] = scipy.sparse.csr_matrix  # x, tx, allx
    for module in ("__builtin__", "builtins"):
        allowed[(module, "list")] = list  # the graph's default_factory
        allowed[(module, "object")] = object  # protocols 0 and 1 rebuild objects with copy_reg._reconstructor
    for module in ("copy_reg", "copyreg"):
        allowed[(module, "_reconstructor")] = _reconstructor
    return allowed


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    """copyreg._reconstructor for the classes the table allows (cls and base come through find_class)."""
    import copyreg

    return copyreg._reconstructor(cls, base, state)  # type: ignore[attr-defined]


class _ReleaseUnpickler(pickle.Unpickler):
    """Unpickles the release's files and nothing else. A pickle is a program: its GLOBAL opcodes name any
    importable callable (os.system, subprocess.Popen, builtins.eval) and REDUCE calls it, so pickle.load on a
    downloaded file runs whatever its author wrote. The release needs only NumPy arrays, scipy.sparse CSR
    matrices and a defaultdict of lists; find_class hands out exactly those (see `_allowed`) and refuses
    every other name before anything is called. Persistent ids are refused by the base class."""

    def __init__(self, file: Any) -> None:
        super().__init__(file, encoding="latin1")  # Python 2 str (NumPy's raw bytes) as latin1: byte for byte
        self._table = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._table[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refuses {module}.{name}: not a class the Planetoid release "
                                         f"holds (a tampered or other file)") from None


def _unpickle(path: Path) -> Any:
    try:
        with open(path, "rb") as handle:
            return _ReleaseUnpickler(handle).load()
    except FileNotFoundError:
        raise UserError(f"{path} is missing: the release has ind.NAME.{{{','.join(PARTS)},test.index}}") from None
    except OSError as exc:
        raise UserError(f"{path}: {exc.strerror or exc}") from None
    except pickle.UnpicklingError as exc:
        raise UserError(f"{path}: {exc}") from None
    except Exception as exc:  # noqa: BLE001 - what a truncated or foreign file raises (EOFError, ValueError, ...)
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise UserError(f"{path}: not a pickle of the Planetoid release ({detail})") from None


def _test_index(path: Path) -> np.ndarray:
    try:
        lines = path.read_text(encoding="ascii").split()
    except FileNotFoundError:
        raise UserError(f"{path} is missing: the release has ind.NAME.{{{','.join(PARTS)},test.index}}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not the release's list of test indices ({exc})") from None
    try:
        return np.array([int(line) for line in lines], dtype=np.int64)
    except ValueError as exc:
        raise UserError(f"{path}: not the release's list of test indices ({exc})") from None


def _csr(value: Any, path: Path) -> Any:
    import scipy.sparse

    if not isinstance(value, scipy.sparse.csr_matrix) or value.data.dtype.kind not in "biuf":
        raise UserError(f"{path}: expected a scipy.sparse CSR matrix of numbers, found {type(value).__name__}")
    return value


def _one_hot(value: Any, path: Path) -> np.ndarray:
    if not isinstance(value, np.ndarray) or value.ndim != 2 or value.dtype.kind not in "biuf":
        raise UserError(f"{path}: expected a 2-D NumPy array of one-hot labels, found {type(value).__name__}")
    return value


def _graph(value: Any, path: Path) -> dict[int, list[int]]:
    if not isinstance(value, dict):
        raise UserError(f"{path}: expected a dict of adjacency lists, found {type(value).__name__}")
    graph: dict[int, list[int]] = {}
    for node, neighbours in value.items():
        if not isinstance(node, (int, np.integer)) or not isinstance(neighbours, (list, tuple)) or \
                not all(isinstance(j, (int, np.integer)) for j in neighbours):
            raise UserError(f"{path}: expected a dict of node -> list of nodes, found {node!r}: {neighbours!r:.60}")
        graph[int(node)] = [int(j) for j in neighbours]
    return graph


def convert_arrays(raw_dir: Path, name: str, val_size: int = VAL_SIZE) -> dict[str, np.ndarray]:
    """The archive's arrays from the release's files in raw_dir (each read once)."""
    import scipy.sparse

    paths = {part: raw_dir / f"ind.{name}.{part}" for part in PARTS}
    loaded = {part: _unpickle(path) for part, path in paths.items()}
    test_path = raw_dir / f"ind.{name}.test.index"
    test_reorder = _test_index(test_path)
    x, tx, allx = (_csr(loaded[p], paths[p]) for p in ("x", "tx", "allx"))
    y, ty, ally = (_one_hot(loaded[p], paths[p]) for p in ("y", "ty", "ally"))
    graph = _graph(loaded["graph"], paths["graph"])

    def check(ok: bool, what: str) -> None:
        if not ok:
            raise UserError(f"{raw_dir}: ind.{name}.*: {what}")

    width, classes = allx.shape[1], ally.shape[1]
    check(x.shape[1] == tx.shape[1] == width, f"x, tx and allx have {x.shape[1]}, {tx.shape[1]} and {width} columns")
    check(y.shape[1] == ty.shape[1] == classes == len(CLASS_NAMES[name]),
          f"y, ty and ally have {y.shape[1]}, {ty.shape[1]} and {classes} classes, {name} has {len(CLASS_NAMES[name])}")
    check(x.shape[0] == len(y) and allx.shape[0] == len(ally) and tx.shape[0] == len(ty) == len(test_reorder),
          f"row counts disagree (x {x.shape[0]}, y {len(y)}, allx {allx.shape[0]}, ally {len(ally)}, "
          f"tx {tx.shape[0]}, ty {len(ty)}, test.index {len(test_reorder)})")
    check(len(test_reorder) > 0 and len(np.unique(test_reorder)) == len(test_reorder), "test.index repeats a node")
    test_sorted = np.sort(test_reorder)
    first, last = int(test_sorted[0]), int(test_sorted[-1])
    check(first == allx.shape[0], f"the first test node is {first}, not the {allx.shape[0]} that follows allx")
    check(len(y) + val_size <= first, f"{len(y)} training and {val_size} validation nodes overlap the test nodes")
    n = last + 1

    # load_data, with its CiteSeer fix applied to both (a no-op on Cora's contiguous test indices). For each
    # node, the row of [allx; tx; a zero row] it gets: tx_extended puts tx's row i at test_sorted[i] (the
    # positions in between, CiteSeer's isolated papers, stay zero); then features[test_reorder] =
    # features[test_sorted], the right side read before any row is written.
    zero_row = allx.shape[0] + tx.shape[0]
    source = np.full(n, zero_row, dtype=np.int64)
    source[:first] = np.arange(first)
    source[test_sorted] = first + np.arange(len(test_sorted))
    source[test_reorder] = source[test_sorted].copy()
    stacked = scipy.sparse.vstack([allx, tx, scipy.sparse.csr_matrix((1, width))], format="csr")
    features = stacked[source].astype(np.float32).tocsr()
    features.sum_duplicates()
    features.eliminate_zeros()
    features.sort_indices()
    one_hot = np.concatenate([ally, ty, np.zeros((1, classes), dtype=ally.dtype)])[source]
    labels = np.where(one_hot.any(axis=1), one_hot.argmax(axis=1), -1).astype(np.int64)

    pairs = set()
    for i, neighbours in graph.items():
        for j in neighbours:
            check(0 <= i < n and 0 <= j < n, f"the graph names node {j if 0 <= i < n else i}, outside the {n} nodes")
            if i != j:
                pairs.add((min(i, j), max(i, j)))
    edges = np.array(sorted(pairs), dtype=np.int64).reshape(-1, 2).T.copy()

    train = np.arange(len(y), dtype=np.int64)
    val = np.arange(len(y), len(y) + val_size, dtype=np.int64)
    check(bool((labels[train] >= 0).all() and (labels[val] >= 0).all() and (labels[test_reorder] >= 0).all()),
          "a training, validation or test node has no label")
    return {
        "features_data": features.data.astype(np.float32),
        "features_indices": features.indices.astype(np.int64),
        "features_indptr": features.indptr.astype(np.int64),
        "features_shape": np.array([n, width], dtype=np.int64),
        "labels": labels,
        "edges": edges,
        "train": train,
        "val": val,
        "test": test_reorder,
        "class_names": np.array(CLASS_NAMES[name]),
        "paper_ids": np.array([""] * n),  # the release has no paper ids
    }


def write_archive(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez_compressed into a temporary file beside `path`, synced, then renamed over it: a reader sees
    the old file or the whole new one, never half of one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}") from None
        raise


def convert(raw_dir: Path, out_data_dir: Path, name: str, val_size: int = VAL_SIZE,
            say: Callable[[str], None] = print) -> Path:
    """Convert ind.NAME.* in raw_dir into out_data_dir/planetoid/NAME.npz; returns its path."""
    if name not in NAMES:
        raise UserError(f"--name {name!r}: the converter knows {', '.join(NAMES)}")
    arrays = convert_arrays(Path(raw_dir), name, val_size)
    path = Path(out_data_dir) / "planetoid" / f"{name}.npz"
    write_archive(path, arrays)
    digest = content_digest({k: arrays[k] for k in ARRAYS})
    n, width = (int(v) for v in arrays["features_shape"])
    say(f"{path}: {name}, {n} nodes, {width} features, {arrays['edges'].shape[1]} citations, "
        f"{len(arrays['class_names'])} classes, train/val/test {len(arrays['train'])}/{len(arrays['val'])}/"
        f"{len(arrays['test'])}; " + ("the same arrays as the shared archive (content digest checked)"
                                      if digest == CONTENT_SHA256[name] else
                                      f"content digest {digest[:16]}..., not the shared archive's: "
                                      f"lottery's loader will refuse this file"))
    return path


def _names_in(raw_dir: Path) -> list[str]:
    return [name for name in NAMES if any(raw_dir.glob(f"ind.{name}.*"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lottery.data.planetoid_release",
                                     description="Convert the Planetoid release (ind.NAME.* files) of Cora or "
                                                 "CiteSeer into OUT_DATA_DIR/planetoid/NAME.npz.")
    parser.add_argument("raw_dir", type=Path, help="the folder with ind.NAME.{x,y,tx,ty,allx,ally,graph,test.index}")
    parser.add_argument("out_data_dir", type=Path, help="the data folder to write planetoid/NAME.npz into "
                                                        "(give it to lottery as --data-dir)")
    parser.add_argument("--name", choices=NAMES, help="the data set (default: each one whose files RAW_DIR holds)")
    parser.add_argument("--val-size", type=int, default=VAL_SIZE, help=argparse.SUPPRESS)  # small test releases
    args = parser.parse_args(argv)
    try:
        if not args.raw_dir.is_dir():
            raise UserError(f"{args.raw_dir} is not a folder")
        if args.val_size < 0:
            raise UserError(f"--val-size must be 0 or more, got {args.val_size}")
        names = [args.name] if args.name else _names_in(args.raw_dir)
        if not names:
            raise UserError(f"{args.raw_dir} holds no ind.cora.* or ind.citeseer.* files of the Planetoid release")
        for name in names:
            convert(args.raw_dir, args.out_data_dir, name, args.val_size)
    except UserError as exc:
        print(f"planetoid_release: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
