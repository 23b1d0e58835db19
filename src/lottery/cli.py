"""The command line: parse, call the library, print. User errors are one line and exit code 2."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from statistics import mean
from typing import TYPE_CHECKING

from lottery.config import RunConfig, TrainConfig, apply_overrides, scale_schedule, set_value
from lottery.validation import check_builtin_loop, run_dir_inside, validate
from lottery.errors import UserError

if TYPE_CHECKING:
    from lottery.options import RunOptions


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (argparse prints the whole usage)
        raise UserError(message)


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="lottery", description="Find winning lottery tickets with iterative magnitude pruning.")
    parser.add_argument("--version", action=_Version, help="print lottery's version and exit")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    find = commands.add_parser("find", help="run IMP (or one-shot pruning); re-running resumes")
    find.add_argument("preset", nargs="?", default=None, help="a preset name (see `lottery presets`); default mnist1d-mlp")
    find.add_argument("--levels", type=int, help="pruning levels after the dense level 0")
    find.add_argument("--trials", type=int, help="independent trials (own θ0 and data order)")
    find.add_argument("--iterations", type=int, help="training iterations per level")
    find.add_argument("--rewind-iteration", type=int, metavar="K", help="rewind survivors to θK instead of θ0")
    find.add_argument("--retrain", choices=["rewind", "lr-rewind", "finetune"],
                      help="how a pruned ticket is retrained: rewind (weights to θK, schedule from K; default), "
                           "lr-rewind (keep the trained weights, schedule from K) or finetune (keep them, train at "
                           "--finetune-lr)")
    find.add_argument("--finetune-lr", type=float, metavar="LR", help="the fixed learning rate of --retrain finetune")
    find.add_argument("--rewind-optimizer", action="store_true", default=None,
                      help="rewind the optimizer's state (momentum, Adam moments) to θK's iteration with the "
                           "weights (default: a fresh optimizer, as open_lth)")
    find.add_argument("--scope", help="layerwise (per-layer rates) or global (one threshold)")
    find.add_argument("--criterion", help="what pruning keeps the largest of: magnitude (default, |θT|), movement, "
                      "magnitude-increase, large-init, random, path, or a registered one")
    find.add_argument("--pattern", metavar="N:M", help="semi-structured masks: at most N of every M consecutive "
                      "inputs kept (2:4 runs on a GPU's sparse tensor cores); the criterion chooses within it")
    find.add_argument("--granularity", choices=["weight", "channel"],
                      help="what one pruning decision removes: weight (default, the paper) or channel (a conv's "
                           "output channel or a linear neuron with every weight that writes or reads it: the "
                           "ticket is a smaller dense network; see docs/deploy.md)")
    find.add_argument("--unit-score", choices=["l1", "l2", "bn-gamma"],
                      help="with --granularity channel, a unit's score: l1 (default: the criterion summed over "
                           "its filter), l2, or bn-gamma (|γ| of its BatchNorm, network slimming)")
    find.add_argument("--arms", metavar="ARM[,ARM...]",
                      help="imp (the ticket) plus controls: reinit, same-sign, random, init-magnitude, one-shot; "
                           "pruning at initialization: snip, grasp, synflow, each also -global (the method's own "
                           "layer shares), -inverted, -global-inverted and -global-shuffle (Frankle et al. 2021); "
                           "early-bird; scratch (the ticket's architecture from a fresh draw at its own fan-in: with --granularity channel, the smaller dense network from scratch); graph models: random-edges (the ticket's weights, a random graph of its size)")
    find.add_argument("--one-shot", metavar="PERCENT[,PERCENT...]",
                      help="prune straight to these percents remaining from one trained network")
    find.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                      help="override any config field, e.g. --set train.lr=1e-3 (repeatable)")
    find.add_argument("--data-dir", type=Path, help="datasets folder (else $LOTTERY_DATA, else ~/.cache/lottery)")
    find.add_argument("--out", type=Path, default=Path("runs"), help="parent folder of run directories (default runs/)")
    find.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    _training_flags(find)
    find.add_argument("--test-curves", action=argparse.BooleanOptionalAction, default=None,
                      help="evaluate the test set at every evaluation (full test curves); without it, once per network "
                           "on its weights at the early-stop iteration, which gives the same metrics faster")
    find.add_argument("--precision", help="float32 (default) or bf16 (bf16 matmuls, float32 master weights)")
    find.add_argument("--no-progress", action="store_true",
                      help="no progress bars: one line per finished training pass instead (for logs)")
    find.add_argument("--report", action="store_true", help="write the report when the run ends")
    _json_flag(find, '{"run_dir", "config_hash", "rows": [per arm and level], "notes": [...], "report"}')

    report = commands.add_parser("report", help="write RUN_DIR/report/: figures and report.md")
    report.add_argument("run_dir", type=Path)

    claims = commands.add_parser("claims", help="check a run against the paper's quantitative claims")
    claims.add_argument("run_dir", type=Path)
    _json_flag(claims, '{"claims": [{"claim", "paper", "measured", "verdict"}], "caveats": [...]}')

    compare = commands.add_parser("compare", help="put runs on the same axes and measure their masks' overlap")
    compare.add_argument("run_dirs", type=Path, nargs="+", metavar="RUN_DIR")
    compare.add_argument("--labels", help="comma-separated names for the runs (default: directory names)")
    compare.add_argument("--arms", default="imp", metavar="ARM[,ARM...]", help="arms to plot (default imp)")
    compare.add_argument("--out", type=Path, help="output folder (default runs/compare-<hash of the runs>)")

    attack = commands.add_parser("attack", help="accuracy under FGSM/PGD of every level and arm of a run")
    attack.add_argument("run_dir", type=Path)
    attack.add_argument("--method", default="fgsm,pgd", help="fgsm, pgd or both (default fgsm,pgd)")
    attack.add_argument("--eps", default="0.05,0.1,0.2,0.3", help="ℓ∞ budgets in pixel units [0, 1] (default "
                        "0.05,0.1,0.2,0.3); ε = 0, clean accuracy, is always added")
    attack.add_argument("--steps", type=int, default=10, help="PGD steps of ε/4 (default 10)")
    attack.add_argument("--levels", help="levels to attack (default all), e.g. 0,3,7")
    attack.add_argument("--examples", type=int, help="first N test examples (default all)")
    _common(attack)

    noise = commands.add_parser("noise", help="robustness of tickets to Gaussian noise, at init and after training")
    noise.add_argument("run_dir", type=Path)
    noise.add_argument("--sigmas", default="0.5,1,2,3", help="noise in multiples k of each layer's init std "
                       "(default 0.5,1,2,3)")
    noise.add_argument("--levels", help="levels (default: nearest 100, 51.3, 21.1, 7.0, 3.6, 1.9 %%)")
    noise.add_argument("--draws", type=int, default=5, help="noise draws per network for the inference view")
    _training_flags(noise)
    _common(noise)

    transfer = commands.add_parser("transfer", help="train tickets found on one dataset on another")
    transfer.add_argument("sources", type=Path, nargs="+", metavar="SOURCE_RUN")
    transfer.add_argument("--to", help="target dataset (mnist, fashion-mnist, mnist1d); shift it with --set")
    transfer.add_argument("--set", action="append", default=[], metavar="data.KEY=VALUE",
                          help="target data fields, e.g. data.permute_fraction=0.5, data.rotate_degrees=45, "
                               "data.classes=0,1,2,3,4")
    transfer.add_argument("--against", type=Path, metavar="TARGET_RUN",
                          help="a finished run on the target data to compare with (else one is trained, with "
                               "arms imp,reinit,random)")
    transfer.add_argument("--levels", help="levels of the sources to transfer (default all)")
    _training_flags(transfer)
    _common(transfer)

    stability = commands.add_parser("stability", help="instability analysis: train two copies from iteration k on "
                                    "different data orders and measure the error barrier between them")
    stability.add_argument("run_dir", type=Path)
    stability.add_argument("--levels", help="levels (default: nearest 100, 21.1, 7.0, 1.9 %%), e.g. 0,7,12")
    stability.add_argument("--rewind", metavar="K[,K...]", help="rewind points: iterations of the dense network's "
                           "training (default: those of 0,100,500,2000 the run's iterations allow)")
    stability.add_argument("--alphas", type=int, default=30, help="points on the line between the copies, "
                           "both ends included (default 30)")
    stability.add_argument("--arms", default="imp,random", metavar="ARM[,ARM...]",
                           help="masks: imp (the run's ticket), random (its counts per layer); default both")
    stability.add_argument("--trials", help="trials (default all of the run's)")
    stability.add_argument("--keep-optimizer", action="store_true",
                           help="start the copies with the optimizer's state at k (default: fresh, as rewinding does)")
    stability.add_argument("--same-noise", action="store_true",
                           help="both copies see the same data order and draws: a control whose instability is 0")
    stability.add_argument("--train-examples", type=int, default=10_000,
                           help="training examples for the train error (and BatchNorm statistics); default 10000")
    _training_flags(stability)
    _common(stability)

    export = commands.add_parser("export", help="write one network of a run to a ticket file you can take away "
                                 "(safetensors), or its compact form as ONNX")
    export.add_argument("run_dir", type=Path)
    export.add_argument("--level", default="best", help="a level, or best (default): the sparsest level whose mean "
                        "test accuracy at early stop is within --tolerance points of the dense network's")
    export.add_argument("--tolerance", type=float, default=0.0, help="points of accuracy below the dense network "
                        "that --level best accepts (default 0: matching)")
    export.add_argument("--trial", type=int, default=0, help="trial (default 0)")
    export.add_argument("--arm", default="imp", help="arm (default imp, the ticket)")
    export.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                        help="safetensors: mask, start and trained states with metadata (default); onnx: the compact "
                             "model (the channels the mask disconnects cut out, any architecture the dependency "
                             "graph traces), checked with onnxruntime")
    export.add_argument("--weights", choices=["trained", "start"], default="trained",
                        help="which weights the ONNX model carries (default trained; a ticket file holds both)")
    export.add_argument("--out", type=Path, required=True, help="the file to write")
    export.add_argument("--data-dir", type=Path, help="datasets folder (ONNX: for example inputs)")
    _json_flag(export, '{"out", "format", "ticket": {...}, "compact": {...} (onnx) or null}')

    bench = commands.add_parser("bench-inference", help="which form of a ticket runs fastest here, at what accuracy: "
                                "PyTorch dense, compact, CSR and BSR; ONNX Runtime float32 and int8")
    bench.add_argument("ticket", type=Path)
    bench.add_argument("--threads", default="1,all",
                       help="thread counts to time at, comma-separated; all: the process's own "
                            "(torch.get_num_threads(): OMP_NUM_THREADS, else the cores) (default 1,all)")
    bench.add_argument("--tolerance", type=float, default=0.5,
                       help="points of test accuracy below dense that the verdict still counts as matching "
                            "(default 0.5)")
    bench.add_argument("--data-dir", type=Path, help="datasets folder (the inputs and accuracy come from the "
                                                     "ticket's test set; without it, no accuracy: outputs are "
                                                     "compared with dense)")
    bench.add_argument("--out", type=Path, help="also write the tables to this markdown file")
    _json_flag(bench, "the tables as data: forms rows (runtime, form, precision, batch, threads, milliseconds, "
                      "examples_per_second, accuracy, accuracy_delta, max_difference, ...), layers and break_even "
                      "rows, verdict {settings, layers}, skipped")

    commands.add_parser("presets", help="list presets")
    return parser


class _Version(argparse.Action):
    """`lottery --version`: the version from lottery._version, read only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from lottery._version import __version__

        print(f"lottery {__version__}")
        raise _Done


class _Done(Exception):
    """The command has said all it had to (--version): exit 0."""


def _json_flag(parser: argparse.ArgumentParser, shape: str) -> None:
    parser.add_argument("--json", action="store_true",
                        help=f"print one JSON document on stdout and nothing else (notes and progress stay on stderr): "
                             f"{shape}".replace("%", "%%"))


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="datasets folder (else $LOTTERY_DATA, else ~/.cache/lottery)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars (commands that train log one line per finished pass instead)")


def _training_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that trains: how a pass runs, never what it computes."""
    parser.add_argument("--max-replicas", type=int, help="replicas trained together in one pass (default: chosen "
                        "from model size, free memory and device)")
    parser.add_argument("--checkpoint-seconds", type=float, default=60.0,
                        help="checkpoint a training pass this often (at most this much training is lost on a kill)")
    if parser.prog.split()[-1] == "find":  # the experiments do not hand tracking to their passes (yet)
        parser.add_argument("--track", metavar="NAME[,NAME]",
                            help="live metrics while networks train: tensorboard (RUN_DIR/tensorboard) and/or mlflow "
                                 "(RUN_DIR/mlruns, an offline file store); each needs its extra, e.g. "
                                 "pip install 'lottery[tensorboard]'")


def _run_options(args: argparse.Namespace) -> RunOptions:
    """RunOptions from the training flags; --no-progress swaps the bars for one log line per finished pass."""
    from lottery.options import RunOptions

    if args.max_replicas is not None and args.max_replicas < 1:
        raise UserError(f"--max-replicas must be at least 1, got {args.max_replicas}")
    if not (math.isfinite(args.checkpoint_seconds) and args.checkpoint_seconds >= 0):
        raise UserError(f"--checkpoint-seconds must be a finite number, 0 or more, got {args.checkpoint_seconds}")
    track: tuple[str, ...] = ()
    if getattr(args, "track", None) is not None:
        from lottery.training.tracking import check_trackers

        track = tuple(dict.fromkeys(name.strip() for name in args.track.split(",") if name.strip()))
        if not track:
            raise UserError("--track is empty; name tensorboard, mlflow or both")
        check_trackers(track, flag="--track")
    return RunOptions(device=_device(args.device), progress=not args.no_progress, log_passes=args.no_progress,
                      checkpoint_seconds=args.checkpoint_seconds, max_replicas=args.max_replicas, track=track)


def _numbers(text: str | None, kind: type, flag: str) -> list | None:
    if text is None:
        return None
    try:
        values = [kind(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UserError(f"{flag} expects comma-separated {kind.__name__}s, got {text!r}") from None
    if not values:
        raise UserError(f"{flag} is empty")
    return values


def _device(name: str) -> str:
    from lottery.devices import check_device

    return check_device(name)


def build_config(args: argparse.Namespace) -> RunConfig:
    """The preset, then the named flags, then --set overrides; validated."""
    from lottery.presets import DEFAULT_PRESET, get_preset

    config = get_preset(args.preset or DEFAULT_PRESET)
    if args.iterations is not None:
        scale_schedule(config, args.iterations)
    named = {"prune.levels": args.levels, "trials": args.trials, "train.iterations": args.iterations,
             "prune.rewind_iteration": args.rewind_iteration, "prune.scope": args.scope,
             "prune.retrain": args.retrain, "prune.finetune_lr": args.finetune_lr,
             "prune.rewind_optimizer": args.rewind_optimizer,
             "prune.criterion": args.criterion, "prune.pattern": args.pattern,
             "prune.granularity": args.granularity, "prune.unit_score": args.unit_score,
             "prune.one_shot": args.one_shot, "arms": args.arms, "train.test_curves": args.test_curves,
             "train.precision": args.precision}
    for key, value in named.items():
        if value is not None:
            set_value(config, key, value)
    apply_overrides(config, args.set)
    validate(config)
    check_builtin_loop(config)  # the CLI has no loop of the user's to run (see check_builtin_loop)
    return config


def _find(args: argparse.Namespace) -> dict | None:
    from lottery.procedure.find import find_tickets

    config = build_config(args)
    options = _run_options(args)
    run_dir = run_dir_inside(args.out, config.run_name())
    if not args.json:
        print(f"run: {run_dir}", flush=True)
    find_tickets(config, run_dir, data_dir=args.data_dir, options=options)
    from lottery.ranks import Ranks, finish_group

    leader = Ranks.current().leader
    finish_group()  # the group's work is done: what follows reads the run, on rank 0 alone
    if not leader:
        return None
    notes = [note for note in (late_stop_note(run_dir, config.train.iterations), diverged_note(run_dir),
                               sampled_sets_note(run_dir, config.train)) if note]
    if not args.json:
        print(summary_table(run_dir), flush=True)
    for note in notes:  # warnings about the results, not results: stderr, so that stdout stays the table
        print(note, file=sys.stderr, flush=True)
    report = None
    if args.report:
        from lottery.reports.report import write_report

        report = write_report(run_dir)
        if not args.json:
            print(f"report: {report}")
    return {"run_dir": str(run_dir), "config_hash": config.run_hash(), "rows": summary_rows(run_dir),
            "notes": notes, "report": None if report is None else str(report)}


SUMMARY_METRICS = ("early_stop_iteration", "early_stop_test_accuracy", "final_test_accuracy")


def summary_rows(run_dir: Path) -> list[dict]:
    """One row per (arm, level), sorted: percent_remaining, the means over trials of SUMMARY_METRICS (accuracies
    as fractions, as in results.csv), `trials` (how many) and `by_trial` (each trial's own values)."""
    from lottery.storage.results import read_results

    by_level: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in read_results(run_dir):
        by_level[(row["arm"], row["level"])].append(row)
    return [{"arm": arm, "level": level, "percent_remaining": rows[0]["percent_remaining"],
             **{m: mean(r[m] for r in rows) for m in SUMMARY_METRICS}, "trials": len(rows),
             "by_trial": [{"trial": r["trial"], **{m: r[m] for m in SUMMARY_METRICS}}
                          for r in sorted(rows, key=lambda r: r["trial"])]}
            for (arm, level), rows in sorted(by_level.items())]


def summary_table(run_dir: Path) -> str:
    lines = [f"{'arm':<6} {'level':>5} {'remaining %':>11} {'early stop it':>13} {'test acc @ES %':>14} "
             f"{'final test %':>12} {'trials':>6}"]
    for row in summary_rows(run_dir):
        lines.append(f"{row['arm']:<6} {row['level']:>5} {row['percent_remaining']:>11.1f} "
                     f"{row['early_stop_iteration']:>13.0f} {100 * row['early_stop_test_accuracy']:>14.2f} "
                     f"{100 * row['final_test_accuracy']:>12.2f} {row['trials']:>6}")
    return "\n".join(lines)


def late_stop_note(run_dir: Path, iterations: int, share: float = 0.1) -> str | None:
    """A warning when networks reached their validation minimum in the last `share` of training: their
    early-stop metrics are capped by the budget (dropout, for one, learns slowly), not by overfitting."""
    from lottery.storage.results import read_results

    rows = read_results(run_dir)
    late = [r for r in rows if r["early_stop_iteration"] >= (1 - share) * iterations]
    if not late:
        return None
    return (f"note: {len(late)} of {len(rows)} networks reached early stop in the last {share:.0%} of the "
            f"{iterations:,} iterations, so they may still be learning; consider more --iterations")


def sampled_sets_note(run_dir: Path, train: TrainConfig) -> str | None:
    """Says so when a short run's accuracies were measured on samples of the sets (lottery.training.eval_sets)."""
    from lottery.storage.results import read_results

    if train.eval_examples == 0:
        return None
    cap = train.iterations * train.batch_size if train.eval_examples == -1 else train.eval_examples
    rows = [r for r in read_results(run_dir) if r["test_examples"] is not None]
    if not any(cap in (r["val_examples"], r["test_examples"]) for r in rows):
        return None
    return (f"note: each network trained on {cap:,} examples or fewer, so each evaluation used a fixed sample of at "
            f"most {cap:,} examples of each set (validation {rows[0]['val_examples']:,}, test "
            f"{rows[0]['test_examples']:,}; results.csv says so); --set train.eval_examples=0 evaluates whole sets")


def diverged_note(run_dir: Path) -> str | None:
    """A warning when training diverged (a non-finite validation loss): such rows are not results."""
    import math as _math

    from lottery.storage.results import read_results

    rows = read_results(run_dir)
    bad = [r for r in rows if not _math.isfinite(r["early_stop_val_loss"])]
    if not bad:
        return None
    return (f"warning: {len(bad)} of {len(rows)} networks diverged (non-finite validation loss, e.g. "
            f"{bad[0]['arm']} trial {bad[0]['trial']} level {bad[0]['level']}); lower train.lr")


def _report(args: argparse.Namespace) -> None:
    from lottery.reports.report import environment_lines, write_report
    from lottery.storage.files import RunStore

    print(f"report: {write_report(args.run_dir)}")
    for line in environment_lines(RunStore(args.run_dir)):
        print(line)


def _claims(args: argparse.Namespace) -> dict | None:
    from lottery.reports.claims import check_claims, claims_markdown, protocol_caveats
    from lottery.storage.results import read_results
    from lottery.storage.runinfo import read_config
    from lottery.storage.files import RunStore, hold_run

    store = RunStore(args.run_dir)
    if not store.results_path.exists():
        raise UserError(f"{store.root} has no results.csv: not a finished `lottery find` run directory")
    with hold_run(store.root, exclusive=False):
        config = read_config(store)
        rows = read_results(store.root)
    trials = len({r["trial"] for r in rows})
    results, caveats = check_claims(rows, config), protocol_caveats(config, trials)
    if args.json:
        import dataclasses

        return {"run_dir": str(store.root), "claims": [dataclasses.asdict(r) for r in results], "caveats": caveats}
    print(claims_markdown(results, caveats))
    return None


def _compare(args: argparse.Namespace) -> None:
    import hashlib

    from lottery.reports.compare import compare_runs
    from lottery.storage.files import RunStore

    for run in args.run_dirs:
        if not RunStore(run).results_path.exists():
            raise UserError(f"{run} has no results.csv: not a finished `lottery find` run directory")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
    from lottery.pruning.arms import ARMS

    arms = tuple(a.strip() for a in args.arms.split(",") if a.strip())
    if not arms or any(a not in ARMS for a in arms):
        raise UserError(f"unknown arm in {args.arms!r}; known: {', '.join(ARMS)}")
    digest = hashlib.sha256("\n".join(str(r.resolve()) for r in args.run_dirs).encode()).hexdigest()[:8]
    out = args.out or Path("runs") / f"compare-{digest}"
    print(f"compare: {compare_runs(args.run_dirs, out, labels, arms)}")


def _attack(args: argparse.Namespace) -> None:
    from lottery.experiments.attack import attack_run

    methods = [m.strip() for m in args.method.split(",") if m.strip()]
    epsilons = _numbers(args.eps, float, "--eps")
    outside = [e for e in epsilons if not 0 <= e <= 1]  # NaN included
    if outside:
        raise UserError(f"--eps takes ℓ∞ budgets in pixel units, in [0, 1] (1 is the whole pixel range), got {outside[0]:g}")
    out = attack_run(args.run_dir, methods, epsilons, levels=_numbers(args.levels, int, "--levels"),
                     examples=args.examples, steps=args.steps, data_dir=args.data_dir, device=_device(args.device),
                     progress=not args.no_progress, log=args.no_progress)
    print(f"attack: {out}")


def _noise(args: argparse.Namespace) -> None:
    from lottery.experiments.noise import noise_run

    out = noise_run(args.run_dir, _numbers(args.sigmas, float, "--sigmas"), levels=_numbers(args.levels, int, "--levels"),
                    draws=args.draws, data_dir=args.data_dir, options=_run_options(args))
    print(f"noise: {out}")


def _transfer(args: argparse.Namespace) -> None:
    from lottery.config import DataConfig
    from lottery.experiments.transfer import transfer_run

    target = None
    if args.to is not None:
        from lottery.storage.finished import open_run

        # On the same dataset the target keeps the source's validation split; another dataset takes its own
        # default validation size (5,000 MNIST examples would not fit in MNIST-1D's 4,000).
        source = open_run(args.sources[0]).config
        same = args.to == source.data.dataset
        probe = RunConfig(data=DataConfig(dataset=args.to, val_size=source.data.val_size if same else -1,
                                          split_seed=source.data.split_seed))
        for pair in args.set:
            if not pair.strip().startswith("data."):
                raise UserError(f"transfer --set takes data.* fields only, got {pair!r}")
        apply_overrides(probe, args.set)
        validate(probe)
        target = probe.data
    elif args.set:
        raise UserError("--set needs --to")
    options = _run_options(args)
    out = transfer_run(args.sources, target, against=args.against, levels=_numbers(args.levels, int, "--levels"),
                       data_dir=args.data_dir, options=options)
    print(f"transfer: {out}")


def _stability(args: argparse.Namespace) -> None:
    from lottery.experiments.stability import check_alphas, stability_run

    check_alphas(args.alphas, "--alphas")
    options = _run_options(args)
    out = stability_run(args.run_dir, levels=_numbers(args.levels, int, "--levels"),
                        rewind=_numbers(args.rewind, int, "--rewind"), alphas=args.alphas,
                        arms=[a.strip() for a in args.arms.split(",") if a.strip()],
                        trials=_numbers(args.trials, int, "--trials"), keep_optimizer=args.keep_optimizer,
                        same_noise=args.same_noise, train_examples=args.train_examples, data_dir=args.data_dir,
                        options=options)
    print(f"stability: {out}")


def _export(args: argparse.Namespace) -> dict:
    import dataclasses

    from lottery.deploy.export import save_ticket, ticket_of

    say = _human(args)
    level = args.level if args.level == "best" else _numbers(args.level, int, "--level")[0]
    ticket = ticket_of(args.run_dir, level=level, trial=args.trial, arm=args.arm, tolerance=args.tolerance)
    info = ticket.info
    source = info["source"]
    edges = (f", {info['percent_edges_remaining']:.2f}% of {info['graph_edges']:,} edges"
             if "graph_edges" in info else "")
    say(f"ticket: level {source['level']} ({info['percent_remaining']:.2f}% of {info['prunable_weights']:,} weights{edges}), "
        f"trial {source['trial']}, arm {source['arm']}, test accuracy at early stop "
        f"{100 * info['early_stop_test_accuracy']:.2f}%")
    # The ticket's info with its source (run, level, trial, arm, ...) at the top: what a script asks first.
    result = {"out": str(args.out), "format": args.format,
              "ticket": {**source, **{k: v for k, v in info.items() if k not in ("source", "format")}}, "compact": None}
    if args.format == "safetensors":
        save_ticket(ticket, args.out)
        say(f"export: {args.out}")
        return result
    from lottery.deploy.bench import compact_for_export, example_inputs, model_for, to_onnx

    model_fn, data = model_for(ticket, args.data_dir)
    x = example_inputs(ticket, data)
    form = compact_for_export(ticket, model_fn(), x, args.weights)
    before, after = form.before, form.after
    say(f"compact: {before.parameters:,} -> {after.parameters:,} parameters ({before.nonzero_parameters:,} nonzero "
        f"before), {before.flops:,} -> {after.flops:,} FLOPs per example ({before.nonzero_flops:,} on kept weights)")
    say(f"compact ({form.method}): {form.note}")
    difference = to_onnx(form.model, x, args.out)
    inputs = "test" if data is not None else "random"
    say(f"export: {args.out} (onnxruntime vs PyTorch on 256 {inputs} inputs: max |difference| {difference:.2e})")
    result["compact"] = {"weights": args.weights, "method": form.method, "note": form.note,
                         "before": dataclasses.asdict(before), "after": dataclasses.asdict(after),
                         "onnxruntime_max_difference": difference, "checked_on": f"256 {inputs} inputs"}
    return result


def _bench_inference(args: argparse.Namespace) -> dict | None:
    import torch

    from lottery.deploy.bench import bench_markdown, bench_ticket

    threads = []
    for part in (p.strip() for p in args.threads.split(",")):
        if part == "all":
            threads.append(torch.get_num_threads())
        elif part.isdigit() and int(part) >= 1:
            threads.append(int(part))
        else:
            raise UserError(f"--threads takes thread counts of at least 1 or 'all', comma-separated; "
                            f"got {args.threads!r}")
    result = bench_ticket(args.ticket, threads=threads, data_dir=args.data_dir, tolerance=args.tolerance)
    text = bench_markdown(result)
    if args.out:
        from lottery.storage.files import atomic_write_text

        atomic_write_text(args.out, text + "\n")
    if args.json:
        return {**result, "out": None if args.out is None else str(args.out)}
    print(text)
    return None


def _human(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """print for the human text of a command, nothing under --json (stdout is the JSON document's alone)."""
    return (lambda *_, **__: None) if getattr(args, "json", False) else print


def _presets(args: argparse.Namespace) -> None:
    from lottery.presets import PRESETS

    width = max(len(n) for n in PRESETS)
    for name, preset in PRESETS.items():
        print(f"{name:<{width}}  {preset.summary}")
        print(f"{'':<{width}}  source: {preset.source}")


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send stdout to stderr for the duration, Python's sys.stdout and (where it has one) the descriptor under it."""
    sys.stdout.flush()
    try:
        fd, target = sys.stdout.fileno(), sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # a stream without a descriptor (a test's capture)
        fd = target = None
    saved = os.dup(fd) if fd is not None else None
    if saved is not None:
        os.dup2(target, fd)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, fd)
            os.close(saved)


def _json_document(value: object) -> str:
    """One JSON document: paths as strings, non-finite numbers (a diverged network's) as null, as JSON has none."""
    import json

    def plain(v: object) -> object:
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {str(k): plain(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Path):
            return str(v)
        return v

    return json.dumps(plain(value), indent=2, allow_nan=False)


# Commands that train or evaluate networks split them across the ranks of a torchrun group; the others
# read a finished run and write a little: rank 0 runs them alone.
SPLIT_COMMANDS = ("find", "attack", "noise", "transfer", "stability")


def main(argv: list[str] | None = None) -> int:
    from lottery.ranks import GroupStopped, Ranks, finish_group, join_torchrun_group, leave_group, under_torchrun

    try:
        args = _parser().parse_args(argv)
        if under_torchrun():
            if args.command not in SPLIT_COMMANDS:
                if os.environ["RANK"] != "0":
                    return 0
            else:
                args.device = join_torchrun_group(_device(args.device))
                if not Ranks.current().leader:  # rank 0 prints the results; every rank prints its errors
                    sys.stdout = open(os.devnull, "w")
        command = {"find": _find, "report": _report, "claims": _claims, "compare": _compare,
                   "attack": _attack, "noise": _noise, "transfer": _transfer, "stability": _stability,
                   "export": _export, "bench-inference": _bench_inference, "presets": _presets}[args.command]
        if getattr(args, "json", False):
            with _stdout_to_stderr():  # whatever else writes to stdout on the way (a library, C code) goes to stderr
                result = command(args)
            if result is not None:  # None: a rank other than 0, whose stdout is not the group's
                print(_json_document(result))
        else:
            command(args)
        finish_group()  # a split command's ranks leave together (an error leaves at once, below)
        sys.stdout.flush()  # here, so that a reader gone away (`| head`) is caught below
    except _Done:
        return 0
    except BrokenPipeError:  # the reader of our output closed it: nothing to say, as a shell command would
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's flush goes nowhere
        return 141  # 128 + SIGPIPE, what the shell reports for a command killed by it
    except GroupStopped:
        return 2  # rank 0 printed why
    except UserError as exc:
        ranks = Ranks.current()
        where = f" (rank {ranks.rank} of {ranks.size})" if not ranks.leader else ""
        print(f"lottery: error{where}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # the last net for I/O failures the library did not name itself
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"lottery: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lottery: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        leave_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
