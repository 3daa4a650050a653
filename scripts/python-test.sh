#!/usr/bin/env bash
# Builds and installs the Python package (python/, PyO3 + maturin) into a venv under .tools/py
# and runs its tests: on a machine without a GPU the CPU tests run and the GPU tests are
# reported as skipped ("needs an NVIDIA GPU"); CUDA_IPC_GPU_TESTS=1 runs them (the GPU bundle
# does, with its prebuilt wheel). Pinned: maturin 1.16.0, pytest 8.3.4, numpy 2.3.5 (dtype tests).
#
#   scripts/python-test.sh            # build, install, test
#   scripts/python-test.sh --wheel D  # also copy the built wheel into D
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
wheel_dir=""
[[ "${1:-}" == --wheel ]] && wheel_dir="${2:?--wheel DIR}"

# The no-GPU driver (Debian's libcuda1 in .tools/: cuInit says NO_DEVICE) and nvcc, as for cargo.
. scripts/env.sh >/dev/null

VENV=.tools/py
if [[ ! -x $VENV/bin/maturin || ! -x $VENV/bin/pytest ]] || ! "$VENV/bin/python" -c "import numpy" 2>/dev/null; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet "maturin==1.16.0" "pytest==8.3.4" "numpy==2.3.5"
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
# What `pip install ./python` does (PEP 517 through maturin), with the pinned maturin instead
# of a fresh download, then the wheel installed.
PATH="$root/$VENV/bin:$PATH" CARGO_TARGET_DIR="$root/target/python" "$VENV/bin/pip" wheel --quiet --no-build-isolation \
  --no-deps ./python -w "$out"
wheel="$(ls "$out"/cuda_ipc-*.whl)"
"$VENV/bin/pip" install --quiet --force-reinstall --no-deps "$wheel"
[[ -n "$wheel_dir" ]] && { mkdir -p "$wheel_dir"; cp "$wheel" "$wheel_dir/"; }
(cd python && "../$VENV/bin/pytest" -q -rs)
