#!/usr/bin/env bash
# The test command: installs everything the suite needs on a fresh machine, then runs it,
# one pytest worker per core (pytest-xdist). Extra arguments go to pytest
# (e.g. `bash scripts/test.sh -m "not slow"`, or `-n 0` for a single process).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
python3 -m pytest -n "${PYTEST_WORKERS:-auto}" "$@"
