#!/usr/bin/env bash
# The first Fashion-MNIST experiment (docs/results/fashion_mnist_2026-11.md), superseded by
# scripts/fashion_mnist_study.sh. CPU only (about 80 minutes
# on an idle 2-core machine with two copies of this script running side by side; they share
# the runs). Needs the teacher of scripts/quickstart.sh. Re-running continues where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
C=configs/fashion_mnist
SEEDS="0 1 2"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}  # one thread per run: run two copies of this script side by side on 2 cores
# 1. offline methods, 3 seeds each
python3 tools/sweep.py --seeds $SEEDS --cfg $C/vanilla/res8.yaml $C/kd/res14_res8.yaml $C/dkd/res14_res8.yaml \
  $C/crd/res14_res8.yaml $C/ickd/res14_res8.yaml $C/ickd_kd/res14_res8.yaml $C/ickd_dkd/res14_res8.yaml
# 2. the other paradigms against their baselines (online: DML; teacher-free: vanilla, above)
python3 tools/sweep.py --seeds $SEEDS --cfg $C/ickd_online/res14_res8.yaml $C/dml/res14_res8.yaml $C/ickd_teacher_free/res8.yaml
# 3. sensitivity of ICKD+KD to K, tau1, gamma_picd, gamma_nicd (one seed each; defaults K 8, TAU 0.1,
#    PICD 1.0, NICD 0.1), kept in their own folder so they do not mix into the ICKD+KD column

for override in "ICKD.K 32" "ICKD.TAU 1.0" "ICKD.PICD_WEIGHT 4.0" "ICKD.NICD_WEIGHT 0.0"; do
  python3 tools/sweep.py --seeds 0 --cfg $C/ickd_kd/res14_res8.yaml LOG.PREFIX ./output/ablation $override
done
python3 tools/leaderboard.py output/fashion_mnist --compare-ickd
python3 tools/leaderboard.py output/fashion_mnist output/ablation --by label
