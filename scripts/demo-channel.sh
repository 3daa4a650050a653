#!/usr/bin/env bash
# The channel mode of scripts/demo.sh (which runs this for `--channel`): one frame_publisher and
# K frame_subscriber processes on one pubsub channel, each optionally a "pod" (own PID
# namespace) and optionally non-root; see scripts/demo.sh --help.
#
#   scripts/demo.sh --channel [--subscribers 2] [--policy block|drop-oldest] [--frames N]
#                   [--gpus all|0,1] [--publisher-gpu N] [--slots N] [--transport T]
#                   [--frame-bytes B] [--cpu-subscriber] [--timeout S] [--pods]
#                   [--user UID[:GID] | --non-root] [--mps]
#
# --mps (root, GPU host): starts an MPS control daemon of its own (nvidia-cuda-mps-control -d,
# pipe and log directories in the run folder) for the run and quits it at the end, so that
# processes on one GPU share one context (a few µs per hand-over instead of ~150 µs); each
# subscriber on the publisher's GPU must then report sharing=SameGpuMps.
#
# PASS (exit 0) only if every process exits 0 and every subscriber's summary line says
# verify_failures=0.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

subscribers=2 policy=block frames=1000 gpus=all publisher_gpu="" timeout=60
pods=0 user="" cpu_last=0 mps=0
publisher_args=() subscriber_args=()
die() { echo "demo: $*" >&2; exit 2; }
need() { [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value (see --help)"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --channel) shift ;;
    --subscribers) need "$@"; subscribers="$2"; shift 2 ;;
    --policy) need "$@"; policy="$2"; shift 2 ;;
    --frames) need "$@"; frames="$2"; shift 2 ;;
    --gpus) need "$@"; gpus="$2"; shift 2 ;;
    --publisher-gpu) need "$@"; publisher_gpu="$2"; shift 2 ;;
    --timeout) need "$@"; timeout="$2"; shift 2 ;;
    --slots|--transport|--frame-bytes) need "$@"; publisher_args+=("$1" "$2"); shift 2 ;;
    --cpu-subscriber) cpu_last=1; shift ;;
    --pods) pods=1; shift ;;
    --user) need "$@"; user="$2"; shift 2 ;;
    --non-root) user="65534:65534"; shift ;;
    --mps) mps=1; shift ;;
    -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 for --channel (see --help)" ;;
  esac
done
[[ "$subscribers" =~ ^[1-9][0-9]*$ ]] || die "--subscribers takes a positive number, not $subscribers"
[[ "$frames" =~ ^[1-9][0-9]*$ ]] || die "--frames takes a positive number, not $frames"
[[ "$policy" == block || "$policy" == drop-oldest ]] || die "--policy is block or drop-oldest, not $policy"

if [[ $mps -eq 1 ]]; then
  [[ $(id -u) -eq 0 ]] || die "--mps needs root (it starts an MPS control daemon)"
  [[ -z "$user" ]] || die "--mps runs every process as the daemon's user, root: drop --user/--non-root"
  mps_control="$(command -v nvidia-cuda-mps-control || true)"
  [[ -n "$mps_control" ]] || for c in /usr/local/nvidia/bin /usr/bin /usr/local/cuda/bin; do
    [[ -x "$c/nvidia-cuda-mps-control" ]] && { mps_control="$c/nvidia-cuda-mps-control"; break; }
  done
  [[ -n "$mps_control" ]] || die "--mps: no nvidia-cuda-mps-control (part of the NVIDIA driver's utilities)"
fi

# The GPUs the subscribers use, in turn.
if [[ "$gpus" == all ]]; then
  count="$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ')" || true
  [[ "${count:-0}" -gt 0 ]] || count=1
  gpu_list=()
  for ((g = 0; g < count; g++)); do gpu_list+=("$g"); done
else
  IFS=, read -r -a gpu_list <<<"$gpus"
  for g in "${gpu_list[@]}"; do [[ "$g" =~ ^[0-9]+$ ]] || die "--gpus takes all or a list like 0,1, not $gpus"; done
fi
[[ -n "$publisher_gpu" ]] || publisher_gpu="${gpu_list[0]}"

# Each process: [unshare (own PID namespace)] [setpriv (drop to the uid)] program.
wrap=()
if [[ $pods -eq 1 ]]; then
  [[ $(id -u) -eq 0 ]] || die "--pods needs root (unshare --pid)"
  wrap+=(unshare --pid --fork --mount-proc)
fi
run_uid="$(id -u)" run_gid="$(id -g)"
if [[ -n "$user" ]]; then
  [[ "$user" =~ ^([0-9]+)(:([0-9]+))?$ ]] || die "--user takes UID or UID:GID (numbers), not $user"
  run_uid="${BASH_REMATCH[1]}" run_gid="${BASH_REMATCH[3]:-${BASH_REMATCH[1]}}"
  [[ $(id -u) -eq 0 ]] || die "--user needs root (setpriv)"
  [[ "$run_uid" -ne 0 ]] || die "--user 0 is root; give a non-root uid"
  wrap+=(setpriv --reuid "$run_uid" --regid "$run_gid" --clear-groups --)
fi

if [[ -n "${EXAMPLES_DIR:-}" ]]; then
  bin="$(cd "$EXAMPLES_DIR" && pwd)"
else
  (cd "$root" && cargo build --release --example frame_publisher --example frame_subscriber --quiet) || exit 1
  target="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  [[ -n "$target" ]] || { echo "demo: cargo metadata did not report a target directory" >&2; exit 1; }
  bin="$target/release/examples"
fi
for exe in frame_publisher frame_subscriber; do
  [[ -x "$bin/$exe" ]] || { echo "demo: no $bin/$exe (build the examples, or set EXAMPLES_DIR)" >&2; exit 1; }
done

# The run folder (0700): logs, a copy of the executables the uid can run (the bundle may sit
# under a folder it cannot enter, like /root), and the rendezvous directory, owned by the uid
# the processes run as, mode 0700 (private sharing: every process runs as that one uid).
run="$(mktemp -d /tmp/cuda-ipc-demo.XXXXXX)"
mps_stop() {
  [[ -n "${CUDA_MPS_PIPE_DIRECTORY:-}" ]] || return 0
  echo quit | timeout 20 "$mps_control" >/dev/null 2>&1 || true
  echo "demo: MPS control daemon stopped"
}
trap 'mps_stop; rm -rf "$run"' EXIT
if [[ $mps -eq 1 ]]; then
  # A daemon of our own: its pipe directory is the run's, so it neither meets nor disturbs a
  # daemon the host already runs; every process below inherits these two variables.
  install -d -m 0755 "$run/mps-pipe" "$run/mps-log"
  export CUDA_MPS_PIPE_DIRECTORY="$run/mps-pipe" CUDA_MPS_LOG_DIRECTORY="$run/mps-log"
  if ! timeout 20 "$mps_control" -d; then
    unset CUDA_MPS_PIPE_DIRECTORY
    echo "demo: FAIL (nvidia-cuda-mps-control -d failed; is the GPU's compute mode Prohibited?)"
    exit 1
  fi
  echo "demo: MPS control daemon started ($mps_control -d, pipe directory $CUDA_MPS_PIPE_DIRECTORY)"
fi
install -d -m 0755 "$run/bin"
install -m 0755 "$bin/frame_publisher" "$bin/frame_subscriber" "$run/bin/"
install -d -m 0700 -o "$run_uid" -g "$run_gid" "$run/chan"
[[ -z "$user" ]] || chown "$run_uid:$run_gid" "$run"
pods_note=""
[[ $pods -eq 0 ]] || pods_note=", one PID namespace each"
echo "demo: channel $run/chan/frames: publisher on GPU $publisher_gpu, $subscribers subscriber(s) on GPU(s) ${gpu_list[*]}, policy $policy, $frames frames, uid $run_uid$pods_note"

pids=() names=() logs=()
start() { # name, log, command...
  local name="$1" log="$2"; shift 2
  # Whole lines, each prefixed with the process's name (the exit status is the program's).
  ( "${wrap[@]}" "$@" 2>&1 | tee "$log" | sed -u "s/^/[$name] /" ) &
  pids+=("$!") names+=("$name") logs+=("$log")
}
start publisher "$run/publisher.log" "$run/bin/frame_publisher" --dir "$run/chan" \
  --gpu "$publisher_gpu" --subscribers "$subscribers" --frames "$frames" --policy "$policy" \
  --timeout "$timeout" "${publisher_args[@]}"
for ((i = 0; i < subscribers; i++)); do
  args=(--dir "$run/chan" --gpu "${gpu_list[i % ${#gpu_list[@]}]}" --frames "$frames" --timeout "$timeout")
  [[ $cpu_last -eq 1 && $i -eq $((subscribers - 1)) ]] && args+=(--cpu)
  start "subscriber$i" "$run/subscriber$i.log" "$run/bin/frame_subscriber" "${args[@]}"
done

fail=()
for i in "${!pids[@]}"; do
  wait "${pids[i]}"
  rc=$?
  [[ $rc -eq 0 ]] || fail+=("${names[i]} exited $rc")
done
echo "demo: summary:"
for i in "${!pids[@]}"; do
  line="$(grep -E '^frame_(publisher|subscriber): gpu=' "${logs[i]}" | tail -n 1)"
  echo "  ${names[i]}: ${line:-no summary line}"
  if [[ "${names[i]}" == subscriber* ]] && ! grep -q ' verify_failures=0 ' <<<"$line "; then
    fail+=("${names[i]} did not report verify_failures=0")
  fi
  # Under --mps, a subscriber on the publisher's GPU must share its MPS server.
  if [[ $mps -eq 1 && "${names[i]}" == subscriber* ]] && grep -q " gpu=$publisher_gpu " <<<"$line" &&
    ! grep -q ' sharing=SameGpuMps' <<<"$line"; then
    fail+=("${names[i]} is on the publisher's GPU but not sharing its MPS server")
  fi
done
if [[ ${#fail[@]} -eq 0 ]]; then
  echo "demo: PASS (channel: publisher and $subscribers subscriber(s) exited 0, every frame verified$([[ $mps -eq 0 ]] || echo ", under MPS"))"
else
  printf -v why '%s; ' "${fail[@]}"
  echo "demo: FAIL (channel: ${why%; })"
  exit 1
fi
