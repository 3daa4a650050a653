// Design probe for channels (not part of the crate): host-registered memfd control words,
// stream wait/write latency (sysmem vs device mem), and VMM read speed by reservation alignment.
#include <cuda.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>
#include <algorithm>
#include <unistd.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <time.h>
#define CK(x) do { CUresult r_ = (x); if (r_ != CUDA_SUCCESS) { const char* n_; cuGetErrorName(r_, &n_); printf("FAIL %s -> %s (line %d)\n", #x, n_, __LINE__); exit(1);} } while (0)

extern "C" __global__ void readsum(const uint4* p, size_t n, unsigned long long* out) {
  unsigned long long s = 0;
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    uint4 v = p[i]; s += v.x ^ v.y ^ v.z ^ v.w;
  }
  if (s == 0x1234567) atomicAdd(out, s);
}
__global__ void stamp(unsigned long long* t) { unsigned long long g; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(g)); *t = g; }

#define GOLDEN64 0x9E3779B97F4A7C15ull
__device__ __forceinline__ uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ uint64_t digest_term(uint32_t word, uint64_t index) {
    return mix64((uint64_t)word ^ (index * GOLDEN64));
}
extern "C" __global__ void fillpat(uint32_t* w, uint64_t n, uint32_t seed) {
  for (uint64_t i = blockIdx.x * (uint64_t)blockDim.x + threadIdx.x; i < n; i += (uint64_t)gridDim.x * blockDim.x)
    w[i] = (uint32_t)mix64(((uint64_t)seed << 32) ^ (i * GOLDEN64 + 1ull));
}
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

static double now() { timespec ts; clock_gettime(CLOCK_MONOTONIC, &ts); return ts.tv_sec + ts.tv_nsec * 1e-9; }

static void pingpong(int gpu_parent, int gpu_child, bool devmem_words, int drop_uid) {
  const size_t CTL = 64 * 1024;
  int fd = syscall(SYS_memfd_create, "ctl", 0);
  if (ftruncate(fd, CTL)) exit(4);
  volatile unsigned long long* host = (volatile unsigned long long*)mmap(0, CTL, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  memset((void*)host, 0, CTL);
  const int K = 2000;
  pid_t pid = fork();
  bool child = pid == 0;
  if (child && drop_uid >= 0) { if (setgid(drop_uid) || setuid(drop_uid)) { perror("setuid"); exit(2);} }
  CK(cuInit(0));
  CUdevice dev; CK(cuDeviceGet(&dev, child ? gpu_child : gpu_parent));
  CUcontext ctx; CK(cuDevicePrimaryCtxRetain(&ctx, dev)); CK(cuCtxSetCurrent(ctx));
  CUstream s; CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUdeviceptr ping, pong;
  CUdeviceptr dbase = 0;
  if (!devmem_words) {
    CK(cuMemHostRegister((void*)host, CTL, CU_MEMHOSTREGISTER_DEVICEMAP | CU_MEMHOSTREGISTER_PORTABLE));
    CUdeviceptr d; CK(cuMemHostGetDevicePointer(&d, (void*)host, 0));
    ping = d; pong = d + 128;
  } else {
    // words in device memory of the parent's GPU: VMM alloc exported via fd through the memfd? simpler: pass fd by pidfd_getfd
    size_t gran = 2 << 20;
    if (!child) {
      CUmemAllocationProp prop = {}; prop.type = CU_MEM_ALLOCATION_TYPE_PINNED; prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE; prop.location.id = gpu_parent; prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
      CUmemGenericAllocationHandle h; CK(cuMemCreate(&h, gran, &prop, 0));
      int efd; CK(cuMemExportToShareableHandle(&efd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
      CK(cuMemAddressReserve(&dbase, gran, 0, 0, 0)); CK(cuMemMap(dbase, gran, 0, h, 0));
      CUmemAccessDesc a = {}; a.location.type = CU_MEM_LOCATION_TYPE_DEVICE; a.location.id = gpu_parent; a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE; CK(cuMemSetAccess(dbase, gran, &a, 1));
      CK(cuMemsetD8(dbase, 0, gran));
      host[100] = efd; host[101] = getpid(); __sync_synchronize(); host[102] = 1;
    } else {
      while (host[102] != 1) usleep(100);
      int pfd = syscall(SYS_pidfd_open, (pid_t)host[101], 0);
      int efd = syscall(SYS_pidfd_getfd, pfd, (int)host[100], 0);
      if (efd < 0) { perror("pidfd_getfd"); exit(3); }
      CUmemGenericAllocationHandle h; CK(cuMemImportFromShareableHandle(&h, (void*)(long)efd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
      CK(cuMemAddressReserve(&dbase, gran, 0, 0, 0)); CK(cuMemMap(dbase, gran, 0, h, 0));
      CUmemAccessDesc a = {}; a.location.type = CU_MEM_LOCATION_TYPE_DEVICE; a.location.id = gpu_child; a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE; CK(cuMemSetAccess(dbase, gran, &a, 1));
    }
    ping = dbase; pong = dbase + 128;
  }
  // barrier
  __sync_fetch_and_add((unsigned long long*)&host[200], 1);
  while (host[200] < 2) ;
  double t0 = now();
  if (!child) {
    for (int i = 1; i <= K; i++) { CK(cuStreamWriteValue64(s, ping, i, 0)); CK(cuStreamWaitValue64(s, pong, i, CU_STREAM_WAIT_VALUE_GEQ)); }
  } else {
    for (int i = 1; i <= K; i++) { CK(cuStreamWaitValue64(s, ping, i, CU_STREAM_WAIT_VALUE_GEQ)); CK(cuStreamWriteValue64(s, pong, i, 0)); }
  }
  CK(cuStreamSynchronize(s));
  double t1 = now();
  if (!child) {
    int st; waitpid(pid, &st, 0);
    printf("pingpong words=%s gpu%d<->gpu%d child_uid=%d: round trip %.2f us (K=%d), child exit %d\n", devmem_words ? "devmem" : "sysmem-memfd", gpu_parent, gpu_child, drop_uid, (t1 - t0) / K * 1e6, K, WEXITSTATUS(st));
    // CPU sees GPU writes in sysmem: GPU writes, CPU polls
    if (!devmem_words) {
      double worst = 0, sum = 0;
      for (int i = 1; i <= 200; i++) {
        double a = now(); CK(cuStreamWriteValue64(s, ping + 256, i, 0)); while (host[32] != (unsigned long long)i) ; double b = now();
        sum += b - a; worst = std::max(worst, b - a);
      }
      printf("  cpu sees gpu write to sysmem: mean %.2f us max %.2f us\n", sum / 200 * 1e6, worst * 1e6);
      double s2 = 0;
      for (int i = 1; i <= 200; i++) {
        CK(cuStreamWaitValue64(s, ping + 512, i, CU_STREAM_WAIT_VALUE_GEQ)); CK(cuStreamWriteValue64(s, ping + 768, i, 0));
        double a = now(); host[64] = i; while (host[96] != (unsigned long long)i) ; s2 += now() - a;
      }
      printf("  gpu sees cpu write to sysmem and answers: mean %.2f us\n", s2 / 200 * 1e6);
    }
    CK(cuStreamSynchronize(s));
  } else {
    exit(0);
  }
  munmap((void*)host, CTL); close(fd);
}

static float time_read(CUfunction f, CUdeviceptr p, size_t bytes, CUstream s, int sms) {
  CUevent a, b; CK(cuEventCreate(&a, 0)); CK(cuEventCreate(&b, 0));
  static CUdeviceptr out = 0; if (!out) CK(cuMemAlloc(&out, 8));
  size_t n = bytes / 16;
  void* args[] = {&p, &n, &out};
  std::vector<float> t;
  for (int r = 0; r < 25; r++) {
    CK(cuEventRecord(a, s));
    CK(cuLaunchKernel(f, sms * 8, 1, 1, 256, 1, 1, 0, s, args, 0));
    CK(cuEventRecord(b, s)); CK(cuEventSynchronize(b));
    float ms; CK(cuEventElapsedTime(&ms, a, b)); if (r >= 5) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

static CUdeviceptr vmm_map(CUmemGenericAllocationHandle h, size_t bytes, size_t align, int gpu) {
  CUdeviceptr p; CK(cuMemAddressReserve(&p, bytes, align, 0, 0)); CK(cuMemMap(p, bytes, 0, h, 0));
  CUmemAccessDesc a = {}; a.location.type = CU_MEM_LOCATION_TYPE_DEVICE; a.location.id = gpu; a.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE; CK(cuMemSetAccess(p, bytes, &a, 1));
  return p;
}

static void readspeed(const char* ptxpath) {
  CK(cuInit(0));
  CUdevice dev; CK(cuDeviceGet(&dev, 0));
  CUcontext ctx; CK(cuDevicePrimaryCtxRetain(&ctx, dev)); CK(cuCtxSetCurrent(ctx));
  CUmodule m; CK(cuModuleLoad(&m, ptxpath)); CUfunction f; CK(cuModuleGetFunction(&f, m, "readsum"));
  int sms; CK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
  CUstream s; CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUmemAllocationProp prop = {}; prop.type = CU_MEM_ALLOCATION_TYPE_PINNED; prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE; prop.location.id = 0; prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  size_t gmin, grec;
  CK(cuMemGetAllocationGranularity(&gmin, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM));
  CK(cuMemGetAllocationGranularity(&grec, &prop, CU_MEM_ALLOC_GRANULARITY_RECOMMENDED));
  printf("granularity min %zu recommended %zu\n", gmin, grec);
  for (size_t mib : {256, 1024}) {
    size_t bytes = mib << 20;
    CUdeviceptr a; CK(cuMemAlloc(&a, bytes)); CK(cuMemsetD8(a, 1, bytes));
    float ta = time_read(f, a, bytes, s, sms);
    CUmemGenericAllocationHandle h; CK(cuMemCreate(&h, bytes, &prop, 0));
    CUdeviceptr v0 = vmm_map(h, bytes, 0, 0); CK(cuMemsetD8(v0, 1, bytes));
    float t0 = time_read(f, v0, bytes, s, sms);
    printf("  %4zu MiB: va align0 = %#llx\n", mib, (unsigned long long)v0);
    size_t big = bytes; // align the VA to the allocation size (power of two)
    CUdeviceptr v1 = vmm_map(h, bytes, big, 0);
    float t1 = time_read(f, v1, bytes, s, sms);
    int efd; CK(cuMemExportToShareableHandle(&efd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
    CUmemGenericAllocationHandle hi; CK(cuMemImportFromShareableHandle(&hi, (void*)(long)efd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    CUdeviceptr vi0 = vmm_map(hi, bytes, 0, 0); float ti0 = time_read(f, vi0, bytes, s, sms);
    CUdeviceptr vi1 = vmm_map(hi, bytes, big, 0); float ti1 = time_read(f, vi1, bytes, s, sms);
    // a VMM allocation made of 2 MiB chunks mapped separately
    CUdeviceptr vc; CK(cuMemAddressReserve(&vc, bytes, big, 0, 0));
    std::vector<CUmemGenericAllocationHandle> hs;
    for (size_t off = 0; off < bytes; off += gmin) { CUmemGenericAllocationHandle hc; CK(cuMemCreate(&hc, gmin, &prop, 0)); CK(cuMemMap(vc + off, gmin, 0, hc, 0)); hs.push_back(hc); }
    { CUmemAccessDesc ad = {}; ad.location.type = CU_MEM_LOCATION_TYPE_DEVICE; ad.location.id = 0; ad.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE; CK(cuMemSetAccess(vc, bytes, &ad, 1)); }
    CK(cuMemsetD8(vc, 1, bytes)); float tc = time_read(f, vc, bytes, s, sms);
    unsigned long long ua = a;
    printf("  %4zu MiB read (GB/s): cuMemAlloc %.0f (va %#llx, align %s) | vmm va-align-0 %.0f | vmm va-align-size %.0f | imported align-0 %.0f | imported align-size %.0f | 2MiB-chunks %.0f\n",
      mib, bytes / ta / 1e6, ua, (ua % (1ull << 30)) == 0 ? "1G" : (ua % (512ull << 20)) == 0 ? "512M" : (ua % (2ull << 20)) == 0 ? "2M" : "<2M",
      bytes / t0 / 1e6, bytes / t1 / 1e6, bytes / ti0 / 1e6, bytes / ti1 / 1e6, bytes / tc / 1e6);
    // order effects: rerun cuMemAlloc and align-0 once more
    float ta2 = time_read(f, a, bytes, s, sms), t02 = time_read(f, v0, bytes, s, sms), ti02 = time_read(f, vi0, bytes, s, sms);
    printf("  %4zu MiB again: cuMemAlloc %.0f | vmm va-align-0 %.0f | imported align-0 %.0f\n", mib, bytes / ta2 / 1e6, bytes / t02 / 1e6, bytes / ti02 / 1e6);
  }
}


static float time_k(CUfunction f, CUdeviceptr p, size_t bytes, CUstream s, int sms, bool cks) {
  CUevent a, b; CK(cuEventCreate(&a, 0)); CK(cuEventCreate(&b, 0));
  static CUdeviceptr out = 0; if (!out) CK(cuMemAlloc(&out, 8));
  size_t n = cks ? bytes / 4 : bytes / 16;
  void* args[] = {&p, &n, &out};
  std::vector<float> t;
  for (int r = 0; r < 25; r++) {
    CK(cuEventRecord(a, s));
    CK(cuLaunchKernel(f, sms * 8, 1, 1, 256, 1, 1, 0, s, args, 0));
    CK(cuEventRecord(b, s)); CK(cuEventSynchronize(b));
    float ms; CK(cuEventElapsedTime(&ms, a, b)); if (r >= 5) t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}
static void fill(CUfunction f, CUdeviceptr p, size_t bytes, CUstream s, int sms) {
  uint64_t n = bytes / 4; uint32_t seed = 7; void* args[] = {&p, &n, &seed};
  CK(cuLaunchKernel(f, sms * 8, 1, 1, 256, 1, 1, 0, s, args, 0)); CK(cuStreamSynchronize(s));
}
static void read2(const char* ptxpath) {
  CK(cuInit(0));
  CUdevice dev; CK(cuDeviceGet(&dev, 0));
  char name[128]; CK(cuDeviceGetName(name, 128, dev)); printf("%s\n", name);
  CUcontext ctx; CK(cuDevicePrimaryCtxRetain(&ctx, dev)); CK(cuCtxSetCurrent(ctx));
  CUmodule m; CK(cuModuleLoad(&m, ptxpath));
  CUfunction fr, fc, ff; CK(cuModuleGetFunction(&fr, m, "readsum")); CK(cuModuleGetFunction(&fc, m, "checksum")); CK(cuModuleGetFunction(&ff, m, "fillpat"));
  int sms; CK(cuDeviceGetAttribute(&sms, CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT, dev));
  CUstream s; CK(cuStreamCreate(&s, CU_STREAM_NON_BLOCKING));
  CUmemAllocationProp prop = {}; prop.type = CU_MEM_ALLOCATION_TYPE_PINNED; prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE; prop.location.id = 0; prop.requestedHandleTypes = CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR;
  for (size_t mib : {256, 1024}) {
    size_t bytes = mib << 20, vbytes = bytes + (2 << 20);  // the crate's VMM buffers: data + signal words, rounded up
    CUdeviceptr a; CK(cuMemAlloc(&a, bytes)); CK(cuMemsetD8(a, 0, bytes));
    CUmemGenericAllocationHandle h; CK(cuMemCreate(&h, vbytes, &prop, 0));
    CUdeviceptr v = vmm_map(h, vbytes, 2 << 20, 0); CK(cuMemsetD8(v, 0, vbytes));
    int efd; CK(cuMemExportToShareableHandle(&efd, h, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0));
    CUmemGenericAllocationHandle hi; CK(cuMemImportFromShareableHandle(&hi, (void*)(long)efd, CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR));
    CUdeviceptr vi = vmm_map(hi, vbytes, 0, 0);
    for (int pass = 0; pass < 2; pass++) {
      printf("  %4zu MiB %-8s checksum: cuMemAlloc %.1f us | vmm %.1f us | imported %.1f us ;; readsum: %.1f | %.1f | %.1f us\n", mib, pass ? "pattern" : "zeros",
        1e3 * time_k(fc, a, bytes, s, sms, true), 1e3 * time_k(fc, v, bytes, s, sms, true), 1e3 * time_k(fc, vi, bytes, s, sms, true),
        1e3 * time_k(fr, a, bytes, s, sms, false), 1e3 * time_k(fr, v, bytes, s, sms, false), 1e3 * time_k(fr, vi, bytes, s, sms, false));
      fill(ff, a, bytes, s, sms); fill(ff, v, bytes, s, sms);
    }
    // mixed: local zeros vs imported pattern (what benches/transfer.rs compared)
    CK(cuMemsetD8(a, 0, bytes));
    printf("  %4zu MiB as benched (local zeros vs imported pattern) checksum: %.1f vs %.1f us\n", mib, 1e3 * time_k(fc, a, bytes, s, sms, true), 1e3 * time_k(fc, vi, bytes, s, sms, true));
  }
}

int main(int argc, char** argv) {
  setvbuf(stdout, 0, _IONBF, 0);
  if (argc > 1 && !strcmp(argv[1], "read")) { readspeed(argv[2]); return 0; }
  if (argc > 1 && !strcmp(argv[1], "read2")) { read2(argv[2]); return 0; }
  if (argc > 4) { pingpong(atoi(argv[1]), atoi(argv[2]), atoi(argv[3]), atoi(argv[4])); return 0; }
  return 1;
}
