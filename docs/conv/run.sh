#!/bin/bash
# The evidence for docs/conv.md (Conv-2 tickets on CIFAR-10) and for the Conv-2 part of docs/rewinding.md,
# on the project's 2-core CPU. Each step resumes where it stopped: after a kill, run this again.
# Costs here: the find about 33 min per level (4 networks x 5,000 iterations), 12 levels; the stability
# sweep (trial 0, the dense net, the 8.8% ticket and an 8.8% random mask, k = 0, 100, 500, 2000, two copies
# each) about 3 h.
set -euo pipefail
cd "$(dirname "$0")/../.."
run=runs/conv2-cifar10-e0840cc261
common="--data-dir ../shared/data --no-progress"
.venv/bin/lottery find conv2-cifar10 --trials 2 --levels 11 --iterations 5000 --precision bf16 --out runs --checkpoint-seconds 120 $common
.venv/bin/lottery report "$run"
mkdir -p docs/conv2-cifar10-5k
cp "$run"/{config.toml,run.json,results.csv} "$run"/report/* docs/conv2-cifar10-5k/
.venv/bin/lottery stability "$run" --levels 0,11 --arms imp,random --trials 0 --alphas 11 $common
mkdir -p docs/conv2-cifar10-5k/stability
cp "$run"/stability/fresh-optimizer/{stability.csv,paths.csv,stability.md,*.png} docs/conv2-cifar10-5k/stability/
