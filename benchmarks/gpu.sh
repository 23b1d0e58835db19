#!/usr/bin/env bash
# Everything to check and measure on a GPU, in one short run (about 5-8 minutes on an H100/H200):
#   1. the tests that take a device, on CUDA (pytest --device cuda);
#   2. every preset end to end on CUDA (one level, a few iterations) and the experiments on one run;
#   3. one run split over every GPU with torchrun (NCCL), checked equal to one process;
#   4. speed: LeNet-300-100 ours vs a plain loop (train_speed.py), Conv-2 and ResNet-20 (conv_speed.py),
#      and throughput vs replicas per pass for the three networks, float32 and bf16 (replicas.py).
# Writes the logs and a markdown summary to OUT (default: $OUT, else gpu-out/). Dry-run on a CPU with
#   DEVICE=cpu QUICK=1 benchmarks/gpu.sh
# (same steps, tiny sizes). Data: ../shared/data, or LOTTERY_DATA.
set -uo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-gpu-out}
QUICK=${QUICK:-0}
PY=${PY:-.venv/bin/python}
LOTTERY=${LOTTERY:-.venv/bin/lottery}
DATA=${LOTTERY_DATA:-../shared/data}
export LOTTERY_DATA=$DATA LOTTERY_TEST_DATA=$DATA
mkdir -p "$OUT"
SUMMARY=$OUT/summary.md
failures=0

step() {  # step NAME COMMAND...: run, log to OUT/NAME.log, record pass/fail and seconds
    local name=$1; shift
    local start=$SECONDS
    echo "== $name: $*"
    if "$@" >"$OUT/$name.log" 2>&1; then status=ok; else status="FAILED ($?)"; failures=$((failures + 1)); fi
    echo "| $name | $status | $((SECONDS - start)) s |" >>"$SUMMARY"
    tail -n 3 "$OUT/$name.log"
}

if [ "$QUICK" = 1 ]; then
    ITERS=4; REPLICAS=1,2,4; SWEEP_MODELS=lenet300; PRESET_ITERS=4
    PRESETS=(lenet300-mnist conv2-cifar10)
else
    ITERS=20; REPLICAS=1,2,4,8,16,32,64; SWEEP_MODELS=lenet300,conv2,resnet20; PRESET_ITERS=20
    PRESETS=($($LOTTERY presets 2>/dev/null | awk '/^[a-z0-9]/ {print $1}'))
fi

{
    echo "# GPU checks and benchmarks ($(date -u +%F))"
    echo
    echo "device: $($PY -c "import torch; print(torch.cuda.get_device_name() if '$DEVICE'.startswith('cuda') else 'cpu')" 2>&1);" \
         "torch $($PY -c 'import torch; print(torch.__version__)')"
    echo
    echo "| step | result | wall |"
    echo "|---|---|---|"
} >"$SUMMARY"

step tests "$PY" -m pytest -q -x --device "$DEVICE" tests
for preset in "${PRESETS[@]}"; do
    step "find-$preset" "$LOTTERY" find "$preset" --levels 1 --trials 1 --iterations "$PRESET_ITERS" \
        --device "$DEVICE" --data-dir "$DATA" --out "$OUT/runs" --no-progress --report
done
run=$(ls -d "$OUT"/runs/lenet300-mnist-* 2>/dev/null | head -1)
if [ -n "$run" ]; then
    step noise "$LOTTERY" noise "$run" --device "$DEVICE" --data-dir "$DATA" --no-progress
    step attack "$LOTTERY" attack "$run" --device "$DEVICE" --data-dir "$DATA" --examples 500 --steps 3 --no-progress
    step transfer "$LOTTERY" transfer "$run" --to fashion-mnist --device "$DEVICE" --data-dir "$DATA" --no-progress
fi
# torchrun on every GPU of the machine (NCCL needs one GPU per rank: skipped on a one-GPU machine)
GPUS=$($PY -c "import torch; print(torch.cuda.device_count() if '$DEVICE'.startswith('cuda') else 2)")
if [ "$GPUS" -ge 2 ]; then
    step distributed "$PY" benchmarks/distributed.py --device "$DEVICE" --processes "$GPUS" --repeats 1 \
        --iterations $((ITERS * 25))
fi
step train-speed "$PY" benchmarks/train_speed.py --device "$DEVICE" --replicas 8,16,64 --iterations $((ITERS * 25))
step conv-speed "$PY" benchmarks/conv_speed.py --device "$DEVICE" --replicas 16 --iterations "$ITERS" \
    --batching auto,vmap
step replicas "$PY" benchmarks/replicas.py --device "$DEVICE" --models "$SWEEP_MODELS" --replicas "$REPLICAS" \
    --iterations "$ITERS" --out "$OUT"

{
    echo
    for log in train-speed conv-speed distributed; do
        [ -f "$OUT/$log.log" ] || continue
        echo "## $log"; echo; echo '```'; cat "$OUT/$log.log"; echo '```'; echo
    done
    [ -f "$OUT/replicas.md" ] && cat "$OUT/replicas.md"
} >>"$SUMMARY"
echo "summary: $SUMMARY ($failures failed)"
exit $((failures > 0))
