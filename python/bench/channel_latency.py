#!/usr/bin/env python3
"""Channel latency from Python: publish -> the subscriber's first GPU instruction on the frame,
4 KiB frames, two processes on one GPU, paced (a ping-pong: no frame queues behind another).
The Python twin of `benches/channel.rs`'s latency case (docs/benchmarks.md).

The ping process publishes on channel A; the echo process receives it (GPU-side wait on its
torch stream) and publishes a frame back on channel B; ping receives that and synchronizes
before the next round. With CuPy, one-thread kernels read %globaltimer (one clock per GPU):
  a: ping's kernel right before `publish` (written into frame A),
  b: echo's first kernel after `receive` (copies a, writes b into frame B),
  c: ping's first kernel after receiving B.
  one-way = b - a (same GPU: same timer); round trip / 2 = (c - a) / 2.
Always (CPU clock, CLOCK_MONOTONIC): ping's time before `publish` to after its stream passed
the wait for B; reported halved (one way, "cpu rtt/2").

Usage: channel_latency.py --rounds 2000 --warmup 200 --out X.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

FRAME = 4096

KERNELS = r'''
__device__ __forceinline__ unsigned long long now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}
extern "C" __global__ void stamp_a(unsigned long long* frame) { frame[0] = now(); }
extern "C" __global__ void echo(const unsigned long long* in, unsigned long long* out) {
    unsigned long long t = now();
    out[0] = in[0];
    out[1] = t;
}
extern "C" __global__ void stamp_c(const unsigned long long* in, unsigned long long* res,
                                   long long i) {
    unsigned long long t = now();
    res[3 * i] = in[0];
    res[3 * i + 1] = in[1];
    res[3 * i + 2] = t;
}
'''


class Kernels:
    def __init__(self, torch_stream):
        import cupy
        self.cupy = cupy
        mod = cupy.RawModule(code=KERNELS)
        self.k = {n: mod.get_function(n) for n in ("stamp_a", "echo", "stamp_c")}
        ptr = torch_stream.cuda_stream
        self.ext = cupy.cuda.Stream.null if ptr == 0 else cupy.cuda.ExternalStream(ptr)

    def __call__(self, name, *args):
        cp = self.cupy
        conv = [cp.uint64(a) if i < 2 else cp.int64(a) for i, a in enumerate(args)]
        with self.ext:
            self.k[name]((1,), (1,), tuple(conv))


def make_kernels(stream, want: bool):
    if not want:
        return None
    try:
        return Kernels(stream)
    except Exception as e:  # noqa: BLE001
        print(f"[channel] GPU stamps off: {type(e).__name__}: {e}", file=sys.stderr)
        return None


def ping(d: str, total: int, slots: int, device: int, timeout: float, gpu: bool) -> dict:
    import torch
    import cuda_ipc
    torch.cuda.set_device(device)
    torch.cuda.set_stream(torch.cuda.Stream(device))  # a stream of our own, as the Rust bench
    stream = torch.cuda.current_stream()
    k = make_kernels(stream, gpu)
    res = torch.zeros(3 * total, dtype=torch.int64, device=f"cuda:{device}")
    pub = cuda_ipc.Publisher(os.path.join(d, "a"), (FRAME,), "uint8", device=device,
                             slots=slots, policy="block")
    sub = cuda_ipc.Subscriber(os.path.join(d, "b"), (FRAME,), "uint8", device=device,
                              timeout=timeout, start="next")
    pub.wait_subscribers(1, timeout)
    cpu = []
    try:
        for i in range(total):
            loan = pub.loan(timeout)
            if k is not None:
                k("stamp_a", loan.array.data_ptr)
            t0 = time.monotonic_ns()
            loan.publish(stream)
            s = sub.receive(timeout)
            if k is not None:
                k("stamp_c", s.array.data_ptr, res.data_ptr(), i)
            stream.synchronize()
            t1 = time.monotonic_ns()
            s.release(stream)
            cpu.append(t1 - t0)
    finally:
        pub.close()
    torch.cuda.synchronize()
    r = res.cpu().tolist() if k is not None else None
    sub.close()
    return {"cpu_rtt_ns": cpu, "gpu": r}


def echo(d: str, total: int, slots: int, device: int, timeout: float, gpu: bool) -> dict:
    import torch
    import cuda_ipc
    torch.cuda.set_device(device)
    torch.cuda.set_stream(torch.cuda.Stream(device))  # a stream of our own, as the Rust bench
    stream = torch.cuda.current_stream()
    k = make_kernels(stream, gpu)
    pub = cuda_ipc.Publisher(os.path.join(d, "b"), (FRAME,), "uint8", device=device,
                             slots=slots, policy="block")
    sub = cuda_ipc.Subscriber(os.path.join(d, "a"), (FRAME,), "uint8", device=device,
                              timeout=timeout, start="next")
    pub.wait_subscribers(1, timeout)
    try:
        for _ in range(total):
            s = sub.receive(timeout)
            loan = pub.loan(timeout)
            if k is not None:
                k("echo", s.array.data_ptr, loan.array.data_ptr)
            loan.publish(stream)
            s.release(stream)
    finally:
        torch.cuda.synchronize()
        pub.close()
        sub.close()
    return {"gpu": k is not None}


def analyse(out: dict, warmup: int) -> dict:
    cpu = out["cpu_rtt_ns"][warmup:]
    res = {"cpu_one_way_rtt_half": common.stats_us([x / 2 for x in cpu]),
           "cpu_rtt": common.stats_us(cpu)}
    g = out.get("gpu")
    if g:
        a, b, c = g[0::3][warmup:], g[1::3][warmup:], g[2::3][warmup:]
        ok = [(x, y, z) for x, y, z in zip(a, b, c) if x and y and z]
        res["gpu_one_way"] = common.stats_us([y - x for x, y, _ in ok])
        res["gpu_rtt_half"] = common.stats_us([(z - x) / 2 for x, _, z in ok])
        res["gpu_rounds_bad"] = len(a) - len(ok)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--slots", type=int, default=8)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--no-gpu-stamps", action="store_true")
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    import torch.multiprocessing as tmp
    ctx = tmp.get_context("spawn")
    total = a.rounds + a.warmup
    gpu = not a.no_gpu_stamps
    with common.rendezvous_dir("chlat") as d:
        args = (d, total, a.slots, a.device, a.timeout, gpu)
        got = common.run_workers(ctx, {"ping": (ping, args), "echo": (echo, args)},
                                 timeout=a.timeout * 2 + total * 0.05)
    res = {"frame_bytes": FRAME, "rounds": a.rounds, "warmup": a.warmup, "slots": a.slots,
           **analyse(got["ping"], a.warmup)}
    g = res.get("gpu_one_way")
    c = res["cpu_one_way_rtt_half"]
    print(f"channel 4 KiB same GPU: gpu one-way p50 {common.fmt_us(g and g['p50_us'])} "
          f"p99 {common.fmt_us(g and g['p99_us'])}; cpu rtt/2 p50 {common.fmt_us(c['p50_us'])} "
          f"p99 {common.fmt_us(c['p99_us'])}", flush=True)
    if a.out:
        common.write_json(a.out, {**res, "raw_cpu_rtt_ns": got["ping"]["cpu_rtt_ns"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
