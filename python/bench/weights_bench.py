#!/usr/bin/env python3
"""Weight publication, one trainer and N inference processes on one GPU, three ways in one
run (each a fresh set of spawned processes; the same synthetic model, the same pacing):

- ``cuda-ipc``: python/examples/weights.py: one bucket per version in a cuda-ipc channel
  (2 slots, policy block); every inference process maps the pool once and takes each version
  with `Subscriber.receive()` (a GPU-side wait), no handle per tensor.
- ``torch-tensors``: torch.multiprocessing (spawn context) Queues, one per inference process:
  the trainer puts every parameter tensor of every version (one message, one CUDA IPC handle
  per tensor); each inference process drops a version's tensors once it has used them (so
  the next version opens the handles again, as per-sync weight updates do).
  `--tensor-hold latest` keeps them until the next version is complete instead.
- ``torch-bucket``: torch.multiprocessing with one bucket tensor per version (two buckets,
  alternating, so no version is overwritten while read) and per-parameter views built by the
  receiver from the same manifest; each inference process keeps both buckets (mapped once:
  torch's IPC cache then reuses the mapping). `--bucket-hold none` drops them instead.

Lock-step: every process meets at a barrier before each version, so no version queues behind
another; then the trainer waits `--gap-ms` (the readers are idle in their receive) and hands
the version over. Per version and inference process:
  t_publish: the trainer's CLOCK_MONOTONIC right before the hand-over (cuda-ipc: before
             `loan.publish()`; torch: before the first `Queue.put` of the version). The
             version is complete in GPU memory by then (the trainer synchronized).
  t_visible: the reader's clock once it has the version and its stream has passed the wait
             for it (`stream.synchronize()` returned; torch: after the last tensor arrived).
  t_ready:   t_visible plus building name -> tensor views (cuda-ipc, torch-bucket); the same
             as t_visible for torch-tensors (its tensors come whole).
Reported: per version, max over readers of (t - t_publish) = "visible to all N"; then
p50 / p99 / max over versions (the first version, which maps memory, is left out and
reported on its own as "first").

Usage: weights_bench.py --method cuda-ipc --size-gib 1 --subscribers 4 --versions 20 --out X.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import weights as W  # noqa: E402  (python/examples/weights.py, via common)

METHODS = ["cuda-ipc", "torch-tensors", "torch-bucket"]


def _pacer(barrier, timeout: float, gap_s: float = 0.0):
    def pace():
        barrier.wait(timeout)
        if gap_s:
            time.sleep(gap_s)
    return pace


# ---------------------------------------------------------------- cuda-ipc (the example)

def ipc_trainer(cfg: W.Config, barrier, gap_s: float) -> dict:
    return W.run_trainer(cfg, pace=_pacer(barrier, cfg.timeout, gap_s))


def ipc_reader(cfg: W.Config, rank: int, barrier) -> dict:
    return W.run_inference(cfg, rank, pace=_pacer(barrier, cfg.timeout))


# ---------------------------------------------------------------- torch.multiprocessing

def torch_trainer(cfg: W.Config, method: str, queues, barrier, gap_s: float) -> dict:
    import torch
    import torch.multiprocessing  # noqa: F401  (registers the CUDA tensor reductions)

    torch.cuda.set_device(cfg.device)
    entries, nbytes = W.layout(W.model_params(int(cfg.size_gib * W.GIB), cfg.dtype))
    dev = f"cuda:{cfg.device}"
    params = [torch.empty(e.shape, dtype=getattr(torch, e.dtype), device=dev)
              for e in entries[1:]]
    version_word = torch.zeros(1, dtype=torch.int64, device=dev)
    buckets, bviews = [], []
    if method == "torch-bucket":
        for _ in range(2):
            b = torch.empty(nbytes, dtype=torch.uint8, device=dev)
            buckets.append(b)
            bviews.append(W.views(b, entries))
    stream = torch.cuda.current_stream()
    pace = _pacer(barrier, cfg.timeout, gap_s)
    rows = []
    for v in range(1, cfg.versions + 1):
        W.step(params, v)
        t0 = time.monotonic_ns()
        if method == "torch-bucket":
            bv = bviews[v % 2]
            W.copy_all([bv[e.name] for e in entries[1:]], params)
            bv[W.VERSION_NAME].fill_(v)
        else:
            version_word.fill_(v)
        stream.synchronize()
        t_copied = time.monotonic_ns()
        pace()
        t_publish = time.monotonic_ns()
        for q in queues:
            if method == "torch-bucket":
                q.put((v, buckets[v % 2]))
            else:
                q.put((v, -1, version_word))
                for i, p in enumerate(params):
                    q.put((v, i, p))
        t_put = time.monotonic_ns()
        rows.append({"version": v, "seq": v, "t_publish": t_publish,
                     "publish_call_ns": t_put - t_publish, "copy_ns": t_copied - t0,
                     "loan_ns": 0})
    pace()  # the readers have taken (and, unless held, dropped) the last version
    barrier.wait(cfg.timeout)  # and released everything: our tensors may go
    return {"role": "trainer", "tensors": len(entries) - 1, "nbytes": nbytes, "rows": rows,
            "gpu": None}


def torch_reader(cfg: W.Config, method: str, rank: int, q, barrier, hold: str) -> dict:
    import torch
    import torch.multiprocessing  # noqa: F401

    torch.cuda.set_device(cfg.device)
    entries, nbytes = W.layout(W.model_params(int(cfg.size_gib * W.GIB), cfg.dtype))
    names = [e.name for e in entries[1:]]
    stream = torch.cuda.current_stream()
    pace = _pacer(barrier, cfg.timeout)
    rows, bad = [], []
    kept: Dict[int, object] = {}
    for v in range(1, cfg.versions + 1):
        pace()
        if method == "torch-bucket":
            vv, flat = q.get(timeout=cfg.timeout)
            t_received = time.monotonic_ns()
            stream.synchronize()
            t_visible = time.monotonic_ns()
            weights = W.views(flat, entries)
            t_ready = time.monotonic_ns()
            if hold == "all":
                kept[vv % 2] = flat
        else:
            got: Dict[int, object] = {}
            while len(got) < len(names) + 1:
                vv, i, t = q.get(timeout=cfg.timeout)
                if vv != v:
                    raise RuntimeError(f"version {vv} arrived while taking {v}")
                got[i] = t
            del t  # (else the last tensor of the version stays mapped)
            t_received = time.monotonic_ns()
            stream.synchronize()
            t_visible = time.monotonic_ns()
            weights = {W.VERSION_NAME: got[-1]}
            weights.update((names[i], got[i]) for i in range(len(names)))
            t_ready = time.monotonic_ns()
            if hold == "latest":
                kept[0] = got  # replaces (drops) the previous version only now
            del got
        # The check, after the timing.
        want = W.fill_value(v)
        probe = [names[0], names[len(names) // 2], names[-1]]
        vals = [float(weights[n].reshape(-1)[0].item()) for n in probe]
        word = int(weights[W.VERSION_NAME].item())
        if word != v or any(x != want for x in vals):
            bad.append({"seq": v, "version_word": word, "values": vals, "want": want})
        rows.append({"seq": v, "missed": 0, "t_received": t_received, "t_visible": t_visible,
                     "t_ready": t_ready})
        del weights
        if method == "torch-bucket":
            del flat
    pace()
    kept.clear()
    torch.cuda.synchronize()
    barrier.wait(cfg.timeout)
    return {"role": "inference", "rank": rank, "rows": rows, "bad": bad, "gpu": None}


# ---------------------------------------------------------------- driver

def run(method: str, a: argparse.Namespace) -> dict:
    import torch.multiprocessing as tmp

    ctx = tmp.get_context("spawn")
    n = a.subscribers
    gap_s = a.gap_ms / 1e3
    with common.rendezvous_dir("wbench") as d:
        cfg = W.Config(dir=d, size_gib=a.size_gib, versions=a.versions, subscribers=n,
                       slots=a.slots, device=a.device, timeout=a.timeout,
                       gpu_stamps=not a.no_gpu_stamps, quiet=True)
        if method == "cuda-ipc":
            barrier = ctx.Barrier(n + 1)
            jobs = {"trainer": (ipc_trainer, (cfg, barrier, gap_s))}
            for r in range(n):
                jobs[f"reader{r}"] = (ipc_reader, (cfg, r, barrier))
        else:
            cfg.gpu_stamps = False
            barrier = ctx.Barrier(n + 1)
            queues = [ctx.Queue() for _ in range(n)]
            hold = a.bucket_hold if method == "torch-bucket" else a.tensor_hold
            jobs = {"trainer": (torch_trainer, (cfg, method, queues, barrier, gap_s))}
            for r in range(n):
                jobs[f"reader{r}"] = (torch_reader, (cfg, method, r, queues[r], barrier, hold))
        t = time.monotonic()
        got = common.run_workers(ctx, jobs, timeout=a.timeout * 2 + a.versions * 5)
        wall = time.monotonic() - t
    trainer = got["trainer"]
    readers = [got[f"reader{r}"] for r in range(n)]
    s = W.summarize(trainer, readers, skip=1)
    # The first version alone: first-time mappings (all methods map or open something then).
    v1 = [r["t_visible"] for rd in readers for r in rd["rows"] if r["seq"] == 1]
    s["first_visible_us"] = ((max(v1) - trainer["rows"][0]["t_publish"]) / 1e3
                             if v1 and trainer["rows"] else None)
    return {"method": method, "size_gib": a.size_gib, "bytes": trainer["nbytes"],
            "tensors": trainer["tensors"], "subscribers": n, "versions": a.versions,
            "gap_ms": a.gap_ms, "wall_s": wall,
            "hold": (a.bucket_hold if method == "torch-bucket" else
                     a.tensor_hold if method == "torch-tensors" else "newest sample"),
            "summary": s, "trainer": trainer, "readers": readers}


def parse(argv=None):
    ap = argparse.ArgumentParser(description="weight publication bench (one method, one size)")
    ap.add_argument("--method", choices=METHODS, required=True)
    ap.add_argument("--size-gib", type=float, default=1.0)
    ap.add_argument("--subscribers", type=int, default=4)
    ap.add_argument("--versions", type=int, default=20)
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--gap-ms", type=float, default=10.0,
                    help="the trainer waits this long after the barrier before each version")
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds per wait")
    ap.add_argument("--tensor-hold", choices=["none", "latest"], default="none")
    ap.add_argument("--bucket-hold", choices=["all", "none"], default="all")
    ap.add_argument("--no-gpu-stamps", action="store_true")
    ap.add_argument("--out", help="JSON result file")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    a = parse(argv)
    res = run(a.method, a)
    s = res["summary"]
    print(f"{a.method} {a.size_gib:g} GiB ({res['tensors']} tensors) x{a.subscribers}: "
          f"visible to all p50 {common.fmt_us(s['visible_all']['p50_us'])}, "
          f"max {common.fmt_us(s['visible_all']['max_us'])}; ready p50 "
          f"{common.fmt_us(s['ready_all']['p50_us'])}; wrong {s['wrong']}", flush=True)
    if a.out:
        common.write_json(a.out, res)
    return 1 if s["wrong"] else 0


if __name__ == "__main__":
    sys.exit(main())
