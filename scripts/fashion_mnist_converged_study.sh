#!/usr/bin/env bash
# The converged-regime study of docs/results/fashion_mnist_converged.md, CPU only, in phases:
#
#   bash scripts/fashion_mnist_converged_study.sh teacher   # the first study's resnet14 teacher (committed)
#   bash scripts/fashion_mnist_converged_study.sh pilot     # vanilla and KD, fresh seeds 100-103: curves, seed std
#   bash scripts/fashion_mnist_converged_study.sh main      # the pre-registered comparisons (design: section 1)
#   bash scripts/fashion_mnist_converged_study.sh main PART # one part of them, in the design's order:
#                                                           #   kd (resnet8 KD, ICKD+KD, LS), centered (resnet8 ICKD+KD
#                                                           #   centred), dkd (resnet8 DKD, ICKD+DKD), wrn16_1 (all five)
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
OUT=./output/fmnist_converged
MAIN_SEEDS="0 1 2 3 4 5 6 7"
CONFIRM_SEEDS="200 201 202 203 204 205 206 207"
phase=${1:?"usage: $0 teacher|pilot|main [kd|centered|dkd|wrn16_1]|confirm|report"}

# A fresh clone continues where the committed summaries end (the sweep skips finished runs).
bash scripts/restore_runs.sh $OUT docs/results/runs/fmnist_converged
bash scripts/restore_runs.sh ./output/fmnist_converged_pilot docs/results/runs/fmnist_converged_pilot

# Seed by seed, so an interrupted phase leaves whole pairs rather than whole methods.
by_seed() {  # by_seed "SEEDS" CFG... [-- KEY VALUE...]
  local seeds=$1; shift
  local cfgs=() opts=()
  while [ $# -gt 0 ] && [ "$1" != "--" ]; do cfgs+=("$1"); shift; done
  [ $# -gt 0 ] && { shift; opts=("$@"); }
  for seed in $seeds; do
    $S --seeds "$seed" --cfg "${cfgs[@]}" LOG.PREFIX $OUT "${opts[@]}"
  done
}
main_part() {
  case "$1" in
    kd) by_seed "$MAIN_SEEDS" $C/kd/res14_res8.yaml $C/ickd_kd/res14_res8.yaml $C/ls/res8.yaml ;;
    centered) by_seed "$MAIN_SEEDS" $C/ickd_kd/res14_res8.yaml -- ICKD.SIMILARITY centered ;;
    dkd) by_seed "$MAIN_SEEDS" $C/dkd/res14_res8.yaml $C/ickd_dkd/res14_res8.yaml ;;
    wrn16_1) by_seed "$MAIN_SEEDS" $C/kd/res14_wrn16_1.yaml $C/ickd_kd/res14_wrn16_1.yaml $C/ls/wrn16_1.yaml \
               $C/dkd/res14_wrn16_1.yaml $C/ickd_dkd/res14_wrn16_1.yaml ;;
    *) echo "error: unknown part '$1' of phase main; expected kd|centered|dkd|wrn16_1" >&2; exit 2 ;;
  esac
}
case "$phase" in
  teacher)
    bash scripts/fashion_mnist_study.sh teacher ;;
  pilot)
    $S --seeds 100 101 102 103 --cfg $C/vanilla/res8.yaml $C/kd/res14_res8.yaml LOG.PREFIX ./output/fmnist_converged_pilot
    $S --seeds 100 101 --cfg $C/vanilla/wrn16_1.yaml $C/kd/res14_wrn16_1.yaml LOG.PREFIX ./output/fmnist_converged_pilot ;;
  main)
    for part in ${2:-kd centered dkd wrn16_1}; do main_part "$part"; done ;;
  confirm)
    # Only if comparison 5 (resnet8) favoured centred retrieval: the design's rule (a).
    by_seed "$CONFIRM_SEEDS" $C/ickd_kd/res14_wrn16_1.yaml
    by_seed "$CONFIRM_SEEDS" $C/ickd_kd/res14_wrn16_1.yaml -- ICKD.SIMILARITY centered ;;
  report)  # from the committed summaries (collect finished runs first:
    #   python3 tools/collect_runs.py output/fmnist_converged docs/results/runs/fmnist_converged);
    # the commands are listed once, in $C/report.txt, which tests/test_committed_results.py also reads
    bash scripts/run_report.sh $C/report.txt ;;
  *) echo "error: unknown phase '$phase'; expected teacher|pilot|main|confirm|report" >&2; exit 2 ;;
esac
