"""CIFAR-10: the official binary members, checked on load; the download path against a real loopback HTTP
server; flip-crop augmentation as a pure function of (stream seed, iteration)."""
import functools
import http.server
import io
import tarfile
import threading
from pathlib import Path

import pytest
import torch

import lottery
from lottery.config import TrainConfig
from lottery.data.augment import flip_crop
from lottery.data.cifar10 import FOLDER, MD5, TARBALL
from lottery.pruning.masks import dense_mask
from lottery.procedure.tickets import initial_weights
from lottery.training.trainer import ReplicaSpec, StackedTrainer


@pytest.fixture(scope="module")
def cifar10(shared_data) -> lottery.Dataset:
    return lottery.load_dataset("cifar10", shared_data)


def test_cifar10_loads_as_uint8_with_a_seeded_validation_split(cifar10, shared_data):
    assert cifar10.x_train.dtype == torch.uint8 and cifar10.x_train.shape == (45000, 3, 32, 32)
    assert cifar10.x_val.shape == (5000, 3, 32, 32) and cifar10.x_test.shape == (10000, 3, 32, 32)
    counts = torch.bincount(torch.cat([cifar10.y_train, cifar10.y_val]), minlength=10)
    assert counts.tolist() == [5000] * 10
    assert torch.bincount(cifar10.y_test).tolist() == [1000] * 10
    again = lottery.load_dataset("cifar10", shared_data)
    assert torch.equal(again.y_val, cifar10.y_val)
    other = lottery.load_dataset("cifar10", shared_data, split_seed=1)
    assert not torch.equal(other.y_val, cifar10.y_val)
    features = cifar10.features(cifar10.x_train[:5000])
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.mean((0, 2, 3)), torch.zeros(3), atol=0.03, rtol=0)
    torch.testing.assert_close(features.std((0, 2, 3)), torch.ones(3), atol=0.03, rtol=0)


def test_a_member_with_another_md5_is_named(tmp_path, shared_data):
    folder = tmp_path / "cifar-10" / FOLDER
    folder.mkdir(parents=True)
    for name in MD5:
        (folder / name).symlink_to(shared_data / "cifar-10" / FOLDER / name)
    (folder / "data_batch_3.bin").unlink()
    (folder / "data_batch_3.bin").write_bytes((shared_data / "cifar-10" / FOLDER / "data_batch_3.bin").read_bytes()[:-7])
    with pytest.raises(lottery.UserError, match=r"data_batch_3.bin has MD5 .* expected 942cd6a4"):
        lottery.load_dataset("cifar10", tmp_path)


def _tarball(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture
def mirror(tmp_path, monkeypatch):
    """A real HTTP server on loopback serving ROOT/cifar-10/<file>; LOTTERY_MIRRORS points at it."""
    root = tmp_path / "mirror"
    (root / "cifar-10").mkdir(parents=True)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("LOTTERY_MIRRORS", f"http://127.0.0.1:{server.server_address[1]}")
    yield root / "cifar-10" / TARBALL
    server.shutdown()


def test_download_fetches_extracts_checks_and_moves_into_place(mirror, tmp_path, shared_data, cifar10):
    source = shared_data / "cifar-10" / FOLDER
    mirror.write_bytes(_tarball({f"{FOLDER}/{name}": (source / name).read_bytes() for name in MD5}))
    data_dir = tmp_path / "data"
    downloaded = lottery.load_dataset("cifar10", data_dir)
    assert torch.equal(downloaded.x_train, cifar10.x_train) and torch.equal(downloaded.y_test, cifar10.y_test)
    assert sorted(p.name for p in (data_dir / "cifar-10").iterdir()) == [FOLDER]  # no temp folder left


@pytest.mark.parametrize("members, message", [
    ({f"{FOLDER}/{name}": b"not cifar" for name in MD5}, "not the official CIFAR-10: data_batch_1.bin has MD5"),
    ({f"{FOLDER}/../escape.bin": b"x"}, "unexpected entry"),
    ({"/etc/evil": b"x"}, "unexpected entry"),
])
def test_a_bad_archive_is_one_clear_error_and_leaves_nothing(mirror, tmp_path, members, message):
    mirror.write_bytes(_tarball(members))
    data_dir = tmp_path / "data"
    with pytest.raises(lottery.UserError, match=message):
        lottery.load_dataset("cifar10", data_dir)
    assert not data_dir.exists()
    assert not (tmp_path / "escape.bin").exists()


def test_no_mirror_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LOTTERY_MIRRORS", "http://127.0.0.1:9")
    with pytest.raises(lottery.UserError, match="could not get cifar-10-binary.tar.gz"):
        lottery.load_dataset("cifar10", tmp_path / "data")
    assert not (tmp_path / "data").exists()


def test_flip_crop_is_a_pure_function_of_stream_seed_and_iteration(cifar10):
    images = cifar10.x_train[:64].view(2, 32, 3, 32, 32)
    out = flip_crop(images, [11, 12], 5)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert torch.equal(out, flip_crop(images, [11, 12], 5))
    assert torch.equal(out[1:], flip_crop(images[1:], [12], 5))  # a stream's draws are its own
    assert not torch.equal(out, flip_crop(images, [11, 12], 6))
    # Every output is a 32x32 window of the zero-padded image, mirrored or not.
    padded = torch.nn.functional.pad(images.flatten(0, 1), (4, 4, 4, 4))
    flips = 0
    for i, picture in enumerate(out.flatten(0, 1)):
        windows = [padded[i, :, r:r + 32, c:c + 32] for r in range(9) for c in range(9)]
        plain = any(torch.equal(picture, w) for w in windows)
        mirrored = any(torch.equal(picture.flip(-1), w) for w in windows)
        assert plain or mirrored
        flips += mirrored and not plain
    assert 10 <= flips <= 54  # about half of 64


def test_a_cifar_replica_with_augmentation_trains_alone_as_in_a_stack(cifar10):
    config = lottery.ModelConfig(name="mlp", hidden=[32])
    model_fn = lambda: lottery.build_model(config, cifar10.input_shape, 10)  # noqa: E731
    model = model_fn()
    roles = lottery.prunable_roles(model)
    specs = [ReplicaSpec(i, initial_weights(model_fn, 0, i), dense_mask(initial_weights(model_fn, 0, i), list(roles)), i)
             for i in range(2)]
    train = TrainConfig(lr=1e-3, batch_size=32, iterations=30, eval_every=10)
    small = lottery.Dataset("cifar10", cifar10.x_train[:2000], cifar10.y_train[:2000], cifar10.x_val[:500],
                            cifar10.y_val[:500], cifar10.x_test[:500], cifar10.y_test[:500], 10, None,
                            cifar10.channel_normalization)
    both = StackedTrainer(model, specs, small, train, [7, 8], augment="flip-crop")
    both.run(train.iterations)
    alone = StackedTrainer(model, [ReplicaSpec(0, specs[1].start, specs[1].mask, 1)], small, train, [8],
                           augment="flip-crop")
    alone.run(train.iterations)
    for name, value in alone.results()[0].final.items():
        assert torch.equal(value, both.results()[1].final[name])
    plain = StackedTrainer(model, [ReplicaSpec(0, specs[1].start, specs[1].mask, 1)], small, train, [8])
    plain.run(train.iterations)
    assert not torch.equal(plain.results()[0].final["layers.0.weight"], alone.results()[0].final["layers.0.weight"])
