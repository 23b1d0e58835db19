"""Invariant 7: a replica's result is a function of its own inputs, bit for bit, whatever else shares its pass,
however many trials or arms run, whatever --max-replicas, and wherever a kill landed."""
import hashlib
import shutil
from pathlib import Path

import pytest

import lottery
from lottery.procedure import levels as procedure_module
from lottery.training import passes as passes_module
from lottery.storage.files import load_tensors, save_tensors

from conftest import run_cli

# Every arm, a random criterion (so masks and scores draw random numbers) and dropout, on a tiny MLP.
EVERYTHING = ["--iterations", "50", "--levels", "2", "--trials", "2", "--criterion", "random",
              "--arms", "imp,reinit,same-sign,random,init-magnitude,one-shot", "--set", "model.dropout=0.2",
              "--set", "model.hidden=32,32", "--set", "train.eval_every=10", "--set", "train.batch_size=50",
              "--no-progress"]


def _files(run_dir: Path) -> dict[str, str]:
    """Every result file of a run (tensors, metrics, curves, results.csv) -> its SHA-256."""
    out = {}
    for path in sorted(run_dir.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".json", ".csv") and path.name != "run.json":
            out[str(path.relative_to(run_dir))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    result = run_cli("find", *EVERYTHING, "--out", str(out))
    assert result.returncode == 0, result.stderr
    (run_dir,) = out.iterdir()
    return run_dir


def test_two_identical_runs_and_any_pass_size_give_byte_identical_results(reference, tmp_path):
    expected = _files(reference)
    assert any("random/mask" in k for k in expected) and len(expected) > 60
    # The reference ran every network of a level in one pass, in another process: runs in passes of 1 and 3 that
    # match it bit for bit show both that a run repeats itself and that a pass's company changes nothing.
    for extra in (["--max-replicas", "1"], ["--max-replicas", "3"]):
        out = tmp_path / f"max{extra[1]}"
        result = run_cli("find", *EVERYTHING, *extra, "--out", str(out))
        assert result.returncode == 0, result.stderr
        (run_dir,) = out.iterdir()
        assert _files(run_dir) == expected, extra


def test_a_trial_does_not_depend_on_how_many_trials_run(reference, tmp_path):
    args = [a if a != "2" or i != EVERYTHING.index("--trials") + 1 else "1" for i, a in enumerate(EVERYTHING)]
    result = run_cli("find", *args, "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    (run_dir,) = tmp_path.iterdir()
    alone = {k: v for k, v in _files(run_dir).items() if k.startswith("trial_0/")}
    assert alone and alone == {k: v for k, v in _files(reference).items() if k.startswith("trial_0/")}


def _config() -> lottery.RunConfig:
    config = lottery.get_preset("mnist1d-mlp")
    config.trials, config.arms = 2, ["imp", "reinit", "same-sign", "random", "init-magnitude", "one-shot"]
    config.prune.levels, config.prune.criterion = 2, "random"
    config.model.hidden, config.model.dropout = [32, 32], 0.2
    config.train.iterations, config.train.eval_every, config.train.batch_size = 50, 10, 50
    return config


def test_a_kill_between_the_per_replica_saves_resumes_from_the_checkpoint_to_identical_results(
        reference, tmp_path, monkeypatch, mnist1d):
    """The process dies after two of a pass's replicas were saved: the rest resume from the pass's
    checkpoint (their rows of it), and the run ends as the uninterrupted one did."""
    original = procedure_module.Procedure.record
    saved = []

    def dies_after_two_saves_at_level_2(self, network, *args, **kwargs):
        original(self, network, *args, **kwargs)
        saved.append(network)
        if network.level == 2 and len([n for n in saved if n.level == 2]) == 2:
            raise KeyboardInterrupt  # what a kill at this point leaves behind

    monkeypatch.setattr(procedure_module.Procedure, "record", dies_after_two_saves_at_level_2)
    options = lottery.RunOptions(progress=False, checkpoint_seconds=0)
    run_dir = tmp_path / reference.name
    with pytest.raises(KeyboardInterrupt):
        lottery.find_tickets(_config(), run_dir, data=mnist1d, options=options)
    assert (run_dir / "checkpoints" / "level_02.safetensors").exists()
    monkeypatch.setattr(procedure_module.Procedure, "record", original)

    resumed_at = []
    real_resume = passes_module.resume

    def recording_resume(trainer, keys, checkpoint, warn=None):
        resumed_at.append((len(keys), real_resume(trainer, keys, checkpoint, warn)))
        return resumed_at[-1][1]

    monkeypatch.setattr(passes_module, "resume", recording_resume)
    lottery.find_tickets(_config(), run_dir, data=mnist1d, options=options)
    assert resumed_at == [(10, 40)]  # the 10 unsaved replicas, from the last checkpoint (iteration 40)
    assert _files(run_dir) == _files(reference)
    assert not (run_dir / "checkpoints").exists()


def test_a_retrained_level_keeps_the_run_consistent_and_a_changed_parent_is_refused(reference, tmp_path, mnist1d):
    run_dir = tmp_path / reference.name
    shutil.copytree(reference, run_dir)
    options = lottery.RunOptions(progress=False)
    # Retraining a ticket gives the same weights bit for bit, so the next level's mask still fits it.
    (run_dir / "trial_1" / "level_01" / "imp" / "metrics.json").unlink()
    lottery.find_tickets(_config(), run_dir, data=mnist1d, options=options)
    assert _files(run_dir) == _files(reference)
    # Weights that are not the ones the next mask was pruned from: refused, with the folders to remove.
    final = run_dir / "trial_1" / "level_01" / "imp" / "final.safetensors"
    weights = load_tensors(final)
    weights["layers.0.bias"] = weights["layers.0.bias"] + 1.0
    save_tensors(final, weights)
    with pytest.raises(lottery.UserError, match="contradicts itself") as error:
        lottery.find_tickets(_config(), run_dir, data=mnist1d, options=options)
    message = str(error.value)
    assert f"remove {run_dir / 'trial_1' / 'level_02'}" in message
    # The fix it names works: remove the stale level and the tampered ticket, run again.
    shutil.rmtree(run_dir / "trial_1" / "level_02")
    shutil.rmtree(run_dir / "trial_1" / "level_01" / "imp")
    lottery.find_tickets(_config(), run_dir, data=mnist1d, options=options)
    assert _files(run_dir) == _files(reference)
