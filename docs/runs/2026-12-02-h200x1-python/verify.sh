#!/usr/bin/env bash
set -uo pipefail
B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"; O="${OUT:?}"
start=$(date +%s)
step() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$O/steps.log"; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$O/machine.txt"
step "python GPU tests"
timeout 150 "$B/python/run-python-tests.sh" > "$O/python-tests.log" 2>&1; step "  rc $?: $(tail -1 "$O/python-tests.log")"
for t in unit gpu_streams gpu_channels review_channels gpu_frames gpu_correctness gpu_foundation gpu_module gpu_cudarc; do
  lim=30; [[ $t == gpu_channels ]] && lim=90
  timeout $lim "$B/tests/$t" --include-ignored --test-threads=1 > "$O/$t.log" 2>&1
  step "$t rc $?: $(grep -E '^test result' "$O/$t.log" | tail -1)"
done
grep -hE "^FAILED|^E  |^test .* FAILED|panicked at" "$O"/*.log | grep -v zz_role | head -30
