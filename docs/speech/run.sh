#!/bin/bash
# The evidence for docs/speech.md, on the project's 2-core CPU (one run at a time, or two at one thread each).
cd "$(dirname "$0")/../.."
common="--data-dir ../shared/data --out runs/speech --no-progress"
.venv/bin/lottery find fsdd-mlp $common          # the dataset's split: 3 trials, 16 levels (10 min)
.venv/bin/lottery find fsdd-cnn $common          # 3 trials, 14 levels (~35 min)
for s in george jackson lucas nicolas theo yweweler; do   # each speaker held out: 2 trials, 10 levels (to 10.8%)
  OMP_NUM_THREADS=1 .venv/bin/lottery find fsdd-mlp --set data.speakers_out=$s --trials 2 --levels 10 $common
done
.venv/bin/python docs/speech/make_tables.py runs/speech ../shared/data > docs/speech/held_out_speakers.md
