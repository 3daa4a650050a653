//! GPU tests of the IPC core across processes. Each test that needs a second process
//! re-executes this test binary in a role (producer or consumer) through the `zz_role_entry`
//! test, which does nothing unless `CUDA_IPC_TEST_ROLE` is set.
//!
//! Run with `--include-ignored` on a machine with two NVIDIA GPUs (cross-GPU cases), as root
//! for the PID-namespace test (`unshare`).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cuda_ipc::ipc::{Descriptor, ExportOptions, Exporter, SharedDeviceBuffer, Signal, Transport};
use cuda_ipc::kernels::reference;
use cuda_ipc::prelude::*;

mod common;
use common::os;
use common::{temp_dir, RoleProcess};

const LEN: usize = (16 << 20) / 4; // 16 MiB of u32
const KEY: u32 = 0x5eed;

fn gpu_count() -> usize {
    Device::count().expect("enumerating GPUs")
}

fn producer_env(
    scenario: &str,
    gpu: usize,
    transport: &str,
    path: &Path,
    seed: u32,
    key: u32,
) -> Vec<(&'static str, String)> {
    vec![
        ("CUDA_IPC_TEST_ROLE", "producer".into()),
        ("CUDA_IPC_TEST_SCENARIO", scenario.into()),
        ("CUDA_IPC_TEST_GPU", gpu.to_string()),
        ("CUDA_IPC_TEST_TRANSPORT", transport.into()),
        ("CUDA_IPC_TEST_PATH", path.display().to_string()),
        ("CUDA_IPC_TEST_SEED", seed.to_string()),
        ("CUDA_IPC_TEST_KEY", key.to_string()),
    ]
}

/// The role dispatcher. Without CUDA_IPC_TEST_ROLE it returns at once: it is the entry point
/// other tests re-execute this binary into, not a test of its own.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn zz_role_entry() {
    let Ok(role) = std::env::var("CUDA_IPC_TEST_ROLE") else {
        return;
    };
    let env: HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("CUDA_IPC_TEST_"))
        .collect();
    let get = |k: &str| {
        env.get(&format!("CUDA_IPC_TEST_{k}"))
            .cloned()
            .unwrap_or_default()
    };
    let gpu: usize = get("GPU").parse().unwrap_or(0);
    let path = PathBuf::from(get("PATH"));
    let seed: u32 = get("SEED").parse().unwrap_or(1);
    let key: u32 = get("KEY").parse().unwrap_or(0);
    match role.as_str() {
        "producer" => run_producer(
            &get("SCENARIO"),
            gpu,
            Transport::parse(&get("TRANSPORT")).unwrap(),
            &path,
            seed,
            key,
        ),
        "consumer" => run_consumer(gpu, &path, seed),
        other => panic!("unknown role {other}"),
    }
}

fn run_producer(
    scenario: &str,
    gpu: usize,
    transport: Transport,
    path: &Path,
    seed: u32,
    key: u32,
) {
    let ctx = Context::new(Device::by_ordinal(gpu).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let mut buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, LEN, transport).unwrap();
    if scenario == "serve" {
        k.fill_pattern(&stream, &mut buf, seed).unwrap();
        stream.synchronize().unwrap();
    }
    let exporter = Exporter::bind_with(path, &buf, ExportOptions::default()).unwrap();
    println!(
        "PRODUCER: pid {} published {} buffer on GPU {gpu}, generation {}, {} bytes allocated",
        std::process::id(),
        buf.descriptor().transport.name(),
        exporter.descriptor().generation,
        buf.allocation_size()
    );
    if scenario == "signal" {
        exporter.wait_consumers(1, Duration::from_secs(60)).unwrap();
        std::thread::sleep(Duration::from_millis(200)); // the consumer is already waiting on its GPU
        k.fill_pattern(&stream, &mut buf, seed).unwrap();
        buf.write_signal(&stream, Signal::Ready, 2).unwrap();
        stream.synchronize().unwrap();
        exporter.notify_ready(2).unwrap();
        println!("PRODUCER: signalled frame 2");
    } else {
        exporter.notify_ready(1).unwrap();
    }
    let stats = exporter.wait_released(Duration::from_secs(60)).unwrap();
    println!("PRODUCER: released by {} consumer(s)", stats.total_leases);
    if key != 0 {
        let got = k.checksum(&stream, &buf).unwrap();
        let want = reference::transformed_pattern_checksum(seed, key, LEN as u64);
        assert_eq!(
            got, want,
            "the consumer's in-place transform is not what the producer expects"
        );
        println!("PRODUCER: consumer's transform verified");
    }
    drop(exporter);
    println!("PRODUCER: OK");
}

fn run_consumer(gpu: usize, path: &Path, seed: u32) {
    let ctx = Context::new(Device::by_ordinal(gpu).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    println!("CONSUMER: pid {}", std::process::id());
    let imported = SharedDeviceBuffer::<u32>::import(&ctx, path, Duration::from_secs(30));
    match imported {
        Ok(buf) => {
            let sum = ctx.kernels().unwrap().checksum(&stream, &buf).unwrap();
            assert_eq!(sum, reference::pattern_checksum(seed, LEN as u64));
            println!(
                "CONSUMER: OK {} import verified",
                buf.descriptor().transport.name()
            );
        }
        Err(e) => {
            let kind = format!("{e:?}");
            println!(
                "CONSUMER: ERROR {}: {e}",
                kind.split([' ', '{', '(']).next().unwrap()
            );
            // What the driver itself says when the diagnosis is bypassed.
            let bytes = std::fs::read(path.with_extension("desc")).unwrap();
            let d = Descriptor::decode(&bytes).unwrap();
            if let Some(handle) =
                (d.transport == cuda_ipc::ipc::WireTransport::Legacy).then_some(d.handle)
            {
                // SAFETY: the producer keeps its buffer alive until this process exits; the
                // buffer is dropped at once.
                match unsafe {
                    SharedDeviceBuffer::<u32>::import_legacy_handle(&ctx, &handle, 0, LEN)
                } {
                    Ok(_) => println!("CONSUMER: DRIVER accepted the handle"),
                    Err(e) => println!("CONSUMER: DRIVER {e}"),
                }
            }
        }
    }
}

fn wait_published(path: &Path) {
    let start = Instant::now();
    while !path.with_extension("desc").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "producer did not publish"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Producer in a child process on `owner`, consumer here on `importer`.
fn transfer_case(transport: &str, owner: usize, importer: usize) {
    let dir = temp_dir(transport);
    let path = dir.join("frames");
    let seed = 1000 + owner as u32 * 10 + importer as u32;
    println!("== {transport}: owner GPU {owner}, importer GPU {importer}");
    let mut producer = RoleProcess::spawn(
        &[],
        &producer_env("serve", owner, transport, &path, seed, KEY),
    );
    producer.expect_line("PRODUCER: pid", Duration::from_secs(60));

    let ctx = Context::new(Device::by_ordinal(importer).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    {
        // A type mismatch is refused before any driver call, and takes no lease.
        let err =
            SharedDeviceBuffer::<f32>::import(&ctx, &path, Duration::from_secs(30)).unwrap_err();
        assert!(matches!(err, Error::Descriptor(_)), "{err:?}");
        assert_eq!(ctx.imported_mappings(), 0);

        let start = Instant::now();
        let mut frames =
            SharedDeviceBuffer::<u32>::import(&ctx, &path, Duration::from_secs(30)).unwrap();
        let opened = start.elapsed();
        assert!(!frames.is_owner());
        assert_eq!(frames.len(), LEN);
        assert_eq!(frames.transport(), Transport::parse(transport).unwrap());
        assert_eq!(frames.owner_device().unwrap().ordinal(), owner);
        assert_eq!(frames.wait_ready(1, Duration::from_secs(10)).unwrap(), 1);
        // Zero copy: the checksum kernel reads the imported memory in place.
        let sum = k.checksum(&stream, &frames).unwrap();
        assert_eq!(sum, reference::pattern_checksum(seed, LEN as u64));
        // A second import hits the cache: the same mapping, no driver call.
        let again =
            SharedDeviceBuffer::<u32>::import(&ctx, &path, Duration::from_secs(30)).unwrap();
        assert_eq!(again.device_ptr(), frames.device_ptr());
        assert_eq!(ctx.imported_mappings(), 1);
        let clone = frames.try_clone().unwrap();
        assert_eq!(clone.device_ptr(), frames.device_ptr());
        drop((again, clone));
        assert_eq!(ctx.imported_mappings(), 1);
        // Transform in place; the producer checks it after we let go.
        k.transform_words(&stream, &mut frames, KEY).unwrap();
        stream.synchronize().unwrap();
        println!(
            "CONSUMER: {transport} GPU {owner} -> GPU {importer}: verified, opened in {opened:?}"
        );
    }
    assert_eq!(ctx.imported_mappings(), 0, "the last drop unmaps");
    let (ok, lines) = producer.finish(Duration::from_secs(60));
    assert!(ok, "producer failed:\n{}", lines.join("\n"));
    assert!(lines
        .iter()
        .any(|l| l.contains("consumer's transform verified")));
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
fn fd_transport_same_gpu() {
    transfer_case("fd", 0, 0);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn legacy_transport_same_gpu() {
    transfer_case("legacy", 0, 0);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn fd_transport_cross_gpu() {
    assert!(gpu_count() >= 2, "needs 2 GPUs, found {}", gpu_count());
    transfer_case("fd", 0, 1);
    transfer_case("fd", 1, 0);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn legacy_transport_cross_gpu() {
    assert!(gpu_count() >= 2, "needs 2 GPUs, found {}", gpu_count());
    transfer_case("legacy", 0, 1);
    transfer_case("legacy", 1, 0);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn self_import_is_refused_for_both_transports() {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    for t in [Transport::Legacy, Transport::Fd] {
        let dir = temp_dir("self");
        let buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1024, t).unwrap();
        let _exporter = Exporter::bind(dir.join("mine"), &buf).unwrap();
        let err = SharedDeviceBuffer::<u32>::import(&ctx, dir.join("mine"), Duration::from_secs(5))
            .unwrap_err();
        assert!(matches!(err, Error::SelfImport { .. }), "{t:?}: {err:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

fn signal_case(transport: &str, owner: usize, importer: usize) {
    let dir = temp_dir("signal");
    let path = dir.join("frames");
    let seed = 77;
    let mut producer = RoleProcess::spawn(
        &[],
        &producer_env("signal", owner, transport, &path, seed, 0),
    );
    producer.expect_line("PRODUCER: pid", Duration::from_secs(60));
    let ctx = Context::new(Device::by_ordinal(importer).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    {
        let frames =
            SharedDeviceBuffer::<u32>::import(&ctx, &path, Duration::from_secs(30)).unwrap();
        let mut out = DeviceBuffer::<u64>::zeroed(&ctx, 1).unwrap();
        // Queue: wait on the GPU for frame 2, then checksum. No CPU round trip in between.
        frames.wait_signal(&stream, Signal::Ready, 2).unwrap();
        k.checksum_into(&stream, &frames, &mut out).unwrap();
        let done = Event::new_untimed(&ctx).unwrap();
        done.record(&stream).unwrap();
        let start = Instant::now();
        while !done.is_complete().unwrap() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the GPU-side wait never ended"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(
            out.copy_to_vec().unwrap()[0],
            reference::pattern_checksum(seed, LEN as u64)
        );
        assert_eq!(frames.read_signal(Signal::Ready).unwrap(), 2);
        // The CPU-side notification arrived too.
        assert_eq!(frames.wait_ready(2, Duration::from_secs(10)).unwrap(), 2);
        println!("CONSUMER: {transport} GPU {owner} -> GPU {importer}: GPU-side ready signal seen, data verified");
    }
    let (ok, lines) = producer.finish(Duration::from_secs(60));
    assert!(ok, "producer failed:\n{}", lines.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn ready_signal_crosses_processes() {
    signal_case("fd", 0, 0);
    signal_case("legacy", 0, 0);
    if gpu_count() >= 2 {
        signal_case("fd", 0, 1);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn two_pods_with_hostpid_false_legacy_collides_fd_works() {
    assert_eq!(
        os::effective_uid(),
        0,
        "this test needs root (unshare --pid); run the GPU tests as root"
    );
    let pod = ["unshare", "--pid", "--fork", "--mount-proc"];
    for transport in ["legacy", "fd"] {
        let dir = temp_dir("pods");
        let path = dir.join("frames");
        let seed = 4242;
        let mut producer =
            RoleProcess::spawn(&pod, &producer_env("serve", 0, transport, &path, seed, 0));
        let line = producer.expect_line("PRODUCER: pid", Duration::from_secs(60));
        assert!(
            line.contains("PRODUCER: pid 1 "),
            "the producer should be PID 1: {line}"
        );
        wait_published(&path);
        let mut consumer_env = producer_env("", 0, transport, &path, seed, 0);
        consumer_env[0].1 = "consumer".into();
        let consumer = RoleProcess::spawn(&pod, &consumer_env);
        let (_, lines) = consumer.finish(Duration::from_secs(90));
        let text = lines.join("\n");
        println!("{transport}: consumer said:\n{text}");
        assert!(
            text.contains("CONSUMER: pid 1"),
            "the consumer should be PID 1"
        );
        if transport == "legacy" {
            assert!(text.contains("CONSUMER: ERROR PidCollision"), "{text}");
            assert!(
                text.contains("CUDA_ERROR_INVALID_CONTEXT"),
                "the driver should refuse too: {text}"
            );
            producer.kill();
        } else {
            assert!(text.contains("CONSUMER: OK fd import verified"), "{text}");
            let (ok, plines) = producer.finish(Duration::from_secs(60));
            assert!(ok, "{}", plines.join("\n"));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn imports_a_raw_cupy_handle_and_checks_its_size() {
    let n: usize = 1 << 20;
    let script = format!(
        "import sys, cupy as cp\n\
         cp.cuda.set_allocator(None)\n\
         a = cp.arange({n}, dtype=cp.uint32)\n\
         cp.cuda.runtime.deviceSynchronize()\n\
         print(bytes(cp.cuda.runtime.ipcGetMemHandle(a.data.ptr)).hex(), flush=True)\n\
         sys.stdin.read()\n"
    );
    let mut py = Command::new("python3")
        .args(["-c", &script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 with cupy is needed for this interop test");
    let mut line = String::new();
    BufReader::new(py.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let hex = line.trim();
    assert_eq!(hex.len(), 128, "cupy printed {line:?}");
    let mut handle = [0u8; 64];
    for (i, b) in handle.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap();
    }
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    {
        // SAFETY: the python process keeps its array alive until we close its stdin below.
        let buf = unsafe { SharedDeviceBuffer::<u32>::import_legacy_handle(&ctx, &handle, 0, n) }
            .unwrap();
        let v = buf.copy_to_vec().unwrap();
        assert!(
            v.iter().enumerate().all(|(i, &x)| x == i as u32),
            "cupy's arange"
        );
        assert!(buf.legacy_handle().is_some());
        // Asking for more than the allocation holds is refused after cuMemGetAddressRange.
        // SAFETY: as above.
        let err =
            unsafe { SharedDeviceBuffer::<u32>::import_legacy_handle(&ctx, &handle, 0, n * 4) }
                .unwrap_err();
        assert!(
            matches!(err, cuda_ipc::Error::MappingTooSmall { .. }),
            "{err}"
        );
        assert_eq!(
            ctx.imported_mappings(),
            1,
            "the refused view left the mapping to buf"
        );
        println!("imported cupy's 4 MiB arange through its raw IPC handle");
    }
    py.stdin.take().unwrap().write_all(b"").unwrap();
    let _ = py.kill();
    let _ = py.wait();
}
