#!/usr/bin/env bash
# A study's teacher, once: the committed weights when the repository has them (copied into the
# run directory the students' configs read), otherwise trained from its config, resuming an
# interrupted run. A complete run there is left alone.
#   bash scripts/study_teacher.sh CONFIG RUN_DIR COMMITTED_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
cfg=${1:?"usage: $0 CONFIG RUN_DIR COMMITTED_DIR"} run=${2:?"usage: $0 CONFIG RUN_DIR COMMITTED_DIR"}
committed=${3:?"usage: $0 CONFIG RUN_DIR COMMITTED_DIR"}
if [ ! -f "$run/student_best" ] && [ -f "$committed/student_best" ]; then
  mkdir -p "$run" && cp "$committed/student_best" "$committed/summary.json" "$run/"
  echo "teacher: using the committed one ($committed); delete $run to train it again"
elif ! grep -q '"complete": true' "$run/summary.json" 2>/dev/null; then
  resume=""; [ -f "$run/latest" ] && resume="--resume"
  python3 tools/train.py --cfg "$cfg" $resume
fi
