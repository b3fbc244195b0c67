#!/usr/bin/env bash
# Segmentation on Fashion-MNIST scenes, CPU only, in phases:
#
#   bash scripts/fashion_mnist_scenes_study.sh teacher   # the DeepLabV3 CIFAR-ResNet14x2 teacher (once)
#   bash scripts/fashion_mnist_scenes_study.sh pilot     # vanilla, pixel KD, ICKD+KD, CWD, ICKD+CWD students, seeds 100-101
#   bash scripts/fashion_mnist_scenes_study.sh explore   # after the pilot: ICKD+KD with ICKD.T 1 (pixel KD's temperature), seeds 100-101
#   bash scripts/fashion_mnist_scenes_study.sh regime    # vanilla, pixel KD, CWD at 24 epochs, seeds 100-101 (the pilot's next step)
#   bash scripts/fashion_mnist_scenes_study.sh main      # the pre-registered study: all five methods, 24 epochs, seeds 0-5
#   bash scripts/fashion_mnist_scenes_study.sh report    # the tables of docs/results/fashion_mnist_scenes.md
#
# Every phase can be run again: a finished run is skipped, an interrupted one resumed. Runs land
# in ./output/fmnist_scenes (the teacher), ./output/fmnist_scenes_pilot (pilot, explore, regime)
# and ./output/fmnist_scenes_main (the study, designed in docs/results/fashion_mnist_scenes.md section 3).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || source scripts/install.sh
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
C=configs/fashion_mnist_scenes
S="python3 tools/sweep.py"
MAIN_SEEDS="0 1 2 3 4 5"
phase=${1:?"usage: $0 teacher|pilot|explore|regime|main|report"}
# A fresh clone continues where the committed summaries end (the sweep skips finished runs).
bash scripts/restore_runs.sh ./output/fmnist_scenes_pilot docs/results/runs/fmnist_scenes_{pilot,explore,regime}
bash scripts/restore_runs.sh ./output/fmnist_scenes_main docs/results/runs/fmnist_scenes_main
# Every student config reads the teacher's weights from there.
need_teacher() { [ -f output/fmnist_scenes/teacher_r14x2/student_best ] || { echo "error: run the teacher phase first" >&2; exit 2; }; }
case "$phase" in
  teacher)  # every student config reads output/fmnist_scenes/teacher_r14x2/student_best (16 min on 1 core
    # of a 2-core AMD EPYC); its weights are committed beside its summary
    bash scripts/study_teacher.sh $C/teacher/r14x2.yaml output/fmnist_scenes/teacher_r14x2 \
      docs/results/runs/fmnist_scenes_teacher/teacher_r14x2 ;;
  pilot)  # the teacher must exist first
    need_teacher
    $S --seeds 100 101 --cfg $C/vanilla/r14x2_r8.yaml $C/pixel_kd/r14x2_r8.yaml $C/ickd_kd/r14x2_r8.yaml \
      $C/cwd/r14x2_r8.yaml $C/ickd_cwd/r14x2_r8.yaml \
      LOG.PREFIX ./output/fmnist_scenes_pilot ;;
  explore)  # exploratory, on the pilot's seeds: PICD/NICD at the base's temperature (T^2 = 1, not 16)
    need_teacher
    $S --seeds 100 101 --cfg $C/ickd_kd/r14x2_r8.yaml LOG.PREFIX ./output/fmnist_scenes_pilot ICKD.T 1.0 ;;
  regime)  # the pilot's next step (docs/results/fashion_mnist_scenes.md section 2): the teacher's 24 epochs
    need_teacher
    $S --seeds 100 101 --cfg $C/vanilla/r14x2_r8.yaml $C/pixel_kd/r14x2_r8.yaml $C/cwd/r14x2_r8.yaml \
      LOG.PREFIX ./output/fmnist_scenes_pilot SOLVER.EPOCHS 24 ;;
  main)  # the design of section 3: seed by seed, so an interrupted study leaves whole pairs
    need_teacher
    for seed in $MAIN_SEEDS; do
      $S --seeds "$seed" --cfg $C/vanilla/r14x2_r8.yaml $C/pixel_kd/r14x2_r8.yaml $C/ickd_kd/r14x2_r8.yaml \
        $C/cwd/r14x2_r8.yaml $C/ickd_cwd/r14x2_r8.yaml LOG.PREFIX ./output/fmnist_scenes_main SOLVER.EPOCHS 24
    done ;;
  report)  # from the committed summaries; collect finished runs first, each phase into its own folder:
    #   python3 tools/collect_runs.py output/fmnist_scenes_main docs/results/runs/fmnist_scenes_main
    # (pilot, explore and regime share ./output/fmnist_scenes_pilot: collect it to a scratch folder and
    # copy the explore runs, named ...,ICKD.T:1.0, and the regime runs, ...,SOLVER.EPOCHS:24, to their own);
    # the commands are listed once, in $C/report.txt, which tests/test_committed_results.py also reads
    bash scripts/run_report.sh $C/report.txt ;;
  *) echo "error: unknown phase '$phase'; expected teacher|pilot|explore|regime|main|report" >&2; exit 2 ;;
esac
