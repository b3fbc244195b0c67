#!/usr/bin/env bash
# The Fashion-MNIST study of docs/results/fashion_mnist.md, CPU only, in phases:
#
#   bash scripts/fashion_mnist_study.sh teacher       # resnet14 on all 60 000 images (once)
#   bash scripts/fashion_mnist_study.sh pilot         # vanilla and KD, seeds 100-103: the seed std
#   bash scripts/fashion_mnist_study.sh main          # the pre-registered comparison, seeds 0-7 / 0-4
#   bash scripts/fashion_mnist_study.sh sensitivity   # Figures 4 and 5: one ICKD.* key at a time, seeds 0-1
#   bash scripts/fashion_mnist_study.sh fig2          # IC-KD vs IC-KD-all on two pairs, seeds 0-1
#   bash scripts/fashion_mnist_study.sh variants      # labelled variants of our choices (ICKD.QUERY clean, gamma_picd 2)
#   bash scripts/fashion_mnist_study.sh paradigms     # online ICKD vs DML, teacher-free vs vanilla, seeds 0-4
#   bash scripts/fashion_mnist_study.sh report        # tables, paired tests and figures
#
# Every phase is a resumable sweep: run it again and it continues; two copies of the same
# phase side by side share its runs (one torch thread each, for 2 cores). Runs land in
# ./output/fmnist_study (sensitivity and Figure 2 in their own folders, so they do not mix
# into the main table's columns).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || source scripts/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C=configs/fashion_mnist_study
S="python3 tools/sweep.py"
phase=${1:?"usage: $0 teacher|pilot|main|sensitivity|fig2|variants|paradigms|report"}
case "$phase" in
  teacher)  # trained once (59 min on a busy 2-core VM); its weights are committed beside its summary
    bash scripts/study_teacher.sh $C/teacher/res14.yaml output/fmnist_study/teacher_res14 \
      docs/results/runs/fmnist_study/teacher_res14 ;;
  pilot)
    $S --seeds 100 101 102 103 --cfg $C/vanilla/res8.yaml $C/kd/res14_res8.yaml LOG.PREFIX ./output/fmnist_pilot ;;
  main)  # 8 seeds where the pre-registered comparisons need them, 5 for the rest (docs/results/fashion_mnist.md)
    $S --seeds 0 1 2 3 4 5 6 7 --cfg $C/vanilla/res8.yaml $C/kd/res14_res8.yaml $C/ickd_kd/res14_res8.yaml \
      $C/dkd/res14_res8.yaml $C/ickd_dkd/res14_res8.yaml
    $S --seeds 0 1 2 3 4 --cfg $C/ickd/res14_res8.yaml $C/ickd_all_kd/res14_res8.yaml $C/crd/res14_res8.yaml ;;
  sensitivity)
    for override in "ICKD.BETA1 0.0" "ICKD.BETA1 0.25" "ICKD.BETA1 1.0" "ICKD.K 1" "ICKD.K 4" "ICKD.K 32" \
        "ICKD.TAU 0.005" "ICKD.TAU 0.02" "ICKD.TAU 0.5" "ICKD.BETA2 0.25" "ICKD.BETA2 0.5" "ICKD.BETA2 2.0" \
        "ICKD.PICD_WEIGHT 0.25" "ICKD.PICD_WEIGHT 2.0" "ICKD.PICD_WEIGHT 4.0" \
        "ICKD.NICD_WEIGHT 0.0" "ICKD.NICD_WEIGHT 0.5" "ICKD.NICD_WEIGHT 1.0"; do
      $S --seeds 0 1 --cfg $C/ickd_kd/res14_res8.yaml LOG.PREFIX ./output/fmnist_sensitivity $override
    done ;;
  fig2)  # IC-KD-all as an ICKD.ALL_SAME_CLASS override, so leaderboard --sensitivity pairs it with IC-KD
    $S --seeds 0 1 --cfg $C/ickd_kd/res14_res8.yaml $C/ickd_kd/res14_wrn16_1.yaml LOG.PREFIX ./output/fmnist_fig2 \
      ICKD.ALL_SAME_CLASS True
    $S --seeds 0 1 --cfg $C/ickd_kd/res14_wrn16_1.yaml $C/kd/res14_wrn16_1.yaml LOG.PREFIX ./output/fmnist_fig2 ;;
  variants)  # issue 14 section 6: labelled variants of our choices, paired with the main ICKD+KD and KD runs
    # seeds 5-7 added after seeds 0-4 showed a difference (docs/results/fashion_mnist.md section 9)
    $S --seeds 0 1 2 3 4 5 6 7 --cfg $C/ickd_kd/res14_res8.yaml LOG.PREFIX ./output/fmnist_variants ICKD.QUERY clean
    $S --seeds 0 1 --cfg $C/ickd_kd/res14_wrn16_1.yaml LOG.PREFIX ./output/fmnist_variants ICKD.QUERY clean  # a second pair
    # the sensitivity grid's best point (gamma_picd 2, seeds 0-1), confirmed on seeds it was not chosen on
    $S --seeds 2 3 4 5 6 --cfg $C/ickd_kd/res14_res8.yaml LOG.PREFIX ./output/fmnist_variants ICKD.PICD_WEIGHT 2.0
    # online control, added after comparison 6: PICD's target is the sample's own teacher prediction
    # (beta1 0) and NICD is off, i.e. DML plus one more KD term of PICD's weight: retrieval or more KD?
    $S --seeds 0 1 2 3 4 --cfg $C/ickd_online/res14_res8.yaml LOG.PREFIX ./output/fmnist_variants \
      ICKD.BETA1 0.0 ICKD.NICD_WEIGHT 0.0
    # the clean query confirmed on the second pair with fresh seeds (design: fashion_mnist.md section 9)
    for seed in 2 3 4 5 6; do
      $S --seeds $seed --cfg $C/ickd_kd/res14_wrn16_1.yaml LOG.PREFIX ./output/fmnist_variants
      $S --seeds $seed --cfg $C/ickd_kd/res14_wrn16_1.yaml LOG.PREFIX ./output/fmnist_variants ICKD.QUERY clean
    done ;;
  paradigms)  # collected into runs/fmnist_paradigms: 15 epochs, not the main table's budget. Online and DML
    # seed by seed, so that a phase stopped early leaves paired runs
    $S --seeds 0 1 2 3 4 --cfg $C/ickd_teacher_free/res8.yaml
    for seed in 0 1 2 3 4; do $S --seeds $seed --cfg $C/ickd_online/res14_res8.yaml $C/dml/res14_res8.yaml; done ;;
  report)  # from the committed summaries (collect finished runs first: docs/results/fashion_mnist.md section 2);
    # the commands are listed once, in $C/report.txt, which tests/test_committed_results.py also reads
    bash scripts/run_report.sh $C/report.txt ;;
  *) echo "error: unknown phase '$phase'; expected teacher|pilot|main|sensitivity|fig2|variants|paradigms|report" >&2; exit 2 ;;
esac
