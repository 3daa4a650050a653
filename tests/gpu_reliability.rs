//! GPU reliability: hostile fds, producers that die, stale and freed handles, a soak, and drops
//! on other threads. Run with `--include-ignored` on a GPU machine (as root is not needed).

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use cuda_ipc::ipc::{
    Descriptor, ExportOptions, Exporter, ImportOptions, SharedDeviceBuffer, Transport,
    WireTransport,
};
use cuda_ipc::kernels::reference;
use cuda_ipc::prelude::*;

mod common;
use common::os;
use common::{temp_dir, RoleProcess};

const LEN: usize = (64 << 20) / 4;

fn env(
    scenario: &str,
    transport: &str,
    path: &Path,
    seed: u32,
    extra: u64,
) -> Vec<(&'static str, String)> {
    vec![
        ("CUDA_IPC_TEST_ROLE", "producer".into()),
        ("CUDA_IPC_TEST_SCENARIO", scenario.into()),
        ("CUDA_IPC_TEST_TRANSPORT", transport.into()),
        ("CUDA_IPC_TEST_PATH", path.display().to_string()),
        ("CUDA_IPC_TEST_SEED", seed.to_string()),
        ("CUDA_IPC_TEST_EXTRA", extra.to_string()),
    ]
}

/// The role dispatcher: returns at once unless CUDA_IPC_TEST_ROLE is set (see tests/common).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn zz_role_entry() {
    if std::env::var("CUDA_IPC_TEST_ROLE").is_err() {
        return;
    }
    let get = |k: &str| std::env::var(format!("CUDA_IPC_TEST_{k}")).unwrap_or_default();
    let path = std::path::PathBuf::from(get("PATH"));
    let transport = Transport::parse(&get("TRANSPORT")).unwrap();
    let seed: u32 = get("SEED").parse().unwrap();
    let extra: u64 = get("EXTRA").parse().unwrap();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    match get("SCENARIO").as_str() {
        "serve" => {
            // Publish; wait for `extra` leases to come and go (or up to 120 s).
            let mut buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, LEN, transport).unwrap();
            ctx.kernels()
                .unwrap()
                .fill_pattern(&stream, &mut buf, seed)
                .unwrap();
            stream.synchronize().unwrap();
            let options = ExportOptions {
                expected_consumers: extra as usize,
                max_connections: 4096,
                ..Default::default()
            };
            let exporter = Exporter::bind_with(&path, &buf, options).unwrap();
            println!(
                "PRODUCER: serving generation {}",
                exporter.descriptor().generation
            );
            exporter.wait_released(Duration::from_secs(120)).unwrap();
            println!("PRODUCER: OK");
        }
        "soak" => {
            let mut start = None;
            for cycle in 0..extra {
                let buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1024, transport).unwrap();
                let exporter = Exporter::bind(&path, &buf).unwrap();
                exporter.wait_released(Duration::from_secs(60)).unwrap();
                drop(exporter);
                drop(buf);
                if cycle == 0 {
                    start = Some(os::open_fd_count().unwrap());
                }
            }
            let (start, end) = (start.unwrap(), os::open_fd_count().unwrap());
            println!(
                "PRODUCER: soak {extra} cycles, fds after the first {start}, at the end {end}"
            );
            assert_eq!(start, end, "the producer leaked descriptors");
            assert_eq!(
                cuda_ipc::drop_error_count(),
                0,
                "{:?}",
                cuda_ipc::take_drop_errors()
            );
            println!("PRODUCER: OK");
        }
        other => panic!("unknown scenario {other}"),
    }
}

fn free_memory(ctx: &Context) -> usize {
    ctx.mem_info().unwrap().0
}

/// Waits (bounded) until free device memory is at least `want`.
fn free_reaches(ctx: &Context, want: usize) -> usize {
    let start = Instant::now();
    loop {
        let free = free_memory(ctx);
        if free >= want || start.elapsed() > Duration::from_secs(5) {
            return free;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn non_cuda_fds_are_refused_with_a_typed_error_and_closed() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let mut d = Descriptor::example();
    d.transport = WireTransport::Fd;
    d.handle = [0; 64];
    d.owner_uuid = ctx.device().uuid().unwrap().0;
    d.exporter_pid = std::process::id() + 1_000_000;
    d.boot_id = os::boot_id();
    d.alloc_size = 2 << 20;
    let before = os::open_fd_count().unwrap();
    let memfd = os::memfd("not-cuda").unwrap();
    let devnull = std::fs::File::open("/dev/null").unwrap();
    for (what, fd) in [("memfd", memfd.as_fd()), ("/dev/null", devnull.as_fd())] {
        let err =
            SharedDeviceBuffer::<u32>::import_parts(&ctx, &d, Some(fd), &ImportOptions::default())
                .unwrap_err();
        assert!(err.driver_error().is_some(), "{what}: {err:?}");
        println!("{what}: {err}");
    }
    drop((memfd, devnull));
    assert_eq!(os::open_fd_count().unwrap(), before);
    assert_eq!(ctx.imported_mappings(), 0);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_producer_killed_while_the_consumer_has_the_buffer_mapped() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    for transport in ["fd", "legacy"] {
        let dir = temp_dir("killed-producer");
        let path = dir.join("frames");
        let free_at_start = free_memory(&ctx);
        let mut producer = RoleProcess::spawn(&[], &env("serve", transport, &path, 5, 1));
        producer.expect_line("PRODUCER: serving", Duration::from_secs(60));
        let buf = SharedDeviceBuffer::<u32>::import(&ctx, &path, Duration::from_secs(30)).unwrap();
        producer.kill(); // SIGKILL while mapped
        std::thread::sleep(Duration::from_millis(500));
        let sum = k.checksum(&stream, &buf).unwrap();
        let intact = sum == reference::pattern_checksum(5, LEN as u64);
        println!(
            "{transport}: data after the producer's SIGKILL: {}",
            if intact { "intact" } else { "changed" }
        );
        if transport == "fd" {
            assert!(
                intact,
                "with the fd transport the mapping keeps the memory alive"
            );
        }
        let held = free_memory(&ctx);
        let errors_before = cuda_ipc::drop_error_count();
        drop(buf); // must not crash, whatever the driver says
        let after = free_reaches(&ctx, free_at_start.saturating_sub(8 << 20));
        println!(
            "{transport}: free memory at start {} MiB, while mapped {} MiB, after drop {} MiB; drop errors {}",
            free_at_start >> 20, held >> 20, after >> 20, cuda_ipc::drop_error_count() - errors_before
        );
        if transport == "fd" {
            assert!(
                after + (8 << 20) >= free_at_start,
                "the memory was not freed when the consumer dropped it"
            );
        }
        let _ = cuda_ipc::take_drop_errors();
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_restarted_producer_never_hands_out_the_stale_mapping() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let dir = temp_dir("restart");
    let path = dir.join("frames");
    let mut first = RoleProcess::spawn(&[], &env("serve", "fd", &path, 1, 1));
    first.expect_line("PRODUCER: serving generation 1", Duration::from_secs(60));
    let old = SharedDeviceBuffer::<u32>::import(&ctx, &path, Duration::from_secs(30)).unwrap();
    first.kill(); // leaves its descriptor and socket behind
    let mut second = RoleProcess::spawn(&[], &env("serve", "fd", &path, 2, 1));
    second.expect_line("PRODUCER: serving generation 2", Duration::from_secs(60));
    let new = SharedDeviceBuffer::<u32>::import(&ctx, &path, Duration::from_secs(30)).unwrap();
    assert_eq!(
        (old.descriptor().generation, new.descriptor().generation),
        (1, 2)
    );
    assert_ne!(old.device_ptr(), new.device_ptr());
    assert_eq!(ctx.imported_mappings(), 2);
    assert_eq!(
        k.checksum(&stream, &new).unwrap(),
        reference::pattern_checksum(2, LEN as u64)
    );
    assert_eq!(
        k.checksum(&stream, &old).unwrap(),
        reference::pattern_checksum(1, LEN as u64)
    );
    drop((old, new));
    assert_eq!(ctx.imported_mappings(), 0);
    let (ok, lines) = second.finish(Duration::from_secs(60));
    assert!(ok, "{}", lines.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_handle_of_a_freed_buffer_gives_a_typed_error() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let dir = temp_dir("freed");
    let path = dir.join("frames");
    let mut producer = RoleProcess::spawn(&[], &env("serve", "legacy", &path, 3, 1));
    producer.expect_line("PRODUCER: serving", Duration::from_secs(60));
    let d = Descriptor::decode(&std::fs::read(path.with_extension("desc")).unwrap()).unwrap();
    producer.kill(); // its memory is freed with it
    std::thread::sleep(Duration::from_millis(500));
    // Without a lease, a legacy descriptor is refused before the driver.
    let err = SharedDeviceBuffer::<u32>::import_parts(&ctx, &d, None, &ImportOptions::default())
        .unwrap_err();
    assert!(matches!(err, cuda_ipc::Error::Unsupported(_)), "{err:?}");
    // SAFETY: the import is expected to fail (the memory is gone); nothing is used.
    let err = unsafe { SharedDeviceBuffer::<u32>::import_legacy_handle(&ctx, &d.handle, 0, 1) }
        .unwrap_err();
    println!("freed legacy handle: {err}");
    assert!(err.driver_error().is_some(), "{err:?}");
    assert_eq!(ctx.imported_mappings(), 0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn soak_1000_cycles_and_8_concurrent_consumers_leak_nothing() {
    let started = Instant::now();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    ctx.kernels().unwrap();
    let fds_start = os::open_fd_count().unwrap();
    let free_start = free_memory(&ctx);

    // 1,000 export / import / drop cycles between two processes.
    let dir = temp_dir("soak");
    let path = dir.join("soak");
    let cycles = 1000u64;
    let producer = RoleProcess::spawn(&[], &env("soak", "fd", &path, 0, cycles));
    let mut last = [0u8; 16];
    let mut done = 0;
    while done < cycles {
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "soak stuck at cycle {done}"
        );
        let buf = match SharedDeviceBuffer::<u32>::import(&ctx, &path, Duration::from_secs(30)) {
            Ok(b) => b,
            Err(Error::Timeout { .. }) | Err(Error::Io { .. }) | Err(Error::Protocol { .. }) => {
                continue
            }
            Err(e) => panic!("cycle {done}: {e}"),
        };
        if buf.descriptor().buffer_id == last {
            continue; // the previous buffer, still being withdrawn
        }
        last = buf.descriptor().buffer_id;
        assert_eq!(buf.len(), 1024);
        drop(buf);
        done += 1;
    }
    let (ok, lines) = producer.finish(Duration::from_secs(120));
    assert!(ok, "{}", lines.join("\n"));

    // 8 consumers (threads sharing one context) importing one buffer concurrently, in a loop.
    let path = dir.join("shared");
    let rounds = 200;
    let mut server = RoleProcess::spawn(&[], &env("serve", "fd", &path, 9, 8 * rounds));
    server.expect_line("PRODUCER: serving", Duration::from_secs(60));
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                let stream = Stream::new(&ctx).unwrap();
                for _ in 0..rounds {
                    let b = SharedDeviceBuffer::<u32>::import(&ctx, &path, Duration::from_secs(30))
                        .unwrap();
                    assert_eq!(b.len(), LEN);
                    let _ = stream.synchronize();
                }
            });
        }
    });
    assert_eq!(ctx.imported_mappings(), 0);
    let (ok, lines) = server.finish(Duration::from_secs(120));
    assert!(ok, "{}", lines.join("\n"));

    let fds_end = os::open_fd_count().unwrap();
    let free_end = free_reaches(&ctx, free_start);
    println!(
        "soak: {cycles} cycles + 8x{rounds} concurrent imports in {:?}; fds {fds_start} -> {fds_end}; free {} -> {} MiB",
        started.elapsed(),
        free_start >> 20,
        free_end >> 20
    );
    assert_eq!(fds_start, fds_end, "the consumer leaked descriptors");
    assert!(
        free_end + (4 << 20) >= free_start,
        "device memory did not come back"
    );
    assert_eq!(
        cuda_ipc::drop_error_count(),
        0,
        "{:?}",
        cuda_ipc::take_drop_errors()
    );
    assert!(started.elapsed() < Duration::from_secs(300));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn drops_on_other_threads_in_any_order_never_panic_or_leak() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    ctx.kernels().unwrap();
    let errors = cuda_ipc::drop_error_count();
    let free_start = free_memory(&ctx);
    for order in 0..3 {
        let stream = Stream::new(&ctx).unwrap();
        let event = Event::new(&ctx).unwrap();
        let mut plain = DeviceBuffer::<u32>::zeroed(&ctx, 1 << 20).unwrap();
        let legacy = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1 << 20, Transport::Legacy).unwrap();
        let fd = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1 << 20, Transport::Fd).unwrap();
        ctx.kernels()
            .unwrap()
            .fill_pattern(&stream, &mut plain, 1)
            .unwrap();
        event.record(&stream).unwrap();
        // Work is still queued when everything moves to another thread and drops there.
        std::thread::scope(|s| {
            s.spawn(move || match order {
                0 => drop((event, stream, plain, legacy, fd)),
                1 => drop((fd, legacy, plain, stream, event)),
                _ => {
                    drop(plain);
                    drop(event);
                    drop(fd);
                    drop(stream);
                    drop(legacy);
                }
            });
        });
    }
    let free_end = free_reaches(&ctx, free_start);
    assert!(
        free_end + (4 << 20) >= free_start,
        "{} -> {} MiB",
        free_start >> 20,
        free_end >> 20
    );
    assert_eq!(
        cuda_ipc::drop_error_count(),
        errors,
        "{:?}",
        cuda_ipc::take_drop_errors()
    );
}
