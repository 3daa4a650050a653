#!/usr/bin/env python3
"""Baseline (c) of benches/channel.rs: what a Python user would pick to move GPU frames between
processes, torch.multiprocessing passing CUDA tensors through Queues.

One producer process (this one) on --producer-gpu makes a new CUDA tensor per frame (the caching
allocator reuses blocks), fills it on the GPU and puts it into one Queue per subscriber; each
subscriber process gets it (torch maps the producer's memory through a legacy IPC handle and
waits for the producer's event), checks every word on the GPU and acknowledges through a shared
Queue. The producer keeps at most --slots frames in flight (the channel's Policy::Block with
that many slots). A subscriber on another GPU than the producer copies the frame to its GPU
first (torch kernels need their tensors on the current device): those copies are counted.

Words: frame `seq` holds `i + seq` (int32) at index i, written by one kernel and compared
by the subscriber against the same formula (reads every word, like the crate's verify_frame).

Modes:
  latency     frames paced one at a time (the producer waits for each acknowledgement), one
              subscriber; latency = CLOCK_MONOTONIC right before Queue.put in the producer (the
              frame is complete on its GPU) -> right after Queue.get returned the mapped tensor in
              the subscriber. A CPU clock: it does not include the few microseconds the
              subscriber's first kernel takes to start.
  throughput  as fast as possible for --seconds; frames/s delivered to each subscriber.
  both        latency, then throughput.

Prints one JSON line on stdout (everything else goes to stderr). torch is needed only to run,
not for --check-args, which prints the parsed configuration and exits.
"""
import argparse
import collections
import json
import os
import resource
import sys
import time

BASELINE = "torch.multiprocessing Queue of CUDA tensors"
LATENCY_CLOCK = "CLOCK_MONOTONIC, before Queue.put -> after Queue.get in the subscriber"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frame-bytes", type=int, default=4096, help="bytes per frame (multiple of 4)")
    p.add_argument("--subscribers", type=int, default=1, help="subscriber processes (1..64)")
    p.add_argument("--producer-gpu", type=int, default=0)
    p.add_argument("--subscriber-gpus", default="0",
                   help="comma-separated GPU ordinals, cycled over the subscribers")
    p.add_argument("--mode", choices=["latency", "throughput", "both"], default="both")
    p.add_argument("--seconds", type=float, default=1.0, help="throughput measurement time")
    p.add_argument("--latency-frames", type=int, default=300, help="paced frames for latency")
    p.add_argument("--warmup-frames", type=int, default=20)
    p.add_argument("--slots", type=int, default=8, help="most frames in flight")
    p.add_argument("--no-verify", action="store_true", help="subscribers do not check frames")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for any answer")
    p.add_argument("--label", default="", help="copied into the JSON line")
    p.add_argument("--check-args", action="store_true",
                   help="print the parsed configuration as JSON and exit (no torch needed)")
    args = p.parse_args(argv)
    if args.frame_bytes <= 0 or args.frame_bytes % 4 != 0:
        p.error("--frame-bytes must be a positive multiple of 4")
    if not 1 <= args.subscribers <= 64:
        p.error("--subscribers must be within 1..64")
    if args.slots < 1:
        p.error("--slots must be at least 1")
    if args.seconds <= 0 or args.timeout <= 0:
        p.error("--seconds and --timeout must be positive")
    if args.latency_frames < 1 or args.warmup_frames < 0:
        p.error("--latency-frames must be >= 1 and --warmup-frames >= 0")
    try:
        gpus = [int(g) for g in args.subscriber_gpus.split(",") if g.strip() != ""]
    except ValueError:
        p.error("--subscriber-gpus must be comma-separated integers")
    if not gpus or min(gpus) < 0 or args.producer_gpu < 0:
        p.error("GPU ordinals must be >= 0 and --subscriber-gpus non-empty")
    args.gpus = [gpus[k % len(gpus)] for k in range(args.subscribers)]
    if args.mode in ("latency", "both") and args.subscribers != 1:
        p.error("latency mode uses exactly one subscriber")
    return args


def log(*a):
    print("torch_queue:", *a, file=sys.stderr, flush=True)


def percentile(sorted_values, p):
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, int(len(sorted_values) * p / 100.0))
    return sorted_values[i]


def cpu_seconds():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def subscriber(k, gpu, frame_words, verify, frames_q, acks_q):
    """A subscriber process: checks every frame it gets and acknowledges it."""
    import torch

    torch.cuda.set_device(gpu)
    dev = torch.device("cuda", gpu)
    base = torch.arange(frame_words, dtype=torch.int32, device=dev)
    errors = 0
    copied = 0
    window = None
    acks_q.put(("ready", k, 0, 0))
    while True:
        msg = frames_q.get()
        if msg is None:
            break
        if msg[0] == "cpu-start":
            window = (cpu_seconds(), time.monotonic())
            continue
        if msg[0] == "cpu-stop":
            if window is not None:
                c0, w0 = window
                window = (cpu_seconds() - c0, time.monotonic() - w0)
                acks_q.put(("cpu", k, window[0], window[1]))
            continue
        _, seq, t = msg
        t_get = time.monotonic_ns()
        if t.device != dev:
            t = t.to(dev, non_blocking=True)
            copied += frame_words * 4
        if verify:
            # One read of every word; .item() waits for the result (the ack is a CPU message).
            errors += int(torch.count_nonzero(torch.sub(t, base).ne_(seq)).item())
        else:
            torch.cuda.current_stream(dev).synchronize()
        del t, msg
        acks_q.put(("ack", k, seq, t_get))
    acks_q.put(("done", k, errors, copied))


class Producer:
    def __init__(self, args):
        import torch
        import torch.multiprocessing as mp

        self.torch = torch
        self.args = args
        self.words = args.frame_bytes // 4
        self.dev = torch.device("cuda", args.producer_gpu)
        torch.cuda.set_device(self.dev)
        self.base = torch.arange(self.words, dtype=torch.int32, device=self.dev)
        ctx = mp.get_context("spawn")
        self.acks = ctx.Queue()
        self.queues = [ctx.Queue() for _ in range(args.subscribers)]
        self.procs = [
            ctx.Process(target=subscriber,
                        args=(k, g, self.words, not args.no_verify, self.queues[k], self.acks),
                        daemon=True)
            for k, g in enumerate(args.gpus)
        ]
        for p in self.procs:
            p.start()
        for _ in self.procs:
            self.expect("ready")
        self.seq = 0
        self.inflight = collections.OrderedDict()  # seq -> [tensor, acks left]
        self.latencies_ns = []
        self.cpu = []

    def expect(self, kind):
        msg = self.acks.get(timeout=self.args.timeout)
        if msg[0] != kind:
            raise RuntimeError(f"expected {kind!r} from a subscriber, got {msg!r}")
        return msg

    def take_ack(self):
        msg = self.acks.get(timeout=self.args.timeout)
        if msg[0] == "cpu":
            self.cpu.append(100.0 * msg[2] / max(msg[3], 1e-9))
            return None
        if msg[0] != "ack":
            raise RuntimeError(f"unexpected message {msg!r}")
        _, _, seq, t_get = msg
        entry = self.inflight[seq]
        entry[1] -= 1
        if entry[1] == 0:
            del self.inflight[seq]
        return seq, t_get

    def send(self, paced):
        """Fills a new tensor with the next frame and puts it into every subscriber's queue."""
        torch = self.torch
        self.seq += 1
        seq = self.seq
        t = torch.empty(self.words, dtype=torch.int32, device=self.dev)
        torch.add(self.base, seq, out=t)
        if paced:
            torch.cuda.synchronize(self.dev)
        t_pub = time.monotonic_ns()
        self.inflight[seq] = [t, len(self.queues)]
        for q in self.queues:
            q.put(("frame", seq, t))
        return seq, t_pub

    def drain(self):
        while self.inflight:
            self.take_ack()

    def latency(self):
        for i in range(self.args.warmup_frames + self.args.latency_frames):
            seq, t_pub = self.send(paced=True)
            got = None
            while got is None:
                got = self.take_ack()
            if got[0] != seq:
                raise RuntimeError(f"acknowledgement for frame {got[0]}, expected {seq}")
            if i >= self.args.warmup_frames:
                self.latencies_ns.append(got[1] - t_pub)
        v = sorted(self.latencies_ns)
        us = lambda ns: None if ns is None else ns / 1e3
        return {"p50": us(percentile(v, 50)), "p99": us(percentile(v, 99)),
                "mean": us(sum(v) / len(v)), "n": len(v)}

    def throughput(self):
        for _ in range(self.args.warmup_frames):
            self.send(paced=False)
            while len(self.inflight) >= self.args.slots:
                self.take_ack()
        self.drain()
        for q in self.queues:
            q.put(("cpu-start",))
        first = self.seq
        start = time.monotonic()
        while time.monotonic() - start < self.args.seconds:
            self.send(paced=False)
            while len(self.inflight) >= self.args.slots:
                self.take_ack()
        self.drain()
        elapsed = time.monotonic() - start
        frames = self.seq - first
        for q in self.queues:
            q.put(("cpu-stop",))
        while len(self.cpu) < len(self.queues):
            self.take_ack()
        return frames, elapsed

    def close(self):
        for q in self.queues:
            q.put(None)
        errors = copied = 0
        for _ in self.procs:
            msg = self.expect("done")
            errors += msg[2]
            copied += msg[3]
        for p in self.procs:
            p.join(timeout=self.args.timeout)
        return errors, copied


def run(args):
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch sees no CUDA device")
    n = torch.cuda.device_count()
    needed = max([args.producer_gpu] + args.gpus)
    if needed >= n:
        raise RuntimeError(f"GPU {needed} asked for, torch sees {n}")
    out = {
        "baseline": BASELINE,
        "label": args.label,
        "torch": torch.__version__,
        "frame_bytes": args.frame_bytes,
        "subscribers": args.subscribers,
        "producer_gpu": args.producer_gpu,
        "subscriber_gpus": args.gpus,
        "slots": args.slots,
        "verify": not args.no_verify,
        "latency_us": None,
        "latency_clock": LATENCY_CLOCK,
        "frames": None,
        "seconds": None,
        "frames_per_s_each": None,
        "cpu_percent_each": [],
    }
    prod = Producer(args)
    try:
        if args.mode in ("latency", "both"):
            out["latency_us"] = prod.latency()
        if args.mode in ("throughput", "both"):
            frames, elapsed = prod.throughput()
            out["frames"] = frames
            out["seconds"] = round(elapsed, 6)
            out["frames_per_s_each"] = frames / elapsed
            out["cpu_percent_each"] = [round(c, 2) for c in prod.cpu]
    finally:
        errors, copied = prod.close()
    frames_total = max(prod.seq, 1)
    out["verify_errors"] = errors
    out["copied_bytes_per_frame"] = copied // frames_total
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.check_args:
        cfg = {k: v for k, v in vars(args).items() if k != "check_args"}
        print(json.dumps(cfg, sort_keys=True))
        return 0
    try:
        out = run(args)
    except Exception as e:  # one JSON line whatever happens, for the bench's summary
        log(f"failed: {e!r}")
        print(json.dumps({"baseline": BASELINE, "label": args.label, "error": repr(e)}))
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
