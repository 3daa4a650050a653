// Kernels used by cuda-ipc: deterministic patterns that another process can
// check, a GPU digest the CPU can reproduce, in-place transforms, and the frames of the
// channel examples (fill, verify, timestamp).
//
// Every kernel is `extern "C"` so its PTX entry name is the plain name, and
// every kernel but stamp_time (one thread) uses a grid-stride loop so any launch shape
// covers any length.
// The CPU references live in src/kernels/reference.rs; keep them in step.

#include <stdint.h>

#define GOLDEN64 0x9E3779B97F4A7C15ull

// splitmix64's finaliser: a bijective 64-bit mix.
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// The pattern word at `index` for `seed`.
__device__ __forceinline__ uint32_t pattern_word(uint32_t seed, uint64_t index) {
    return (uint32_t)mix64(((uint64_t)seed << 32) ^ (index * GOLDEN64 + 1ull));
}

// The digest term of `word` at `index`; the digest is the wrapping sum of all terms.
__device__ __forceinline__ uint64_t digest_term(uint32_t word, uint64_t index) {
    return mix64((uint64_t)word ^ (index * GOLDEN64));
}

extern "C" __global__ void fill_pattern(uint32_t *words, uint64_t n, uint32_t seed) {
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        words[i] = pattern_word(seed, i);
    }
}

extern "C" __global__ void iota_u32(uint32_t *out, uint64_t n, uint32_t start) {
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = start + (uint32_t)i;
    }
}

// words[i] = words[i] * 0x9E3779B1 + key (wrapping): exact and invertible.
extern "C" __global__ void transform_words(uint32_t *words, uint64_t n, uint32_t key) {
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        words[i] = words[i] * 0x9E3779B1u + key;
    }
}

// words[i] += value, atomically: several processes may add to one shared buffer at once,
// and the result does not depend on their order.
extern "C" __global__ void add_words_atomic(uint32_t *words, uint64_t n, uint32_t value) {
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        atomicAdd(&words[i], value);
    }
}

// x[i] = a * x[i] + b, with one fused multiply-add (the CPU reference uses mul_add).
extern "C" __global__ void scale_add_f32(float *x, uint64_t n, float a, float b) {
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        x[i] = __fmaf_rn(a, x[i], b);
    }
}

// *out += sum over i of digest_term(words[i], i), wrapping. *out must be zeroed first.
// Reads 16 bytes per load when `words` is 16-byte aligned, then a warp reduction
// and one atomic per warp.
extern "C" __global__ void checksum(const uint32_t *__restrict__ words, uint64_t n,
                                    unsigned long long *out) {
    uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    uint64_t acc = 0;
    if (((uintptr_t)words & 15u) == 0) {
        const uint4 *quads = (const uint4 *)words;
        uint64_t nq = n / 4;
        for (uint64_t q = tid; q < nq; q += stride) {
            uint4 v = quads[q];
            uint64_t i = q * 4;
            acc += digest_term(v.x, i) + digest_term(v.y, i + 1) + digest_term(v.z, i + 2) +
                   digest_term(v.w, i + 3);
        }
        for (uint64_t i = nq * 4 + tid; i < n; i += stride) {
            acc += digest_term(words[i], i);
        }
    } else {
        for (uint64_t i = tid; i < n; i += stride) {
            acc += digest_term(words[i], i);
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        acc += __shfl_down_sync(0xffffffffu, acc, offset);
    }
    if ((threadIdx.x & 31u) == 0 && acc != 0) {
        atomicAdd(out, (unsigned long long)acc);
    }
}

// The word of frame `seq` at `index`: what fill_frame writes and verify_frame expects.
// A bijection of `index` for each `seq` (mix64 is bijective, and xor with a per-frame
// constant too), and two frames share a word at a position only by chance (about one word in
// 2^32), so a stale, torn or misplaced frame shows as almost every word wrong.
__device__ __forceinline__ uint32_t frame_word(uint64_t seq, uint64_t index) {
    return (uint32_t)mix64((seq * GOLDEN64) ^ (index + 0x51ED270B27ull));
}

// words[i] = frame_word(seq, i).
extern "C" __global__ void fill_frame(uint32_t *words, uint64_t n, uint64_t seq) {
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        words[i] = frame_word(seq, i);
    }
}

// errors[0] += the number of i with words[i] != frame_word(seq, i). errors[0] is not zeroed.
// Reads 16 bytes per load when `words` is 16-byte aligned, then a warp reduction and one
// atomic per warp that found an error.
extern "C" __global__ void verify_frame(const uint32_t *__restrict__ words, uint64_t n,
                                        uint64_t seq, unsigned int *errors) {
    uint64_t tid = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x;
    uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    unsigned int bad = 0;
    uint64_t tail = 0;
    if (((uintptr_t)words & 15u) == 0) {
        const uint4 *quads = (const uint4 *)words;
        uint64_t nq = n / 4;
        for (uint64_t q = tid; q < nq; q += stride) {
            uint4 v = quads[q];
            uint64_t i = q * 4;
            bad += (v.x != frame_word(seq, i)) + (v.y != frame_word(seq, i + 1)) +
                   (v.z != frame_word(seq, i + 2)) + (v.w != frame_word(seq, i + 3));
        }
        tail = nq * 4;
    }
    for (uint64_t i = tail + tid; i < n; i += stride) {
        bad += words[i] != frame_word(seq, i);
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        bad += __shfl_down_sync(0xffffffffu, bad, offset);
    }
    if ((threadIdx.x & 31u) == 0 && bad != 0) {
        atomicAdd(errors, bad);
    }
}

// out[index] = the GPU's global timer (%globaltimer, nanoseconds), written by one thread when
// the stream reaches this launch. Launched as one thread; any others do nothing.
extern "C" __global__ void stamp_time(unsigned long long *out, uint64_t index) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        out[index] = t;
    }
}
