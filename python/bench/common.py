"""Shared pieces of the Python benches: statistics, markdown tables, the machine, temporary
rendezvous directories and spawned GPU worker processes with deadlines."""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue as _queue
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLES = os.path.join(os.path.dirname(HERE), "examples")
if EXAMPLES not in sys.path:
    sys.path.insert(0, EXAMPLES)  # `import weights` (the example) here and in spawned children


def pct(xs: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of xs; nan when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[max(0, min(len(s) - 1, int(round(q / 100 * (len(s) - 1)))))]


def stats_us(ns: Sequence[float]) -> Dict[str, float]:
    """p50/p99/min/max/mean in µs of durations in ns."""
    if not ns:
        return {"n": 0, "p50_us": float("nan"), "p99_us": float("nan"),
                "min_us": float("nan"), "max_us": float("nan"), "mean_us": float("nan")}
    return {"n": len(ns), "p50_us": pct(ns, 50) / 1e3, "p99_us": pct(ns, 99) / 1e3,
            "min_us": min(ns) / 1e3, "max_us": max(ns) / 1e3, "mean_us": sum(ns) / len(ns) / 1e3}


def fmt_us(us: Optional[float]) -> str:
    """12.3 µs, 1.234 ms, 2.50 s; '—' for nothing."""
    if us is None or (isinstance(us, float) and math.isnan(us)):
        return "—"
    if us < 1:
        return f"{us * 1e3:.0f} ns"
    if us < 1e3:
        return f"{us:.1f} µs"
    if us < 1e6:
        return f"{us / 1e3:.3f} ms"
    return f"{us / 1e6:.2f} s"


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(str(c) for c in r) + " |")
    return "\n".join(out)


def machine() -> Dict[str, Any]:
    """GPU names and driver (nvidia-smi), CPU count, Python, package versions, MPS."""
    info: Dict[str, Any] = {"python": sys.version.split()[0], "cpus": os.cpu_count()}
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv"],
                           capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = r.stdout.strip() or r.stderr.strip()
    except Exception as e:  # noqa: BLE001
        info["nvidia_smi"] = f"unavailable: {e}"
    for mod in ["torch", "cupy", "numpy", "cuda_ipc"]:
        try:
            m = __import__(mod)
            info[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # noqa: BLE001
            info[mod] = f"not importable: {type(e).__name__}"
    info["mps_pipe"] = os.environ.get("CUDA_MPS_PIPE_DIRECTORY") or (
        "/tmp/nvidia-mps exists" if os.path.exists("/tmp/nvidia-mps") else "no MPS pipe dir")
    return info


@contextlib.contextmanager
def rendezvous_dir(prefix: str) -> Iterator[str]:
    """A fresh 0700 directory under /tmp, removed afterwards whatever happens."""
    d = tempfile.mkdtemp(prefix=f"cuda-ipc-{prefix}-")
    os.chmod(d, 0o700)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_json(path: str, obj: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=str)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# Spawned workers

def worker_entry(results, tag: str, fn: Callable, args: tuple) -> None:
    """Runs fn(*args) in a spawned child; puts ("ok", tag, value) or ("error", tag, trace)."""
    try:
        value = fn(*args)
        results.put(("ok", tag, value))
    except BaseException:  # noqa: BLE001  (reported to the parent, then the child exits 1)
        results.put(("error", tag, traceback.format_exc()))
        raise SystemExit(1)


def run_workers(ctx, jobs: Dict[str, tuple], timeout: float,
                results=None) -> Dict[str, Any]:
    """Starts one spawned process per job {tag: (fn, args)}, collects every result within
    `timeout` seconds, then joins them (killing what is left). Raises RuntimeError naming the
    workers that failed, died or timed out, with their tracebacks."""
    results = results if results is not None else ctx.Queue()
    procs = {}
    for tag, (fn, args) in jobs.items():
        p = ctx.Process(target=worker_entry, args=(results, tag, fn, args), name=tag,
                        daemon=True)
        p.start()
        procs[tag] = p
    deadline = time.monotonic() + timeout
    got: Dict[str, Any] = {}
    errors: Dict[str, str] = {}
    while len(got) + len(errors) < len(procs):
        left = deadline - time.monotonic()
        if left <= 0:
            break
        try:
            status, tag, value = results.get(timeout=min(1.0, left))
        except _queue.Empty:
            dead = [t for t, p in procs.items()
                    if not p.is_alive() and t not in got and t not in errors]
            for t in dead:
                # Give a dying child's last message a moment to arrive.
                try:
                    status, tag, value = results.get(timeout=2.0)
                except _queue.Empty:
                    errors[t] = f"exited with code {procs[t].exitcode} and no result"
                    continue
                (got if status == "ok" else errors)[tag] = value
            continue
        (got if status == "ok" else errors)[tag] = value
    for tag, p in procs.items():
        p.join(timeout=max(0.5, min(15.0, deadline - time.monotonic() + 5)))
        if p.is_alive():
            p.terminate()
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
        if tag not in got and tag not in errors:
            errors[tag] = f"no result within {timeout:.0f} s (exit code {p.exitcode})"
    if errors:
        msg = "\n".join(f"--- {t}: {e}" for t, e in errors.items())
        raise RuntimeError(f"{len(errors)} of {len(procs)} workers failed:\n{msg}")
    return got
