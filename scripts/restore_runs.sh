#!/usr/bin/env bash
# A fresh clone continues a study where its committed summaries end: each COMMITTED folder's runs
# are copied into OUTPUT (never over a file already there), where tools/sweep.py skips finished runs.
# A committed folder that does not exist is skipped. Paths are relative to the repository root.
#   bash scripts/restore_runs.sh OUTPUT COMMITTED...
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?"usage: $0 OUTPUT COMMITTED..."}; shift
for committed in "$@"; do
  [ -d "$committed" ] || continue
  mkdir -p "$out" && cp -rn "$committed"/. "$out"/
done
