#!/usr/bin/env bash
# Sourced by quickstart.sh and test.sh: picks the Python environment, installs into it
# torch/torchvision (a pair known to work together), this project with its test and plot
# extras, and Debian's Fashion-MNIST (the real offline dataset).
#
# Which environment (PEP 668: a distribution's python3 refuses `pip install`):
#   - inside an activated virtual environment or conda env: that one, as is; a torch already
#     there (e.g. a CUDA build) is kept;
#   - otherwise: the project's own ./.venv (git-ignored), created on first use and reused after.
# Afterwards `python3`/`python` on PATH are that environment's, for the rest of the calling script.
# KDH_VENV overrides the venv's folder (tests use it).
set -euo pipefail
_kdh_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$_kdh_root/scripts/select_python.sh"
kdh_select_python
_pip=(python3 -m pip install --quiet --disable-pip-version-check)
if [ "$KDH_ENV_KIND" = "project-venv" ] || ! python3 -c "import torch, torchvision" >/dev/null 2>&1; then
  "${_pip[@]}" torch==2.14.1 torchvision==0.29.1
else
  echo "install: keeping torch $(python3 -c 'import torch; print(torch.__version__)') of the active environment" >&2
fi
"${_pip[@]}" -e "$_kdh_root[test,plot]"
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "install: apt-get install dataset-fashion-mnist" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) >/dev/null
  else
    echo "note: Fashion-MNIST not found; install Debian's dataset-fashion-mnist or set DATASET.ROOT" >&2
  fi
fi
