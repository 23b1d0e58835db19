"""The Planetoid converter (python -m lottery.data.planetoid_release) and the loader's two checks: a raw release
written here, as the public one is (protocol-2 pickles of scipy.sparse matrices, NumPy arrays and a
defaultdict of adjacency lists, a text file of test indices), converts to the arrays Kipf & Welling's
load_data makes; a pickle naming any other class is refused before it runs; the shared archives load by md5,
a conversion of the same data by its content digest, and a damaged archive not at all."""
from __future__ import annotations

import collections
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import require

import lottery
from lottery.data import planetoid_release
from lottery.data.download import md5_of
from lottery.data.planetoid import ARRAYS, CONTENT_SHA256, MD5, content_digest, load_planetoid

sp = require("scipy.sparse")  # the `test` extra (the release's pickles hold scipy.sparse matrices)
CITESEER = ["AI", "ML", "IR", "DB", "Agents", "HCI"]


def _py2_spelling(data: bytes) -> bytes:
    """The release was pickled by Python 2 with old NumPy and scipy: its globals name the modules
    numpy.core.multiarray and scipy.sparse.csr (protocol 2's GLOBAL is text ending in a newline)."""
    return (data.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
                .replace(b"scipy.sparse._csr\n", b"scipy.sparse.csr\n"))


def _write_release(folder: Path, name: str, parts: dict[str, object], test_index: list[int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for part, value in parts.items():
        (folder / f"ind.{name}.{part}").write_bytes(_py2_spelling(pickle.dumps(value, protocol=2)))
    (folder / f"ind.{name}.test.index").write_text("".join(f"{i}\n" for i in test_index))
    return folder


def _one_hot(labels: list[int] | np.ndarray, classes: int) -> np.ndarray:
    out = np.zeros((len(labels), classes), dtype=np.int32)
    out[np.arange(len(labels)), labels] = 1
    return out


# A CiteSeer-like toy: 12 nodes, 5 words, 6 topics. Nodes 0-2 train, 3-5 validation, 0-6 are allx; the test
# nodes are 7, 8, 10, 11, listed out of order; node 9 is in no split (CiteSeer's "isolated" papers).
FEATURES = np.array([[1, 0, 0, 1, 0], [0, 1, 0, 0, 0], [0, 0, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 1],
                     [1, 0, 1, 0, 0], [0, 1, 1, 0, 1], [0, 0, 0, 1, 1], [1, 0, 0, 0, 1], [0, 0, 0, 0, 0],
                     [0, 1, 0, 1, 0], [1, 1, 1, 0, 0]], dtype=np.float32)
LABELS = np.array([0, 1, 2, 3, 4, 5, 0, 1, 2, -1, 3, 4])
TEST_INDEX = [11, 7, 10, 8]
# adjacency lists as the release has them: both directions, one direction only (4 -> 5), a duplicate
# (0 -> 1 twice), a self-loop (6 -> 6), a node with no neighbours (9)
GRAPH = {0: [1, 1, 2], 1: [0], 2: [0, 8], 3: [11], 4: [5], 5: [], 6: [6, 7], 7: [6, 10], 8: [2],
         9: [], 10: [7], 11: [3]}
EDGES = [(0, 1), (0, 2), (2, 8), (3, 11), (4, 5), (6, 7), (7, 10)]


def _toy_release(folder: Path) -> Path:
    return _write_release(folder, "citeseer", {
        "x": sp.csr_matrix(FEATURES[:3]), "y": _one_hot(LABELS[:3], 6),
        "tx": sp.csr_matrix(FEATURES[TEST_INDEX]), "ty": _one_hot(LABELS[TEST_INDEX], 6),  # test.index's order
        "allx": sp.csr_matrix(FEATURES[:7]), "ally": _one_hot(LABELS[:7], 6),
        "graph": collections.defaultdict(list, GRAPH),
    }, TEST_INDEX)


def test_a_toy_release_converts_to_kipfs_arrays(tmp_path, capsys):
    raw = _toy_release(tmp_path / "raw")
    assert planetoid_release.main([str(raw), str(tmp_path / "data"), "--val-size", "3"]) == 0
    path = tmp_path / "data" / "planetoid" / "citeseer.npz"
    assert "citeseer, 12 nodes, 5 features, 7 citations, 6 classes, train/val/test 3/3/4" in capsys.readouterr().out
    assert [p.name for p in path.parent.iterdir()] == ["citeseer.npz"]  # no temporary file left beside it
    with np.load(path, allow_pickle=False) as archive:
        got = {k: archive[k] for k in archive.files}
    assert sorted(got) == sorted((*ARRAYS, "paper_ids"))
    dense = np.zeros(tuple(got["features_shape"]), dtype=np.float32)
    rows = np.repeat(np.arange(12), np.diff(got["features_indptr"]))
    dense[rows, got["features_indices"]] = got["features_data"]
    assert np.array_equal(dense, FEATURES)  # test rows in place, the isolated node's row zero
    for r in range(12):  # canonical CSR: sorted columns, no explicit zeros
        columns = got["features_indices"][got["features_indptr"][r]:got["features_indptr"][r + 1]]
        assert list(columns) == sorted(set(columns))
    assert not (got["features_data"] == 0).any()
    expected = {"labels": LABELS, "edges": np.array(EDGES).T, "train": [0, 1, 2], "val": [3, 4, 5],
                "test": TEST_INDEX, "features_shape": [12, 5]}
    for key, value in expected.items():
        assert got[key].dtype == np.int64 and np.array_equal(got[key], value), key
    assert got["features_data"].dtype == np.float32
    assert got["features_indices"].dtype == got["features_indptr"].dtype == np.int64
    assert list(got["class_names"]) == CITESEER and list(got["paper_ids"]) == [""] * 12
    # a faithful conversion of other data is not CiteSeer: the loader refuses it, one line naming the file
    with pytest.raises(lottery.UserError, match=r"citeseer.npz: md5 \w+ is not the expected .* nor are its arrays"):
        load_planetoid(tmp_path / "data", "citeseer")


class _Payload:
    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, ("touch pwned",))


@pytest.mark.parametrize("part", ["graph", "allx"])
def test_a_pickle_naming_another_class_is_refused_before_it_runs(tmp_path, capsys, monkeypatch, part):
    raw = _toy_release(tmp_path / "raw")
    (raw / f"ind.citeseer.{part}").write_bytes(pickle.dumps(_Payload(), protocol=2))
    monkeypatch.chdir(tmp_path)
    assert planetoid_release.main([str(raw), str(tmp_path / "data"), "--val-size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("planetoid_release: error: ")
    assert f"ind.citeseer.{part}: refuses posix.system" in err or f"ind.citeseer.{part}: refuses os.system" in err
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "data").exists()


def test_python_m_converts_and_exits_2_on_a_forbidden_class(tmp_path):
    """The command as a user types it, in a process of its own."""
    raw = _toy_release(tmp_path / "raw")
    command = [sys.executable, "-m", "lottery.data.planetoid_release", str(raw), str(tmp_path / "data")]
    done = subprocess.run([*command, "--val-size", "3"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "" and (tmp_path / "data" / "planetoid" / "citeseer.npz").is_file()
    (raw / "ind.citeseer.graph").write_bytes(pickle.dumps(_Payload(), protocol=2))
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert "ind.citeseer.graph: refuses" in done.stderr and not (tmp_path / "pwned").exists()


def test_a_truncated_pickle_or_missing_part_is_one_line(tmp_path, capsys):
    raw = _toy_release(tmp_path / "raw")
    data = (raw / "ind.citeseer.ally").read_bytes()
    (raw / "ind.citeseer.ally").write_bytes(data[: len(data) // 2])
    assert planetoid_release.main([str(raw), str(tmp_path / "data"), "--val-size", "3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ind.citeseer.ally: not a pickle of the Planetoid release" in err
    (raw / "ind.citeseer.ally").unlink()
    assert planetoid_release.main([str(raw), str(tmp_path / "data"), "--name", "citeseer"]) == 2
    assert "ind.citeseer.ally is missing" in capsys.readouterr().err
    assert planetoid_release.main([str(tmp_path), str(tmp_path / "data")]) == 2
    assert "holds no ind.cora.* or ind.citeseer.* files" in capsys.readouterr().err


def _shared_arrays(shared_data: Path, name: str) -> dict[str, np.ndarray]:
    with np.load(shared_data / "planetoid" / f"{name}.npz", allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files}


def _release_from(arrays: dict[str, np.ndarray]) -> dict[str, object]:
    """The release's files for the shared archive's data (its inverse of load_data): allx = the nodes before
    the first test node, tx = the test nodes' rows in test.index's order, the graph both ways."""
    features = sp.csr_matrix((arrays["features_data"], arrays["features_indices"], arrays["features_indptr"]),
                             shape=tuple(arrays["features_shape"]))
    labels, test, train = arrays["labels"], arrays["test"], arrays["train"]
    classes, first = len(arrays["class_names"]), int(test.min())
    graph = collections.defaultdict(list)
    for i, j in arrays["edges"].T.tolist():
        graph[i].append(j)
        graph[j].append(i)
    return {"x": features[train], "y": _one_hot(labels[train], classes),
            "tx": features[test], "ty": _one_hot(labels[test], classes),
            "allx": features[:first], "ally": _one_hot(labels[:first], classes), "graph": graph}


@pytest.mark.parametrize("name", ["cora", "citeseer"])
def test_the_shared_archives_load_by_md5_and_their_conversion_by_content_digest(shared_data, tmp_path, name):
    shared = _shared_arrays(shared_data, name)
    assert content_digest(shared) == CONTENT_SHA256[name]  # the recorded digest is the shared archive's
    by_md5 = load_planetoid(shared_data, name)
    raw = _write_release(tmp_path / "raw", name, _release_from(shared), shared["test"].tolist())
    out = planetoid_release.convert(raw, tmp_path / "data", name, say=lambda line: None)
    assert md5_of(out) != MD5[name]  # other bytes (zip times, no paper ids): only the digest can admit it
    with np.load(out, allow_pickle=False) as archive:
        converted = {k: archive[k] for k in archive.files}
    for key in ARRAYS:  # every array the loader reads, bit for bit: dtype, shape, values
        assert converted[key].dtype == shared[key].dtype and np.array_equal(converted[key], shared[key]), key
    assert (converted["paper_ids"] == "").all()
    by_digest = load_planetoid(tmp_path / "data", name)
    assert by_digest.graph.class_names == by_md5.graph.class_names
    for a, b in ((by_digest.graph.features, by_md5.graph.features), (by_digest.graph.edges, by_md5.graph.edges),
                 (by_digest.graph.labels, by_md5.graph.labels), (by_digest.x_train, by_md5.x_train),
                 (by_digest.x_val, by_md5.x_val), (by_digest.x_test, by_md5.x_test)):
        assert a.dtype == b.dtype and bool((a == b).all())


def test_a_damaged_archive_is_still_refused(shared_data, tmp_path):
    (tmp_path / "planetoid").mkdir()
    damaged = tmp_path / "planetoid" / "cora.npz"
    shutil.copy(shared_data / "planetoid" / "cora.npz", damaged)
    with open(damaged, "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(lottery.UserError, match=r"cora.npz: md5 \w+ is not the expected .*a damaged or other file"):
        load_planetoid(tmp_path, "cora")
    shared = _shared_arrays(shared_data, "cora")  # a whole archive whose labels differ by one node
    shared["labels"][0] = (shared["labels"][0] + 1) % 7
    np.savez(damaged, **shared)
    with pytest.raises(lottery.UserError, match=r"cora.npz: md5 .* nor are its arrays those of the Planetoid cora"):
        load_planetoid(tmp_path, "cora")
    damaged.write_bytes(b"not a zip")
    with pytest.raises(lottery.UserError, match="cora.npz: md5 .* is not the expected"):
        lottery.load_dataset("cora", tmp_path)
