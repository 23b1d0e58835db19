"""Does sparsity pay at inference? Tickets of one run at several levels, each timed dense, compact, CSR
and BSR (lottery bench-inference), with one summary table across the levels.

    .venv/bin/python benchmarks/sparse_inference.py RUN_DIR [--levels 0,7,12,15,18] [--trial 0]
        [--threads 1] [--out FILE.md]

Each level's ticket (the imp arm) is exported to a temporary file and measured on the run's own test
inputs: latency at batch 1, throughput at batch 256 (torch.utils.benchmark medians, fixed threads),
the bytes of each form's weights, outputs checked against dense, and per layer the density below which
CSR / BSR beat dense. Run it on a quiet machine: the timings are only as steady as the machine.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

from lottery.deploy.bench import measure_ticket, ticket_markdown  # noqa: E402
from lottery.deploy.export import export_ticket  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--levels", default="0,7,12,15,18")
    parser.add_argument("--trial", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    measured = []
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            path = export_ticket(args.run_dir, Path(tmp) / f"{args.run_dir.name}-level{level:02d}.safetensors",
                                 level=level, trial=args.trial, command="benchmarks/sparse_inference.py")
            measured.append(measure_ticket(path, args.threads, common.data_dir()))
            print(f"level {level}: measured", file=sys.stderr, flush=True)
    lines = [f"## {args.run_dir.name}: every form at each level ({args.threads} thread(s))", "",
             "| level | remaining | params (nonzero) | compact params | dense b1 ms | compact b1 ms | CSR b1 ms | "
             "BSR b1 ms | dense b256 ex/s | compact b256 ex/s | CSR b256 ex/s | BSR b256 ex/s | dense bytes | CSR bytes |",
             "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for level, m in zip(levels, measured):
        forms = {r["form"]: r for r in m["forms"]}
        lines.append(f"| {level} | {m['info']['percent_remaining']:.1f}% | {m['before'].nonzero_parameters:,} | "
                     f"{m['after'].parameters:,} | "
                     + " | ".join(f"{forms[f]['latency_ms']:.3f}" for f in ("dense", "compact", "csr", "bsr")) + " | "
                     + " | ".join(f"{forms[f]['throughput']:,.0f}" for f in ("dense", "compact", "csr", "bsr")) + " | "
                     f"{forms['dense']['weight_bytes']:,} | {forms['csr']['weight_bytes']:,} |")
    text = "\n".join(lines + [""] + [ticket_markdown(m) + "\n" for m in measured])
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
