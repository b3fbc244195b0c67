#!/usr/bin/env bash
# The main job on real Fashion-MNIST, CPU only: a resnet14 teacher, a vanilla resnet8 and a
# KD resnet8 student, then the comparison table. Installs what it needs first.
# Runs in ./output/fashion_mnist; a finished run is skipped when the script is run again.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
python3 tools/sweep.py --seeds 0 --cfg configs/fashion_mnist/vanilla/res14.yaml
python3 tools/sweep.py --seeds 0 --cfg configs/fashion_mnist/vanilla/res8.yaml configs/fashion_mnist/kd/res14_res8.yaml
python3 tools/leaderboard.py output/fashion_mnist
