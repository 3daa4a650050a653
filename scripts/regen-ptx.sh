#!/usr/bin/env bash
# Regenerates the committed PTX under kernels/ (what build.rs embeds by default) at PTX ISA 8.0,
# which every driver of CUDA 12.0 or newer loads (the README's driver requirement).
#
# PTX ISA 8.0 is what the CUDA 12.0 compilers write; newer ones write newer ISAs (nvcc 12.8:
# 8.7, nvcc 13: 9.0, loadable only by drivers of that CUDA version or newer) and have no option
# to write an older one. NVIDIA publishes no CUDA 12.0 nvcc on PyPI (the cu12 nvcc wheels hold
# only ptxas and libnvvm), but it publishes NVRTC 12.0, the same front end and NVVM as nvcc
# 12.0. So this script installs, into a temporary folder (nothing in .tools/, nothing
# system-wide):
#   nvidia-cuda-nvrtc-cu12==12.0.76   compiles kernels/*.cu to PTX (`nvcc -ptx`'s equivalent)
#   nvidia-cuda-nvcc-cu12==12.0.76    its ptxas checks the result assembles for sm_75
# NVRTC has no C library headers: <stdint.h> is given as the LP64 typedefs glibc uses.
# NVRTC 12.0 also writes 38 unreferenced `nv::target` constants as .global variables (about
# 300 bytes of module memory); they are left as the compiler wrote them.
#
# Needs python3 with pip and network access to PyPI. CUDA_IPC_PTX_ARCH (default compute_75).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
arch="${CUDA_IPC_PTX_ARCH:-compute_75}"
wheels=("nvidia-cuda-nvrtc-cu12==12.0.76" "nvidia-cuda-nvcc-cu12==12.0.76")
expected_isa="8.0"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "regen-ptx: installing ${wheels[*]} into $tmp" >&2
python3 -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
  --target "$tmp/cu12" "${wheels[@]}"
nvrtc="$tmp/cu12/nvidia/cuda_nvrtc/lib/libnvrtc.so.12"
ptxas="$tmp/cu12/nvidia/cuda_nvcc/bin/ptxas"

cat >"$tmp/stdint.h" <<'H'
#pragma once
typedef signed char int8_t;
typedef unsigned char uint8_t;
typedef short int16_t;
typedef unsigned short uint16_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef long int64_t;
typedef unsigned long uint64_t;
typedef long intptr_t;
typedef unsigned long uintptr_t;
H

for cu in "$root"/kernels/*.cu; do
  ptx="${cu%.cu}.ptx"
  python3 - "$nvrtc" "$cu" "$tmp/out.ptx" "$tmp/stdint.h" "$arch" <<'PY'
import ctypes, os, sys
nvrtc_path, source, output, stdint, arch = sys.argv[1:]
nvrtc = ctypes.CDLL(nvrtc_path)
def ok(rc, what):
    if rc != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        sys.exit(f"regen-ptx: {what} failed: {nvrtc.nvrtcGetErrorString(rc).decode()}")
prog = ctypes.c_void_p()
headers = (ctypes.c_char_p * 1)(open(stdint, "rb").read())
names = (ctypes.c_char_p * 1)(b"stdint.h")
ok(nvrtc.nvrtcCreateProgram(ctypes.byref(prog), open(source, "rb").read(),
                            os.path.basename(source).encode(), 1, headers, names),
   "nvrtcCreateProgram")
options = (ctypes.c_char_p * 1)(f"--gpu-architecture={arch}".encode())
rc = nvrtc.nvrtcCompileProgram(prog, 1, options)
size = ctypes.c_size_t()
nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
log = ctypes.create_string_buffer(size.value)
nvrtc.nvrtcGetProgramLog(prog, log)
if log.value.strip():
    sys.stderr.write(log.value.decode())
ok(rc, f"compiling {source}")
ok(nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
ptx = ctypes.create_string_buffer(size.value)
ok(nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
open(output, "wb").write(ptx.value)
PY
  isa="$(sed -n 's/^\.version \([0-9.]*\)$/\1/p' "$tmp/out.ptx")"
  [[ "$isa" == "$expected_isa" ]] || { echo "regen-ptx: PTX ISA $isa, expected $expected_isa" >&2; exit 1; }
  "$ptxas" "-arch=sm_${arch#compute_}" "$tmp/out.ptx" -o /dev/null
  mv "$tmp/out.ptx" "$ptx"
  echo "regenerated $ptx (PTX ISA $isa, checked by ptxas 12.0 for sm_${arch#compute_})"
done
