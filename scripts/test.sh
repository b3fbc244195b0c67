#!/usr/bin/env bash
# The test command: installs everything the suite needs on a fresh machine, then runs it.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m "not slow"`).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/install.sh
python3 -m pytest "$@"
