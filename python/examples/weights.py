#!/usr/bin/env python3
"""Versioned weight publication with cuda-ipc: one trainer, N inference processes.

The trainer lays every parameter of a model out at an aligned offset in ONE bucket (a byte
buffer) and publishes each new version of the weights as one frame of a cuda-ipc channel
whose frames are whole buckets (`slots` buckets in one pool, default 2: the trainer writes
version v+1 into one while the inference processes read version v from the other, so nobody
ever sees a torn version). Each inference process

- reads the manifest (name, dtype, shape, offset of every parameter) once,
- maps the pool once when it subscribes (no handle per tensor, none per version),
- gets each new version with `Subscriber.receive()`: the CPU returns as soon as the trainer
  has claimed the slot, and the *GPU* waits (a stream wait on the inference process's
  current torch stream) until the trainer's copies into it are complete; work queued after
  `receive` reads the new weights, with no CPU synchronization,
- holds the newest version until the next one arrives, then releases the older one.

Run everything (1 trainer + 4 inference processes, 1 GiB of bf16 weights, on GPU 0)::

    python python/examples/weights.py --subscribers 4 --size-gib 1 --versions 20

or the roles one by one (e.g. in separate pods sharing the directory)::

    python python/examples/weights.py --role trainer   --dir /run/cuda-ipc/w --subscribers 2
    python python/examples/weights.py --role inference --dir /run/cuda-ipc/w --rank 0
    python python/examples/weights.py --role inference --dir /run/cuda-ipc/w --rank 1

`--check` runs what needs no GPU (the model's layout, the manifest) and exits.

What is timed (CLOCK_MONOTONIC of the host, comparable between processes; and, with CuPy,
the GPU's %globaltimer, one clock per GPU):
- t_publish: the trainer's clock right before `loan.publish()`; its copies into the slot are
  complete (it synchronized its stream first), so the figure is the hand-over, not the copy.
- t_visible: an inference process's clock once its stream has passed the GPU-side wait for
  that version (`receive`, then a stamp kernel, then `stream.synchronize()`).
- t_ready: t_visible plus building the per-parameter views (name -> tensor) of the version.
- gpu: the inference process's first kernel after `receive` minus the trainer's kernel right
  before `publish` (%globaltimer, same GPU only).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, asdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

GIB = 1 << 30
ALIGN = 256  # every parameter's offset in the bucket (bytes); >= any dtype's size
VERSION_NAME = "__version__"  # int64[1] at offset 0: the version the bucket holds

ITEMSIZE = {"bfloat16": 2, "float16": 2, "float32": 4, "int64": 8, "uint8": 1}

# (hidden, mlp) of transformer-like models, smallest first; vocabulary 32000.
LADDER = [(256, 688), (512, 1376), (1024, 2816), (1536, 4096), (2048, 5632), (3072, 8192),
          (4096, 11008), (5120, 13824), (6144, 16384), (8192, 28672)]
VOCAB = 32000
MAX_LAYERS = 32


def align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


@dataclass
class Param:
    name: str
    dtype: str
    shape: Tuple[int, ...]
    offset: int = 0

    @property
    def numel(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * ITEMSIZE[self.dtype]


def model_params(target_bytes: int, dtype: str = "bfloat16") -> List[Param]:
    """Synthetic transformer-like parameters adding up to at most `target_bytes` (at least
    one layer): an embedding, per layer q/k/v/o (h x h), gate/up (m x h), down (h x m) and two
    norms (h), and a final norm. The hidden size is the smallest of LADDER that needs at most
    MAX_LAYERS layers, so 1 GiB gives ~150 tensors and 16 GiB ~240."""
    isz = ITEMSIZE[dtype]
    for h, m in LADDER:
        emb = VOCAB * h * isz
        layer = (4 * h * h + 3 * h * m + 2 * h) * isz
        layers = max(1, (target_bytes - emb - h * isz) // layer)
        if layers <= MAX_LAYERS or (h, m) == LADDER[-1]:
            break
    ps = [Param("embed_tokens.weight", dtype, (VOCAB, h))]
    for i in range(layers):
        p = f"layers.{i}."
        ps += [Param(p + "attn.q_proj.weight", dtype, (h, h)),
               Param(p + "attn.k_proj.weight", dtype, (h, h)),
               Param(p + "attn.v_proj.weight", dtype, (h, h)),
               Param(p + "attn.o_proj.weight", dtype, (h, h)),
               Param(p + "mlp.gate_proj.weight", dtype, (m, h)),
               Param(p + "mlp.up_proj.weight", dtype, (m, h)),
               Param(p + "mlp.down_proj.weight", dtype, (h, m)),
               Param(p + "input_norm.weight", dtype, (h,)),
               Param(p + "post_attn_norm.weight", dtype, (h,))]
    ps.append(Param("norm.weight", dtype, (h,)))
    return ps


def layout(params: Sequence[Param]) -> Tuple[List[Param], int]:
    """The bucket's layout: the version word at 0, then every parameter at the next multiple
    of ALIGN. Returns (entries with offsets, VERSION_NAME first; bucket size in bytes)."""
    out = [Param(VERSION_NAME, "int64", (1,), 0)]
    off = align(8)
    for p in params:
        out.append(Param(p.name, p.dtype, tuple(p.shape), off))
        off = align(off + p.nbytes)
    return out, off


def manifest(entries: Sequence[Param], nbytes: int) -> dict:
    return {"format": "cuda-ipc-weights/v1", "align": ALIGN, "nbytes": nbytes,
            "params": [dict(asdict(e), shape=list(e.shape)) for e in entries]}


def entries_of(man: dict) -> List[Param]:
    return [Param(p["name"], p["dtype"], tuple(p["shape"]), p["offset"]) for p in man["params"]]


def check_manifest(man: dict) -> None:
    """Every entry inside the bucket, aligned, and no two overlapping."""
    end_prev = 0
    for e in sorted(entries_of(man), key=lambda e: e.offset):
        if e.offset % man["align"] or e.offset < end_prev or e.offset + e.nbytes > man["nbytes"]:
            raise ValueError(f"bad manifest entry {e}")
        end_prev = e.offset + e.nbytes


def write_json(path: str, obj) -> None:
    """Written whole, then renamed: a reader never sees half a file."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.replace(tmp, path)


def read_json(path: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with open(path) as f:
                return json.load(f)
        except FileNotFoundError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{path} did not appear within {timeout} s")
            time.sleep(0.01)


def fill_value(version: int) -> float:
    """Exact in bf16/fp16/fp32: what every parameter holds in `version` (checked by readers)."""
    return float(version % 64 + 1)


# ----------------------------------------------------------------------------------------
# GPU pieces (torch; CuPy only for the optional %globaltimer stamps)

def views(flat, entries: Sequence[Param]) -> Dict[str, "object"]:
    """name -> tensor viewing `flat` (a uint8 tensor over the whole bucket); no copy."""
    import torch
    out = {}
    for e in entries:
        t = flat[e.offset:e.offset + e.nbytes].view(getattr(torch, e.dtype)).view(e.shape)
        out[e.name] = t
    return out


def step(params, version: int) -> None:
    """The synthetic optimizer step: every parameter holds fill_value(version)."""
    val = fill_value(version)
    for p in params:
        p.fill_(val)


def copy_all(dst, src) -> None:
    """dst[i].copy_(src[i]) for all i, batched where torch can."""
    import torch
    f = getattr(torch, "_foreach_copy_", None)
    if f is not None:
        f(dst, src)
    else:
        for d, s in zip(dst, src):
            d.copy_(s)


class GpuStamps:
    """Writes %globaltimer (ns) into a device array, on the current torch stream, with a
    one-thread CuPy kernel. `None` from `make` when CuPy or its compiler is unavailable."""

    SRC = r'''
    extern "C" __global__ void stamp(unsigned long long* out, long long i) {
        unsigned long long t;
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
        out[i] = t;
    }'''

    def __init__(self, n: int, device: int = 0):
        import cupy
        import torch
        self.cupy, self.torch = cupy, torch
        self.buf = torch.zeros(n, dtype=torch.int64, device=f"cuda:{device}")
        self.kernel = cupy.RawKernel(self.SRC, "stamp")
        self.n = n
        self.stamp(0)  # compile now, not in the timed path
        torch.cuda.synchronize()
        self.buf.zero_()

    @classmethod
    def make(cls, n: int, device: int = 0, want: bool = True) -> Optional["GpuStamps"]:
        if not want:
            return None
        try:
            return cls(n, device)
        except Exception as e:  # no CuPy, no NVRTC, ...: the CPU clock still measures
            print(f"[stamps] GPU stamps off: {type(e).__name__}: {e}", file=sys.stderr)
            return None

    def stamp(self, i: int) -> None:
        cupy, torch = self.cupy, self.torch
        ptr = torch.cuda.current_stream().cuda_stream
        with (cupy.cuda.Stream.null if ptr == 0 else cupy.cuda.ExternalStream(ptr)):
            self.kernel((1,), (1,), (cupy.uint64(self.buf.data_ptr()), cupy.int64(i % self.n)))

    def values(self) -> List[int]:
        self.torch.cuda.synchronize()
        return [int(x) for x in self.buf.cpu().tolist()]


# ----------------------------------------------------------------------------------------
# Roles

@dataclass
class Config:
    dir: str
    size_gib: float = 1.0
    versions: int = 20
    subscribers: int = 4
    slots: int = 2
    interval_ms: float = 50.0
    device: int = 0
    dtype: str = "bfloat16"
    timeout: float = 60.0
    gpu_stamps: bool = True
    stats: Optional[str] = None  # JSON of this role's timings
    quiet: bool = False

    @property
    def channel(self) -> str:
        return os.path.join(self.dir, "weights")

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.dir, "weights.manifest.json")


def log(cfg: Config, *a) -> None:
    if not cfg.quiet:
        print(*a, flush=True)


def run_trainer(cfg: Config, pace: Optional[Callable[[], None]] = None) -> dict:
    """Publishes `cfg.versions` versions. `pace` is called before each version (the bench
    passes a barrier: every inference process is idle in `receive`); by default the trainer
    waits `interval_ms` between versions."""
    import torch
    import cuda_ipc

    torch.cuda.set_device(cfg.device)
    entries, nbytes = layout(model_params(int(cfg.size_gib * GIB), cfg.dtype))
    man = manifest(entries, nbytes)
    check_manifest(man)
    dev = f"cuda:{cfg.device}"
    # The trainer's own parameters (what an optimizer updates), in torch's allocator.
    params = [torch.empty(e.shape, dtype=getattr(torch, e.dtype), device=dev)
              for e in entries[1:]]
    stamps = GpuStamps.make(cfg.versions + 1, cfg.device, cfg.gpu_stamps)
    os.makedirs(cfg.dir, mode=0o700, exist_ok=True)
    pub = cuda_ipc.Publisher(cfg.channel, (nbytes,), "uint8", device=cfg.device,
                             slots=cfg.slots, policy="block", max_held=2)
    write_json(cfg.manifest_path, man)
    log(cfg, f"[trainer] {len(entries) - 1} tensors, bucket {nbytes / GIB:.3f} GiB, "
             f"{cfg.slots} slots; waiting for {cfg.subscribers} inference processes")
    pub.wait_subscribers(cfg.subscribers, cfg.timeout)
    rows = []
    stream = torch.cuda.current_stream()
    try:
        for v in range(1, cfg.versions + 1):
            if pace is not None:
                pace()
            else:
                time.sleep(cfg.interval_ms / 1e3)
            step(params, v)  # "the optimizer step"
            t_loan0 = time.monotonic_ns()
            loan = pub.loan(cfg.timeout)  # inference processes' receive() returns here
            t_loan = time.monotonic_ns()
            slot = views(loan.torch(), entries)
            copy_all([slot[e.name] for e in entries[1:]], params)
            slot[VERSION_NAME].fill_(loan.seq)
            stream.synchronize()  # the version is complete in the slot
            t_copied = time.monotonic_ns()
            if stamps is not None:
                stamps.stamp(v)
            t_publish = time.monotonic_ns()
            seq = loan.publish(stream)
            t_published = time.monotonic_ns()
            del slot, loan
            rows.append({"version": v, "seq": seq, "t_publish": t_publish,
                         "publish_call_ns": t_published - t_publish,
                         "loan_ns": t_loan - t_loan0, "copy_ns": t_copied - t_loan})
        # Let the last version be taken before closing (a closed channel still delivers
        # every published frame, but the bench's last pace() is here).
        if pace is not None:
            pace()
    finally:
        pub.close()
    out = {"role": "trainer", "tensors": len(entries) - 1, "nbytes": nbytes,
           "rows": rows, "gpu": stamps.values() if stamps is not None else None}
    if cfg.stats:
        write_json(cfg.stats, out)
    log(cfg, f"[trainer] published {len(rows)} versions")
    return out


def run_inference(cfg: Config, rank: int, pace: Optional[Callable[[], None]] = None) -> dict:
    """Maps the pool once and takes every version with a GPU-side wait; holds the newest."""
    import torch
    import cuda_ipc

    torch.cuda.set_device(cfg.device)
    man = read_json(cfg.manifest_path, cfg.timeout)
    check_manifest(man)
    entries = entries_of(man)
    stamps = GpuStamps.make(cfg.versions + 1, cfg.device, cfg.gpu_stamps)
    sub = cuda_ipc.Subscriber(cfg.channel, (man["nbytes"],), "uint8", device=cfg.device,
                              timeout=cfg.timeout, start="next")
    stream = torch.cuda.current_stream()
    rows, bad = [], []
    held = None  # the Sample of the version in use
    weights: Dict[str, object] = {}
    try:
        while True:
            if pace is not None:
                pace()  # the bench: the trainer publishes the next version after this
            try:
                sample = sub.receive()  # GPU-side wait queued on `stream`
            except cuda_ipc.PublisherGone as gone:
                if getattr(gone, "closed", False):
                    break
                raise
            t_received = time.monotonic_ns()
            if stamps is not None:
                stamps.stamp(sample.seq)
            stream.synchronize()  # returns once the GPU passed the wait: version visible
            t_visible = time.monotonic_ns()
            new = views(sample.torch(), entries)
            t_ready = time.monotonic_ns()
            # Swap: the new version is in use; the old one goes back to the trainer (after the
            # work queued on `stream`, i.e. after whatever read it).
            weights, old = new, held
            held = sample
            if old is not None:
                old.release()
            # Check (after the timing): the version word and the first element of a few.
            v = int(weights[VERSION_NAME].item())
            want = fill_value(sample.seq)
            probe = [entries[1].name, entries[len(entries) // 2].name, entries[-1].name]
            got = [float(weights[n].reshape(-1)[0].item()) for n in probe]
            if v != sample.seq or any(g != want for g in got):
                bad.append({"seq": sample.seq, "version_word": v, "values": got, "want": want})
            rows.append({"seq": sample.seq, "missed": sample.missed, "t_received": t_received,
                         "t_visible": t_visible, "t_ready": t_ready})
            if pace is None and len(rows) % 10 == 0:
                log(cfg, f"[inference {rank}] version {sample.seq}")
            if pace is not None and len(rows) == cfg.versions:
                pace()  # the trainer's last pace() before closing
                break
    finally:
        weights = {}
        if held is not None and held.held:
            held.release()
        sub.close()
    out = {"role": "inference", "rank": rank, "rows": rows, "bad": bad,
           "gpu": stamps.values() if stamps is not None else None}
    if cfg.stats:
        write_json(cfg.stats, out)
    log(cfg, f"[inference {rank}] {len(rows)} versions, {len(bad)} wrong")
    return out


# ----------------------------------------------------------------------------------------
# Results

def pct(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank, q in [0, 100]) of xs."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    k = max(0, min(len(s) - 1, int(round(q / 100 * (len(s) - 1)))))
    return s[k]


def summarize(trainer: dict, subs: Sequence[dict], skip: int = 1) -> dict:
    """Per version, the latest subscriber's delay after t_publish (visible, ready, gpu);
    then p50/p99/max over versions (the first `skip` versions are warm-up)."""
    t_pub = {r["seq"]: r["t_publish"] for r in trainer["rows"]}
    by_seq: Dict[int, List[dict]] = {}
    for s in subs:
        for r in s["rows"]:
            by_seq.setdefault(r["seq"], []).append(r)
    vis, rdy, gpu = [], [], []
    tg = trainer.get("gpu")
    for seq in sorted(by_seq):
        rs = by_seq[seq]
        if seq <= skip or seq not in t_pub or len(rs) < len(subs):
            continue
        vis.append(max(r["t_visible"] for r in rs) - t_pub[seq])
        rdy.append(max(r["t_ready"] for r in rs) - t_pub[seq])
        if tg and all(s.get("gpu") for s in subs):
            gpu.append(max(s["gpu"][seq] for s in subs) - tg[seq])
    f = lambda xs: {"p50_us": pct(xs, 50) / 1e3, "p99_us": pct(xs, 99) / 1e3,
                    "max_us": (max(xs) / 1e3) if xs else float("nan"), "n": len(xs)}
    return {"visible_all": f(vis), "ready_all": f(rdy), "gpu_all": f(gpu) if gpu else None,
            "wrong": sum(len(s["bad"]) for s in subs),
            "copy_us_p50": pct([r["copy_ns"] for r in trainer["rows"]], 50) / 1e3,
            "publish_call_us_p50": pct([r["publish_call_ns"] for r in trainer["rows"]], 50) / 1e3}


# ----------------------------------------------------------------------------------------
# Command line

def self_check() -> None:
    """What runs without a GPU: the model, the layout and the manifest."""
    for gib, lo, hi in [(1, 100, 300), (16, 100, 300), (1 / 16, 2, 300)]:
        ps = model_params(int(gib * GIB))
        entries, nbytes = layout(ps)
        man = manifest(entries, nbytes)
        check_manifest(man)
        man2 = json.loads(json.dumps(man))
        assert entries_of(man2) == entries, "manifest round trip"
        total = sum(p.nbytes for p in ps)
        assert total <= gib * GIB and nbytes >= total, (total, nbytes)
        assert all(e.offset % ALIGN == 0 for e in entries)
        assert lo <= len(ps) <= hi, (gib, len(ps))
        print(f"  {gib:g} GiB: {len(ps)} tensors, params {total / GIB:.3f} GiB, "
              f"bucket {nbytes / GIB:.3f} GiB, hidden {ps[0].shape[1]}")
    bad = manifest([Param("a", "float32", (4,), 0), Param("b", "float32", (4,), 8)], 64)
    try:
        check_manifest(bad)
        raise AssertionError("overlap not caught")
    except ValueError:
        pass
    print("check: ok")


def parse(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--role", choices=["all", "trainer", "inference"], default="all",
                    help="all (default): start 1 trainer + N inference processes here")
    ap.add_argument("--dir", help="rendezvous directory (default: a fresh one under /tmp)")
    ap.add_argument("--rank", type=int, default=0, help="inference process number")
    ap.add_argument("--subscribers", type=int, default=4)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--versions", type=int, default=20)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--interval-ms", type=float, default=50.0)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds, per wait")
    ap.add_argument("--no-gpu-stamps", action="store_true")
    ap.add_argument("--stats", help="write this role's timings (JSON) here")
    ap.add_argument("--check", action="store_true", help="CPU-only self-check, then exit")
    return ap.parse_args(argv)


def config(a: argparse.Namespace, dir: str, stats: Optional[str] = None) -> Config:
    return Config(dir=dir, size_gib=a.size_gib, versions=a.versions, subscribers=a.subscribers,
                  slots=a.slots, interval_ms=a.interval_ms, device=a.device, timeout=a.timeout,
                  gpu_stamps=not a.no_gpu_stamps, stats=stats or a.stats)


def run_all(a: argparse.Namespace) -> int:
    """1 trainer + N inference processes (fresh interpreters), a deadline for all, results."""
    own_dir = a.dir is None
    d = a.dir or tempfile.mkdtemp(prefix="cuda-ipc-weights-")
    os.chmod(d, 0o700)
    me = os.path.abspath(__file__)
    common = [sys.executable, me, "--dir", d, "--subscribers", str(a.subscribers),
              "--size-gib", str(a.size_gib), "--versions", str(a.versions),
              "--slots", str(a.slots), "--interval-ms", str(a.interval_ms),
              "--device", str(a.device), "--timeout", str(a.timeout)]
    if a.no_gpu_stamps:
        common.append("--no-gpu-stamps")
    stats = {n: os.path.join(d, f"{n}.stats.json")
             for n in ["trainer"] + [f"inference{i}" for i in range(a.subscribers)]}
    procs = {"trainer": subprocess.Popen(common + ["--role", "trainer", "--stats",
                                                   stats["trainer"]])}
    for i in range(a.subscribers):
        procs[f"inference{i}"] = subprocess.Popen(
            common + ["--role", "inference", "--rank", str(i), "--stats",
                      stats[f"inference{i}"]])
    deadline = time.monotonic() + 2 * a.timeout + a.versions * (a.interval_ms / 1e3 + 1)
    rc = 0
    try:
        for name, p in procs.items():
            try:
                code = p.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"[driver] {name} did not finish in time: killing it", file=sys.stderr)
                p.kill()
                p.wait()
                code = -9
            if code != 0:
                print(f"[driver] {name} exited with {code}", file=sys.stderr)
                rc = 1
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    if rc == 0:
        tr = read_json(stats["trainer"], 1)
        subs = [read_json(stats[f"inference{i}"], 1) for i in range(a.subscribers)]
        s = summarize(tr, subs)
        print(json.dumps(s, indent=2))
        if s["wrong"]:
            rc = 1
    if own_dir:
        shutil.rmtree(d, ignore_errors=True)
    return rc


def main(argv=None) -> int:
    a = parse(argv)
    if a.check:
        self_check()
        return 0
    if a.role == "all":
        return run_all(a)
    if a.dir is None:
        print("--dir is needed with --role trainer/inference", file=sys.stderr)
        return 2
    cfg = config(a, a.dir)
    if a.role == "trainer":
        run_trainer(cfg)
        return 0
    out = run_inference(cfg, a.rank)
    return 1 if out["bad"] else 0


if __name__ == "__main__":
    sys.exit(main())
