#!/usr/bin/env bash
# kdh_select_python: choose the Python environment the project installs into and runs with,
# and put it first on PATH. Sets KDH_ENV_KIND (active-venv | conda | project-venv) and
# KDH_PYTHON. Sourced by install.sh; tests/test_install.py runs it with fake interpreters.
#
# A distribution's python3 (Debian 12, Ubuntu 23.04+) is "externally managed" (PEP 668) and
# refuses pip installs, so outside an activated environment we always use a venv of our own:
# the same on every machine, and the system interpreter is never touched.
kdh_select_python() {
  local root venv
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python3" ]; then
    KDH_ENV_KIND=active-venv
    export PATH="$VIRTUAL_ENV/bin:$PATH"
  elif [ -n "${CONDA_PREFIX:-}" ] && [ -x "$CONDA_PREFIX/bin/python3" ]; then
    KDH_ENV_KIND=conda
    export PATH="$CONDA_PREFIX/bin:$PATH"
  else
    KDH_ENV_KIND=project-venv
    venv="${KDH_VENV:-$root/.venv}"
    if [ ! -x "$venv/bin/python3" ] || ! "$venv/bin/python3" -m pip --version >/dev/null 2>&1; then
      _kdh_make_venv "$venv" || return 1
    fi
    export VIRTUAL_ENV="$venv"
    export PATH="$venv/bin:$PATH"
    unset PYTHONHOME
  fi
  KDH_PYTHON="$(command -v python3)"
  export KDH_ENV_KIND KDH_PYTHON
  echo "install: using $KDH_ENV_KIND at $(dirname "$(dirname "$KDH_PYTHON")")" >&2
}

_kdh_make_venv() {  # _kdh_make_venv DIR: create a venv with pip, installing python3-venv if it is missing
  local venv=$1 pyver
  echo "install: creating a virtual environment in $venv" >&2
  rm -rf "$venv"
  if python3 -m venv "$venv" >/dev/null 2>&1; then return 0; fi
  rm -rf "$venv"
  # Debian/Ubuntu split venv's ensurepip into python3-venv / python3.X-venv.
  pyver="$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "install: apt-get install python3-venv python$pyver-venv (python3 cannot create a venv)" >&2
    apt-get update -qq >/dev/null 2>&1 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv "python$pyver-venv" >/dev/null 2>&1 || true
    if python3 -m venv "$venv" >/dev/null 2>&1; then return 0; fi
    rm -rf "$venv"
  fi
  echo "error: '$(command -v python3) -m venv' failed; install the package 'python$pyver-venv' (Debian/Ubuntu: sudo apt-get install python3-venv), or activate a virtual environment of your own, then run this again" >&2
  return 1
}
