#!/usr/bin/env bash
# Proves that a crate depending on cuda-ipc builds, links and runs on a machine without CUDA:
# ci/dependent (the README's producer as a user's main.rs, path dependency on this crate) is
# built and run with a bare environment (env -i: no NVCC, no CUDA_LIBRARY_PATH, no
# LD_LIBRARY_PATH, nothing of .tools/), and must
#   1. link without libcuda, with no NEEDED libcuda in the binary;
#   2. print the typed `Error: DriverNotFound: ...` and exit with status 1 (no loader failure,
#      no panic);
#   3. with LD_LIBRARY_PATH at .tools/libcuda/lib64 (the real driver library, no GPU), print
#      `Error: NoDevice: ...` and exit with status 1.
# Its own CARGO_TARGET_DIR (target/ci-dependent), so the main target is not rebuilt.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dep="$root/ci/dependent"
target="$root/target/ci-dependent"
fail() { echo "ci/dependent: FAIL: $*" >&2; exit 1; }

if ldconfig -p 2>/dev/null | grep -q 'libcuda\.so\.1'; then
  fail "this machine has a system libcuda.so.1 (ldconfig -p), so the no-driver run proves nothing; run CI on a machine without the NVIDIA driver"
fi

cargo_bin="$(command -v cargo)" || fail "cargo not on PATH"
bare=(env -i
  "PATH=$(dirname "$cargo_bin"):/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
  "HOME=${HOME:-/root}"
  "CARGO_TARGET_DIR=$target")
[[ -n "${CARGO_HOME:-}" ]] && bare+=("CARGO_HOME=$CARGO_HOME")
[[ -n "${RUSTUP_HOME:-}" ]] && bare+=("RUSTUP_HOME=$RUSTUP_HOME")
[[ -n "${RUSTUP_TOOLCHAIN:-}" ]] && bare+=("RUSTUP_TOOLCHAIN=$RUSTUP_TOOLCHAIN")

# The main crate's lock as the starting point: the same dependency versions, nothing newer.
cp "$root/Cargo.lock" "$dep/Cargo.lock"
echo "ci/dependent: building with a bare environment"
(cd "$dep" && "${bare[@]}" cargo build --quiet)
bin="$target/debug/cuda-ipc-dependent"
[[ -x "$bin" ]] || fail "no binary at $bin"

if command -v readelf >/dev/null; then
  if readelf -d "$bin" | grep -i 'NEEDED.*libcuda'; then
    fail "the binary has a NEEDED libcuda entry"
  fi
  echo "ci/dependent: no NEEDED libcuda in $bin"
fi

run_expecting() { # <what> <expected text> [VAR=value ...]
  local what="$1" expected="$2"; shift 2
  local out status=0
  out="$("${bare[@]}" "$@" "$bin" 2>&1)" || status=$?
  printf '%s\n' "$out" | sed 's/^/  | /'
  [[ "$status" == 1 ]] || fail "$what: exit status $status, expected 1 (an error returned from main)"
  grep -qF "$expected" <<<"$out" || fail "$what: output lacks '$expected'"
  echo "ci/dependent: $what: OK"
}

run_expecting "no driver" "Error: DriverNotFound: the NVIDIA driver library could not be loaded: looked for libcuda.so.1"
if [[ -e "$root/.tools/libcuda/lib64/libcuda.so.1" ]]; then
  run_expecting "driver library, no GPU" "Error: NoDevice: no CUDA device is visible" \
    "LD_LIBRARY_PATH=$root/.tools/libcuda/lib64"
else
  fail ".tools/libcuda/lib64/libcuda.so.1 is missing: run scripts/provision.sh first"
fi
echo "ci/dependent: PASS"
