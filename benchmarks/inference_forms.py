"""Which form of a ticket runs fastest, at what accuracy? Tickets of one run at several levels, each in every
form `lottery bench-inference` measures, with one table per thread count across the levels.

    .venv/bin/python benchmarks/inference_forms.py RUN_DIR [--levels 0,1,2] [--trial 0] [--threads 1,all]
        [--tolerance 0.5] [--data-dir DIR] [--out FILE.md]

Each level's ticket (the imp arm) is exported to a temporary file (lottery.deploy.export.export_ticket) and
measured on the run's own test set: latency at batch 1 and throughput at batch 256 (medians of
torch.utils.benchmark at fixed threads, ONNX Runtime sessions at the same intra-op thread count) and test
accuracy, for PyTorch dense, compact and CSR, and the compact form under ONNX Runtime in float32 and int8.
Speed-ups are against PyTorch dense at the same batch and thread count, measured in this one process. Run it on
a quiet machine: the timings are only as steady as the machine. The file states the CPU, thread counts and
library versions at its top.
"""
from __future__ import annotations

import argparse
import json
import importlib.metadata
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lottery.deploy.bench import bench_data, bench_markdown, measure_ticket  # noqa: E402
from lottery.deploy.export import export_ticket  # noqa: E402

# (label in bench-inference's tables, column title): the forms this summary compares.
COLUMNS = [("dense", "dense (PyTorch)"), ("compact", "compact (PyTorch)"), ("ort compact", "compact, ORT fp32"),
           ("ort compact int8", "compact, ORT int8"), ("csr", "CSR (PyTorch)")]


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (platform's answer elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def level_table(data: list[tuple[int, dict]], threads: int) -> list[str]:
    """One row per level at `threads`: each form's accuracy, latency at batch 1 and throughput at the full
    batch, with speed-ups over PyTorch dense."""
    full = data[0][1]["batch"]
    lines = [f"### {threads} thread{'s' if threads > 1 else ''}", "",
             "Each cell: test accuracy; latency at batch 1 in ms (speed-up over dense); throughput at batch "
             f"{full} in examples/s (speed-up). —: not measured (see the ticket's section below).", "",
             "| level | remaining | " + " | ".join(title for _, title in COLUMNS) + " |",
             "| ---: | ---: | " + " | ".join("---" for _ in COLUMNS) + " |"]
    for level, d in data:
        rows = {(r["label"], r["batch"]): r for r in d["forms"] if r["threads"] == threads}
        dense1, dense_full = rows[("dense", 1)], rows[("dense", full)]
        cells = []
        for label, _ in COLUMNS:
            if (label, 1) not in rows:
                cells.append("—")
                continue
            one, many = rows[(label, 1)], rows[(label, full)]
            accuracy = "—" if one["accuracy"] is None else f"{100 * one['accuracy']:.2f}%"
            latency = one["milliseconds"]
            cells.append(f"{accuracy}; {latency:.3f} ({dense1['milliseconds'] / latency:.2f}×); "
                         f"{many['examples_per_second']:,.0f} "
                         f"({many['examples_per_second'] / dense_full['examples_per_second']:.2f}×)")
        lines.append(f"| {level} | {d['percent_remaining']:.1f}% | " + " | ".join(cells) + " |")
    return lines + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--levels", default="0,1")
    parser.add_argument("--trial", type=int, default=0)
    parser.add_argument("--threads", default="1,all", help="comma-separated counts; all: torch.get_num_threads()")
    parser.add_argument("--tolerance", type=float, default=0.5)
    parser.add_argument("--data-dir", type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON (benchmarks/deploy_figure.py)")
    parser.add_argument("--arm", default="imp", help="the arm whose networks are exported (default: the ticket)")
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    counts = list(dict.fromkeys(torch.get_num_threads() if t.strip() == "all" else int(t)
                                for t in args.threads.split(",")))
    data_dir = args.data_dir or common.data_dir()
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            path = export_ticket(args.run_dir, Path(tmp) / f"{args.run_dir.name}-level{level:02d}.safetensors",
                                 level=level, trial=args.trial, arm=args.arm,
                                 command="benchmarks/inference_forms.py")
            measured.append((level, bench_data(measure_ticket(path, counts, data_dir), args.tolerance)))
            print(f"level {level}: measured", file=sys.stderr, flush=True)
    lines = [f"## {args.run_dir.name}: every form at each level", "",
             f"CPU: {cpu_model()} ({os.cpu_count()} logical CPUs); thread counts {', '.join(map(str, counts))}; "
             f"torch {torch.__version__}, onnxruntime {version('onnxruntime')}, "
             f"torch-pruning {version('torch-pruning')}, onnx {version('onnx')}; Python {platform.python_version()}. "
             f"Trial {args.trial}, the {args.arm} arm; accuracy on the test set; tolerance {args.tolerance:g} points.", ""]
    for threads in counts:
        lines += level_table(measured, threads)
    text = "\n".join(lines + [bench_markdown(d) + "\n" for _, d in measured])
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        header = {"run": args.run_dir.name, "arm": args.arm, "trial": args.trial, "cpu": cpu_model(),
                  "threads": counts, "torch": torch.__version__, "onnxruntime": version("onnxruntime")}
        args.json.write_text(json.dumps({**header, "levels": [{"level": level, **d} for level, d in measured]},
                                        indent=1, default=str))


if __name__ == "__main__":
    main()
