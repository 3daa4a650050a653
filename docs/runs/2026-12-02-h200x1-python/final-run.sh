#!/usr/bin/env bash
# The session's GPU verification in one call: machine, Python GPU tests, Python benches, the
# Rust open bench (same run, for the Python/Rust ratio), the Rust GPU tests of what changed.
set -uo pipefail
B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
R="$(cd "$B/.." && pwd)"
O="${OUT:?}"
start=$(date +%s)
step() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$O/steps.log"; }
{ nvidia-smi --query-gpu=name,driver_version,compute_mode --format=csv; nproc; uname -r; python3 -V; } > "$O/machine.txt" 2>&1
step "python GPU tests"
timeout 180 "$B/python/run-python-tests.sh" > "$O/python-tests.log" 2>&1; step "  rc $?: $(tail -1 "$O/python-tests.log")"
step "python benches"
cd "$R" && timeout 230 python3 python/bench/run_all.py --out "$O/pybench" --sizes 1,16 --subscribers 4 --versions 12 --versions-large 5 > "$O/pybench.log" 2>&1; step "  rc $?"
step "rust open bench (rendezvous, same GPU)"
timeout 60 "$B/benches/ipc_open" --bench 'open/.*/same-gpu/cuda-ipc via rendezvous' --warm-up-time 0.5 --measurement-time 2 --noplot > "$O/ipc_open.log" 2>&1; step "  rc $?"
for t in unit gpu_streams gpu_ipc gpu_channels review_channels; do
  step "test $t"
  timeout 100 "$B/tests/$t" --include-ignored --test-threads=1 > "$O/$t.log" 2>&1
  step "  rc $?: $(grep -E '^test result' "$O/$t.log" | tail -1)"
done
grep -E "^FAILED|^test .* FAILED|panicked" "$O"/*.log | grep -v "zz_role" | head -30 > "$O/failures.txt"
step "done"
