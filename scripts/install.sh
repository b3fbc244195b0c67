#!/usr/bin/env bash
# Installs torch/torchvision (a pair known to work together), this project with its test and
# plot extras, and Debian's Fashion-MNIST (the real offline dataset). Sourced by the other scripts.
set -euo pipefail
python3 -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
python3 -m pip install --quiet --disable-pip-version-check -e ".[test,plot]"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null
  else
    echo "note: Fashion-MNIST not found; install Debian's dataset-fashion-mnist or set DATASET.ROOT" >&2
  fi
fi
