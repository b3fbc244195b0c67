#!/usr/bin/env bash
# The converged-regime study of docs/results/fashion_mnist_converged.md, CPU only, in phases:
#
#   bash scripts/fashion_mnist_converged_study.sh teacher   # the first study's resnet14 teacher (committed)
#   bash scripts/fashion_mnist_converged_study.sh pilot     # vanilla and KD, fresh seeds 100-103: curves, seed std
#   bash scripts/fashion_mnist_converged_study.sh main      # the pre-registered comparisons (design: section 1)
#   bash scripts/fashion_mnist_converged_study.sh confirm   # the centred-retrieval confirmation on fresh seeds
#   bash scripts/fashion_mnist_converged_study.sh report    # tables, paired tests and figures
#
# Students train on 500 class-balanced Fashion-MNIST images for 150 epochs, until they fit
# them. Every phase is a resumable sweep: run it again and it continues; two copies of the same
# phase side by side share its runs (one torch thread each, for 2 cores). Runs land in
# ./output/fmnist_converged (the pilot in ./output/fmnist_converged_pilot).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || source scripts/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C=configs/fashion_mnist_converged
S="python3 tools/sweep.py"
phase=${1:?"usage: $0 teacher|pilot|main|confirm|report"}
case "$phase" in
  teacher)
    bash scripts/fashion_mnist_study.sh teacher ;;
  pilot)
    $S --seeds 100 101 102 103 --cfg $C/vanilla/res8.yaml $C/kd/res14_res8.yaml LOG.PREFIX ./output/fmnist_converged_pilot
    $S --seeds 100 101 --cfg $C/vanilla/wrn16_1.yaml $C/kd/res14_wrn16_1.yaml LOG.PREFIX ./output/fmnist_converged_pilot ;;
  *) echo "error: unknown phase '$phase'; expected teacher|pilot|main|confirm|report" >&2; exit 2 ;;
esac
