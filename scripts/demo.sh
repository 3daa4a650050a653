#!/usr/bin/env bash
# The DRA scenario in one command: the producer and the consumer run as two separate processes
# (optionally each in its own PID namespace, like two pods with hostPID: false), and the result
# is printed and returned as the exit code.
#
#   scripts/demo.sh [--transport auto|fd|legacy] [--size MIB] [--gpus all|0,1] [--import-on N] [--pods]
#
# Builds the examples with cargo, unless EXAMPLES_DIR names a folder holding prebuilt `producer`
# and `consumer` executables (e.g. the GPU bundle's examples/).
#
# Channel mode: one frame_publisher and K frame_subscriber processes (pubsub channel, every
# frame verified on each subscriber's GPU):
#
#   scripts/demo.sh --channel [--subscribers 2] [--policy block|drop-oldest] [--frames N]
#                   [--gpus all|0,1] [--publisher-gpu N] [--slots N] [--transport T]
#                   [--frame-bytes B] [--cpu-subscriber] [--timeout S] [--pods]
#                   [--user UID[:GID] | --non-root] [--mps]
#
# Subscriber i maps the frames on GPU gpus[i % len] (default: every GPU nvidia-smi lists, so
# with two GPUs one subscriber reads over NVLink). --pods: each process in its own PID namespace;
# --user/--non-root (65534:65534): each process drops to that uid (setpriv, after unshare, all
# groups cleared). PASS only if every process exits 0 and every subscriber reports
# verify_failures=0. Needs frame_publisher and frame_subscriber in EXAMPLES_DIR when it is set.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
for arg in "$@"; do
  [[ "$arg" == --channel ]] && exec "$root/scripts/demo-channel.sh" "$@"
done
# Where cargo puts the release examples: its target directory (honours CARGO_TARGET_DIR and
# .cargo/config), as `cargo metadata` reports it.
examples_dir() {
  local target
  target="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  [[ -n "$target" ]] || { echo "cargo metadata did not report a target directory" >&2; return 1; }
  echo "$target/release/examples"
}
producer_args=() consumer_args=() wrap=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --transport|--size|--gpus) producer_args+=("$1" "$2"); shift 2 ;;
    --import-on) consumer_args+=("$1" "$2"); shift 2 ;;
    --timeout) producer_args+=("$1" "$2"); consumer_args+=("$1" "$2"); shift 2 ;;
    --pods)
      [[ $(id -u) -eq 0 ]] || { echo "demo: --pods needs root (unshare --pid)" >&2; exit 2; }
      wrap=(unshare --pid --fork --mount-proc); shift ;;
    -h|--help) sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "demo: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [[ -n "${EXAMPLES_DIR:-}" ]]; then
  bin="$(cd "$EXAMPLES_DIR" && pwd)"
else
  (cd "$root" && cargo build --release --examples --quiet) || exit 1
  bin="$(examples_dir)" || exit 1
fi
dir="$(mktemp -d /tmp/cuda-ipc-demo.XXXXXX)"   # 0700, this user's
trap 'rm -rf "$dir"' EXIT

"${wrap[@]}" "$bin/producer" --dir "$dir" "${producer_args[@]}" &
producer=$!
"${wrap[@]}" "$bin/consumer" --dir "$dir" "${consumer_args[@]}"
consumer_rc=$?
if [[ $consumer_rc -ne 0 ]]; then
  sleep 1; kill "$producer" 2>/dev/null   # the producer would only wait for its timeout
fi
wait "$producer"
producer_rc=$?
if [[ $producer_rc -eq 0 && $consumer_rc -eq 0 ]]; then
  echo "demo: PASS (producer and consumer both exited 0)"
else
  echo "demo: FAIL (producer exit $producer_rc, consumer exit $consumer_rc)"
  exit 1
fi
