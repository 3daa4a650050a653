//! Stream-ordered lifetimes on a GPU: dropping memory, and synchronous copies, wait for the
//! streams that used the memory and for nothing else. An unrelated stream is held blocked on
//! the GPU (waiting on a signal word nobody writes yet) while we drop and copy; with the old
//! whole-context synchronize these calls would hang until it is released.
//! Run with `--include-ignored` on a GPU machine.

use std::sync::mpsc;
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
    if std::env::var("CUDA_IPC_TEST_ROLE").is_err() {
        return;
    }
    let path = std::env::var("CUDA_IPC_TEST_PATH").unwrap();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let mut buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, LEN, Transport::Fd).unwrap();
    ctx.kernels()
        .unwrap()
        .fill_pattern(&stream, &mut buf, 5)
        .unwrap();
    stream.synchronize().unwrap();
    let exporter = Exporter::bind(&path, &buf).unwrap();
    println!("PRODUCER: serving");
    exporter.wait_released(Duration::from_secs(120)).unwrap();
    println!("PRODUCER: OK");
}

/// Runs `f` on another thread; false if it has not returned within `limit`.
fn returns_within(limit: Duration, f: impl FnOnce() + Send + 'static) -> bool {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        f();
        let _ = tx.send(());
    });
    rx.recv_timeout(limit).is_ok()
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn drops_and_sync_copies_do_not_wait_for_unrelated_streams() {
    let dir = temp_dir("streams");
    let path = dir.join("frames");
    let mut producer = RoleProcess::spawn(
        &[],
        &[
            ("CUDA_IPC_TEST_ROLE", "producer".into()),
            ("CUDA_IPC_TEST_PATH", path.display().to_string()),
        ],
    );
    producer.expect_line("PRODUCER: serving", Duration::from_secs(60));
    let ctx: &'static Context = Context::primary(Device::by_ordinal(0).unwrap()).unwrap();
    let work = Stream::new(ctx).unwrap();
    // The unrelated stream: blocked on the GPU until the gate's Ready word reaches 1.
    let gate = SharedDeviceBuffer::<u32>::zeroed(ctx, 1, Transport::Auto).unwrap();
    let busy = Stream::new(ctx).unwrap();
    gate.wait_signal(&busy, Signal::Ready, 1).unwrap();
    let after_gate = Event::new_untimed(ctx).unwrap();
    after_gate.record(&busy).unwrap();

    let imported = SharedDeviceBuffer::<u32>::import(ctx, &path, Duration::from_secs(30)).unwrap();
    let sum = ctx.kernels().unwrap().checksum(&work, &imported).unwrap();
    assert_eq!(sum, reference::pattern_checksum(5, LEN as u64));
    let ok = returns_within(Duration::from_secs(20), move || {
        // Synchronous copies and drops of memory the blocked stream never touched.
        let mut local = DeviceBuffer::<u32>::from_slice(ctx, &[1, 2, 3]).unwrap();
        assert_eq!(local.copy_to_vec().unwrap(), vec![1, 2, 3]);
        local.zero().unwrap();
        let words = imported.view().slice(..3).unwrap().copy_to_vec().unwrap();
        assert_eq!(words.len(), 3);
        drop(local);
        drop(imported); // unmaps: waits for `work`'s checksum, not for `busy`
    });
    let still_blocked = !after_gate.is_complete().unwrap();
    // Open the gate whatever happened, so the process can finish.
    let opener = Stream::new(ctx).unwrap();
    gate.write_signal(&opener, Signal::Ready, 1).unwrap();
    opener.synchronize().unwrap();
    busy.synchronize().unwrap();
    assert!(
        ok,
        "a drop or synchronous copy waited for an unrelated, blocked stream"
    );
    assert!(
        still_blocked,
        "the unrelated stream was not blocked: the test proves nothing"
    );
    assert_eq!(ctx.imported_mappings(), 0);
    let (ok, lines) = producer.finish(Duration::from_secs(60));
    assert!(ok, "{}", lines.join("\n"));
    assert_eq!(
        cuda_ipc::drop_error_count(),
        0,
        "{:?}",
        cuda_ipc::take_drop_errors()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn memory_is_freed_only_after_the_streams_that_used_it() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let gate = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1, Transport::Auto).unwrap();
    // A buffer used by a stream that is held until the gate opens: its drop must wait.
    let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, LEN).unwrap();
    gate.wait_signal(&stream, Signal::Ready, 1).unwrap();
    k.fill_pattern(&stream, &mut buf, 9).unwrap();
    let mut out = DeviceBuffer::<u32>::zeroed(&ctx, LEN).unwrap();
    out.copy_from_device_async(&buf, &stream).unwrap();
    // A synchronous copy of `out` is ordered after the stream's work on it: it must wait for
    // the gate, so run it on another thread and open the gate from here.
    std::thread::scope(|s| {
        let reader = s.spawn(|| out.copy_to_vec().unwrap());
        std::thread::sleep(Duration::from_millis(200));
        assert!(
            !reader.is_finished(),
            "the copy did not wait for the stream's pending work"
        );
        let opener = Stream::new(&ctx).unwrap();
        gate.write_signal(&opener, Signal::Ready, 1).unwrap();
        let words = reader.join().unwrap();
        assert_eq!(
            reference::checksum_words(&words),
            reference::pattern_checksum(9, LEN as u64),
            "the copy saw the kernel's output"
        );
    });
    drop(buf);
    drop(out);
    assert_eq!(
        cuda_ipc::drop_error_count(),
        0,
        "{:?}",
        cuda_ipc::take_drop_errors()
    );
}
