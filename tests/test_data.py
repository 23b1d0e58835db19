import functools
import gzip
import hashlib
import http.server
import shutil
import threading
from pathlib import Path

import pytest
import torch

import lottery
from lottery.data.download import ensure_file
from lottery.data.idx import FILES, MD5
from lottery.errors import UserError

MNIST_TRAIN_LABEL_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_mnist_loads_byte_exact_with_a_deterministic_validation_split(mnist, shared_data):
    assert mnist.x_train.shape == (55000, 1, 28, 28) and mnist.x_val.shape == (5000, 1, 28, 28)
    assert mnist.x_test.shape == (10000, 1, 28, 28) and mnist.x_train.dtype == torch.float32
    counts = torch.bincount(torch.cat([mnist.y_train, mnist.y_val]), minlength=10).tolist()
    assert counts == MNIST_TRAIN_LABEL_COUNTS
    assert abs(float(mnist.x_train.mean())) < 0.05 and abs(float(mnist.x_train.std()) - 1) < 0.05
    again = lottery.load_dataset("mnist", shared_data, val_size=5000)
    assert torch.equal(again.y_val, mnist.y_val) and torch.equal(again.x_val, mnist.x_val)
    other = lottery.load_dataset("mnist", shared_data, val_size=5000, split_seed=1)
    assert not torch.equal(other.y_val, mnist.y_val)


def test_fashion_mnist_loads(shared_data):
    data = lottery.load_dataset("fashion-mnist", shared_data)
    assert len(data.x_train) + len(data.x_val) == 60000 and len(data.x_test) == 10000
    assert torch.bincount(data.y_test).tolist() == [1000] * 10


def test_mnist1d_is_generated_locally_with_a_proportional_validation_split(mnist1d):
    assert mnist1d.input_shape == (40,)
    assert len(mnist1d.x_val) == round(4000 * 5000 / 60000) and len(mnist1d.x_train) + len(mnist1d.x_val) == 4000
    assert len(mnist1d.x_test) == 1000


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture()
def serve():
    servers = []

    def start(folder: Path) -> str:
        handler = functools.partial(_Quiet, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()


def test_download_from_a_loopback_mirror_verifies_md5_and_loads(serve, shared_data, tmp_path, monkeypatch):
    base = serve(shared_data)
    monkeypatch.setenv("LOTTERY_MIRRORS", base)
    target = tmp_path / "data"
    data = lottery.load_dataset("mnist", target, val_size=5000)
    assert len(data.x_train) == 55000
    for name in FILES:
        path = target / "mnist" / name
        assert hashlib.md5(path.read_bytes()).hexdigest() == MD5["mnist"][name]
    assert sorted(p.name for p in (target / "mnist").iterdir()) == sorted(FILES)  # no temp files left


def test_corrupted_download_is_rejected_and_leaves_nothing(serve, shared_data, tmp_path):
    bad = tmp_path / "bad" / "mnist"
    bad.mkdir(parents=True)
    good = (shared_data / "mnist" / FILES[3]).read_bytes()
    (bad / FILES[3]).write_bytes(good[:-100])  # truncated
    base = serve(tmp_path / "bad")
    dest = tmp_path / "dest" / FILES[3]
    with pytest.raises(UserError, match=f"could not get {FILES[3]}.*MD5"):
        ensure_file(dest, MD5["mnist"][FILES[3]], [base + "/mnist/"])
    assert not dest.parent.exists() or list(dest.parent.iterdir()) == []


def test_no_network_names_the_file_and_what_to_do(tmp_path):
    dest = tmp_path / "mnist" / FILES[1]
    with pytest.raises(UserError, match=f"could not get {FILES[1]}.*--data-dir"):
        ensure_file(dest, MD5["mnist"][FILES[1]], ["http://127.0.0.1:9/mnist/"])  # port 9: nothing listens
    assert not dest.parent.exists()  # no partial file, and no empty folder left behind


def test_a_foreign_local_file_is_reported(tmp_path, shared_data):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in FILES:
        shutil.copy(shared_data / "mnist" / name, folder / name)
    with gzip.open(folder / FILES[1], "wb") as handle:
        handle.write(b"not an idx file")
    with pytest.raises(UserError, match="truncated or not the official one"):
        lottery.load_dataset("mnist", tmp_path)


def test_shifts_permute_rotate_and_subset(shared_data):
    from lottery.data import load_data
    from lottery.data.shifts import permutation

    index = permutation(784, 0.5, seed=3)
    assert int((index != torch.arange(784)).sum()) == 392  # exactly half the positions move
    assert torch.equal(index.sort().values, torch.arange(784))  # a permutation
    base = lottery.get_preset("lenet300-mnist").data
    plain = load_data(base, shared_data)
    base.rotate_degrees = 90
    turned = load_data(base, shared_data)
    quarter = torch.rot90(plain.x_test[:50], 1, (2, 3))
    other = torch.rot90(plain.x_test[:50], -1, (2, 3))
    # A quarter turn by resampling equals an exact quarter turn one way, up to interpolation error.
    assert min((turned.x_test[:50] - quarter).abs().max(), (turned.x_test[:50] - other).abs().max()) < 1e-3
    base.rotate_degrees, base.classes = 0, [0, 1, 2, 3, 4]
    subset = load_data(base, shared_data)
    assert set(subset.y_test.tolist()) == {0, 1, 2, 3, 4} and subset.num_classes == 10
    assert len(subset.x_test) == int((plain.y_test < 5).sum())
    base.classes, base.permute_fraction = [], 1.0
    permuted = load_data(base, shared_data)
    assert torch.equal(permuted.y_test, plain.y_test)
    assert torch.equal(permuted.x_test.flatten(1).sort(1).values, plain.x_test.flatten(1).sort(1).values)
    assert not torch.equal(permuted.x_test, plain.x_test)
