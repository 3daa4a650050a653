# Source this file (`. scripts/env.sh`) to build and test cuda-ipc on a machine without a GPU
# or CUDA toolkit: it provisions .tools/ when needed (scripts/provision.sh) and exports NVCC
# and LD_LIBRARY_PATH for this shell. (Building needs neither: they are for the tests.)
_cuda_ipc_root="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
bash "$_cuda_ipc_root/scripts/provision.sh" && . "$_cuda_ipc_root/.tools/env.sh"
unset _cuda_ipc_root
