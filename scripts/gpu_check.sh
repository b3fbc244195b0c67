#!/usr/bin/env bash
# Correctness of the CUDA paths first, then speed, on one GPU machine; every record goes under
# one folder (default ./gpu_check). Written to take about 8 minutes of checks on one modern
# GPU before the benchmark; not yet run on a GPU, so that is an estimate.
#
#   bash scripts/gpu_check.sh [OUT_DIR]                  # on a machine with CUDA
#   bash scripts/gpu_check.sh --cpu-selftest [OUT_DIR]   # the script itself, on the CPU
#
#   1. numerics.txt: the tests marked `numerics` with CUDA visible (the CUDA-only ones, e.g. the
#      fp16/bf16 bank retrieval against the CPU, run instead of being skipped);
#   2. compare/: tools/gpu_check.py: a few training steps of every distiller and of ICKD on each
#      base on CUDA against the same steps on the CPU (float32, TF32 off); AMP + channels-last;
#      float16 and bfloat16 banks (the native half product with float32 output); tolerances in
#      its docstring; compare.json holds every case;
#   3. the same (ICKD+KD, CRD) inside a one-process NCCL group with the host's DDP path on;
#   4. sharded_bank_nccl.txt: ICKD with ICKD.BANK.SHARDED under torchrun, NCCL, 2 processes,
#      where two GPUs are visible (else recorded as skipped);
#   5. bench/: scripts/bench_gpu.sh (speed only).
# summary.txt lists each step and its status; the exit status is 1 if any check failed.
#
# Without CUDA it says so and exits 0. --cpu-selftest runs steps 2 and 3 on the CPU against the
# CPU (a few methods, a gloo group) through the same code, to test the script on any machine
# (tests/test_gpu_check.py); its numbers say nothing about a GPU.
set -uo pipefail
cd "$(dirname "$0")/.."
mode=cuda
out=gpu_check
for arg in "$@"; do
  case "$arg" in
    --cpu-selftest) mode=cpu ;;
    -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
    *) out=$arg ;;
  esac
done
python=${PYTHON:-python3}

if [ "$mode" = cuda ] && ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu_check.sh: torch sees no CUDA device here; nothing to check (run it on a GPU machine; --cpu-selftest checks the script itself)"
  exit 0
fi
mkdir -p "$out"
summary="$out/summary.txt"
: > "$summary"
failed=0

step() {  # step NAME LOG COMMAND...: run it, its output to LOG and the terminal, its status to summary.txt
  local name=$1 log=$2; shift 2
  local start=$SECONDS
  echo "== $name: $*"
  "$@" 2>&1 | tee "$log"
  local status=${PIPESTATUS[0]}
  local verdict=ok
  if [ "$status" -ne 0 ]; then verdict="FAILED (exit $status)"; failed=1; fi
  echo "$name: $verdict in $((SECONDS - start)) s; log $log" | tee -a "$summary"
}

if [ "$mode" = cuda ]; then
  "$python" - > "$out/environment.txt" 2>&1 <<'EOF'
import platform, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
for i in range(torch.cuda.device_count()):
    print(f"gpu {i}:", torch.cuda.get_device_name(i), torch.cuda.get_device_capability(i))
print("python", platform.python_version())
EOF
  nvidia-smi >> "$out/environment.txt" 2>&1 || true
  cat "$out/environment.txt"
  step numerics "$out/numerics.txt" "$python" -m pytest -q -n 0 -m numerics -p no:cacheprovider -rs tests
  step compare "$out/compare.txt" "$python" tools/gpu_check.py --device cuda --reference cpu --out "$out/compare" --ddp nccl
  gpus=$("$python" -c 'import torch; print(torch.cuda.device_count())')
  if [ "$gpus" -ge 2 ]; then
    step sharded_bank_nccl "$out/sharded_bank_nccl.txt" "$python" -m torch.distributed.run --standalone --nproc_per_node=2 \
      tools/train.py --cfg configs/fashion_mnist/ickd_kd/res14_res8.yaml ICKD.BANK.SHARDED True \
      DATASET.ROOT "$out/compare/data" DATASET.TRAIN_SUBSET 0 DATASET.NUM_WORKERS 0 SOLVER.EPOCHS 1 SOLVER.BATCH_SIZE 16 \
      DISTILLER.TEACHER_WEIGHTS "$out/compare/teacher/res14.pth" ICKD.K 2 ICKD.N 2 ICKD.BANK.USE_CACHE False \
      LOG.PREFIX "$out/sharded_runs"
  else
    echo "sharded_bank_nccl: skipped ($gpus GPU visible; it needs 2)" | tee -a "$summary"
  fi
  step bench "$out/bench.txt" bash scripts/bench_gpu.sh "$out/bench"
else
  step compare "$out/compare.txt" "$python" tools/gpu_check.py --device cpu --reference cpu --out "$out/compare" \
    --methods KD,KDSVD --ickd-bases KD --amp-methods KD --bank-dtypes float16 --ddp gloo
fi
echo "gpu_check.sh: records in $out/ (summary.txt)"
cat "$summary"
exit $failed
