#!/usr/bin/env bash
# Regenerates the committed PTX under kernels/ with the same command build.rs uses, so that a
# build without nvcc embeds exactly what a build with nvcc would.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${NVCC:-nvcc}"
arch="${CUDA_IPC_PTX_ARCH:-compute_75}"
for cu in "$root"/kernels/*.cu; do
  "$nvcc" -ptx "-arch=$arch" "$cu" -o "${cu%.cu}.ptx"
  echo "regenerated ${cu%.cu}.ptx"
done
