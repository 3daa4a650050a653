#!/usr/bin/env bash
# Regenerates the fixtures of tests/data from user_kernels.cu with nvcc ($NVCC, else PATH):
#   user_kernels.ptx     PTX for compute_75, its `.version` lowered to 7.0 (CUDA 11.0) so that
#                        every driver the README names loads it (the kernels use nothing newer;
#                        ptxas checks it)
#   user_kernels.cubin   machine code for sm_75 only (a cubin another GPU generation rejects)
#   user_kernels.fatbin  sm_75 code and compute_75 PTX (loads everywhere, as PTX elsewhere)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
nvcc="${NVCC:-nvcc}"
"$nvcc" -ptx -arch=compute_75 user_kernels.cu -o user_kernels.ptx
sed -i -E 's/^\.version [0-9]+\.[0-9]+$/.version 7.0/' user_kernels.ptx
"$(dirname "$(command -v "$nvcc")")/ptxas" -arch=sm_75 user_kernels.ptx -o /dev/null
"$nvcc" -cubin -arch=sm_75 user_kernels.cu -o user_kernels.cubin
"$nvcc" -fatbin -gencode arch=compute_75,code=sm_75 -gencode arch=compute_75,code=compute_75 \
  user_kernels.cu -o user_kernels.fatbin
ls -l user_kernels.*
