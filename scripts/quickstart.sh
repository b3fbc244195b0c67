#!/usr/bin/env bash
# The main job on real Fashion-MNIST, CPU only: a resnet14 teacher, then three resnet8
# students with the same seed (0) and budget (4 000 images, 3 epochs): vanilla, KD, and ICKD on
# top of KD (the method this project exists for), then the comparison table.
# Installs what it needs first. Runs land in ./output/fashion_mnist; finished runs are skipped
# when the script runs again. One seed is a smoke test of the pipeline, not a verdict on the
# method: docs/results/fashion_mnist.md is the study with many seeds and paired comparisons.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
teacher=output/fashion_mnist/teacher_res14
if ! grep -q '"complete": true' "$teacher/summary.json" 2>/dev/null; then
  resume=""; [ -f "$teacher/latest" ] && resume="--resume"
  python3 tools/train.py --cfg configs/fashion_mnist/vanilla/res14.yaml $resume
fi
python3 tools/sweep.py --seeds 0 --cfg configs/fashion_mnist/vanilla/res8.yaml \
  configs/fashion_mnist/kd/res14_res8.yaml configs/fashion_mnist/ickd_kd/res14_res8.yaml
python3 tools/leaderboard.py output/fashion_mnist
