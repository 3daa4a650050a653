#!/usr/bin/env python3
"""Open latency from Python: `cuda_ipc.open` of a tensor another process shares, same GPU.

An exporter process allocates `cuda_ipc.empty((size,), "uint8", transport=T)` and `share`s
it; a consumer process then times (time.perf_counter_ns, per call, after `--warmup` calls):
- cold: `open(path)` then dropping the array (unmap, lease returned): the whole rendezvous
  (descriptor, socket hello, offer, map, lease) each time. Twin of the Rust bench's
  "cuda-ipc via rendezvous" column (`benches/ipc_open.rs`: import + drop).
  Reported as open+drop (the Rust figure's scope) and open alone.
- cold + torch: the same with `.torch()` (DLPack) before the drop.
- repeated: `open(path)` while another mapping of it is held (the socket round trip, then the
  crate's cache hit), and drop.
- torch(): `.torch()` of an array already open.

Usage: open_latency.py --sizes-mib 2,64,1024 --transports fd,legacy --iters 100 --out X.json
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

MIB = 1 << 20


def exporter(d: str, cases, device: int, conn, timeout: float) -> dict:
    import cuda_ipc
    done = []
    for t, size in cases:
        path = os.path.join(d, f"{t}-{size}")
        try:
            arr = cuda_ipc.empty((size,), "uint8", device=device, transport=t)
            exp = cuda_ipc.share(arr, path, consumers=1)
        except Exception as e:  # noqa: BLE001
            conn.send(("error", f"{type(e).__name__}: {e}"))
            continue
        conn.send(("ready", path))
        if not conn.poll(timeout * 20):
            raise TimeoutError("the consumer did not finish a case")
        conn.recv()
        exp.close()
        del exp, arr
        done.append(path)
    return {"cases": done}


def consumer(cases, device: int, conn, iters: int, warmup: int, timeout: float) -> dict:
    import cuda_ipc
    try:
        import torch
        torch.cuda.set_device(device)
        torch.zeros(1, device=f"cuda:{device}")  # torch's context up front, not in the timing
    except Exception:  # noqa: BLE001
        torch = None
    out = []
    ns = time.perf_counter_ns
    for t, size in cases:
        if not conn.poll(timeout * 2):
            raise TimeoutError("the exporter did not answer")
        status, msg = conn.recv()
        row = {"transport": t, "bytes": size}
        if status != "ready":
            row["error"] = msg
            out.append(row)
            continue
        path = msg
        try:
            opn, opn_drop, opn_torch, rep, rep_drop, to_torch = [], [], [], [], [], []
            for i in range(warmup + iters):
                t0 = ns()
                a = cuda_ipc.open(path, timeout=timeout)
                t1 = ns()
                del a
                t2 = ns()
                if i >= warmup:
                    opn.append(t1 - t0)
                    opn_drop.append(t2 - t0)
            if torch is not None:
                for i in range(warmup + iters):
                    t0 = ns()
                    x = cuda_ipc.open(path, timeout=timeout).torch()
                    t1 = ns()
                    del x
                    if i >= warmup:
                        opn_torch.append(t1 - t0)
            keep = cuda_ipc.open(path, timeout=timeout)
            for i in range(warmup + iters):
                t0 = ns()
                b = cuda_ipc.open(path, timeout=timeout)
                t1 = ns()
                del b
                t2 = ns()
                if i >= warmup:
                    rep.append(t1 - t0)
                    rep_drop.append(t2 - t0)
            if torch is not None:
                for i in range(warmup + iters):
                    t0 = ns()
                    x = keep.torch()
                    t1 = ns()
                    del x
                    if i >= warmup:
                        to_torch.append(t1 - t0)
            del keep
            gc.collect()
            row.update({"cold_open_drop": common.stats_us(opn_drop),
                        "cold_open": common.stats_us(opn),
                        "cold_open_torch": common.stats_us(opn_torch),
                        "repeated_open": common.stats_us(rep),
                        "repeated_open_drop": common.stats_us(rep_drop),
                        "torch_of_open": common.stats_us(to_torch)})
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"
        out.append(row)
        conn.send("next")
    return {"rows": out}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mib", default="2,64,1024")
    ap.add_argument("--transports", default="fd,legacy")
    ap.add_argument("--iters", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--out")
    a = ap.parse_args(argv)
    import multiprocessing as mp
    ctx = mp.get_context("spawn")
    cases = [(t, int(float(s) * MIB)) for t in a.transports.split(",")
             for s in a.sizes_mib.split(",")]
    left, right = ctx.Pipe()
    with common.rendezvous_dir("open") as d:
        got = common.run_workers(ctx, {
            "exporter": (exporter, (d, cases, a.device, left, a.timeout)),
            "consumer": (consumer, (cases, a.device, right, a.iters, a.warmup, a.timeout)),
        }, timeout=a.timeout * 4 + len(cases) * 30)
    rows = got["consumer"]["rows"]
    for r in rows:
        if "error" in r:
            print(f"open {r['transport']} {r['bytes'] // MIB} MiB: ERROR {r['error']}")
        else:
            print(f"open {r['transport']} {r['bytes'] // MIB} MiB: cold open+drop p50 "
                  f"{common.fmt_us(r['cold_open_drop']['p50_us'])}, repeated p50 "
                  f"{common.fmt_us(r['repeated_open']['p50_us'])}", flush=True)
    if a.out:
        common.write_json(a.out, {"iters": a.iters, "warmup": a.warmup, "rows": rows})
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
