// Kernels of the user-module tests (tests/module.rs, tests/gpu_module.rs). Regenerate the
// fixtures beside this file with tests/data/regen.sh.
#include <stdint.h>

// y[i] = a * x[i] + y[i]
extern "C" __global__ void saxpy(float *y, const float *x, float a, uint32_t n) {
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
        y[i] = fmaf(a, x[i], y[i]);
    }
}

// words[i] += value, on any number of words, with a parameter of every size (u8, u16, u64)
// so that packing mistakes show in the result.
extern "C" __global__ void add_mixed(uint32_t *words, uint8_t add8, uint16_t add16,
                                     uint64_t n, uint32_t add32) {
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (uint64_t)gridDim.x * blockDim.x) {
        words[i] += (uint32_t)add8 + (uint32_t)add16 + add32;
    }
}
