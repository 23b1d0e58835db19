"""The reproducibility and fault campaign of issue 12, re-runnable: prints counts, not a pass/fail.

    .venv/bin/python checks/faults.py [--kills 40] [--work /tmp/lottery-faults] [--parts repro,kills,files,inputs]

- repro:  identical runs, --max-replicas 1/2/3 and --trials 1 against the default, compared file by file.
- kills:  SIGKILL at random moments of `find` (and of `report`, `attack`) until the command completes; the
          results must equal an uninterrupted run's, byte for byte.
- files:  every kind of run file truncated, emptied or replaced by garbage, then every command that reads it;
          each outcome must be one line with exit code 2 naming the file, or success (caches, unread files).
- inputs: bad command lines; each must be one line with exit code 2.
- links:  symbolic links inside a run (.lock, report/.lock, checkpoints/, a trial folder, a level folder) against
          every command that writes there; each must be one line with exit code 2 naming the link, and the
          link's target must be untouched (bytes, mtime, every file still there).
- json:   run files holding valid JSON of the wrong type (the whole file or one field: 42, [], null, a string,
          an object) against every command that reads them.
- tensors: well-formed safetensors with the wrong tensors (none, one renamed, shapes halved, one bit flipped)
          against every command that reads them.
- nonregular: a named pipe or a folder in place of a run file (a pipe must not block).
- api:    the Python API with a bad model, data or config; each must raise lottery.UserError before writing.
Every case counts as: clean (one line, exit 2, the file named; UserError for the API), succeeded (the damage is
in a file the command does not need, or a cache it rebuilds), traceback, other; and lost: a good file changed or
gone after the command (the damaged file and the command's own output folder excepted).
Tracebacks are counted everywhere: the campaign's target is none.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
TINY = ["--iterations", "200", "--levels", "2", "--trials", "2", "--arms", "imp,reinit,random",
        "--set", "model.hidden=32,32", "--set", "train.eval_every=20", "--set", "train.batch_size=50", "--no-progress"]


def lottery(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([PYTHON, "-m", "lottery.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout)


def files(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.suffix in (".safetensors", ".csv", ".json")
            and p.name != "run.json" and "report" not in p.parts}


def only_run(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def repro(work: Path) -> None:
    print("## reproducibility")
    issue_a = ["mnist1d-mlp", "--levels", "3", "--iterations", "600", "--trials", "2", "--arms", "imp,reinit,random",
               "--no-progress"]
    runs = {}
    for name in ("first", "second"):
        assert lottery("find", *issue_a, "--out", str(work / "repro" / name)).returncode == 0
        runs[name] = files(only_run(work / "repro" / name))
    differ = [k for k in runs["first"] if runs["first"][k] != runs["second"].get(k)]
    print(f"two identical runs ({' '.join(issue_a)}): {len(runs['first'])} files, {len(differ)} differ")
    issue_b = ["mnist1d-mlp", "--levels", "2", "--iterations", "300", "--trials", "2", "--no-progress"]
    assert lottery("find", *issue_b, "--out", str(work / "repro" / "default")).returncode == 0
    base = files(only_run(work / "repro" / "default"))
    for extra in (["--max-replicas", "1"], ["--max-replicas", "2"], ["--max-replicas", "3"], ["--trials", "1"]):
        out = work / "repro" / "-".join(extra)
        args = [a for a in issue_b]
        if extra[0] == "--trials":
            args[args.index("--trials") + 1] = extra[1]
        else:
            args += extra
        assert lottery("find", *args, "--out", str(out)).returncode == 0
        other = files(only_run(out))
        if extra[0] == "--trials":  # results.csv holds one trial's rows: compare that trial's files
            other = {k: v for k, v in other.items() if k.startswith("trial_0/")}
        differ = [k for k in other if other[k] != base.get(k)]
        print(f"{' '.join(extra)} vs default: {len(other)} files compared, {len(differ)} differ")


def kill_until_done(args: list[str], rng: random.Random, duration: float,
                    at_least: int = 0) -> tuple[int, subprocess.CompletedProcess]:
    """Start the command and SIGKILL it after a random share of `duration` (an uninterrupted run's time),
    `at_least` times, then again at random until it completes."""
    kills = 0
    while True:
        proc = subprocess.Popen([PYTHON, "-m", "lottery.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, cwd=REPO)
        delay = rng.uniform(0.2, 0.95) * duration if kills < at_least else rng.uniform(0.2, 1.2) * duration
        try:
            out, err = proc.communicate(timeout=delay)
            return kills, subprocess.CompletedProcess(args, proc.returncode, out, err)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            kills += 1


def timed(*args: str) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    result = lottery(*args)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - start, result


def kills(work: Path, budget: int) -> None:
    print("## kills")
    rng = random.Random(12)
    args = ["find", *TINY, "--iterations", "600", "--levels", "3", "--checkpoint-seconds", "0"]
    duration, _ = timed(*args, "--out", str(work / "kills" / "straight"))
    expected = files(only_run(work / "kills" / "straight"))
    total, runs, tracebacks, mismatches = 0, 0, 0, 0
    while total < budget:
        out = work / "kills" / f"killed{runs}"
        n, result = kill_until_done([*args, "--out", str(out)], rng, duration, at_least=3)
        total, runs = total + n, runs + 1
        tracebacks += "Traceback" in result.stderr
        mismatches += result.returncode != 0 or files(only_run(out)) != expected
    print(f"find ({duration:.0f} s uninterrupted): {total} SIGKILLs over {runs} runs, each run killed until it "
          f"completed; completed runs whose results differ from the uninterrupted run's: {mismatches}; "
          f"tracebacks: {tracebacks}")
    run_dir = only_run(work / "kills" / "straight")
    for command, extra, output in (("report", [], "report/report.md"),
                                   ("attack", ["--examples", "300", "--steps", "3"], "attack/attack.csv")):
        duration, _ = timed(command, str(run_dir), *extra)
        reference = (run_dir / output).read_bytes()
        shutil.rmtree(run_dir / output.split("/")[0])
        n, result = kill_until_done([command, str(run_dir), *extra], rng, duration, at_least=8)
        same = result.returncode == 0 and (run_dir / output).read_bytes() == reference
        print(f"{command}: {n} SIGKILLs, then completed; output identical to an uninterrupted run's: {same}; "
              f"tracebacks: {'Traceback' in result.stderr}")


def corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes({"truncate": data[: max(1, len(data) // 3)], "empty": b"",
                      "garbage": os.urandom(max(16, len(data) // 2))}[how])


def file_faults(work: Path) -> None:
    print("## broken files")
    base = work / "files" / "base"
    assert lottery("find", *TINY, "--out", str(base)).returncode == 0
    run = only_run(base)
    targets = {
        "init": "trial_0/init.safetensors", "mask": "trial_0/level_01/mask.safetensors",
        "random mask": "trial_0/level_01/random/mask.safetensors", "reinit start": "trial_0/level_01/reinit/start.safetensors",
        "final": "trial_0/level_01/imp/final.safetensors", "metrics": "trial_1/level_02/reinit/metrics.json",
        "curves": "trial_0/level_01/imp/curves.csv", "results": "results.csv", "config": "config.toml",
        "run.json": "run.json",
    }
    commands = {
        "find (same)": lambda r: ["find", *TINY, "--out", str(r.parent)],
        "find (extend)": lambda r: ["find", *TINY, "--levels", "3", "--out", str(r.parent)],
        "report": lambda r: ["report", str(r)], "claims": lambda r: ["claims", str(r)],
        "noise": lambda r: ["noise", str(r), "--levels", "1", "--draws", "1", "--no-progress"],
        "attack": lambda r: ["attack", str(r), "--examples", "50", "--steps", "1"],
        "compare": lambda r: ["compare", str(r), str(r), "--labels", "a,b", "--out", str(r.parent / "cmp")],
        "transfer": lambda r: ["transfer", str(r), "--against", str(r), "--levels", "1", "--no-progress"],
    }
    counts = {"one line, exit 2, file named": 0, "succeeded": 0, "other exit 2": 0, "traceback": 0, "other": 0}
    cases = 0
    for target, relative in targets.items():
        for how in ("truncate", "empty", "garbage"):
            for command, argv in commands.items():
                copy = work / "files" / "case" / run.name
                shutil.rmtree(copy.parent, ignore_errors=True)
                shutil.copytree(run, copy)
                corrupt(copy / relative, how)
                result = lottery(*argv(copy))
                cases += 1
                lines = result.stderr.strip().splitlines()
                if "Traceback" in result.stderr:
                    counts["traceback"] += 1
                    print(f"  traceback: {target} {how} / {command}: {lines[-1] if lines else ''}")
                elif result.returncode == 0:
                    counts["succeeded"] += 1
                elif result.returncode == 2 and len(lines) == 1 and relative.split("/")[-1] in lines[0]:
                    counts["one line, exit 2, file named"] += 1
                elif result.returncode == 2:
                    counts["other exit 2"] += 1
                    print(f"  exit 2 without the file: {target} {how} / {command}: {lines[-1] if lines else ''}")
                else:
                    counts["other"] += 1
                    print(f"  rc {result.returncode}: {target} {how} / {command}: {lines[-1] if lines else ''}")
    print(f"{cases} (file, corruption, command) cases: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))


BAD_INPUTS = [
    ["find", "no-such-preset"], ["find", "--set", "train.nope=1"], ["find", "--iterations", "ten"],
    ["find", "--iterations", "0"], ["find", "--iterations", "-5"], ["find", "--levels", "-2"], ["find", "--trials", "0"],
    ["find", "--set", "train.lr=abc"], ["find", "--set", "train.lr=inf"], ["find", "--set", "train.lr=-inf"],
    ["find", "--set", "train.lr=nan"], ["find", "--set", "train.lr=1e308"], ["find", "--set", "train.lr=0"],
    ["find", "--set", "train.lr=-1"], ["find", "--set", "train.weight_decay=inf"], ["find", "--set", "train.weight_decay=-1"],
    ["find", "--set", "train.weight_decay=2"], ["find", "--set", "train.momentum=1"], ["find", "--set", "train.momentum=nan"],
    ["find", "--set", "train.gamma=0"], ["find", "--set", "train.gamma=5"], ["find", "--set", "train.warmup=-1"],
    ["find", "--set", "train.batch_size=0"], ["find", "--set", "train.batch_size=100000"],
    ["find", "--set", "train.eval_every=0"], ["find", "--set", "train.milestones=0"], ["find", "--set", "train.milestones=a"],
    ["find", "--set", "train.optimizer=rmsprop"], ["find", "--set", "train.precision=fp8"], ["find", "--precision", "fp16"],
    ["find", "--set", "train.nesterov=maybe"], ["find", "--set", "train.test_curves=2"],
    ["find", "--set", "data.val_size=0"], ["find", "--set", "data.val_size=10"], ["find", "--set", "data.val_size=-2"],
    ["find", "--set", "data.val_size=100000"], ["find", "--set", "data.dataset=cifar100"],
    ["find", "--set", "data.permute_fraction=2"], ["find", "--set", "data.permute_fraction=nan"],
    ["find", "--set", "data.rotate_degrees=inf"], ["find", "--set", "data.classes=a,b"], ["find", "--set", "data.classes=42"],
    ["find", "--set", "model.name=resnet999"], ["find", "--set", "model.hidden=0"], ["find", "--set", "model.hidden=-3"],
    ["find", "--set", "model.dropout=1"], ["find", "--set", "model.dropout=-0.1"], ["find", "--set", "model.dropout=nan"],
    ["find", "--set", "prune.rate_hidden=0"], ["find", "--set", "prune.rate_hidden=1"], ["find", "--set", "prune.rate_hidden=1.5"],
    ["find", "--set", "prune.rate_output=1"], ["find", "--set", "prune.rate_output=nan"], ["find", "--scope", "sideways"],
    ["find", "--criterion", "vibes"], ["find", "--one-shot", "150"], ["find", "--one-shot", "0"], ["find", "--one-shot", "x"],
    ["find", "--one-shot", "nan"], ["find", "--arms", "imp,bogus"], ["find", "--arms", "reinit"], ["find", "--arms", "imp,imp"],
    ["find", "--arms", ""], ["find", "--one-shot", "50", "--arms", "imp,one-shot"], ["find", "--rewind-iteration", "-1"],
    ["find", "--rewind-iteration", "999999"], ["find", "--set", "prune.ignore=no.such.weight"],
    ["find", "--device", "tpu"], ["find", "--device", "cudaXYZ"], ["find", "--device", "cuda"], ["find", "--device", "cuda:7"],
    ["find", "--device", "cpu:0"], ["find", "--max-replicas", "0"], ["find", "--max-replicas", "-1"],
    ["find", "--max-replicas", "two"], ["find", "--checkpoint-seconds", "nan"], ["find", "--checkpoint-seconds", "-1"],
    ["find", "--checkpoint-seconds", "inf"], ["find", "--set", "trials"], ["find", "--set", "=3"], ["find", "--bogus"],
    ["find", "lenet300-mnist", "--data-dir", "/nonexistent/data"], ["find", "--out", "/proc/x"],
    ["find", "--out", "/dev/null"], ["find", "--set", "seed=1.5"], ["find", "--set", "trials=x"],
    ["report"], ["report", "/nonexistent/run"], ["report", "/"], ["claims", "/nonexistent/run"], ["claims", "/tmp"],
    ["compare", "/nonexistent/a", "/nonexistent/b"], ["compare", "RUN"], ["compare", "RUN", "RUN", "--labels", "a"],
    ["compare", "RUN", "RUN", "--labels", "a,a"], ["compare", "RUN", "RUN", "--arms", "bogus"],
    ["compare", "RUN", "RUN", "--labels", "a,b", "--out", "/proc/x"],
    ["attack", "RUN", "--method", "bogus"], ["attack", "RUN", "--eps", "-1"], ["attack", "RUN", "--eps", "x"],
    ["attack", "RUN", "--eps", ""], ["attack", "RUN", "--steps", "0"], ["attack", "RUN", "--examples", "0"],
    ["attack", "RUN", "--levels", "99"], ["attack", "RUN", "--device", "gpu"], ["attack", "/nonexistent/run"],
    ["noise", "RUN", "--sigmas", "0"], ["noise", "RUN", "--sigmas", "-1"], ["noise", "RUN", "--sigmas", "x"],
    ["noise", "RUN", "--draws", "0"], ["noise", "RUN", "--levels", "99"], ["noise", "/nonexistent/run"],
    ["transfer", "RUN"], ["transfer", "RUN", "--to", "cifar100"], ["transfer", "RUN", "--set", "data.classes=1"],
    ["transfer", "RUN", "--to", "mnist1d", "--set", "train.lr=1"], ["transfer", "RUN", "--to", "mnist1d", "--levels", "99"],
    ["transfer", "RUN", "--max-replicas", "0", "--to", "mnist1d"], ["transfer", "/nonexistent/run", "--to", "mnist"],
    ["transfer", "RUN", "--to", "mnist", "--data-dir", "/nonexistent"],
    ["presets", "extra"], ["nonsense"], [],
    # issue 37: names that would leave --out, a user loop from the CLI, sizes beyond the machine or reason
    ["find", "--set", "preset=../../outside"], ["find", "--set", "preset=/tmp/anywhere"], ["find", "--set", "preset=.hidden"],
    ["find", "--set", "train.loop=user"], ["find", "--set", "train.loop=user", "--set", "train.batch_size=0"],
    ["find", "--set", "train.loop=user", "--set", "train.lr=-5"], ["find", "--trials", "1000000000"],
    ["find", "--levels", "100000"], ["find", "--levels", "500"], ["find", "--set", "model.hidden=1000000000"],
    ["find", "--iterations", "10000000000000000"], ["stability", "RUN", "--alphas", "100000000"],
    ["stability", "RUN", "--alphas", "1"], ["attack", "RUN", "--eps", "5"], ["attack", "RUN", "--eps", "nan"],
]


def bad_inputs(work: Path) -> None:
    print("## bad inputs")
    base = work / "inputs" / "runs"
    assert lottery("find", *TINY, "--out", str(base)).returncode == 0
    run = str(only_run(base))
    clean, tracebacks, other = 0, 0, []
    for argv in BAD_INPUTS:
        args = [run if a == "RUN" else a for a in argv]
        if args and args[0] == "find" and "--out" not in args:
            args += ["--out", str(work / "inputs" / "bad")]
        result = lottery(*args, "--no-progress") if args[:1] == ["noise"] else lottery(*args)
        lines = result.stderr.strip().splitlines()
        if "Traceback" in result.stderr:
            tracebacks += 1
            other.append(f"traceback: {' '.join(argv)}: {lines[-1] if lines else ''}")
        elif result.returncode == 2 and len(lines) == 1:
            clean += 1
        else:
            other.append(f"rc {result.returncode}: {' '.join(argv)}: {lines[-1] if lines else result.stdout[-100:]}")
    half_written = (work / "inputs" / "bad").exists() and any((work / "inputs" / "bad").iterdir())
    print(f"{len(BAD_INPUTS)} bad inputs: {clean} one line + exit 2, {tracebacks} tracebacks, "
          f"{len(BAD_INPUTS) - clean - tracebacks} other; a run directory left behind by a bad `find`: {half_written}")
    for line in other:
        print("  " + line)


# --- issue 37: links, wrong-typed JSON, wrong tensors, non-regular files, the API ---------------------------
READERS = {  # every command that reads a finished run, as argv from the run's path
    "find (same)": lambda r: ["find", *TINY, "--out", str(r.parent)],
    "find (extend)": lambda r: ["find", *TINY, "--levels", "3", "--out", str(r.parent)],
    "report": lambda r: ["report", str(r)], "claims": lambda r: ["claims", str(r)],
    "noise": lambda r: ["noise", str(r), "--levels", "1", "--draws", "1", "--no-progress"],
    "attack": lambda r: ["attack", str(r), "--examples", "50", "--steps", "1", "--no-progress"],
    "compare": lambda r: ["compare", str(r), str(r), "--labels", "a,b", "--out", str(r.parent / "cmp")],
    "transfer": lambda r: ["transfer", str(r), "--against", str(r), "--levels", "1", "--no-progress"],
    "stability": lambda r: ["stability", str(r), "--levels", "1", "--rewind", "0", "--alphas", "3", "--trials", "0",
                            "--arms", "imp", "--train-examples", "200", "--no-progress"],
    "export": lambda r: ["export", str(r), "--level", "1", "--out", str(r.parent / "ticket.safetensors")],
}
OUTPUTS = ("report", "noise", "attack", "transfer", "stability", "checkpoints", "tensorboard", "mlruns")


def _snapshot(run_dir: Path) -> dict[str, str]:
    """Every good file of a run (the command's own output folders excepted) by content."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and not p.is_symlink()
            and not set(OUTPUTS) & set(p.relative_to(run_dir).parts) and not p.name.startswith(".")}


class Tally:
    """Counts of one part of the campaign, and the cases worth a look."""

    KINDS = ("clean", "succeeded", "traceback", "other")

    def __init__(self, name: str) -> None:
        self.name, self.counts, self.lost, self.notes = name, dict.fromkeys(self.KINDS, 0), 0, []
        self.succeeded: list[str] = []

    def judge(self, label: str, result: subprocess.CompletedProcess, named: str, lost: list[str]) -> None:
        lines = result.stderr.strip().splitlines()
        last = lines[-1] if lines else ""
        if "Traceback" in result.stderr:
            kind = "traceback"
        elif result.returncode == 0:
            kind = "succeeded"
        elif result.returncode == 2 and [l for l in lines if l.startswith("lottery: error:")] == lines[-1:] \
                and named in last:  # one error line, the last; lines before it are --no-progress's pass log
            kind = "clean"
        else:
            kind = "other"
        self.counts[kind] += 1
        if kind == "succeeded":
            self.succeeded.append(label)
        if kind in ("traceback", "other"):
            self.notes.append(f"{kind}: {label}: rc {result.returncode}: {last[:160]}")
        if lost:
            self.lost += 1
            self.notes.append(f"LOST: {label}: {', '.join(lost[:3])}")

    def print(self) -> None:
        cases = sum(self.counts.values())
        print(f"{self.name}: {cases} cases: " + ", ".join(f"{k} {v}" for k, v in self.counts.items())
              + f"; lost {self.lost}")
        for note in self.notes:
            print("  " + note)
        if self.succeeded:
            by_damage: dict[str, list[str]] = {}
            for label in self.succeeded:
                damage, _, command = label.rpartition(" / ")
                by_damage.setdefault(damage, []).append(command)
            print("  succeeded (the command did not need the damaged or linked path):")
            for damage, commands in by_damage.items():
                print(f"    {damage}: {', '.join(commands)}")


def _finished_run(work: Path, name: str) -> Path:
    base = work / name / "base"
    result = lottery("find", *TINY, "--out", str(base))
    assert result.returncode == 0, result.stderr
    return only_run(base)


def _fresh_copy(run: Path, work: Path, name: str) -> Path:
    copy = work / name / "case" / run.name
    shutil.rmtree(copy.parent, ignore_errors=True)
    shutil.copytree(run, copy, symlinks=True)
    return copy


def _run_case(tally: Tally, label: str, copy: Path, argv: list[str], damaged: str, named: str,
              timeout: int = 300) -> None:
    before = _snapshot(copy)
    try:
        result = lottery(*argv, timeout=timeout)
    except subprocess.TimeoutExpired:
        result = subprocess.CompletedProcess(argv, -1, "", f"blocked for {timeout} s")
    after = _snapshot(copy)
    # A failed command must leave every good file as it was; one that succeeded may rewrite what it extends
    # (find --levels 3 adds rows to results.csv) but must not lose a file.
    lost = [k for k, v in before.items() if k != damaged and after.get(k) != v
            and (result.returncode != 0 or k not in after)]
    tally.judge(label, result, named, lost)


def _tree_state(folder: Path) -> dict[str, tuple[str, int]]:
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def links(work: Path) -> None:
    print("## links inside a run directory")
    run = _finished_run(work, "links")
    tally = Tally("links")
    outside = work / "links" / "outside"
    link_targets = {  # where the link sits -> (what it points at: a file or a folder)
        ".lock": "notes.txt", "report/.lock": "notes.txt", "checkpoints": "models",
        "trial_0": "trial_copy", "trial_0/level_01": "level_copy", "trial_0/level_01/imp/metrics.json": "metrics.json",
    }
    commands = {**READERS, "find (checkpointing)": None}
    for where, target_name in link_targets.items():
        for command, argv in commands.items():
            copy = _fresh_copy(run, work, "links")
            shutil.rmtree(outside, ignore_errors=True)
            outside.mkdir(parents=True)
            target = outside / target_name
            link = copy / where
            if target_name == "notes.txt":
                target.write_text("my notes\n")
            elif target_name == "models":
                target.mkdir()
                (target / "precious.safetensors").write_bytes(b"weights I trained elsewhere")
            elif target_name == "metrics.json":
                shutil.copy2(link, target)
            else:
                shutil.copytree(link, target)
            if link.is_dir() and not link.is_symlink():
                shutil.rmtree(link)
            else:
                link.unlink(missing_ok=True)
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(target)
            state = _tree_state(outside)
            if argv is None:  # a run cut mid-pass: its checkpoint is written and removed through the link
                argv = ["find", *TINY, "--levels", "4", "--checkpoint-seconds", "0", "--out", str(copy.parent)]
            try:
                result = lottery(*argv(copy) if callable(argv) else argv, timeout=300)
            except subprocess.TimeoutExpired:
                result = subprocess.CompletedProcess(argv, -1, "", "blocked")
            changed = [k for k, v in state.items() if _tree_state(outside).get(k) != v]
            label = f"{where} -> {target_name} / {command}"
            # A command that never touches the linked path may succeed; one that does must refuse it.
            tally.judge(label, result, where.split("/")[-1], [f"outside/{c}" for c in changed])
    tally.print()


WRONG_VALUES = {"42": 42, "list": [], "null": None, "string": "x", "object": {"a": 1}}


def wrong_json(work: Path) -> None:
    print("## valid JSON of the wrong type")
    run = _finished_run(work, "json")
    tally = Tally("wrong-typed JSON")
    metrics = "trial_0/level_01/imp/metrics.json"
    cases: list[tuple[str, str, object]] = []  # (file, field or "" for the whole file, value)
    for value_name in WRONG_VALUES:
        cases.append((metrics, "", value_name))
        cases.append(("run.json", "", value_name))
    for field in ("final_test_accuracy", "trial", "mask_digest"):
        for value_name in ("list", "null", "string"):
            cases.append((metrics, field, value_name))
    for field in ("run_hash", "model"):
        for value_name in ("42", "null"):
            cases.append(("run.json", field, value_name))
    for relative, field, value_name in cases:
        for command, argv in READERS.items():
            copy = _fresh_copy(run, work, "json")
            path = copy / relative
            value = WRONG_VALUES[value_name]
            if field:
                document = json.loads(path.read_text())
                document[field] = value
                value = document
            path.write_text(json.dumps(value))
            _run_case(tally, f"{relative}{'[' + field + ']' if field else ''}={value_name} / {command}", copy,
                      argv(copy), relative, Path(relative).name)
    tally.print()


def _wrong_tensors(path: Path, how: str) -> None:
    from safetensors.torch import load_file, save_file
    import torch

    tensors = load_file(str(path))
    if how == "empty":
        tensors = {}
    elif how == "renamed":
        first = sorted(tensors)[0]
        tensors[first + "_renamed"] = tensors.pop(first)
    elif how == "halved":
        tensors = {k: v.flatten()[: max(1, v.numel() // 2)].clone() for k, v in tensors.items()}
    elif how == "flipped":  # one bit of the data, the header (and its digest) kept
        data = bytearray(path.read_bytes())
        data[-1] ^= 0x01
        path.write_bytes(bytes(data))
        return
    save_file(tensors, str(path))  # no digest: a file another tool wrote
    del torch


def wrong_tensors(work: Path) -> None:
    print("## well-formed safetensors holding the wrong tensors")
    run = _finished_run(work, "tensors")
    tally = Tally("wrong tensors")
    targets = ["trial_0/init.safetensors", "trial_0/level_01/mask.safetensors",
               "trial_0/level_01/reinit/start.safetensors", "trial_0/level_01/imp/final.safetensors",
               "trial_0/level_02/imp/final.safetensors"]
    for relative in targets:
        for how in ("empty", "renamed", "halved", "flipped"):
            for command, argv in READERS.items():
                copy = _fresh_copy(run, work, "tensors")
                if not (copy / relative).exists():
                    continue
                _wrong_tensors(copy / relative, how)
                _run_case(tally, f"{relative} {how} / {command}", copy, argv(copy), relative, Path(relative).name)
    tally.print()


def non_regular(work: Path) -> None:
    print("## named pipes and folders in place of run files")
    run = _finished_run(work, "nonregular")
    tally = Tally("non-regular files")
    for relative in ("results.csv", "config.toml", "run.json", "trial_0/level_01/imp/metrics.json",
                     "trial_0/level_01/mask.safetensors", "trial_0/level_01/imp/final.safetensors"):
        for kind in ("fifo", "folder"):
            for command, argv in READERS.items():
                copy = _fresh_copy(run, work, "nonregular")
                path = copy / relative
                path.unlink()
                os.mkfifo(path) if kind == "fifo" else path.mkdir()
                _run_case(tally, f"{relative} as a {kind} / {command}", copy, argv(copy), relative, Path(relative).name,
                          timeout=120)
    tally.print()


API_CASES = {  # name -> the body of a script; `config`, `data` and `out` are defined before it
    "model_fn returns None": "lottery.find_tickets(config, out, model_fn=lambda: None, data=data)",
    "model_fn returns a function": "lottery.find_tickets(config, out, model_fn=lambda: print, data=data)",
    "integer logits": "lottery.find_tickets(config, out, model_fn=lambda: IntLogits(), data=data)",
    "wrong number of logits": "lottery.find_tickets(config, out, model_fn=lambda: nn.Linear(40, 3), data=data)",
    "labels >= classes": "data.y_train[0] = 99\nlottery.find_tickets(config, out, data=data)",
    "negative labels": "data.y_train[0] = -1\nlottery.find_tickets(config, out, data=data)",
    "x and y of different lengths": "data.y_train = data.y_train[:-7]\nlottery.find_tickets(config, out, data=data)",
    "empty validation set": "data.x_val, data.y_val = data.x_val[:0], data.y_val[:0]\nlottery.find_tickets(config, out, data=data)",
    "NaN inputs": "data.x_train[0, 0] = float('nan')\nlottery.find_tickets(config, out, data=data)",
    "float labels": "data.y_train = data.y_train.float()\nlottery.find_tickets(config, out, data=data)",
    "trials as a string": "config.trials = '2'\nlottery.find_tickets(config, out, data=data)",
    "iterations as a float": "config.train.iterations = 40.5\nlottery.find_tickets(config, out, data=data)",
    "lr as a string": "config.train.lr = '1e-3'\nlottery.find_tickets(config, out, data=data)",
    "hidden as an int": "config.model.hidden = 32\nlottery.find_tickets(config, out, data=data)",
    "arms as a string": "config.arms = 'imp,reinit'\nlottery.find_tickets(config, out, data=data)",
    "trials absurd": "config.trials = 10**9\nlottery.find_tickets(config, out, data=data)",
    "hidden absurd": "config.model.hidden = [10**8]\nlottery.find_tickets(config, out, data=data)",
    "data not a Dataset": "lottery.find_tickets(config, out, data=(data.x_train, data.y_train))",
    "IMP with a None model": "imp = lottery.IMP(None, out)",
    "IMP with trials as a string": "imp = lottery.IMP(nn.Linear(40, 10), out, trials='2')",
    "IMP with levels absurd": "imp = lottery.IMP(nn.Linear(40, 10), out, levels=10**6)",
    "IMP with a rate of 1.5": "imp = lottery.IMP(nn.Linear(40, 10), out, rate=1.5)",
}
API_PRELUDE = """
import sys, lottery, torch
from torch import nn
class IntLogits(nn.Module):
    def __init__(self):
        super().__init__(); self.fc = nn.Linear(40, 10)
    def forward(self, x):
        return self.fc(x).round().long()
config = lottery.get_preset("mnist1d-mlp")
config.trials, config.prune.levels, config.train.iterations, config.train.eval_every = 1, 1, 40, 10
config.model.hidden = [32, 32]
data = lottery.load_data(config.data)
out = sys.argv[1]
"""


def api_inputs(work: Path) -> None:
    print("## the Python API with bad inputs")
    counts = dict.fromkeys(("UserError", "traceback", "no error", "other"), 0)
    written, notes = 0, []
    for name, body in API_CASES.items():
        out = work / "api" / name.replace(" ", "-")
        script = API_PRELUDE + "try:\n" + "".join(f"    {line}\n" for line in body.splitlines()) + \
            "except lottery.UserError as exc:\n    print('USER ERROR', exc, file=sys.stderr); sys.exit(2)\n"
        result = subprocess.run([PYTHON, "-c", script, str(out)], capture_output=True, text=True, cwd=REPO, timeout=600)
        if "Traceback" in result.stderr:
            kind = "traceback"
        elif result.returncode == 2 and "USER ERROR" in result.stderr:
            kind = "UserError"
        elif result.returncode == 0:
            kind = "no error"
        else:
            kind = "other"
        counts[kind] += 1
        left = out.exists() and any(out.rglob("*.safetensors"))
        written += left
        if kind != "UserError" or left:
            lines = result.stderr.strip().splitlines()
            notes.append(f"{kind}{' (wrote a run)' if left else ''}: {name}: {lines[-1][:160] if lines else ''}")
        else:
            notes.append(f"ok: {name}: {result.stderr.strip().splitlines()[-1][11:130]}")
    print(f"api: {len(API_CASES)} cases: " + ", ".join(f"{k} {v}" for k, v in counts.items())
          + f"; runs written before the error: {written}")
    for note in notes:
        print("  " + note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lottery-faults"))
    parser.add_argument("--parts", default="repro,kills,files,inputs,links,json,tensors,nonregular,api")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started = time.time()
    parts = args.parts.split(",")
    if "inputs" in parts:
        bad_inputs(args.work)
    for name, part in (("links", links), ("json", wrong_json), ("tensors", wrong_tensors),
                       ("nonregular", non_regular), ("api", api_inputs)):
        if name in parts:
            part(args.work)
    if "files" in parts:
        file_faults(args.work)
    if "kills" in parts:
        kills(args.work, args.kills)
    if "repro" in parts:
        repro(args.work)
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
