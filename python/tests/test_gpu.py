"""GPU tests with PyTorch and CuPy: producers and consumers in separate processes (and in a
separate PID namespace), zero-copy views, copies with a warning, layout checks, leases that
outlive the exporter, channels, the torch.multiprocessing reducer. Run on a GPU host with
CUDA_IPC_GPU_TESTS=1 (the GPU bundle does)."""

import os
import shutil
import subprocess
import sys
import textwrap
import warnings

import pytest

import cuda_ipc

pytestmark = pytest.mark.gpu

TIMEOUT = 120


def run_child(code, tmp_path, *args, timeout=TIMEOUT, prefix=()):
    """Runs `code` in a new Python process (not a fork): returns its stdout; fails on error."""
    script = tmp_path / f"child_{abs(hash(code)) % 10**8}.py"
    script.write_text(textwrap.dedent(code))
    out = subprocess.run([*prefix, sys.executable, str(script), *map(str, args)],
                         capture_output=True, text=True, timeout=timeout, cwd=tmp_path)
    assert out.returncode == 0, f"child failed ({out.returncode}):\n{out.stdout}\n{out.stderr}"
    return out.stdout


@pytest.fixture
def shared_dir(tmp_path):
    d = tmp_path / "shared"
    d.mkdir(mode=0o700)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("transport", ["fd", "legacy"])
def test_share_without_a_copy_and_open_as_a_torch_tensor_in_another_process(
        shared_dir, tmp_path, transport):
    import torch
    arr = cuda_ipc.empty((256, 1024), torch.float32, device=0, transport=transport)
    t = arr.torch()
    assert t.data_ptr() == arr.data_ptr and t.shape == (256, 1024) and t.dtype == torch.float32
    t.copy_(torch.arange(256 * 1024, device="cuda:0", dtype=torch.float32).reshape(256, 1024))
    with warnings.catch_warnings():
        warnings.simplefilter("error", cuda_ipc.CopyWarning)
        export = cuda_ipc.share(t, shared_dir / "w")
    assert not export.copied and export.array.data_ptr == arr.data_ptr
    out = run_child("""
        import sys, torch, cuda_ipc
        a = cuda_ipc.open(sys.argv[1], timeout=60)
        assert a.shape == (256, 1024) and a.dtype == "float32" and not a.is_owner, a
        t = a.torch()
        expect = torch.arange(256 * 1024, device="cuda:0", dtype=torch.float32).reshape(256, 1024)
        assert torch.equal(t, expect)
        t.mul_(2)                      # write through the mapping
        torch.cuda.synchronize()
        print("OK", a)
    """, tmp_path, shared_dir / "w")
    assert out.startswith("OK SharedArray(float32[256, 1024], cuda:0"), out
    expect = torch.arange(256 * 1024, device="cuda:0", dtype=torch.float32).reshape(256, 1024)
    assert torch.equal(t, expect * 2), "the consumer's writes are not visible to the producer"
    assert export.stats()["total_leases"] == 1
    export.close()


def test_a_torch_allocator_tensor_is_copied_once_with_a_warning(shared_dir, tmp_path):
    import torch
    x = torch.randn(1000, 3, device="cuda:0").t()   # not contiguous
    with pytest.warns(cuda_ipc.CopyWarning, match="copied 12000 bytes"):
        export = cuda_ipc.share(x, shared_dir / "x")
    assert export.copied and export.array.shape == (3, 1000)
    expected = float(x.double().sum())
    out = run_child("""
        import sys, torch, cuda_ipc
        t = cuda_ipc.open(sys.argv[1], timeout=60, dtype=torch.float32, shape=(3, 1000)).torch()
        print(repr(float(t.double().sum())))
    """, tmp_path, shared_dir / "x")
    assert float(out) == pytest.approx(expected, rel=1e-12)
    export.close()


def test_cupy_reads_what_torch_shared_and_bfloat16_goes_through_dlpack(shared_dir, tmp_path):
    import torch
    a = cuda_ipc.empty((64, 64), torch.int16)
    a.torch().copy_(torch.arange(4096, device="cuda:0", dtype=torch.int16).reshape(64, 64))
    b = cuda_ipc.empty((1000,), torch.bfloat16)
    b.torch().fill_(1.5)
    with pytest.raises(AttributeError, match="DLPack"):
        b.__cuda_array_interface__
    ea, eb = cuda_ipc.share(a, shared_dir / "a"), cuda_ipc.share(b, shared_dir / "b")
    out = run_child("""
        import sys, cupy, torch, cuda_ipc
        a = cuda_ipc.open(sys.argv[1], timeout=60).cupy()
        assert a.dtype == cupy.int16 and a.shape == (64, 64)
        assert bool((a == cupy.arange(4096, dtype=cupy.int16).reshape(64, 64)).all())
        via_cai = cupy.asarray(cuda_ipc.open(sys.argv[1], timeout=60))
        assert via_cai.data.ptr == a.data.ptr
        b = cuda_ipc.open(sys.argv[2], timeout=60).torch()
        assert b.dtype == torch.bfloat16 and bool((b == 1.5).all())
        print("OK")
    """, tmp_path, shared_dir / "a", shared_dir / "b")
    assert out.strip() == "OK"
    ea.close()
    eb.close()


def test_open_checks_dtype_and_shape_against_the_descriptor(shared_dir, tmp_path):
    import torch
    a = cuda_ipc.empty((8, 16), torch.float32)
    export = cuda_ipc.share(a, shared_dir / "w", consumers=2)
    out = run_child("""
        import sys, cuda_ipc
        for kw in ({"dtype": "float16"}, {"shape": (16, 8)}, {"shape": (128,)},
                   {"shape": (8, 16, 1)}):
            try:
                cuda_ipc.open(sys.argv[1], timeout=60, **kw)
            except cuda_ipc.Descriptor as e:
                print(type(e).__name__, e)
            else:
                raise SystemExit(f"{kw} was accepted")
    """, tmp_path, shared_dir / "w")
    assert "the buffer holds float32[8, 16], the importer asked for float16[8, 16]" in out, out
    assert "asked for float32[16, 8]" in out, out
    assert "asked for float32[128]" in out and "asked for float32[8, 16, 1]" in out, out
    export.close()


def test_the_memory_outlives_the_export_and_the_array_while_a_consumer_holds_it(
        shared_dir, tmp_path):
    import gc
    import torch
    a = cuda_ipc.empty((1 << 20,), torch.int32)
    a.torch().fill_(7)
    export = cuda_ipc.share(a, shared_dir / "w")
    child = tmp_path / "holder.py"
    child.write_text(textwrap.dedent("""
        import sys, torch, cuda_ipc
        t = cuda_ipc.open(sys.argv[1], timeout=60).torch()
        print("HOLDING", flush=True)
        sys.stdin.readline()                     # the producer has let go of everything
        big = torch.full((1 << 22,), 9, dtype=torch.int32, device="cuda:0")  # reuse pressure
        torch.cuda.synchronize()
        print("SUM", int(t.sum()), flush=True)
    """))
    p = subprocess.Popen([sys.executable, str(child), str(shared_dir / "w")], cwd=tmp_path,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "HOLDING"
        export.wait_consumers(1, 30)
        export.close()
        del export, a
        gc.collect()
        torch.cuda.synchronize()
        probe = torch.full((1 << 22,), 3, dtype=torch.int32, device="cuda:0")  # reuse pressure
        torch.cuda.synchronize()
        p.stdin.write("go\n")
        p.stdin.flush()
        out, err = p.communicate(timeout=TIMEOUT)
    finally:
        p.kill()
    assert p.returncode == 0, err
    assert out.strip() == f"SUM {7 * (1 << 20)}", (out, err)
    del probe


def test_fd_transport_works_from_another_pid_namespace_as_pid_1(shared_dir, tmp_path):
    import torch
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.fail("needs root and unshare(1) (the GPU bundle runs as root)")
    a = cuda_ipc.empty((4096,), torch.float64, transport="fd")
    a.torch().fill_(0.25)
    export = cuda_ipc.share(a, shared_dir / "w")
    out = run_child("""
        import os, sys, cuda_ipc
        assert os.getpid() == 1, os.getpid()
        t = cuda_ipc.open(sys.argv[1], timeout=60).torch()
        print("PID", os.getpid(), "SUM", float(t.sum()))
    """, tmp_path, shared_dir / "w", prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    assert out.strip() == "PID 1 SUM 1024.0", out
    export.close()


def test_a_channel_of_torch_frames_every_frame_checked_then_closed(shared_dir, tmp_path):
    import torch
    path = shared_dir / "frames"
    pub = cuda_ipc.Publisher(path, (1024,), torch.float32, slots=4)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import sys, torch, cuda_ipc
        sub = cuda_ipc.Subscriber(sys.argv[1], (1024,), "float32", timeout=60, start="next")
        print("JOINED", flush=True)
        side = torch.cuda.Stream()
        n = bad = 0
        with torch.cuda.stream(side):            # the GPU-side wait is queued on `side`
            for sample in sub:
                with sample:
                    t = sample.torch()
                    bad += int((t != float(sample.seq)).sum())
                    n += 1
        print("FRAMES", n, "BAD", bad, "STATS", sub.stats(), flush=True)
    """), str(path)], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "JOINED"
        pub.wait_subscribers(1, 30)
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            for _ in range(300):
                with pub.loan(timeout=30) as loan:
                    loan.torch().fill_(float(loan.seq))
        assert pub.stats()["published"] == 300
        pub.close()
        out, err = child.communicate(timeout=TIMEOUT)
    finally:
        child.kill()
    assert child.returncode == 0, err
    assert out.startswith("FRAMES 300 BAD 0"), (out, err)
    # One GPU, two processes, no MPS daemon started by this test: the slow case, reported.
    assert "'sharing': 'SameGpu" in out, out


def test_a_publisher_that_dies_raises_publisher_gone(shared_dir, tmp_path):
    path = shared_dir / "dies"
    pub = subprocess.Popen([sys.executable, "-c", textwrap.dedent("""
        import os, sys, torch, cuda_ipc
        pub = cuda_ipc.Publisher(sys.argv[1], (16,), "int32")
        pub.wait_subscribers(1, 60)
        for _ in range(3):
            with pub.loan() as loan:
                loan.torch().fill_(loan.seq)
        torch.cuda.synchronize()
        sys.stdin.readline()
        os._exit(9)                               # dies without closing the channel
    """), str(path)], cwd=tmp_path, stdin=subprocess.PIPE, text=True)
    try:
        sub = cuda_ipc.Subscriber(path, (16,), "int32", timeout=60, start="next")
        for seq in (1, 2, 3):
            with sub.receive(timeout=30) as s:
                assert s.seq == seq and int(s.torch().sum()) == 16 * seq
        pub.stdin.write("die\n")
        pub.stdin.flush()
        pub.wait(30)
        with pytest.raises(cuda_ipc.PublisherGone) as info:
            sub.receive(timeout=30)
        assert info.value.closed is False
    finally:
        pub.kill()


def test_torch_multiprocessing_queue_with_the_reducer(tmp_path):
    import torch
    import torch.multiprocessing as mp
    import cuda_ipc.torch as cit
    helper = tmp_path / "reducer_child.py"
    helper.write_text(textwrap.dedent("""
        def consume(q, out):
            t = q.get(timeout=60)
            p = q.get(timeout=60)
            out.put((str(t.device), t.dtype == __import__("torch").float16, float(t.float().sum()),
                     type(p).__name__, bool(p.requires_grad), float(p.sum())))
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        import reducer_child
        cit.register_reducer(directory=str(tmp_path / "q"), timeout=60)
        ctx = mp.get_context("spawn")
        q, out = ctx.Queue(), ctx.Queue()
        proc = ctx.Process(target=reducer_child.consume, args=(q, out))
        proc.start()
        q.put(torch.full((1000,), 0.5, dtype=torch.float16, device="cuda:0"))
        q.put(torch.nn.Parameter(torch.ones(10, device="cuda:0")))
        got = out.get(timeout=TIMEOUT)
        proc.join(60)
    finally:
        sys.path.remove(str(tmp_path))
    assert got == ("cuda:0", True, 500.0, "Parameter", True, 10.0), got
    assert proc.exitcode == 0


class PublisherChild:
    """A publisher in another process (a subscriber in its publisher's own process is refused,
    as any self-import): `publish(n)` makes it publish n frames filled with their numbers."""

    CODE = textwrap.dedent("""
        import json, sys, torch, cuda_ipc
        path, shape, dtype, opts = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
        pub = cuda_ipc.Publisher(path, shape, dtype, **opts)
        print("READY", flush=True)
        pub.wait_subscribers(1, 60)
        for line in sys.stdin:
            cmd = line.split()
            if cmd[0] == "pub":
                for _ in range(int(cmd[1])):
                    with pub.loan(timeout=60) as loan:
                        loan.torch().fill_(loan.seq)
                torch.cuda.synchronize()
                print("DONE", flush=True)
            else:
                break
        pub.close()
    """)

    def __init__(self, tmp_path, path, shape, dtype, **opts):
        import json
        script = tmp_path / "publisher_child.py"
        script.write_text(self.CODE)
        self.p = subprocess.Popen(
            [sys.executable, str(script), str(path), json.dumps(list(shape)), dtype,
             json.dumps(opts)], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            text=True)
        assert self.p.stdout.readline().strip() == "READY"

    def publish(self, n, wait=True):
        self.p.stdin.write(f"pub {n}\n")
        self.p.stdin.flush()
        if wait:
            self.done()

    def done(self):
        assert self.p.stdout.readline().strip() == "DONE"

    def close(self):
        try:
            self.p.stdin.write("close\n")
            self.p.stdin.flush()
            assert self.p.wait(60) == 0
        finally:
            self.p.kill()


def test_drop_oldest_skips_frames_for_a_slow_subscriber_and_other_frames_are_refused(
        shared_dir, tmp_path):
    import torch
    path = shared_dir / "latest"
    pub = PublisherChild(tmp_path, path, (256,), "int64", slots=3, policy="drop-oldest")
    try:
        with pytest.raises(cuda_ipc.Descriptor, match=r"asked for frames of float32\[256\]"):
            cuda_ipc.Subscriber(path, (256,), "float32", timeout=10)
        sub = cuda_ipc.Subscriber(path, (256,), torch.int64, timeout=30, start="next")
        pub.publish(20)                          # nobody receives: the oldest are dropped
        with sub.receive(timeout=10) as s:
            assert s.seq > 1 and s.missed > 0, (s.seq, s.missed)
            assert int(s.torch()[0]) == s.seq
        assert sub.stats()["missed"] >= 1
    finally:
        pub.close()

def test_careless_use_gets_clear_errors_not_crashes(shared_dir):
    import torch
    pub = cuda_ipc.Publisher(shared_dir / "c", (8,), "float32")
    loan = pub.loan(timeout=5)
    with pytest.raises(cuda_ipc.InvalidArgument, match="frame 1 is on loan"):
        pub.loan(timeout=1)
    with pytest.raises(cuda_ipc.InvalidArgument, match="on loan"):
        pub.stats()
    slot = loan.array
    loan.publish()
    with pytest.raises(cuda_ipc.InvalidArgument, match="already published"):
        loan.publish()
    with pytest.raises(cuda_ipc.InvalidArgument, match="was published or abandoned"):
        loan.array
    pub.close()
    with pytest.raises(cuda_ipc.ChannelClosed):
        pub.loan(timeout=1)
    a = cuda_ipc.empty((4,), "float32")
    with pytest.raises(cuda_ipc.InvalidArgument, match="only memory this process allocated"):
        cuda_ipc._native.Exporter(slot, str(shared_dir / "x"))
    e = cuda_ipc.share(a, shared_dir / "a")
    with pytest.raises(cuda_ipc.NameInUse):
        cuda_ipc.share(a, shared_dir / "a")
    e.close()
    with pytest.raises(cuda_ipc.InvalidArgument, match="closed"):
        e.stats()


def test_no_deadlock_between_a_blocked_call_and_another_threads_call(shared_dir):
    import threading
    import time
    pub = cuda_ipc.Publisher(shared_dir / "dl", (4,), "float32")
    errors = []

    def waiter():
        try:
            pub.wait_subscribers(1, 1.0)           # nobody comes: times out holding nothing
        except cuda_ipc.Timeout as e:
            errors.append(e)

    t = threading.Thread(target=waiter)
    t.start()
    time.sleep(0.2)
    started = time.monotonic()
    assert pub.stats()["subscribers"] == 0          # waits for the waiter's lock, GIL released
    pub.close()
    t.join(10)
    assert not t.is_alive(), "deadlock: the waiter never came back"
    assert len(errors) == 1 and time.monotonic() - started < 5


def test_a_collected_loan_gives_its_slot_back_and_close_never_frees_a_viewed_slot(shared_dir):
    import gc
    import torch
    pub = cuda_ipc.Publisher(shared_dir / "gc", (1024,), "float32", slots=2)
    pub.loan(timeout=5)                            # collected at once, never published
    gc.collect()
    with pub.loan(timeout=5) as loan:              # the slot came back
        loan.torch().fill_(1.0)
    kept = pub.loan(timeout=5).torch()             # a tensor viewing a loaned slot
    pub.close()
    kept.fill_(2.0)                                # the pool is still mapped: no fault
    torch.cuda.synchronize()
    assert float(kept.sum()) == 2048.0
    del kept
    gc.collect()


def test_a_sample_dropped_while_another_thread_receives_is_released_without_waiting(
        shared_dir, tmp_path):
    import threading
    import time
    path = shared_dir / "drop"
    pub = PublisherChild(tmp_path, path, (16,), "int32", slots=2, max_held=2)
    try:
        sub = cuda_ipc.Subscriber(path, (16,), "int32", timeout=30, start="next")
        pub.publish(1)
        held = sub.receive(timeout=10)
        outcome = []

        def receive_nothing():
            try:
                sub.receive(timeout=2.0)
                outcome.append("received")
            except cuda_ipc.Timeout as e:
                outcome.append(str(e))

        blocked = threading.Thread(target=receive_nothing)
        blocked.start()
        time.sleep(0.3)                            # the other thread is inside receive
        started = time.monotonic()
        del held                                   # must not wait for that receive
        assert time.monotonic() - started < 0.5
        blocked.join(10)
        assert outcome and "on channel" in outcome[0] and "after 2s" in outcome[0], outcome
        pub.publish(3, wait=False)                 # Block policy: needs the slot back
        for seq in (2, 3, 4):
            with sub.receive(timeout=10) as s:
                assert s.seq == seq and int(s.torch()[0]) == seq
        pub.done()
    finally:
        pub.close()

def test_a_frame_used_on_another_stream_waits_for_the_stream_it_was_received_on(
        shared_dir, tmp_path):
    import torch
    path = shared_dir / "streams"
    pub = PublisherChild(tmp_path, path, (1 << 20,), "float32", slots=4)
    try:
        sub = cuda_ipc.Subscriber(path, (1 << 20,), "float32", timeout=30, start="next")
        pub.publish(20, wait=False)
        recv, use = torch.cuda.Stream(), torch.cuda.Stream()
        for _ in range(20):
            with torch.cuda.stream(recv):
                s = sub.receive(timeout=10)
            with torch.cuda.stream(use):           # DLPack hands `use` to __dlpack__
                total = s.torch().sum()
            use.synchronize()
            assert float(total) == float(s.seq) * (1 << 20)
            s.release(use)
        pub.done()
    finally:
        pub.close()
