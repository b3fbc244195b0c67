#!/usr/bin/env bash
# The issue-6 targets on one GPU, in one go: writes one JSON record per benchmark, plus its
# printed table, into OUT_DIR (default ./bench_gpu), and stops at the first failure. Not yet
# run on a GPU, so its duration there is unmeasured; it was written to fit one short session.
#
#   bash scripts/bench_gpu.sh [OUT_DIR]
#
#   1. training step, resnet32x4 -> resnet8x4, batch 64: float32, then AMP + channels-last;
#   2. offline bank build, resnet32x4 teacher over 50 000 samples (CIFAR-100's size);
#   3. retrieval on cuda: 50 000 and 1 280 000 rows, D 256 and 2048, batch 64 and 256,
#      float32 and float16 (the ImageNet target is the 1 280 000 x 2048, batch 256, fp16 row).
#
# BENCH_DEVICE=cpu runs the same commands on the CPU at small sizes, to check the script
# itself on a machine without a GPU (its numbers say nothing about the targets; 1.5 minutes
# on the 2-core development machine; tests/test_bench.py runs it).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench_gpu}"
device="${BENCH_DEVICE:-cuda}"
mkdir -p "$out"

if [ "$device" = "cuda" ]; then
  python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else "bench_gpu.sh: torch sees no CUDA device; run it on a GPU machine (or BENCH_DEVICE=cpu to check the script)")'
  python3 -c 'import torch; print(torch.cuda.get_device_name(0))'
  nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv 2>/dev/null > "$out/nvidia_smi.csv" || true
  step=(--repeats 30) bank=(--bank-samples 50000) sizes=1280000,50000 retrieval=(--repeats 10)
else
  step=(--warmup 0 --repeats 1 --batch-size 4 --methods KD,ICKD+KD) bank=(--bank-samples 256 --warmup 0 --repeats 1)
  sizes=5000 retrieval=(--warmup 0 --repeats 1)
fi

run() {  # run NAME ARGS...: the benchmark's table to NAME.txt, its record to NAME.json
  local name=$1; shift
  echo "== $name: python3 tools/bench.py $*"
  python3 tools/bench.py "$@" --json "$out/$name.json" | tee "$out/$name.txt"
}

run step_fp32 --only step --device "$device" --pair res32x4_res8x4 "${step[@]}"
run step_amp_channels_last --only step --device "$device" --pair res32x4_res8x4 --amp --channels-last "${step[@]}"
run bank --only bank --device "$device" --pair res32x4_res8x4 "${bank[@]}"
run retrieval --only retrieval --retrieval-devices "$device" --sizes "$sizes" --dims 256,2048 \
  --batches 64,256 --dtypes fp32,fp16 "${retrieval[@]}"
echo "records in $out/"
