"""Every command that reads a run or a ticket works with the network off (issue 31): from what the run, the
ticket and --data-dir hold. Downloads are made to fail; the dataset cache is an empty folder."""
import pytest
import torch

from lottery import cli
from lottery.data import cifar10, download


@pytest.fixture
def offline(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted with the network off")

    monkeypatch.setattr(download, "_download", refuse)
    monkeypatch.setattr(cifar10, "download", refuse)
    monkeypatch.setattr("urllib.request.urlopen", refuse)
    monkeypatch.setenv("LOTTERY_DATA", str(tmp_path / "empty-cache"))


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, shared_data):
    out = tmp_path_factory.mktemp("offline")
    assert cli.main(["find", "lenet300-mnist", "--levels", "2", "--iterations", "40", "--trials", "1",
                     "--arms", "imp,reinit,random", "--out", str(out), "--no-progress",
                     "--data-dir", str(shared_data)]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    return run


def test_ticket_commands_need_no_dataset(offline, mnist_run, tmp_path, capsys):
    ticket, onnx = tmp_path / "t.safetensors", tmp_path / "t.onnx"
    assert cli.main(["export", str(mnist_run), "--level", "2", "--out", str(ticket)]) == 0
    threads = torch.get_num_threads()
    assert cli.main(["bench-inference", str(ticket)]) == 0  # one thread while it measures
    assert "standard-normal inputs of its recorded shape" in capsys.readouterr().out
    assert torch.get_num_threads() == threads  # and the process's thread count back afterwards
    assert cli.main(["export", str(mnist_run), "--level", "2", "--format", "onnx", "--out", str(onnx)]) == 0
    assert onnx.exists() and "random inputs" in capsys.readouterr().out


def test_run_commands_work_from_the_run_and_data_dir(offline, mnist_run, shared_data, capsys):
    data = ["--data-dir", str(shared_data)]
    assert cli.main(["report", str(mnist_run)]) == 0
    assert cli.main(["claims", str(mnist_run)]) == 0
    assert cli.main(["attack", str(mnist_run), "--method", "fgsm", "--eps", "0.1", "--levels", "0,2",
                     "--examples", "200", *data]) == 0
    assert cli.main(["noise", str(mnist_run), "--sigmas", "1", "--levels", "2", "--draws", "1",
                     "--no-progress", *data]) == 0
    assert cli.main(["transfer", str(mnist_run), "--to", "fashion-mnist", "--levels", "2", "--no-progress",
                     *data]) == 0
    assert cli.main(["stability", str(mnist_run), "--levels", "2", "--rewind", "0", "--alphas", "3",
                     "--no-progress", *data]) == 0


def test_a_command_whose_data_is_absent_says_so_in_one_line(mnist_run, tmp_path, monkeypatch, capsys):
    """Absent data is fetched when asked for; with the network off that fails as a real offline machine does
    (the name does not resolve), in one line that says where to put the file or to pass --data-dir."""
    import urllib.error

    def unreachable(*args, **kwargs):
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("urllib.request.urlopen", unreachable)
    assert cli.main(["attack", str(mnist_run), "--data-dir", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-dir" in err[0] and "train-images-idx3-ubyte.gz" in err[0]
