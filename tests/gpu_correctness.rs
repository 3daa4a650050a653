//! GPU regression tests of the "correct by construction" invariant: every imported view lies
//! inside memory that is really mapped (clones, casts, cache hits, lying exporters), leases
//! are exact, a legacy buffer is never freed under a consumer's lease, and contexts of other
//! libraries survive our calls. Run with `--include-ignored` on a GPU machine.

use std::path::Path;
use std::time::{Duration, Instant};

use cuda_ipc::ipc::{
    fetch, ExportOptions, Exporter, ImportOptions, SharedDeviceBuffer, Signal, Transport,
};
use cuda_ipc::kernels::reference;
use cuda_ipc::prelude::*;

mod common;
use common::driver;
use common::{temp_dir, RoleProcess};

/// Bytes of the test buffers.
const BYTES: usize = 1 << 20;

fn env(scenario: &str, transport: &str, dir: &Path, seed: u32) -> Vec<(&'static str, String)> {
    vec![
        ("CUDA_IPC_TEST_ROLE", "producer".into()),
        ("CUDA_IPC_TEST_SCENARIO", scenario.into()),
        ("CUDA_IPC_TEST_TRANSPORT", transport.into()),
        ("CUDA_IPC_TEST_PATH", dir.display().to_string()),
        ("CUDA_IPC_TEST_SEED", seed.to_string()),
    ]
}

/// Prints the exporter's lease counts each time they change, until every lease is released.
fn print_stats_until_released(exporter: &Exporter, expected: usize) {
    let start = Instant::now();
    let mut last = None;
    while start.elapsed() < Duration::from_secs(120) {
        let s = exporter.stats();
        let now = (s.active_leases, s.total_leases);
        if last != Some(now) {
            println!("PRODUCER: leases active={} total={}", now.0, now.1);
            last = Some(now);
        }
        if s.total_leases >= expected && s.active_leases == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("leases were not released in time");
}

/// The role dispatcher: returns at once unless CUDA_IPC_TEST_ROLE is set (see tests/common).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn zz_role_entry() {
    if std::env::var("CUDA_IPC_TEST_ROLE").is_err() {
        return;
    }
    let get = |k: &str| std::env::var(format!("CUDA_IPC_TEST_{k}")).unwrap_or_default();
    let dir = std::path::PathBuf::from(get("PATH"));
    let transport = Transport::parse(&get("TRANSPORT")).unwrap();
    let seed: u32 = get("SEED").parse().unwrap();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    match get("SCENARIO").as_str() {
        "two-types" => {
            // An honest producer exports one buffer as bytes ("a") and as words ("b").
            let mut words = SharedDeviceBuffer::<u32>::zeroed(&ctx, BYTES / 4, transport).unwrap();
            k.fill_pattern(&stream, &mut words, seed).unwrap();
            stream.synchronize().unwrap();
            let bytes = words.cast::<u8>().unwrap();
            let a = Exporter::bind(dir.join("a"), &bytes).unwrap();
            let words = bytes.cast::<u32>().unwrap();
            let b = Exporter::bind(dir.join("b"), &words).unwrap();
            println!("PRODUCER: serving");
            a.wait_released(Duration::from_secs(120)).unwrap();
            b.wait_released(Duration::from_secs(120)).unwrap();
            println!("PRODUCER: OK");
        }
        "liar" => {
            // A real legacy buffer, published with descriptors that lie about its size.
            let buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, BYTES / 4, transport).unwrap();
            let real = *buf.descriptor();
            let options = || ExportOptions {
                expected_consumers: 1,
                ..Default::default()
            };
            // Signal words claimed at the end of a 1 GiB allocation (data honest).
            let mut signals = real;
            signals.alloc_size = 1 << 30;
            signals.signal_offset = (1 << 30) - 8;
            let e1 = {
                // SAFETY: `buf` outlives the exporters (dropped after wait_released below).
                unsafe { Exporter::bind_raw_legacy(dir.join("signals"), &signals, options()) }
                    .unwrap()
            };
            // A claimed allocation four times the real one (data and signals honest).
            let mut size = real;
            size.alloc_size = real.alloc_size * 4;
            let e2 = {
                // SAFETY: `buf` outlives the exporters (dropped after wait_released below).
                unsafe { Exporter::bind_raw_legacy(dir.join("size"), &size, options()) }.unwrap()
            };
            // Data claimed twice as long as the allocation really is.
            let mut data = real;
            data.alloc_size = real.alloc_size * 4;
            data.len = real.alloc_size / 2; // u32 words: 2 × the real bytes
            data.byte_size = data.len * 4;
            data.signal_offset = 0;
            let e3 = {
                // SAFETY: `buf` outlives the exporters (dropped after wait_released below).
                unsafe { Exporter::bind_raw_legacy(dir.join("data"), &data, options()) }.unwrap()
            };
            println!("PRODUCER: serving");
            for e in [&e1, &e2, &e3] {
                e.wait_released(Duration::from_secs(120)).unwrap();
            }
            drop(buf);
            println!("PRODUCER: OK");
        }
        "free-under-lease" => {
            let free0 = ctx.mem_info().unwrap().0;
            let big = 256 << 20;
            let mut buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, big / 4, transport).unwrap();
            k.fill_pattern(&stream, &mut buf, seed).unwrap();
            stream.synchronize().unwrap();
            let exporter = Exporter::bind(dir.join("frames"), &buf).unwrap();
            exporter.wait_consumers(1, Duration::from_secs(60)).unwrap();
            assert_eq!(buf.active_leases(), 1);
            let exporter = if std::env::var("CUDA_IPC_TEST_EXPORTER_FIRST").is_ok() {
                // The exporter goes first: its lease connection drains in the background.
                drop(exporter);
                None
            } else {
                Some(exporter)
            };
            drop(buf); // under a live lease: deferred, not freed
            if exporter.is_some() {
                println!("PRODUCER: buffer dropped, exporter still serving");
            }
            let held = ctx.mem_info().unwrap().0;
            println!(
                "PRODUCER: dropped under lease; {} MiB still allocated",
                free0.saturating_sub(held) >> 20
            );
            assert!(
                free0.saturating_sub(held) >= big,
                "the buffer was freed under a live lease"
            );
            if let Some(exporter) = &exporter {
                exporter.wait_released(Duration::from_secs(120)).unwrap();
            }
            // The last lease frees it (on the exporter's thread): wait for the memory.
            let start = Instant::now();
            while ctx.mem_info().unwrap().0 < free0.saturating_sub(big / 2)
                && start.elapsed() < Duration::from_secs(60)
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            let after = ctx.mem_info().unwrap().0;
            assert!(
                after >= free0.saturating_sub(big / 2),
                "the deferred free did not happen after the last lease: free {after}, before {free0}"
            );
            assert_eq!(
                cuda_ipc::drop_error_count(),
                0,
                "{:?}",
                cuda_ipc::take_drop_errors()
            );
            println!("PRODUCER: freed after the last lease; OK");
        }
        "stats" => {
            let mut buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, BYTES / 4, transport).unwrap();
            k.fill_pattern(&stream, &mut buf, seed).unwrap();
            stream.synchronize().unwrap();
            let exporter = Exporter::bind(dir.join("frames"), &buf).unwrap();
            println!("PRODUCER: serving");
            print_stats_until_released(&exporter, 2);
            println!("PRODUCER: OK");
        }
        other => panic!("unknown scenario {other}"),
    }
}

fn spawn(scenario: &str, transport: &str, dir: &Path, seed: u32) -> RoleProcess {
    let mut p = RoleProcess::spawn(&[], &env(scenario, transport, dir, seed));
    p.expect_line("PRODUCER: serving", Duration::from_secs(60));
    p
}

fn finish(p: RoleProcess) {
    let (ok, lines) = p.finish(Duration::from_secs(120));
    assert!(ok, "producer failed:\n{}", lines.join("\n"));
}

/// Finding 1: views derive from the handle (clone, cast) or from the caller's own checked
/// descriptor (cache hit), never from the descriptor cached on the mapping.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn clones_casts_and_cache_hits_keep_their_own_view() {
    for transport in ["fd", "legacy"] {
        let dir = temp_dir("views");
        let p = spawn("two-types", transport, &dir, 7);
        let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
        let stream = Stream::new(&ctx).unwrap();
        let k = ctx.kernels().unwrap();
        let t = Duration::from_secs(30);
        {
            let a = SharedDeviceBuffer::<u8>::import(&ctx, dir.join("a"), t).unwrap();
            assert_eq!(a.len(), BYTES);
            // u8 -> u32 -> clone: N/4 words, not N words over N bytes.
            let words = a.try_clone().unwrap().cast::<u32>().unwrap();
            let clone = words.try_clone().unwrap();
            assert_eq!((words.len(), clone.len()), (BYTES / 4, BYTES / 4));
            assert!(clone.byte_len() <= clone.allocation_size());
            // The same buffer published as words: a cache hit, with b's own view.
            let b = SharedDeviceBuffer::<u32>::import(&ctx, dir.join("b"), t).unwrap();
            assert_eq!(b.device_ptr(), a.device_ptr(), "one mapping");
            assert_eq!(ctx.imported_mappings(), 1);
            assert_eq!(
                b.len(),
                BYTES / 4,
                "b's view is b's, not a's {} elements",
                BYTES
            );
            let b2 = b.try_clone().unwrap();
            assert_eq!(b2.len(), BYTES / 4);
            let want = reference::pattern_checksum(7, (BYTES / 4) as u64);
            assert_eq!(k.checksum(&stream, &b2).unwrap(), want);
            // A second Context of the same GPU shares the process-wide cache.
            let ctx2 = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
            let b3 = SharedDeviceBuffer::<u32>::import(&ctx2, dir.join("b"), t).unwrap();
            assert_eq!(b3.device_ptr(), b.device_ptr(), "no second open");
            assert_eq!(ctx2.imported_mappings(), 1);
        }
        assert_eq!(ctx.imported_mappings(), 0);
        finish(p);
        println!("{transport}: views of clones, casts and cache hits are their own");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

/// Findings 2 and 3: a lying legacy exporter cannot make a view, or the signal words, reach
/// past the mapping; `allocation_size` reports what was measured.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_lying_exporter_cannot_place_views_outside_the_mapping() {
    let dir = temp_dir("liar");
    let p = spawn("liar", "legacy", &dir, 1);
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let t = Duration::from_secs(30);
    let err = SharedDeviceBuffer::<u32>::import(&ctx, dir.join("signals"), t).unwrap_err();
    assert!(matches!(err, Error::MappingTooSmall { .. }), "{err}");
    println!("signals past the mapping: {err}");
    let err = SharedDeviceBuffer::<u32>::import(&ctx, dir.join("data"), t).unwrap_err();
    assert!(matches!(err, Error::MappingTooSmall { .. }), "{err}");
    println!("data past the mapping: {err}");
    assert_eq!(
        ctx.imported_mappings(),
        0,
        "refused imports leave nothing mapped"
    );
    {
        let buf = SharedDeviceBuffer::<u32>::import(&ctx, dir.join("size"), t).unwrap();
        let claimed = buf.descriptor().alloc_size as usize;
        assert!(
            buf.allocation_size() < claimed,
            "allocation_size {} is the measured size, not the claimed {claimed}",
            buf.allocation_size()
        );
        // Its signal words are honest and usable.
        let stream = Stream::new(&ctx).unwrap();
        buf.write_signal(&stream, Signal::Done, 5).unwrap();
        stream.synchronize().unwrap();
        assert_eq!(buf.read_signal(Signal::Done).unwrap(), 5);
    }
    finish(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 4: the owner drops a legacy buffer while a consumer holds a lease: the memory stays
/// allocated (and its contents intact) until the consumer lets go, then it is freed.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_legacy_buffer_is_not_freed_under_a_live_lease() {
    for exporter_first in [false, true] {
        legacy_buffer_outlives_its_owner(exporter_first);
    }
}

fn legacy_buffer_outlives_its_owner(exporter_first: bool) {
    let dir = temp_dir("limbo");
    let mut vars = env("free-under-lease", "legacy", &dir, 11);
    if exporter_first {
        vars.push(("CUDA_IPC_TEST_EXPORTER_FIRST", "1".into()));
    }
    let mut p = RoleProcess::spawn(&[], &vars);
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    {
        let buf =
            SharedDeviceBuffer::<u32>::import(&ctx, dir.join("frames"), Duration::from_secs(60))
                .unwrap();
        p.expect_line("dropped under lease", Duration::from_secs(60));
        if !exporter_first {
            // The exporter still serves, but the owner has dropped the memory: a new consumer
            // must not get it.
            p.expect_line("exporter still serving", Duration::from_secs(10));
            let late = fetch::<u32>(
                dir.join("frames"),
                &ImportOptions::with_timeout(Duration::from_secs(5)),
            )
            .unwrap_err();
            assert!(
                late.to_string().contains("dropped this buffer"),
                "a consumer after the owner's drop: {late}"
            );
        }
        // The owner has dropped its buffer: the memory must still hold the frame.
        let sum = ctx.kernels().unwrap().checksum(&stream, &buf).unwrap();
        assert_eq!(sum, reference::pattern_checksum(11, buf.len() as u64));
    }
    finish(p);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A stats line saying every lease has ended, after at least one was granted.
fn lease_ended(line: &str) -> bool {
    line.contains("active=0") && !line.contains("total=0")
}

/// Finding 4 (exact leases): a lease lasts as long as the mapping — a cache hit's connection
/// is not needed (this process already holds that exporter's lease, which stays), an offer's
/// lease moves into the mapping, and the lease ends only when the memory is unmapped here.
/// Repeated imports do not pile up connections.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn leases_last_as_long_as_the_mapping() {
    let dir = temp_dir("leases");
    let mut p = spawn("stats", "fd", &dir, 3);
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let path = dir.join("frames");
    let t = Duration::from_secs(30);
    let offer = fetch::<u32>(&path, &ImportOptions::with_timeout(t)).unwrap();
    let first = SharedDeviceBuffer::<u32>::import_offer(&ctx, offer).unwrap();
    p.expect_line("active=1 total=1", Duration::from_secs(10));
    let second = SharedDeviceBuffer::<u32>::import(&ctx, &path, t).unwrap(); // cache hit
    let third =
        SharedDeviceBuffer::<u32>::import_cached(&ctx, second.descriptor(), &Default::default())
            .unwrap()
            .expect("cached");
    p.expect_line("total=2", Duration::from_secs(10));
    drop(first); // the handle that brought the lease
    drop(second);
    // The mapping lives on in `third`: its lease must still be held.
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !p.saw(lease_ended),
        "the lease ended while the memory was still mapped"
    );
    // Many imports of one buffer, all kept: one lease per process, so the 129th does not find
    // the exporter full (max_connections is 128).
    let many: Vec<_> = (0..200)
        .map(|i| {
            SharedDeviceBuffer::<u32>::import(&ctx, &path, t)
                .unwrap_or_else(|e| panic!("import {i} of one buffer: {e}"))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !p.saw(lease_ended),
        "the lease ended while the memory was still mapped"
    );
    drop(many);
    drop(third); // the last handle: unmapped, the lease ends
    p.expect_line("active=0", Duration::from_secs(10));
    let (ok, lines) = p.finish(Duration::from_secs(60));
    assert!(ok, "{}", lines.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Finding 9: our calls restore whatever context the thread had current (here: none).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_callers_current_context_survives_our_calls() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    // SAFETY: unbinding (null) is always allowed.
    unsafe { driver::ctx_set_current(std::ptr::null_mut()) }.unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let mut buf = DeviceBuffer::<u32>::zeroed(&ctx, 1024).unwrap();
    ctx.kernels()
        .unwrap()
        .fill_pattern(&stream, &mut buf, 1)
        .unwrap();
    stream.synchronize().unwrap();
    let v = buf.copy_to_vec().unwrap();
    assert_eq!(v.len(), 1024);
    drop(buf);
    assert!(
        driver::ctx_get_current().unwrap().is_null(),
        "a cuda-ipc call left its context current"
    );
    if Device::count().unwrap() >= 2 {
        // Another GPU's context current (as another library would have it).
        let other = Context::new(Device::by_ordinal(1).unwrap()).unwrap();
        let _theirs = other.bind().unwrap();
        let buf = DeviceBuffer::<u32>::from_slice(&ctx, &[1, 2, 3]).unwrap();
        assert_eq!(buf.copy_to_vec().unwrap(), vec![1, 2, 3]);
        drop(buf);
        assert_eq!(driver::ctx_get_current().unwrap(), other.raw().cast());
        // Finding 10: an event cannot record a stream of another context.
        let event = Event::new(&other).unwrap();
        let err = event.record(&stream).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
    } else {
        panic!("this test needs 2 GPUs for its second half (a context of another device)");
    }
}
