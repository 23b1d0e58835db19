"""Throughput against replicas per pass, on this device: how many networks one pass should train.

For LeNet-300-100 (MNIST), Conv-2 and ResNet-20 (CIFAR-10), in float32 and bf16: replica-iterations per
second of our StackedTrainer (training steps only, masks at level 3 of the ladder, each replica its own
data stream) at 1, 2, 4, ... replicas, and of a plain loop training one network at a time (the same
work, see conv_speed.py). Writes replicas.csv, replicas.md and replicas.png to --out. The sizing rule
(lottery.training.sizing.SPEED_CAP) comes from where the curve flattens.

    .venv/bin/python benchmarks/replicas.py [--device cpu|cuda] [--models lenet300,conv2,resnet20]
        [--precisions float32,bf16] [--replicas 1,2,4,8,16,32,64] [--iterations 20] [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
import conv_speed  # noqa: E402

import lottery  # noqa: E402

PRESETS = {"lenet300": "lenet300-mnist", "conv2": "conv2-cifar10", "resnet20": "resnet20-cifar10"}


def dataset(model: str, device: str) -> lottery.Dataset:
    if model == "lenet300":
        return lottery.load_dataset("mnist", common.data_dir(), val_size=5000).to(device)
    return conv_speed.cifar10(device)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", default="lenet300,conv2,resnet20")
    parser.add_argument("--precisions", default="float32,bf16")
    parser.add_argument("--replicas", default="1,2,4,8,16,32,64")
    parser.add_argument("--iterations", type=int, default=20, help="timed steps per point (after 3 of warm-up)")
    parser.add_argument("--out", type=Path, default=Path("replicas-out"))
    args = parser.parse_args()
    device, counts = args.device, [int(r) for r in args.replicas.split(",")]
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else f"cpu, {torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}", flush=True)
    rows = []
    for model_name in args.models.split(","):
        data = dataset(model_name, device)
        for precision in args.precisions.split(","):
            config = lottery.get_preset(PRESETS[model_name])
            config.train.precision = precision
            fn = lambda n=config.model: lottery.build_model(n, data.input_shape, data.num_classes)  # noqa: E731
            plain = conv_speed.plain(config, fn, data, 1, args.iterations, device)
            for replicas in counts:
                try:
                    seconds = conv_speed.ours(config, fn, data, replicas, args.iterations, "auto", device)
                except (RuntimeError, MemoryError) as exc:  # out of memory ends this curve
                    print(f"{model_name} {precision} R={replicas}: {str(exc).splitlines()[0][:80]}", flush=True)
                    break
                finally:
                    if device.startswith("cuda"):
                        torch.cuda.empty_cache()
                row = {"model": model_name, "precision": precision, "replicas": replicas,
                       "ours_per_s": 1 / seconds, "plain_per_s": 1 / plain, "speedup": plain / seconds}
                rows.append(row)
                print(f"{model_name:<9} {precision:<8} R={replicas:>3}: {row['ours_per_s']:9.1f} replica-it/s "
                      f"(plain {row['plain_per_s']:.1f}/s, {row['speedup']:.2f}x)", flush=True)
    write(rows, args.out, name)


def write(rows: list[dict], out: Path, device_name: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "replicas.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"Throughput vs replicas per pass on {device_name} (replica-iterations/s; speed-up vs one network "
             "at a time in a plain loop)", "", "| model | precision | replicas | ours /s | plain /s | speed-up |",
             "|---|---|---:|---:|---:|---:|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['replicas']} | {r['ours_per_s']:.1f} | {r['plain_per_s']:.1f} | "
              f"{r['speedup']:.2f}x |" for r in rows]
    (out / "replicas.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in sorted({(r["model"], r["precision"]) for r in rows}):
        points = [r for r in rows if (r["model"], r["precision"]) == key]
        ax.plot([r["replicas"] for r in points], [r["speedup"] for r in points], marker="o", label=" ".join(key))
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("replicas per pass")
    ax.set_ylabel("throughput / plain loop's")
    ax.set_title(f"Training throughput vs replicas per pass\n{device_name}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "replicas.png", dpi=120)
    print(f"wrote {out}/replicas.csv, replicas.md, replicas.png")


if __name__ == "__main__":
    main()
