#!/usr/bin/env bash
# The GPU run of 2026-12-02 on 1 × H200 (issue 17, parts 1 and 2), in one go, from a bundle:
#
#   bundle/run.sh OUT
#
# bundle/: tests/{gpu_channels,review_channels,unit}, examples/frame_{publisher,subscriber},
# scripts/demo-channel.sh, bench/{before,step1,after}/channel (the channel bench built at
# 7eae40a, at the commit that batches the publisher's memops and detects MPS, and at the
# commit after it that adapts the subscriber's spinning). Steps, each under `timeout`:
#   A. no MPS: the channel GPU tests; the channel demo; the benches before and after;
#   B. the demo's own MPS mode (scripts/demo-channel.sh --mps);
#   C. under an MPS control daemon of this script: the sharing test and the benches
#      (after, step1, before), then the daemon quits.
set -u
B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:?usage: run.sh OUT}"
mkdir -p "$OUT"
T0=$(date +%s)
log() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$OUT/steps.log"; }
export PATH="/usr/local/nvidia/bin:$PATH"
{ nvidia-smi -L; nvidia-smi --query-gpu=driver_version,compute_mode --format=csv,noheader
  nproc; uname -r; date -u; } >"$OUT/machine.txt" 2>&1

tests() { # name, limit, binary, args...
  local name="$1" limit="$2" exe="$3"; shift 3
  log "test $name"
  timeout "$limit" "$exe" --include-ignored --test-threads=1 "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  log "  rc $rc: $(grep -E '^test result' "$OUT/$name.log" | tail -n 1)"
  grep -E '^test .* FAILED$' "$OUT/$name.log" | grep -v zz_role_entry | sed 's/^/    /' |
    tee -a "$OUT/steps.log"
}
bench() { # name, binary
  local name="$1" exe="$2" dir="$OUT/$1"
  mkdir -p "$dir"
  log "bench $name"
  (cd "$dir" && CHANNEL_BENCH_OUT="$dir" timeout 120 "$exe" --bench) >"$dir/bench.log" 2>&1
  log "  rc $?"
  grep -E '^channel-(latency|throughput)' "$dir/bench.log" | sed 's/^/    /' >>"$OUT/steps.log"
  rm -rf "$dir/target"
}
demo() { # name, args...
  local name="$1"; shift
  log "demo $name: $*"
  EXAMPLES_DIR="$B/examples" timeout 90 "$B/scripts/demo-channel.sh" "$@" >"$OUT/$name.log" 2>&1
  log "  rc $?: $(grep -E '^demo: (PASS|FAIL)' "$OUT/$name.log" || tail -n 2 "$OUT/$name.log")"
}
export CHANNEL_BENCH_BASELINES=none CHANNEL_BENCH_SUBS=1,8 \
  CHANNEL_BENCH_ONLY="latency/same-gpu,throughput" CHANNEL_BENCH_WARMUP_MS=100 \
  CHANNEL_BENCH_MEASURE_MS=500 CHANNEL_BENCH_LATENCY_MS=150 CHANNEL_BENCH_CPU_MS=600 \
  CHANNEL_BENCH_SPACED_ROUNDS=400 CHANNEL_BENCH_TIMEOUT_S=15

# A. No MPS.
tests gpu_channels 150 "$B/tests/gpu_channels"
tests review_channels 60 "$B/tests/review_channels"
tests unit 60 "$B/tests/unit"
demo demo-no-mps --frames 400 --subscribers 2
bench no-mps-after "$B/bench/after/channel"
bench no-mps-before "$B/bench/before/channel"

# B. The demo's MPS mode (its own daemon, started and stopped by the demo).
demo demo-mps --mps --frames 400 --subscribers 2

# C. Under an MPS control daemon of ours.
mps_dir="$(mktemp -d /tmp/mps-run.XXXXXX)"
export CUDA_MPS_PIPE_DIRECTORY="$mps_dir/pipe" CUDA_MPS_LOG_DIRECTORY="$mps_dir/log"
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
log "nvidia-cuda-mps-control -d: $(timeout 20 nvidia-cuda-mps-control -d 2>&1; echo rc $?)"
tests mps-gpu_channels 60 "$B/tests/gpu_channels" \
  each_end_reports_how_it_shares_the_gpu block_delivers_every_frame
bench mps-after "$B/bench/after/channel"
bench mps-step1 "$B/bench/step1/channel"
bench mps-before "$B/bench/before/channel"
log "quit MPS: $(echo quit | timeout 20 nvidia-cuda-mps-control 2>&1; echo rc $?)"
cp -r "$CUDA_MPS_LOG_DIRECTORY" "$OUT/mps-log" 2>/dev/null
log "done"
