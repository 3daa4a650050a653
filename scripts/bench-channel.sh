#!/usr/bin/env bash
# Runs the channel bench (benches/channel.rs) from a bundle on a GPU host without cargo, with
# its torch baseline, and collects everything into one folder:
#
#   here:  cargo bench --no-run --bench channel          # or scripts/gpu-bundle.sh bundle
#          scripts/bench-channel.sh --bundle bundle      # copies the executable and the script
#   there: bundle/bench-channel.sh OUT [criterion args…]  # or scripts/bench-channel.sh --run …
#
# OUT gets bench-channel.log (everything the bench printed), summary.md and percentiles.tsv
# (the summary table and the latency percentiles), torch.jsonl (the torch baseline's lines),
# machine.txt and criterion's own output (criterion/). Extra arguments go to criterion (a
# filter, --measurement-time …); CHANNEL_BENCH_* variables tune the run (see
# benches/channel/settings.rs). Exit status: the bench's.
#
# CHANNEL_BENCH_MPS=both (root, GPU host): runs the bench twice, into OUT/no-mps and then
# OUT/mps under an MPS control daemon of its own (nvidia-cuda-mps-control -d with its own pipe
# directory, quit at the end): the same-GPU figures with and without MPS in one run.
set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ "${1:-}" == "--bundle" ]]; then
  # Here (with cargo): put the bench executable and the torch script into the bundle.
  set -e
  root="$(cd "$here/.." && pwd)"
  dir="${2:?usage: scripts/bench-channel.sh --bundle DIR}"
  mkdir -p "$dir/benches" "$dir/baselines"
  exe="$(cd "$root" && cargo bench --no-run --bench channel --message-format=json 2>/dev/null |
    python3 -c '
import json, sys
for line in sys.stdin:
    try:
        m = json.loads(line)
    except ValueError:
        continue
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "channel":
        print(m["executable"])
')"
  [[ -n "$exe" ]] || { echo "bench-channel: cargo built no channel bench executable" >&2; exit 1; }
  cp "$exe" "$dir/benches/channel"
  strip "$dir/benches/channel" 2>/dev/null || true
  cp "$root/benches/baselines/torch_queue.py" "$dir/baselines/"
  cp "$here/bench-channel.sh" "$dir/bench-channel.sh"
  chmod +x "$dir/bench-channel.sh"
  echo "bench-channel: bundle ready: $dir/bench-channel.sh OUT"
  exit 0
fi
[[ "${1:-}" == "--run" ]] && shift

if [[ "${CHANNEL_BENCH_MPS:-}" == both ]]; then
  out="${1:?usage: CHANNEL_BENCH_MPS=both bench-channel.sh OUT [criterion args…]}"
  shift
  [[ $(id -u) -eq 0 ]] || { echo "bench-channel: CHANNEL_BENCH_MPS=both needs root (MPS daemon)" >&2; exit 2; }
  control="$(command -v nvidia-cuda-mps-control || echo /usr/local/nvidia/bin/nvidia-cuda-mps-control)"
  [[ -x "$control" ]] || { echo "bench-channel: no nvidia-cuda-mps-control" >&2; exit 2; }
  CHANNEL_BENCH_MPS="" "${BASH_SOURCE[0]}" --run "$out/no-mps" "$@"
  rc=$?
  mps="$(mktemp -d /tmp/cuda-ipc-bench-mps.XXXXXX)"
  export CUDA_MPS_PIPE_DIRECTORY="$mps/pipe" CUDA_MPS_LOG_DIRECTORY="$mps/log"
  mkdir -p "$CUDA_MPS_PIPE_DIRECTORY" "$CUDA_MPS_LOG_DIRECTORY"
  timeout 20 "$control" -d || { echo "bench-channel: nvidia-cuda-mps-control -d failed" >&2; exit 1; }
  echo "bench-channel: MPS control daemon started (pipe directory $CUDA_MPS_PIPE_DIRECTORY)"
  CHANNEL_BENCH_MPS="" "${BASH_SOURCE[0]}" --run "$out/mps" "$@"
  rc2=$?
  echo quit | timeout 20 "$control" >/dev/null 2>&1
  echo "bench-channel: MPS control daemon stopped; without MPS: $out/no-mps, under MPS: $out/mps"
  rm -rf "$mps"
  exit $((rc > rc2 ? rc : rc2))
fi

out="${1:?usage: bench-channel.sh OUT [criterion args…]  (or --bundle DIR, here)}"
shift
# The executable and the script: beside this script (a bundle), else a gpu-bundle.sh bundle
# layout, else the repository's.
exe="${CHANNEL_BENCH_EXE:-}"
for c in "$here/benches/channel" "$here/../bundle/benches/channel"; do
  [[ -z "$exe" && -x "$c" ]] && exe="$c"
done
[[ -n "$exe" ]] || { echo "bench-channel: no channel bench executable (set CHANNEL_BENCH_EXE)" >&2; exit 2; }
script="${CHANNEL_BENCH_TORCH_SCRIPT:-}"
for c in "$here/baselines/torch_queue.py" "$here/../benches/baselines/torch_queue.py"; do
  [[ -z "$script" && -f "$c" ]] && script="$c"
done

mkdir -p "$out"
out="$(cd "$out" && pwd)"
{ nvidia-smi -L; nvidia-smi topo -m; nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1
  uname -r; nproc; date -u; python3 -c 'import torch; print("torch", torch.__version__)'; } \
  >"$out/machine.txt" 2>&1
export CHANNEL_BENCH_OUT="$out"
[[ -n "$script" ]] && export CHANNEL_BENCH_TORCH_SCRIPT="$script"
echo "bench-channel: $exe → $out (torch script: ${script:-none})"
# criterion writes under ./target/criterion of the working directory.
(cd "$out" && timeout "${CHANNEL_BENCH_LIMIT_S:-540}" "$exe" --bench "$@") 2>&1 | tee "$out/bench-channel.log"
rc=${PIPESTATUS[0]}
grep $'^torch\t' "$out/percentiles.tsv" 2>/dev/null | cut -f3- >"$out/torch.jsonl" || true
[[ -d "$out/target/criterion" ]] && mv "$out/target/criterion" "$out/criterion" && rmdir "$out/target" 2>/dev/null
echo "bench-channel: exit $rc; summary: $out/summary.md"
exit "$rc"
