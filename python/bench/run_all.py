#!/usr/bin/env python3
"""All Python benches in one run, each step a subprocess with its own timeout:

1. open latency (open_latency.py),
2. channel latency, 4 KiB, same GPU (channel_latency.py),
3. weight publication, for each size: cuda-ipc, torch-tensors, torch-bucket (weights_bench.py).

Writes DIR/results.md (the tables, with the Rust figures of docs/benchmarks.md beside them),
DIR/results.json (everything, raw rows included in the per-step JSON files) and DIR/<step>.log.

    python python/bench/run_all.py --out DIR --sizes 1,16 --subscribers 4

`--dry-run` runs what needs no GPU (imports, the example's self-check, the table code on a
made-up result that is printed, never written as a result) and exits.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import common  # noqa: E402

# Rust figures (docs/benchmarks.md, 2 x H200, 2026-11-27): other runs, other machine.
RUST_OPEN_US = {  # "cuda-ipc via rendezvous" (import through the socket + map, then drop)
    ("legacy", 2): 219.50, ("legacy", 64): 747.46, ("legacy", 1024): 9302.5,
    ("fd", 2): 184.10, ("fd", 64): 177.83, ("fd", 1024): 244.25,
}
RUST_CHANNEL_SAME_GPU_US = {"p50": 154.0, "p99": 299.0}  # no MPS; 7.90 / 18.82 under MPS
RUST_CHANNEL_MPS_US = {"p50": 7.90, "p99": 18.82}
VISIBLE_TARGET_US = 5000.0


def run_step(name: str, argv: List[str], timeout: float, out_dir: str) -> Dict[str, Any]:
    """Runs a bench script; its output goes to DIR/<name>.log and is echoed (tail) here."""
    log = os.path.join(out_dir, f"{name}.log")
    t = time.monotonic()
    print(f"== {name} (timeout {timeout:.0f} s): {' '.join(argv)}", flush=True)
    with open(log, "w") as f:
        p = subprocess.Popen([sys.executable] + argv, stdout=f, stderr=subprocess.STDOUT,
                             start_new_session=True)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # The step's whole process group (its spawned workers too).
            try:
                os.killpg(p.pid, 9)
            except ProcessLookupError:
                pass
            p.wait()
            rc = "timeout"
    secs = time.monotonic() - t
    with open(log) as f:
        tail = f.read()[-3000:]
    ok = rc == 0
    print(("   ok" if ok else f"   FAILED ({rc})") + f" in {secs:.1f} s", flush=True)
    if not ok or name.startswith(("open", "channel", "weights")):
        print("   " + "\n   ".join(tail.strip().splitlines()[-8 if ok else -40:]), flush=True)
    return {"name": name, "rc": rc, "ok": ok, "seconds": round(secs, 1), "log": log,
            "tail": None if ok else tail}


def load(path: str) -> Optional[dict]:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def ratio(a: Optional[float], b: Optional[float]) -> str:
    if a is None or b is None or b == 0 or a != a:
        return "—"
    return f"{a / b:.2f}"


def report(res: Dict[str, Any], a: argparse.Namespace) -> str:
    f = common.fmt_us
    md = ["# Python benchmarks (cuda-ipc)", "",
          f"Date: {res['date']}. Machine: `{res['machine'].get('nvidia_smi', '?')}`, "
          f"{res['machine'].get('cpus')} CPUs, Python {res['machine'].get('python')}, "
          f"torch {res['machine'].get('torch')}, cupy {res['machine'].get('cupy')}, "
          f"cuda_ipc {res['machine'].get('cuda_ipc')}. One GPU (device {a.device}): every "
          "process shares it (two or more contexts time-slice it without MPS).", ""]
    # Open.
    o = res.get("open")
    md += ["## Open of a shared tensor (`cuda_ipc.open`, same GPU)", ""]
    if o:
        rows = []
        for r in o["rows"]:
            mib = r["bytes"] // (1 << 20)
            if "error" in r:
                rows.append([r["transport"], f"{mib} MiB", "ERROR: " + r["error"][:120]] + [""] * 6)
                continue
            rust = RUST_OPEN_US.get((r["transport"], mib))
            py = r["cold_open_drop"]["p50_us"]
            rows.append([r["transport"], f"{mib} MiB", f(py), f(r["cold_open"]["p50_us"]),
                         f(r["cold_open_torch"]["p50_us"]), f(r["repeated_open"]["p50_us"]),
                         f(r["torch_of_open"]["p50_us"]), f(rust),
                         ratio(py, rust) + (" ✓" if rust and py <= 1.1 * rust else
                                            " ✗" if rust else "")])
        md += [common.md_table(["transport", "size", "cold open+drop p50", "cold open p50",
                                "cold open+.torch() p50", "repeated open p50 (one held)",
                                ".torch() p50", "Rust via rendezvous (other run)",
                                "ratio (target ≤ 1.1)"], rows), "",
               "Cold open+drop is the scope of the Rust figure (`benches/ipc_open.rs`, "
               "'cuda-ipc via rendezvous', 2 × H200 2026-11-27, docs/benchmarks.md): not the "
               "same run, so the ratio is indicative.", ""]
    else:
        md += ["(failed: see open.log)", ""]
    # Channel.
    c = res.get("channel")
    md += ["## Channel latency, 4 KiB frames, same GPU (publish → subscriber's first kernel)", ""]
    if c:
        g = c.get("gpu_one_way")
        cp = c["cpu_one_way_rtt_half"]
        rows = [["GPU %globaltimer one-way (b − a)", f(g and g["p50_us"]), f(g and g["p99_us"]),
                 f(RUST_CHANNEL_SAME_GPU_US["p50"]),
                 ratio(g and g["p50_us"], RUST_CHANNEL_SAME_GPU_US["p50"]) +
                 (" ✓" if g and g["p50_us"] <= 2 * RUST_CHANNEL_SAME_GPU_US["p50"] else
                  " ✗" if g else "")],
                ["CPU clock, round trip / 2", f(cp["p50_us"]), f(cp["p99_us"]), "", ""]]
        if c.get("gpu_rtt_half"):
            rows.insert(1, ["GPU %globaltimer round trip / 2", f(c["gpu_rtt_half"]["p50_us"]),
                            f(c["gpu_rtt_half"]["p99_us"]), "", ""])
        md += [common.md_table(["measure", "p50", "p99", "Rust p50 (same GPU, no MPS, other run)",
                                "ratio (target ≤ 2)"], rows), "",
               f"{c['rounds']} paced rounds after {c['warmup']} warm-up. Rust: 154 µs p50 / "
               "299 µs p99 without MPS, 7.90 µs / 18.82 µs under MPS (2 × H200, "
               "docs/benchmarks.md); compare like with like (MPS or not).", ""]
    else:
        md += ["(failed: see channel.log)", ""]
    # Weights.
    md += [f"## Weight publication: 1 trainer → {a.subscribers} inference processes, one GPU",
           ""]
    rows = []
    for key, w in sorted(res.get("weights", {}).items(), key=lambda kv: kv[0]):
        if not w.get("summary"):
            rows.append([key, "FAILED: see log", "", "", "", "", "", "", ""])
            continue
        s = w["summary"]
        vis = s["visible_all"]
        gp = s.get("gpu_all")
        target = ""
        if w["method"] == "cuda-ipc" and abs(w["size_gib"] - 1) < 1e-9:
            target = " ✓" if vis["max_us"] < VISIBLE_TARGET_US else " ✗"
        rows.append([w["method"], f"{w['bytes'] / (1 << 30):.2f} GiB, {w['tensors']} tensors",
                     f(vis["p50_us"]), f(vis["max_us"]) + target,
                     f(s["ready_all"]["p50_us"]), f(s["ready_all"]["max_us"]),
                     f(gp["p50_us"]) if gp else "—", f(s.get("first_visible_us")),
                     f"{vis['n']} ({w['hold']})" + (f", {s['wrong']} WRONG" if s["wrong"] else "")])
    md += [common.md_table(["method", "model", "visible to all p50", "visible to all max",
                            "views ready p50", "views ready max", "GPU stamps p50",
                            "first version", "versions (reader holds)"], rows), "",
           "Per version: the latest reader's time after the trainer's hand-over (CLOCK_MONOTONIC; "
           "the version was complete in GPU memory before it). visible: the reader's stream has "
           "passed the wait for it; views ready: plus name → tensor views. GPU stamps: the "
           "readers' first kernel after `receive` minus the trainer's kernel before `publish` "
           "(%globaltimer). The first version (first mappings) is left out of p50/max and shown "
           f"alone. Target: a 1 GiB version visible to {a.subscribers} readers in < 5 ms (max).",
           ""]
    # Steps.
    md += ["## Steps", "", common.md_table(
        ["step", "result", "seconds"],
        [[s["name"], "ok" if s["ok"] else f"FAILED ({s['rc']})", s["seconds"]]
         for s in res["steps"]]), ""]
    return "\n".join(md)


def dry_run() -> int:
    """Everything that runs without a GPU."""
    import weights as W
    W.self_check()
    for m in ["weights_bench", "channel_latency", "open_latency"]:
        __import__(m)
    try:
        import cuda_ipc
        print("cuda_ipc", cuda_ipc.__version__, "imports; device_count:", end=" ")
        try:
            print(cuda_ipc.device_count())
        except Exception as e:  # noqa: BLE001
            print(f"{type(e).__name__}: {e}")
    except ImportError as e:
        print(f"cuda_ipc not importable: {e}")
    import weights_bench as WB
    WB.parse(["--method", "cuda-ipc"])
    # Summaries and tables on made-up timings (printed only, marked as such).
    tr = {"rows": [{"version": v, "seq": v, "t_publish": 1000 * v, "copy_ns": 5,
                    "publish_call_ns": 7, "loan_ns": 1} for v in range(1, 6)],
          "gpu": [0] * 6, "nbytes": 1 << 30, "tensors": 155}
    subs = [{"rows": [{"seq": v, "t_received": 0, "t_visible": 1000 * v + 300 + r,
                       "t_ready": 1000 * v + 500 + r, "missed": 0} for v in range(1, 6)],
             "bad": [], "gpu": [0] + [10] * 5} for r in range(4)]
    s = W.summarize(tr, subs)
    assert s["visible_all"]["p50_us"] == 0.303 and s["visible_all"]["n"] == 4, s
    fake = {"date": "DRY RUN (made-up numbers)", "machine": common.machine(), "steps": [],
            "open": {"rows": [{"transport": "fd", "bytes": 2 << 20, "error": "dry run"}]},
            "channel": None,
            "weights": {"1-cuda-ipc": {"method": "cuda-ipc", "size_gib": 1.0, "bytes": 1 << 30,
                                       "tensors": 155, "hold": "newest", "summary":
                                       {**s, "first_visible_us": 1.0}}}}
    ns = argparse.Namespace(subscribers=4, device=0)
    print(report(fake, ns))
    print("dry run: ok")
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", help="results directory (created)")
    ap.add_argument("--sizes", default="1,16", help="weight sizes, GiB, comma-separated")
    ap.add_argument("--subscribers", type=int, default=4)
    ap.add_argument("--versions", type=int, default=20, help="versions per size below 4 GiB")
    ap.add_argument("--versions-large", type=int, default=8, help="versions from 4 GiB up")
    ap.add_argument("--methods", default="cuda-ipc,torch-tensors,torch-bucket")
    ap.add_argument("--skip", default="", help="comma-separated: open,channel,weights")
    ap.add_argument("--open-sizes-mib", default="2,64,1024")
    ap.add_argument("--open-iters", type=int, default=100)
    ap.add_argument("--channel-rounds", type=int, default=2000)
    ap.add_argument("--device", type=int, default=0)
    ap.add_argument("--step-timeout", type=float, default=0,
                    help="seconds per step (0: 120 s, weights 90 s + 10 s per GiB)")
    ap.add_argument("--dry-run", action="store_true")
    a = ap.parse_args(argv)
    if a.dry_run:
        return dry_run()
    if not a.out:
        ap.error("--out DIR is needed")
    os.makedirs(a.out, exist_ok=True)
    out = os.path.abspath(a.out)
    skip = set(filter(None, a.skip.split(",")))
    t_all = time.monotonic()
    res: Dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "machine": common.machine(), "args": vars(a), "steps": [],
                           "weights": {}}
    print("machine:", json.dumps(res["machine"], indent=1), flush=True)
    py = lambda s: os.path.join(HERE, s)  # noqa: E731
    to = lambda d: a.step_timeout or d  # noqa: E731
    dev = ["--device", str(a.device)]
    if "open" not in skip:
        j = os.path.join(out, "open.json")
        res["steps"].append(run_step("open", [py("open_latency.py"), "--sizes-mib",
                                              a.open_sizes_mib, "--iters", str(a.open_iters),
                                              "--out", j] + dev, to(120), out))
        res["open"] = load(j)
    if "channel" not in skip:
        j = os.path.join(out, "channel.json")
        res["steps"].append(run_step("channel", [py("channel_latency.py"), "--rounds",
                                                 str(a.channel_rounds), "--out", j] + dev,
                                     to(120), out))
        res["channel"] = load(j)
    if "weights" not in skip:
        for size in [float(s) for s in a.sizes.split(",") if s]:
            versions = a.versions if size < 4 else a.versions_large
            for m in a.methods.split(","):
                key = f"{size:g}GiB-{m}"
                j = os.path.join(out, f"weights-{key}.json")
                st = run_step(f"weights-{key}", [
                    py("weights_bench.py"), "--method", m, "--size-gib", f"{size:g}",
                    "--subscribers", str(a.subscribers), "--versions", str(versions),
                    "--out", j] + dev, to(90 + 10 * size), out)
                res["steps"].append(st)
                w = load(j)
                if w:
                    w = {k: v for k, v in w.items() if k not in ("trainer", "readers")}
                res["weights"][key] = w or {"method": m, "size_gib": size}
    res["seconds"] = round(time.monotonic() - t_all, 1)
    common.write_json(os.path.join(out, "results.json"), res)
    md = report(res, a)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(md + "\n")
    print("\n" + md, flush=True)
    print(f"\nall steps in {res['seconds']} s; results in {out}/results.md and results.json")
    return 0 if all(s["ok"] for s in res["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
