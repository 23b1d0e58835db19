"""The reproducibility and fault campaign of issue 12, re-runnable: prints counts, not a pass/fail.

    .venv/bin/python checks/faults.py [--kills 40] [--work /tmp/lottery-faults] [--parts repro,kills,files,inputs]

- repro:  identical runs, --max-replicas 1/2/3 and --trials 1 against the default, compared file by file.
- kills:  SIGKILL at random moments of `find` (and of `report`, `attack`) until the command completes; the
          results must equal an uninterrupted run's, byte for byte.
- files:  every kind of run file truncated, emptied or replaced by garbage, then every command that reads it;
          each outcome must be one line with exit code 2 naming the file, or success (caches, unread files).
- inputs: bad command lines; each must be one line with exit code 2.
Tracebacks are counted everywhere: the campaign's target is none.
"""
from __future__ import annotations

import argparse
import hashlib
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--work", type=Path, default=Path("/tmp/lottery-faults"))
    parser.add_argument("--parts", default="repro,kills,files,inputs")
    args = parser.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    args.work.mkdir(parents=True)
    started = time.time()
    parts = args.parts.split(",")
    if "inputs" in parts:
        bad_inputs(args.work)
    if "files" in parts:
        file_faults(args.work)
    if "kills" in parts:
        kills(args.work, args.kills)
    if "repro" in parts:
        repro(args.work)
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
