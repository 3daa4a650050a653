//! Stream-ordered lifetimes on a GPU: dropping memory, and synchronous copies, wait for the
//! streams that used the memory and for nothing else. An unrelated stream is held blocked on
//! the GPU (waiting on a signal word nobody writes yet) while we drop and copy; with the old
//! whole-context synchronize these calls would hang until it is released.
//! Run with `--include-ignored` on a GPU machine.

use std::time::Duration;

use cuda_ipc::ipc::{Exporter, SharedDeviceBuffer, Signal, Transport};
use cuda_ipc::kernels::reference;
use cuda_ipc::prelude::*;

mod common;
use common::{temp_dir, RoleProcess};

const LEN: usize = 1 << 20;

/// The role dispatcher: returns at once unless CUDA_IPC_TEST_ROLE is set (see tests/common).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn zz_role_entry() {
    let Ok(role) = std::env::var("CUDA_IPC_TEST_ROLE") else {
        return;
    };
    let dir = std::path::PathBuf::from(std::env::var("CUDA_IPC_TEST_PATH").unwrap());
    let ctx: &'static Context = Context::primary(Device::by_ordinal(0).unwrap()).unwrap();
    let work = Stream::new(ctx).unwrap();
    match role.as_str() {
        "producer" => {
            let mut bufs = Vec::new();
            let mut exporters = Vec::new();
            for t in [Transport::Fd, Transport::Legacy] {
                let mut buf = SharedDeviceBuffer::<u32>::zeroed(ctx, LEN, t).unwrap();
                ctx.kernels()
                    .unwrap()
                    .fill_pattern(&work, &mut buf, 5)
                    .unwrap();
                work.synchronize().unwrap();
                let name = if t == Transport::Fd { "fd" } else { "legacy" };
                exporters.push(Exporter::bind(dir.join(name), &buf).unwrap());
                bufs.push(buf);
            }
            println!("PRODUCER: serving");
            for e in &exporters {
                e.wait_released(Duration::from_secs(120)).unwrap();
            }
            println!("PRODUCER: OK");
        }
        "consumer" => {
            let mut local = DeviceBuffer::<u32>::from_slice(ctx, &[1, 2, 3]).unwrap();
            let imports: Vec<_> = ["fd", "legacy"]
                .iter()
                .map(|n| {
                    SharedDeviceBuffer::<u32>::import(ctx, dir.join(n), Duration::from_secs(30))
                        .unwrap()
                })
                .collect();
            for b in &imports {
                let sum = ctx.kernels().unwrap().checksum(&work, b).unwrap();
                assert_eq!(sum, reference::pattern_checksum(5, LEN as u64));
                // Queue more work on the import: its drop must wait for exactly this.
                ctx.kernels()
                    .unwrap()
                    .checksum_into(&work, b, &mut DeviceBuffer::zeroed(ctx, 1).unwrap())
                    .unwrap();
            }
            // The unrelated stream: blocked on the GPU until the gate's Ready word reaches 1.
            let gate = SharedDeviceBuffer::<u32>::zeroed(ctx, 1, Transport::Auto).unwrap();
            let busy = Stream::new(ctx).unwrap();
            gate.wait_signal(&busy, Signal::Ready, 1).unwrap();
            let after_gate = Event::new_untimed(ctx).unwrap();
            after_gate.record(&busy).unwrap();
            println!("CONSUMER: unrelated stream blocked");
            assert_eq!(local.copy_to_vec().unwrap(), vec![1, 2, 3]);
            local.copy_from_slice(&[4, 5, 6]).unwrap();
            local.zero().unwrap();
            println!("CONSUMER: synchronous copies returned");
            let mut imports = imports.into_iter();
            let (fd, legacy) = (imports.next().unwrap(), imports.next().unwrap());
            drop(fd); // cuMemUnmap + cuMemAddressFree: no device-wide synchronization
            println!("CONSUMER: fd import dropped");
            assert!(
                !after_gate.is_complete().unwrap(),
                "the unrelated stream ran early"
            );
            println!("CONSUMER: the unrelated stream is still blocked");
            gate.write_signal(&work, Signal::Ready, 1).unwrap();
            busy.synchronize().unwrap();
            // The driver's cuIpcCloseMemHandle synchronizes the device (measured: a legacy drop
            // did not return while the unrelated stream was blocked), so the legacy import is
            // dropped only now; see the README's design choices.
            drop(legacy);
            println!("CONSUMER: legacy import dropped");
            assert_eq!(ctx.imported_mappings(), 0);
            drop(local);
            assert_eq!(
                cuda_ipc::drop_error_count(),
                0,
                "{:?}",
                cuda_ipc::take_drop_errors()
            );
            println!("CONSUMER: OK");
        }
        other => panic!("unknown role {other}"),
    }
}

/// An imported fd buffer dropped, and synchronous copies made, while an unrelated stream of
/// the same context is blocked: each returns without waiting for it. (A legacy import's drop
/// cannot: the driver's `cuIpcCloseMemHandle` synchronizes the device.) Runs in a child
/// process, which is killed if a step hangs (a driver call blocked on the stream may hold the
/// context's lock, so the test cannot unblock it from another thread).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn drops_and_sync_copies_do_not_wait_for_unrelated_streams() {
    let dir = temp_dir("streams");
    std::fs::create_dir_all(&dir).unwrap();
    let role = |r: &str| {
        vec![
            ("CUDA_IPC_TEST_ROLE", r.to_string()),
            ("CUDA_IPC_TEST_PATH", dir.display().to_string()),
        ]
    };
    let mut producer = RoleProcess::spawn(&[], &role("producer"));
    producer.expect_line("PRODUCER: serving", Duration::from_secs(60));
    let mut consumer = RoleProcess::spawn(&[], &role("consumer"));
    let steps = [
        "unrelated stream blocked",
        "synchronous copies returned",
        "fd import dropped",
        "still blocked",
        "legacy import dropped",
        "CONSUMER: OK",
    ];
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        for step in steps {
            consumer.expect_line(step, Duration::from_secs(30));
        }
    }));
    if let Err(panic) = outcome {
        consumer.kill();
        producer.kill();
        std::panic::resume_unwind(panic);
    }
    let (ok, lines) = consumer.finish(Duration::from_secs(60));
    assert!(ok, "{}", lines.join("\n"));
    let (ok, lines) = producer.finish(Duration::from_secs(60));
    assert!(ok, "{}", lines.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A synchronous copy is ordered after the work queued on the memory by other streams (it
/// runs on the context's private stream, not the legacy default stream, so nothing else would
/// order it): a long chain of kernels writes a buffer on one stream, and an immediate
/// synchronous copy must see their final result. (Were the copy not ordered, it would read the
/// buffer while the chain is still running.)
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn synchronous_copies_see_the_work_queued_on_the_memory() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let words = 64 << 20; // 256 MiB
    let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, words).unwrap();
    let passes = 40;
    for round in 0..3u32 {
        k.fill_pattern(&stream, &mut buf, round).unwrap();
        for _ in 0..passes {
            k.transform_words(&stream, &mut buf, 7).unwrap();
        }
        // No stream.synchronize(): the copy itself must wait for the chain.
        let host = buf.copy_to_vec().unwrap();
        let want: Vec<u32> = (0..8u64)
            .map(|i| {
                let mut w = reference::pattern_word(round, i);
                for _ in 0..passes {
                    w = reference::transform_word(w, 7);
                }
                w
            })
            .collect();
        assert_eq!(
            &host[..8],
            &want[..],
            "round {round}: the copy ran before the kernels"
        );
        let last = words as u64 - 1;
        let mut w = reference::pattern_word(round, last);
        for _ in 0..passes {
            w = reference::transform_word(w, 7);
        }
        assert_eq!(
            host[last as usize], w,
            "round {round}: the copy ran before the kernels"
        );
    }
    drop(buf); // waits for the stream's last use, then frees
    assert_eq!(
        cuda_ipc::drop_error_count(),
        0,
        "{:?}",
        cuda_ipc::take_drop_errors()
    );
}

/// Asynchronous copies through pinned host memory: queued on a stream, ordered with a kernel on
/// the same stream, and safe to read back (the read waits for the copy) or to drop while still
/// pending (the drop waits).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn pinned_async_copies_round_trip_and_are_safe_to_drop_while_pending() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let n = 16 << 20;
    let src: Vec<u32> = (0..n as u32).collect();
    let pinned_in = PinnedHostBuffer::from_slice(&ctx, &src).unwrap();
    let mut dev = DeviceBuffer::<u32>::zeroed(&ctx, n).unwrap();
    let mut pinned_out = PinnedHostBuffer::<u32>::zeroed(&ctx, n).unwrap();
    dev.copy_from_host_async(&pinned_in, &stream).unwrap();
    k.transform_words(&stream, &mut dev, 3).unwrap();
    dev.copy_to_host_async(&mut pinned_out, &stream).unwrap();
    // No stream synchronize: reading the pinned buffer waits for the copy into it.
    let out = pinned_out.as_slice().unwrap();
    for i in [0usize, 1, n / 2, n - 1] {
        assert_eq!(out[i], reference::transform_word(src[i], 3), "word {i}");
    }
    // Length and context checks.
    let mut short = PinnedHostBuffer::<u32>::zeroed(&ctx, 3).unwrap();
    let err = dev.copy_to_host_async(&mut short, &stream).unwrap_err();
    assert!(matches!(err, Error::LengthMismatch { .. }), "{err}");
    // Dropped while copies into and out of it are queued: the drops wait, nothing faults.
    for _ in 0..4 {
        k.transform_words(&stream, &mut dev, 5).unwrap();
    }
    let mut pending = PinnedHostBuffer::<u32>::zeroed(&ctx, n).unwrap();
    dev.copy_to_host_async(&mut pending, &stream).unwrap();
    drop(pending);
    drop(pinned_in);
    stream.synchronize().unwrap();
    drop(dev);
    assert_eq!(
        cuda_ipc::drop_error_count(),
        0,
        "{:?}",
        cuda_ipc::take_drop_errors()
    );
}

/// Another library's stream (PyTorch's current stream, say) used through
/// `Stream::from_raw_borrowed`: work queued through the crate runs on it, memory records it,
/// and dropping the borrowed `Stream` leaves the stream to its owner.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_borrowed_stream_runs_the_crates_work_and_is_not_destroyed_on_drop() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let owner = Stream::new(&ctx).unwrap();
    let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, LEN).unwrap();
    for round in 0..3u32 {
        // SAFETY: `owner` is a live stream of `ctx` and outlives `borrowed`.
        let borrowed = unsafe { Stream::from_raw_borrowed(&ctx, owner.raw()) };
        assert_eq!(borrowed.raw(), owner.raw());
        ctx.kernels()
            .unwrap()
            .iota_u32(&borrowed, &mut buf, round)
            .unwrap();
        drop(borrowed); // must not destroy `owner`'s stream
        owner
            .synchronize()
            .expect("the owner's stream is still alive");
        let host = buf.copy_to_vec().unwrap();
        assert_eq!(host[10], round + 10, "round {round}");
    }
    // The legacy default stream (a null handle) works too.
    // SAFETY: null is the context's legacy default stream, which lives as long as the context.
    let default = unsafe { Stream::from_raw_borrowed(&ctx, std::ptr::null_mut()) };
    ctx.kernels()
        .unwrap()
        .iota_u32(&default, &mut buf, 100)
        .unwrap();
    default.synchronize().unwrap();
    assert_eq!(buf.copy_to_vec().unwrap()[1], 101);
}
