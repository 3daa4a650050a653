#!/usr/bin/env bash
# The second GPU run of 2026-12-02 on 1 × H200, after the first (run.sh) found the sharing
# test subscribing in the publisher's own process (refused, as any self-import): the fixed
# test without and under MPS, more channel tests under MPS, and the benches once more (the
# first run's were single short runs), everything packed into one tarball.
set -u
B="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
OUT="${1:?usage: run2.sh OUT}"
mkdir -p "$OUT/run2"
R="$OUT/run2"
T0=$(date +%s)
log() { echo "[$(($(date +%s) - T0))s] $*" | tee -a "$R/steps.log"; }
export PATH="/usr/local/nvidia/bin:$PATH"
tests() { # name, limit, binary, args...
  local name="$1" limit="$2" exe="$3"; shift 3
  log "test $name"
  timeout "$limit" "$exe" --include-ignored --test-threads=1 "$@" >"$R/$name.log" 2>&1
  local rc=$?
  log "  rc $rc: $(grep -E '^test result' "$R/$name.log" | tail -n 1)"
  grep -E '^test .* FAILED$' "$R/$name.log" | grep -v zz_role_entry | sed 's/^/    /' | tee -a "$R/steps.log"
}
bench() { # name, binary
  local name="$1" exe="$2" dir="$R/$1"
  mkdir -p "$dir"
  log "bench $name"
  (cd "$dir" && CHANNEL_BENCH_OUT="$dir" timeout 120 "$exe" --bench) >"$dir/bench.log" 2>&1
  log "  rc $?"
  grep -E '^channel-(latency|throughput)/[^:]*:' "$dir/bench.log" | sed 's/^/    /' >>"$R/steps.log"
  rm -rf "$dir/target"
}
export CHANNEL_BENCH_BASELINES=none CHANNEL_BENCH_SUBS=1,8 \
  CHANNEL_BENCH_ONLY="latency/same-gpu,throughput" CHANNEL_BENCH_WARMUP_MS=100 \
  CHANNEL_BENCH_MEASURE_MS=500 CHANNEL_BENCH_LATENCY_MS=150 CHANNEL_BENCH_CPU_MS=600 \
  CHANNEL_BENCH_SPACED_ROUNDS=400 CHANNEL_BENCH_TIMEOUT_S=15

tests sharing 30 "$B/tests/gpu_channels" each_end_reports_how_it_shares_the_gpu
bench no-mps-after "$B/bench/after/channel"
bench no-mps-before "$B/bench/before/channel"
mps_dir="$(mktemp -d /tmp/mps-run.XXXXXX)"
export CUDA_MPS_PIPE_DIRECTORY="$mps_dir/pipe" CUDA_MPS_LOG_DIRECTORY="$mps_dir/log"
mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
log "nvidia-cuda-mps-control -d: $(timeout 20 nvidia-cuda-mps-control -d 2>&1; echo rc $?)"
tests mps-gpu_channels 60 "$B/tests/gpu_channels" each_end_reports block_ drop_oldest \
  a_killed_publisher a_late_subscriber the_cpu_path
bench mps-after "$B/bench/after/channel"
bench mps-step1 "$B/bench/step1/channel"
bench mps-before "$B/bench/before/channel"
bench mps-after-2 "$B/bench/after/channel"
log "quit MPS: $(echo quit | timeout 20 nvidia-cuda-mps-control 2>&1; echo rc $?)"
log "done"
tar czf "$OUT/run2.tgz" -C "$OUT" run2 && rm -rf "$R"/*/ && ls "$R"
