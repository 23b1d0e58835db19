"""Accuracy against measured speed, one panel per (model, batch): what makes a ticket faster?

    .venv/bin/python benchmarks/deploy_figure.py MEASURED.json [MEASURED.json ...] --out FIGURE.png

Each input is the `--json` of benchmarks/inference_forms.py for one run (structured or unstructured tickets).
Every point is one ticket (one level) in one form, at 1 thread: x the speed-up over the dense network (PyTorch,
level 0 of the same file, same batch), y its test accuracy. The forms drawn: the compact form in PyTorch and in
ONNX Runtime float32 and int8, and CSR; the dense network itself is the black dot at 1×. Runs of the same model share a panel.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

FORMS = {  # label in bench-inference's rows -> (legend, marker, colour): one colour per form in every run
    "compact": ("compact, PyTorch", "s", "tab:orange"),
    "ort compact": ("compact, ONNX Runtime fp32", "D", "tab:green"),
    "ort compact int8": ("compact, ONNX Runtime int8", "*", "tab:red"),
    "csr": ("CSR, PyTorch", "x", "tab:purple"),
}
TICKS = [0.1, 0.3, 1, 3, 10]


def points(measured: dict, label: str, batch: int) -> list[tuple[float, float, float]]:
    """(speed-up over level 0's PyTorch dense, accuracy %, percent remaining) per level, at 1 thread."""
    def row(level: dict, form: str) -> dict | None:
        return next((r for r in level["forms"] if r["label"] == form and r["batch"] == batch and r["threads"] == 1),
                    None)
    base = row(measured["levels"][0], "dense")
    out = []
    for level in measured["levels"]:
        r = row(level, label)
        if r is None or r.get("accuracy") is None or base is None:
            continue
        out.append((base["milliseconds"] / r["milliseconds"], 100 * r["accuracy"], level["percent_remaining"]))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("measured", type=Path, nargs="+")
    parser.add_argument("--titles", help="comma-separated, one per input: its legend prefix")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    runs = [json.loads(p.read_text()) for p in args.measured]
    titles = args.titles.split(",") if args.titles else [r["run"] for r in runs]
    models = list(dict.fromkeys(r["run"].rsplit("-", 1)[0] for r in runs))
    figure, axes = plt.subplots(len(models), 2, figsize=(11, 4.2 * len(models)), squeeze=False)
    kinds = list(dict.fromkeys(titles))  # one line style per title (e.g. structured solid, unstructured dashed)
    styles = ["-", "--", ":"]
    for row, model in enumerate(models):
        for col, batch in enumerate((1, 256)):
            ax = axes[row][col]
            first = True
            for measured, title in zip(runs, titles):
                if measured["run"].rsplit("-", 1)[0] != model:
                    continue
                style = styles[kinds.index(title) % len(styles)]
                for label, (legend, marker, colour) in FORMS.items():
                    found = points(measured, label, batch)
                    if not found:
                        continue
                    x, y, _ = zip(*found)
                    ax.plot(x, y, marker=marker, color=colour, linestyle=style,
                            label=f"{title}: {legend}")
                dense = points(measured, "dense", batch)[:1]
                if dense and first:
                    ax.plot([1.0], [dense[0][1]], marker="o", color="black", linestyle="", markersize=8,
                            label="dense network, PyTorch (level 0)")
                first = False
            ax.axvline(1.0, color="grey", linewidth=0.8)
            ax.axvline(3.0, color="grey", linewidth=0.8, linestyle=":")
            ax.set_xscale("log")
            ax.set_xticks(TICKS, [f"{t:g}×" for t in TICKS])
            ax.minorticks_off()
            ax.set_xlabel(f"speed-up over dense (PyTorch), batch {batch}, 1 thread")
            ax.set_ylabel("test accuracy at early stop (%)")
            ax.set_title(f"{model}, batch {batch}")
            ax.grid(alpha=0.3)
        axes[row][1].legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
