#!/usr/bin/env bash
# Reproduces the Kubernetes security matrix of the DRA experiment with Linux namespaces instead
# of pods, for both transports, and prints it as a Markdown table. Run as root on a GPU host:
#
#   EXAMPLES_DIR=bundle/examples scripts/security-matrix.sh > docs/security-matrix.md
#
# hostPID: false   -> each side in its own PID namespace, as PID 1 (unshare --pid --fork --mount-proc)
# hostIPC: false   -> each side in its own IPC namespace (unshare --ipc)
# privileged: false -> each side as uid/gid 65534 with no capabilities (setpriv ... --inh-caps=-all
#                     --bounding-set=-all); the rendezvous directory then belongs to 65534
# plus a row where both sides have their own PID namespace but different PIDs (1 and 2).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# Where cargo puts the release examples: its target directory (honours CARGO_TARGET_DIR and
# .cargo/config), as `cargo metadata` reports it.
examples_dir() {
  local target
  target="$(cd "$root" && cargo metadata --format-version 1 --no-deps |
    sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
  [[ -n "$target" ]] || { echo "cargo metadata did not report a target directory" >&2; return 1; }
  echo "$target/release/examples"
}
[[ $(id -u) -eq 0 ]] || { echo "security-matrix: run as root" >&2; exit 2; }
if [[ -n "${EXAMPLES_DIR:-}" ]]; then src="$(cd "$EXAMPLES_DIR" && pwd)"; else
  (cd "$root" && cargo build --release --examples --quiet) || exit 1
  src="$(examples_dir)" || exit 1
fi
work="$(mktemp -d /tmp/cuda-ipc-matrix.XXXXXX)"
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"
install -m 0755 "$src/producer" "$src/consumer" "$work/"
timeout_s="${MATRIX_TIMEOUT:-20}"

# run_side CONFIG ROLE TRANSPORT DIR -> command line for one side
side() {
  local hostipc=$1 hostpid=$2 priv=$3 pid2=$4; shift 4
  local cmd=()
  if [[ $hostpid == false || $hostipc == false ]]; then
    cmd+=(unshare)
    [[ $hostpid == false ]] && cmd+=(--pid --fork --mount-proc)
    [[ $hostipc == false ]] && cmd+=(--ipc)
  fi
  [[ $priv == false ]] && cmd+=(setpriv --reuid=65534 --regid=65534 --clear-groups --inh-caps=-all --bounding-set=-all)
  if [[ $pid2 == true ]]; then cmd+=(sh -c '"$@"; exit $?' sh); fi
  printf '%q ' "${cmd[@]}" "$@"
}

short() { # the consumer's first error, condensed
  local line; line="$(grep -m1 -E 'ERROR' "$1" | sed -E 's/^Consumer: (gpu[0-9]+: )?ERROR: //')"
  case "$line" in
    *"PID namespace"*) echo "PidCollision: both PID 1 (driver: CUDA_ERROR_INVALID_CONTEXT, invalid device context)";;
    "") echo "exit without a message";;
    *) echo "${line:0:110}";;
  esac
}

run_case() { # hostipc hostpid priv pid2 transport -> status text
  local hostipc=$1 hostpid=$2 priv=$3 pid2=$4 transport=$5
  local dir="$work/rdv-$RANDOM$RANDOM"
  if [[ $priv == false ]]; then install -d -o 65534 -g 65534 -m 0700 "$dir"; else install -d -m 0700 "$dir"; fi
  local p c
  p="$(side "$hostipc" "$hostpid" "$priv" false "$work/producer" --dir "$dir" --gpus 0 --size 8 --transport "$transport" --timeout "$timeout_s")"
  c="$(side "$hostipc" "$hostpid" "$priv" "$pid2" "$work/consumer" --dir "$dir" --timeout "$timeout_s")"
  bash -c "$p" >"$dir.producer.log" 2>&1 &
  local ppid=$!
  bash -c "$c" >"$dir.consumer.log" 2>&1
  local crc=$?
  [[ $crc -ne 0 ]] && { sleep 1; kill "$ppid" 2>/dev/null; pkill -f "$dir" 2>/dev/null; }
  wait "$ppid"; local prc=$?
  if [[ $crc -eq 0 && $prc -eq 0 ]]; then echo "✅ works"; else echo "❌ $(short "$dir.consumer.log")"; fi
}

gpu="$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)"
driver="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n1)"
echo "# Security matrix: which pod settings each transport needs"
echo
echo "Measured $(date -u +%Y-%m-%d) on $(nvidia-smi -L | wc -l) × $gpu, driver $driver, Linux $(uname -r),"
echo "with \`scripts/security-matrix.sh\` (Linux namespaces standing in for pods; see the script's header)."
echo "Each cell: the consumer imports an 8 MiB buffer the producer published on GPU 0, verifies it on the GPU,"
echo "adds to it in place, and the producer checks the result."
echo
echo "| Configuration | HostIPC | HostPID | Privileged | legacy: status and error | fd: status and error |"
echo "|---|---|---|---|---|---|"
n=0
for hostipc in true false; do for hostpid in true false; do for priv in true false; do
  n=$((n + 1))
  legacy="$(run_case $hostipc $hostpid $priv false legacy)"
  fd="$(run_case $hostipc $hostpid $priv false fd)"
  echo "| $n | $hostipc | $hostpid | $priv | $legacy | $fd |"
done; done; done
legacy="$(run_case true false true true legacy)"
fd="$(run_case true false true true fd)"
echo "| 9: own PID namespaces, PIDs differ (1 and 2) | true | false | true | $legacy | $fd |"
