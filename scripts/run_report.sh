#!/usr/bin/env bash
# Runs a study's report list: one `NAME: ARGUMENTS` line per table or figure, each the arguments of
# a tools/leaderboard.py call (shell-quoted, paths relative to the repository root; lines starting
# with # are comments). The studies' `report` phases call it; tests/test_committed_results.py reads
# the same lists and checks every row they print against the study's doc.
#   bash scripts/run_report.sh configs/fashion_mnist_converged/report.txt
set -euo pipefail
cd "$(dirname "$0")/.."
list=${1:?"usage: $0 REPORT_LIST (e.g. configs/fashion_mnist_study/report.txt)"}
[ -f "$list" ] || { echo "error: no report list at $list" >&2; exit 2; }
grep -v '^#' "$list" | while IFS= read -r line; do
  [ -n "$line" ] || continue
  echo "==> ${line%%: *} <=="
  eval "python3 tools/leaderboard.py ${line#*: }"
done
