//! GPU channels (`cuda_ipc::pubsub`) end to end: several subscriber processes on both GPUs
//! verifying every frame on the GPU, both policies, a subscriber and a publisher killed with
//! SIGKILL, a late joiner, PID namespaces as a non-root uid, the legacy transport, the CPU
//! path, and a soak whose fds and device memory return to their baseline. Run with
//! `--include-ignored` on a GPU machine (the PID-namespace test needs root for `unshare`).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cuda_ipc::ipc::Transport;
use cuda_ipc::kernels::reference;
use cuda_ipc::prelude::*;
use cuda_ipc::pubsub::{
    ChannelOptions, Policy, Publisher, SharingMode, Start, SubscribeOptions, Subscriber,
};

mod common;
use common::{temp_dir, RoleProcess};

const SECS: Duration = Duration::from_secs(20);

fn gpus() -> usize {
    Device::count().unwrap()
}

/// What a subscriber process reports (its `SUBRESULT` line).
#[derive(Debug, Default)]
struct SubResult {
    received: u64,
    missed: u64,
    errors: u64,
    first: u64,
    last: u64,
    in_order: bool,
    consecutive: bool,
    end: String,
    sharing: String,
}

fn parse(line: &str) -> SubResult {
    let mut r = SubResult::default();
    for kv in line.split_whitespace() {
        let Some((k, v)) = kv.split_once('=') else {
            continue;
        };
        match k {
            "received" => r.received = v.parse().unwrap(),
            "missed" => r.missed = v.parse().unwrap(),
            "errors" => r.errors = v.parse().unwrap(),
            "first" => r.first = v.parse().unwrap(),
            "last" => r.last = v.parse().unwrap(),
            "in_order" => r.in_order = v == "true",
            "consecutive" => r.consecutive = v == "true",
            "end" => r.end = v.to_string(),
            "sharing" => r.sharing = v.to_string(),
            _ => {}
        }
    }
    r
}

#[allow(clippy::too_many_arguments)]
fn sub_env(
    path: &Path,
    gpu: usize,
    frames: u64,
    start: &str,
    delay_us: u64,
    cpu: bool,
    scenario: &str,
) -> Vec<(&'static str, String)> {
    vec![
        ("CUDA_IPC_TEST_ROLE", "subscriber".into()),
        ("CUDA_IPC_TEST_PATH", path.display().to_string()),
        ("CUDA_IPC_TEST_GPU", gpu.to_string()),
        ("CUDA_IPC_TEST_FRAMES", frames.to_string()),
        ("CUDA_IPC_TEST_START", start.into()),
        ("CUDA_IPC_TEST_DELAY_US", delay_us.to_string()),
        ("CUDA_IPC_TEST_CPU", if cpu { "1" } else { "0" }.into()),
        ("CUDA_IPC_TEST_SCENARIO", scenario.into()),
    ]
}

fn get(k: &str) -> String {
    std::env::var(format!("CUDA_IPC_TEST_{k}")).unwrap_or_default()
}

/// The role dispatcher: returns at once unless CUDA_IPC_TEST_ROLE is set (see tests/common).
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn zz_role_entry() {
    match std::env::var("CUDA_IPC_TEST_ROLE").as_deref() {
        Ok("subscriber") => subscriber_role(),
        Ok("publisher") => publisher_role(),
        Ok("slow-publisher") => slow_publisher_role(),
        Ok("stranded") => stranded_subscriber_role(),
        Ok("lagging-acks") => lagging_acks_role(),
        Ok("fake-publisher") => soundness::fake_publisher_role(),
        Ok("order-sub-block") => order_subscriber_role(Policy::Block),
        Ok("order-sub-drop-oldest") => order_subscriber_role(Policy::DropOldest),
        Ok("stepped-publisher") => stepped_publisher_role(),
        _ => {}
    }
}

/// Receives up to FRAMES frames (or until the publisher is gone), verifying each on the GPU.
fn subscriber_role() {
    let path = PathBuf::from(get("PATH"));
    let gpu: usize = get("GPU").parse().unwrap();
    let frames: u64 = get("FRAMES").parse().unwrap();
    let delay = Duration::from_micros(get("DELAY_US").parse().unwrap());
    let cpu = get("CPU") == "1";
    let ctx = Context::new(Device::by_ordinal(gpu).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let fds_before = common::os::open_fd_count().unwrap();
    let opts = SubscribeOptions {
        start: if get("START") == "next" {
            Start::Next
        } else {
            Start::Latest
        },
        ..SubscribeOptions::default()
    };
    let sub = Subscriber::<u32>::subscribe(&ctx, &path, opts).unwrap();
    println!("SUBSCRIBED gpu={gpu}");
    let mut errors = DeviceBuffer::<u32>::zeroed(&ctx, 1).unwrap();
    let (mut received, mut missed, mut first, mut last) = (0u64, 0u64, 0u64, 0u64);
    let (mut in_order, mut consecutive) = (true, true);
    let mut end = "frames".to_string();
    let mut host_errors = 0u64;
    while received < frames {
        let sample = if cpu {
            sub.receive_host(SECS)
        } else {
            sub.receive(&stream, SECS)
        };
        let sample = match sample {
            Ok(s) => s,
            Err(Error::PublisherGone { .. }) => {
                end = "gone".into();
                break;
            }
            Err(e) => panic!("receive: {e}"),
        };
        let seq = sample.seq();
        if received == 0 {
            first = seq;
        } else {
            in_order &= seq > last;
            consecutive &= seq == last + 1;
        }
        missed += sample.missed();
        last = seq;
        received += 1;
        if cpu {
            let words = sample.copy_to_vec().unwrap();
            host_errors += reference::frame_errors(&words, seq);
        } else {
            k.verify_frame(&stream, &sample, seq, &mut errors).unwrap();
        }
        if get("SCENARIO") == "hold-then-die" && received == 3 {
            println!("HOLDING seq={seq}");
            std::thread::sleep(Duration::from_secs(600));
        }
        if !delay.is_zero() {
            std::thread::sleep(delay);
        }
        drop(sample);
    }
    stream.synchronize().unwrap();
    let gpu_errors = errors.copy_to_vec().unwrap()[0] as u64;
    let stats = sub.stats();
    assert_eq!(stats.received, received);
    drop(sub);
    drop(errors);
    let fds_after = common::os::open_fd_count().unwrap();
    println!(
        "SUBRESULT received={received} missed={missed} errors={} first={first} last={last} \
         in_order={in_order} consecutive={consecutive} end={end} fds_before={fds_before} \
         fds_after={fds_after} sharing={:?}",
        gpu_errors + host_errors,
        stats.sharing
    );
}

/// Publishes frames until killed (the SIGKILL test's publisher).
fn publisher_role() {
    let path = PathBuf::from(get("PATH"));
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 18, ChannelOptions::default()).unwrap();
    println!("PUBLISHING");
    loop {
        let mut loan = match p.loan(Duration::from_millis(100)) {
            Ok(l) => l,
            Err(Error::Timeout { .. }) => continue,
            Err(e) => panic!("loan: {e}"),
        };
        let seq = loan.seq();
        k.fill_frame(&stream, &mut loan, seq).unwrap();
        loan.publish(&stream).unwrap();
        if seq % 50 == 0 {
            println!("PUBLISHED {seq}");
        }
    }
}

fn publish(p: &mut Publisher<'_, u32>, k: &cuda_ipc::Kernels<'_>, stream: &Stream<'_>, n: u64) {
    for _ in 0..n {
        let mut loan = p.loan(SECS).unwrap();
        let seq = loan.seq();
        k.fill_frame(stream, &mut loan, seq).unwrap();
        loan.publish(stream).unwrap();
    }
}

/// Waits until the publisher has noticed every subscriber leave.
fn wait_empty(p: &Publisher<'_, u32>) {
    let t = Instant::now();
    while p.subscribers() > 0 {
        assert!(
            t.elapsed() < SECS,
            "subscribers still counted 20 s after leaving"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn finish(s: RoleProcess) -> SubResult {
    let (ok, lines) = s.finish(Duration::from_secs(120));
    assert!(ok, "subscriber failed:\n{}", lines.join("\n"));
    let line = lines
        .iter()
        .find(|l| l.contains("SUBRESULT"))
        .expect("a SUBRESULT line");
    parse(line)
}

fn block_every_frame(transport: Transport, frame_len: usize, frames: u64) {
    let dir = temp_dir("chan-block");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let opts = ChannelOptions {
        slots: 4,
        transport,
        ..ChannelOptions::default()
    };
    let mut p = Publisher::<u32>::create(&ctx, &path, frame_len, opts).unwrap();
    let mut gpu_of = vec![0, 0];
    if gpus() > 1 {
        gpu_of.push(1);
    }
    let subs: Vec<_> = gpu_of
        .iter()
        .map(|&g| RoleProcess::spawn(&[], &sub_env(&path, g, frames, "next", 0, false, "")))
        .collect();
    p.wait_subscribers(subs.len(), SECS).unwrap();
    publish(&mut p, &k, &stream, frames);
    for (s, g) in subs.into_iter().zip(gpu_of) {
        let r = finish(s);
        assert_eq!(
            (r.received, r.missed, r.errors, r.first, r.last),
            (frames, 0, 0, 1, frames),
            "subscriber on GPU {g}: {r:?}"
        );
        assert!(r.consecutive, "GPU {g}: frames out of order or lost: {r:?}");
    }
    assert_eq!(p.stats().published, frames);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn block_delivers_every_frame_to_every_subscriber_on_both_gpus() {
    // 1 MiB frames; two subscribers on GPU 0, one on GPU 1 (NVLink) when there is one.
    block_every_frame(Transport::Fd, 1 << 18, 300);
}

/// Each end says how it shares the GPU with the other: a subscriber on the publisher's GPU
/// reports `SameGpuMps` under MPS and `SameGpuWithoutMps` without (as the driver's MPS
/// attribute says), and the publisher counts it the same way; one on another GPU (with two)
/// `OtherGpu`.
#[test]
#[ignore = "needs an NVIDIA GPU"]
fn each_end_reports_how_it_shares_the_gpu() {
    let dir = temp_dir("chan-sharing");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let mps = ctx.device().mps_enabled();
    println!("MPS_ENABLED attribute on GPU 0: {mps:?}");
    let expected = match mps {
        Some(true) => SharingMode::SameGpuMps,
        Some(false) => SharingMode::SameGpuWithoutMps,
        None => SharingMode::Unknown,
    };
    let opts = ChannelOptions {
        slots: 4,
        ..ChannelOptions::default()
    };
    let mut p = Publisher::<u32>::create(&ctx, &path, 1024, opts).unwrap();
    let frames = 5;
    let mut gpu_of = vec![0];
    if gpus() > 1 {
        gpu_of.push(1);
    }
    let subs: Vec<_> = gpu_of
        .iter()
        .map(|&g| RoleProcess::spawn(&[], &sub_env(&path, g, frames, "next", 0, false, "")))
        .collect();
    p.wait_subscribers(subs.len(), SECS).unwrap();
    // Each subscriber writes its report before it maps the pool: wait until both are counted.
    let t = Instant::now();
    let counted = |p: &Publisher<'_, u32>| {
        let st = p.stats();
        (st.same_gpu_mps, st.same_gpu_without_mps)
    };
    let want = match expected {
        SharingMode::SameGpuMps => (1, 0),
        SharingMode::SameGpuWithoutMps => (0, 1),
        _ => (0, 0),
    };
    while counted(&p) != want && t.elapsed() < SECS {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        counted(&p),
        want,
        "the publisher's count of same-GPU subscribers (mps, without mps)"
    );
    publish(&mut p, &k, &stream, frames);
    for (s, g) in subs.into_iter().zip(gpu_of) {
        let r = finish(s);
        assert_eq!((r.received, r.errors), (frames, 0), "GPU {g}: {r:?}");
        let want = if g == 0 {
            expected
        } else {
            SharingMode::OtherGpu
        };
        assert_eq!(r.sharing, format!("{want:?}"), "subscriber on GPU {g}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn block_works_with_the_legacy_transport() {
    block_every_frame(Transport::Legacy, 1 << 16, 200);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn the_cpu_path_receives_complete_frames() {
    let dir = temp_dir("chan-cpu");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let mut p = Publisher::<u32>::create(&ctx, &path, 4096, ChannelOptions::default()).unwrap();
    let s = RoleProcess::spawn(&[], &sub_env(&path, 0, 100, "next", 0, true, ""));
    p.wait_subscribers(1, SECS).unwrap();
    publish(&mut p, &k, &stream, 100);
    let r = finish(s);
    assert_eq!((r.received, r.errors, r.last), (100, 0, 100), "{r:?}");
    assert!(r.consecutive);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn drop_oldest_never_waits_and_counts_what_a_slow_subscriber_missed() {
    let dir = temp_dir("chan-drop");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let opts = ChannelOptions {
        slots: 6,
        policy: Policy::DropOldest,
        ..ChannelOptions::default()
    };
    let frames = 2000;
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 14, opts).unwrap();
    // A slow subscriber (1 ms per frame) and a fast one; the slow one stops after 100 frames.
    let slow = RoleProcess::spawn(&[], &sub_env(&path, 0, 100, "next", 1000, false, ""));
    let fast = RoleProcess::spawn(&[], &sub_env(&path, 0, u64::MAX, "next", 0, false, ""));
    p.wait_subscribers(2, SECS).unwrap();
    for _ in 0..frames {
        // Never blocked by the slow subscriber: a short timeout always suffices.
        let mut loan = p.loan(Duration::from_secs(2)).unwrap();
        let seq = loan.seq();
        k.fill_frame(&stream, &mut loan, seq).unwrap();
        loan.publish(&stream).unwrap();
        std::thread::sleep(Duration::from_micros(100)); // so the slow one gets 100 frames
    }
    stream.synchronize().unwrap();
    let slow = finish(slow);
    assert_eq!(slow.errors, 0, "{slow:?}");
    assert!(slow.in_order, "{slow:?}");
    assert_eq!(slow.received, 100);
    // Both joined before frame 1 (Start::Next, announced 0): every frame up to the last one
    // received was either received or counted as missed (the first sample's `missed` counts
    // the frames overwritten before it).
    assert_eq!(
        slow.received + slow.missed,
        slow.last,
        "drop counts must be exact: {slow:?}"
    );
    assert!(
        slow.missed > 0,
        "a 1 ms/frame subscriber must fall behind: {slow:?}"
    );
    drop(p); // the fast subscriber drains what is complete, then sees PublisherGone
    let fast = finish(fast);
    assert_eq!(fast.errors, 0, "{fast:?}");
    assert_eq!(fast.end, "gone");
    assert!(fast.in_order);
    assert_eq!(fast.received + fast.missed, fast.last, "{fast:?}");
    assert_eq!(fast.last, frames, "{fast:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_subscriber_killed_while_holding_a_frame_stops_blocking_the_publisher() {
    let dir = temp_dir("chan-kill-sub");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let opts = ChannelOptions {
        slots: 4,
        ..ChannelOptions::default()
    };
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 16, opts).unwrap();
    let mut victim = RoleProcess::spawn(
        &[],
        &sub_env(&path, 0, 1000, "next", 0, false, "hold-then-die"),
    );
    let healthy = RoleProcess::spawn(&[], &sub_env(&path, 0, 40, "next", 0, false, ""));
    p.wait_subscribers(2, SECS).unwrap();
    publish(&mut p, &k, &stream, 6);
    victim.expect_line("HOLDING seq=3", SECS);
    // Block: the victim holds frame 3 and has not received 4..: the publisher is stuck.
    let err = p.loan(Duration::from_millis(300)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("subscriber"), "{err}");
    victim.kill(); // SIGKILL
    let t = Instant::now();
    publish(&mut p, &k, &stream, 34);
    println!("publisher unblocked {:?} after the kill", t.elapsed());
    let r = finish(healthy);
    assert_eq!((r.received, r.errors, r.last), (40, 0, 40), "{r:?}");
    wait_empty(&p);
    let stats = p.stats();
    assert_eq!(
        (stats.joined, stats.left, stats.subscribers),
        (2, 2, 0),
        "{stats:?}"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_killed_publisher_gives_publisher_gone_and_releases_waiting_streams() {
    let dir = temp_dir("chan-kill-pub");
    let path = dir.join("frames");
    let mut publisher = RoleProcess::spawn(
        &[],
        &[
            ("CUDA_IPC_TEST_ROLE", "publisher".into()),
            ("CUDA_IPC_TEST_PATH", path.display().to_string()),
        ],
    );
    publisher.expect_line("PUBLISHING", SECS);
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let sub = Subscriber::<u32>::subscribe(&ctx, &path, SubscribeOptions::default()).unwrap();
    let mut errors = DeviceBuffer::<u32>::zeroed(&ctx, 1).unwrap();
    for _ in 0..20 {
        let s = sub.receive(&stream, SECS).unwrap();
        k.verify_frame(&stream, &s, s.seq(), &mut errors).unwrap();
    }
    stream.synchronize().unwrap();
    assert_eq!(errors.copy_to_vec().unwrap()[0], 0);
    publisher.kill(); // SIGKILL, possibly between a publish and its GPU writes
    let t = Instant::now();
    let gone = loop {
        match sub.receive(&stream, SECS) {
            Ok(s) => drop(s),
            Err(e) => break e,
        }
        assert!(t.elapsed() < SECS, "no PublisherGone 20 s after the kill");
    };
    assert!(matches!(gone, Error::PublisherGone { .. }), "{gone}");
    println!("PublisherGone after {:?}: {gone}", t.elapsed());
    // Whatever the stream waited for is released: it drains.
    stream.synchronize().unwrap();
    let again = sub
        .receive(&stream, Duration::from_millis(100))
        .unwrap_err();
    assert!(matches!(again, Error::PublisherGone { .. }), "{again}");
    drop(sub);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_late_subscriber_starts_from_the_latest_frame() {
    let dir = temp_dir("chan-late");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 16, ChannelOptions::default()).unwrap();
    publish(&mut p, &k, &stream, 10); // nobody listens: Block does not wait for anyone
    stream.synchronize().unwrap();
    let gpu = if gpus() > 1 { 1 } else { 0 };
    let s = RoleProcess::spawn(&[], &sub_env(&path, gpu, 6, "latest", 0, false, ""));
    p.wait_subscribers(1, SECS).unwrap();
    publish(&mut p, &k, &stream, 5);
    let r = finish(s);
    assert_eq!(
        (r.first, r.last, r.received, r.errors),
        (10, 15, 6, 0),
        "{r:?}"
    );
    assert!(r.consecutive);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn channels_work_across_pid_namespaces_as_a_non_root_uid() {
    assert_eq!(
        common::os::effective_uid(),
        0,
        "this test needs root (unshare --pid, setpriv): run the GPU bundle as root"
    );
    let dir = temp_dir("chan-pidns");
    std::fs::create_dir(&dir).unwrap();
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid path; chown to nobody so that uid 65534 owns the rendezvous directory.
    assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0);
    let path = dir.join("frames");
    let wrap = [
        "unshare",
        "--pid",
        "--fork",
        "--mount-proc",
        "setpriv",
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
    ];
    let mut publisher = RoleProcess::spawn(
        &wrap,
        &[
            ("CUDA_IPC_TEST_ROLE", "publisher".into()),
            ("CUDA_IPC_TEST_PATH", path.display().to_string()),
        ],
    );
    publisher.expect_line("PUBLISHING", SECS);
    let gpu = if gpus() > 1 { 1 } else { 0 };
    let s = RoleProcess::spawn(&wrap, &sub_env(&path, gpu, 200, "latest", 0, false, ""));
    let r = finish(s);
    publisher.kill();
    assert_eq!((r.received, r.errors), (200, 0), "{r:?}");
    assert!(r.consecutive, "{r:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_100k_frame_soak_and_subscriber_churn_return_fds_and_memory_to_baseline() {
    let dir = temp_dir("chan-soak");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let fds0 = common::os::open_fd_count().unwrap();
    let (free0, _) = {
        let _b = ctx.bind().unwrap();
        common::driver::mem_get_info().unwrap()
    };
    {
        let mut p = Publisher::<u32>::create(&ctx, &path, 1024, ChannelOptions::default()).unwrap();
        let frames = 100_000;
        let s = RoleProcess::spawn(&[], &sub_env(&path, 0, frames, "next", 0, false, ""));
        p.wait_subscribers(1, SECS).unwrap();
        let t = Instant::now();
        publish(&mut p, &k, &stream, frames);
        let r = finish(s);
        println!("soak: {frames} frames in {:?}", t.elapsed());
        assert_eq!((r.received, r.errors, r.last), (frames, 0, frames), "{r:?}");
        // Churn: 30 subscribers come and go, each taking a few frames.
        for round in 0..30u64 {
            wait_empty(&p);
            let s = RoleProcess::spawn(&[], &sub_env(&path, 0, 3, "next", 0, false, ""));
            p.wait_subscribers(1, SECS).unwrap();
            publish(&mut p, &k, &stream, 3);
            let r = finish(s);
            assert_eq!((r.received, r.errors), (3, 0), "round {round}: {r:?}");
        }
        wait_empty(&p);
        let stats = p.stats();
        assert_eq!((stats.joined, stats.left), (31, 31), "{stats:?}");
        stream.synchronize().unwrap();
    }
    let fds1 = common::os::open_fd_count().unwrap();
    let (free1, _) = {
        let _b = ctx.bind().unwrap();
        common::driver::mem_get_info().unwrap()
    };
    println!("fds {fds0} -> {fds1}; free device memory {free0} -> {free1}");
    assert_eq!(fds1, fds0, "fds leaked");
    assert!(
        free1 + (4 << 20) >= free0,
        "device memory not returned: {free0} -> {free1}"
    );
}

/// A fake publisher: listens at `<dir>/frames.sock` and answers each connection with `answer`.
fn fake_publisher(
    dir: &Path,
    answer: impl Fn(&std::os::unix::net::UnixStream) + Send + 'static,
) -> std::thread::JoinHandle<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir(dir).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(dir.join("frames.sock")).unwrap();
    std::thread::spawn(move || {
        if let Ok((s, _)) = listener.accept() {
            answer(&s);
            std::thread::sleep(Duration::from_secs(3));
        }
    })
}

fn subscribe_to_fake(dir: &Path) -> Error {
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let opts = SubscribeOptions {
        timeout: Duration::from_secs(2),
        ..SubscribeOptions::default()
    };
    let t = Instant::now();
    let err = Subscriber::<u32>::subscribe(&ctx, dir.join("frames"), opts).unwrap_err();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
    println!("refused: {err}");
    err
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_hostile_publisher_gets_clear_errors_and_no_mapping() {
    use common::wire::{send, welcome_payload, Kind};
    use std::os::fd::AsFd;
    // 1. Garbage instead of a welcome.
    let dir = temp_dir("chan-fake1");
    let t = fake_publisher(&dir, |s| {
        let fd = common::os::sealed_memfd("x", 4096).unwrap();
        send(s, Kind::Welcome, b"garbage", Some(fd.as_fd())).unwrap();
    });
    assert!(matches!(subscribe_to_fake(&dir), Error::Protocol { .. }));
    t.join().unwrap();
    // 2. A well-formed welcome with a page the publisher could shrink under us (SIGBUS).
    let dir = temp_dir("chan-fake2");
    let t = fake_publisher(&dir, |s| {
        let fd = common::os::memfd("unsealed").unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(4096).unwrap();
        send(s, Kind::Welcome, &welcome_payload(), Some(f.as_fd())).unwrap();
        let page = common::os::sealed_memfd("p", 4096).unwrap();
        send(s, Kind::Page, &[], Some(page.as_fd())).unwrap();
    });
    let err = subscribe_to_fake(&dir);
    assert!(err.to_string().contains("sealed"), "{err}");
    t.join().unwrap();
    // 3. Sealed pages, but no channel behind them.
    let dir = temp_dir("chan-fake3");
    let t = fake_publisher(&dir, |s| {
        let chan = common::os::sealed_memfd("c", 4096).unwrap();
        send(s, Kind::Welcome, &welcome_payload(), Some(chan.as_fd())).unwrap();
        let page = common::os::sealed_memfd("p", 4096).unwrap();
        send(s, Kind::Page, &[], Some(page.as_fd())).unwrap();
    });
    let err = subscribe_to_fake(&dir);
    assert!(err.to_string().contains("magic"), "{err}");
    t.join().unwrap();
    // 4. A publisher that accepts and says nothing: a timeout, not a hang.
    let dir = temp_dir("chan-fake4");
    let t = fake_publisher(&dir, |_| {});
    assert!(matches!(subscribe_to_fake(&dir), Error::Timeout { .. }));
    t.join().unwrap();
    // 5. A refusal is reported as such.
    let dir = temp_dir("chan-fake5");
    let t = fake_publisher(&dir, |s| {
        send(s, Kind::Refuse, b"go away", None).unwrap();
    });
    let err = subscribe_to_fake(&dir);
    assert!(matches!(err, Error::Refused { .. }) && err.to_string().contains("go away"));
    t.join().unwrap();
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_hostile_subscriber_only_hurts_itself() {
    use common::wire::{read_frame, Kind};
    use std::sync::atomic::Ordering::SeqCst;
    let dir = temp_dir("chan-hostile-sub");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let opts = ChannelOptions {
        slots: 4,
        policy: Policy::DropOldest,
        ..ChannelOptions::default()
    };
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 12, opts).unwrap();
    // A raw client speaking the protocol: it takes its pages and writes garbage into its own.
    let s = std::os::unix::net::UnixStream::connect(dir.join("frames.sock")).unwrap();
    std::io::Write::write_all(&mut &s, &common::wire::hello("frames")).unwrap();
    let mut welcome = read_frame(&s, SECS).unwrap();
    assert_eq!(welcome.kind, Kind::Welcome);
    let chan_fd = welcome.fds.remove(0);
    let mut page = read_frame(&s, SECS).unwrap();
    let page_fd = page.fds.remove(0);
    // The channel page cannot be mapped writable.
    assert!(
        common::os::SharedMapping::map(std::os::fd::AsFd::as_fd(&chan_fd), 4096, true).is_err()
    );
    let mine =
        common::os::SharedMapping::map(std::os::fd::AsFd::as_fd(&page_fd), 4096, true).unwrap();
    for w in mine.words() {
        w.store(u64::MAX, SeqCst); // holds every slot, acknowledges nothing...
    }
    for i in 256..320 {
        mine.words()[i].store(0, SeqCst); // ...its ACK words
    }
    // A healthy subscriber beside it. It takes 3 of the 5 frames published (DropOldest may overwrite one it has not
    // reached yet: it is counted as missed, not lost silently).
    let healthy = RoleProcess::spawn(&[], &sub_env(&path, 0, 3, "next", 0, false, ""));
    p.wait_subscribers(2, SECS).unwrap();
    // The publisher finds no free slot: DropOldest never waits for a subscriber, so once
    // the loan's timeout has passed it hangs up on the one holding more than max_held slots
    // and goes on.
    let t = Instant::now();
    let mut loan = p.loan(Duration::from_millis(300)).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    let seq = loan.seq();
    k.fill_frame(&stream, &mut loan, seq).unwrap();
    loan.publish(&stream).unwrap();
    assert_eq!(p.stats().left, 1, "the hoarder was disconnected");
    s.set_read_timeout(Some(SECS)).unwrap();
    let mut byte = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut &s, &mut byte).unwrap(),
        0,
        "it sees EOF"
    );
    drop((s, mine));
    // The healthy subscriber gets its frames, intact.
    publish(&mut p, &k, &stream, 4);
    let r = finish(healthy);
    assert_eq!(r.errors, 0, "{r:?}");
    assert!(r.received == 3 && r.in_order, "{r:?}");
    assert_eq!(r.received + r.missed, r.last, "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Review findings (branch `review`): frames not yet written, and a publisher that dies first.
// Each of these fails on the code reviewed; see the review report.
// ---------------------------------------------------------------------------------------------

/// About a second of GPU work on `stream` (400 in-place passes over 4 GiB; ~2.7 ms each on an
/// H100, fewer than the driver's launch queue holds, so the CPU does not wait for them).
fn queue_slow_work(k: &cuda_ipc::Kernels<'_>, stream: &Stream<'_>, busy: &mut DeviceBuffer<u32>) {
    for i in 0..400 {
        k.transform_words(stream, busy, i).unwrap();
    }
}

/// Publishes FRAMES frames (default 1), each behind about a second of GPU work, so that
/// subscribers see each frame announced long before it is written; then waits to be killed.
fn slow_publisher_role() {
    let path = PathBuf::from(get("PATH"));
    let frames: u64 = get("FRAMES").parse().unwrap_or(1);
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let mut busy = DeviceBuffer::<u32>::zeroed(&ctx, 1 << 30).unwrap();
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 16, ChannelOptions::default()).unwrap();
    println!("PUBLISHING pid={}", std::process::id());
    p.wait_subscribers(1, SECS).unwrap();
    for _ in 0..frames {
        let mut loan = p.loan(SECS).unwrap();
        let seq = loan.seq();
        queue_slow_work(&k, &stream, &mut busy);
        k.fill_frame(&stream, &mut loan, seq).unwrap();
        loan.publish(&stream).unwrap();
        println!("PUBLISHED {seq}");
    }
    std::thread::sleep(Duration::from_secs(300));
}

fn spawn_slow_publisher(path: &Path, frames: u64) -> (RoleProcess, u32) {
    let mut publisher = RoleProcess::spawn(
        &[],
        &[
            ("CUDA_IPC_TEST_ROLE", "slow-publisher".into()),
            ("CUDA_IPC_TEST_PATH", path.display().to_string()),
            ("CUDA_IPC_TEST_FRAMES", frames.to_string()),
        ],
    );
    let line = publisher.expect_line("PUBLISHING pid=", SECS);
    let pid = line.rsplit('=').next().unwrap().trim().parse().unwrap();
    (publisher, pid)
}

fn subscribe_next<'c>(ctx: &'c Context, path: &Path) -> Subscriber<'c, u32> {
    let opts = SubscribeOptions {
        start: Start::Next,
        ..SubscribeOptions::default()
    };
    Subscriber::<u32>::subscribe(ctx, path, opts).unwrap()
}

/// A subscriber whose stream waits for a frame the publisher has announced but not written.
/// SCENARIO `receive-first` / `sync-only`: the test kills the publisher; this process then
/// (receives PublisherGone, for the first,) drops the sample, synchronizes its stream and
/// drops the subscriber. `forget`: it forgets the sample while its stream is busy, drops the
/// subscriber, then synchronizes. Each step prints a line; a hang is the failure.
fn stranded_subscriber_role() {
    let path = PathBuf::from(get("PATH"));
    let scenario = get("SCENARIO");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let sub = subscribe_next(&ctx, &path);
    println!("SUBSCRIBED");
    if scenario == "forget" {
        // Our stream stays busy for about three times the publisher's work: its wait for the
        // frame runs after the publisher wrote it, and after the subscriber is dropped.
        let mut busy = DeviceBuffer::<u32>::zeroed(&ctx, 1 << 30).unwrap();
        for _ in 0..3 {
            queue_slow_work(&k, &stream, &mut busy);
        }
        let sample = sub.receive(&stream, SECS).unwrap();
        println!("RECEIVED {}", sample.seq());
        std::mem::forget(sample);
        drop(sub);
        println!("SUBSCRIBER DROPPED");
        let synced = stream.synchronize();
        println!("SYNCED {synced:?}");
        synced.unwrap();
        return;
    }
    let pid: u32 = get("PUBPID").parse().unwrap();
    let mut errors = DeviceBuffer::<u32>::zeroed(&ctx, 1).unwrap();
    let sample = sub.receive(&stream, SECS).unwrap();
    k.verify_frame(&stream, &sample, sample.seq(), &mut errors)
        .unwrap();
    println!("RECEIVED {}", sample.seq());
    while Path::new(&format!("/proc/{pid}")).exists() {
        std::thread::sleep(Duration::from_millis(5));
    }
    println!("PUBLISHER GONE");
    if scenario == "receive-first" {
        let err = sub.receive(&stream, SECS).unwrap_err();
        assert!(matches!(err, Error::PublisherGone { .. }), "{err}");
        println!("TOLD {err}");
    }
    drop(sample);
    stream.synchronize().unwrap();
    println!("SYNCED");
    drop(sub);
    println!("DROPPED");
}

fn stranded(scenario: &str) {
    let dir = temp_dir("chan-stranded");
    let path = dir.join("frames");
    let (publisher, pid) = spawn_slow_publisher(&path, 1);
    let mut sub = RoleProcess::spawn(
        &[],
        &[
            ("CUDA_IPC_TEST_ROLE", "stranded".into()),
            ("CUDA_IPC_TEST_PATH", path.display().to_string()),
            ("CUDA_IPC_TEST_PUBPID", pid.to_string()),
            ("CUDA_IPC_TEST_SCENARIO", scenario.into()),
        ],
    );
    sub.expect_line("RECEIVED", SECS);
    if scenario == "forget" {
        let (ok, lines) = sub.finish(Duration::from_secs(60));
        publisher.kill();
        assert!(
            ok && lines.iter().any(|l| l.contains("SYNCED Ok")),
            "a stream whose sample was forgotten failed after its subscriber was dropped (its \
             page was unregistered under the queued wait):\n{}",
            lines.join("\n")
        );
        return;
    }
    // Killed while its GPU still works on frame 1: the frame's READY words are never written.
    publisher.kill();
    // `finish` panics ("still running") if the subscriber hangs in synchronize or in its drop.
    let (ok, lines) = sub.finish(Duration::from_secs(60));
    assert!(
        ok && lines.iter().any(|l| l.contains("DROPPED")),
        "{}",
        lines.join("\n")
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn after_publisher_gone_a_stream_waiting_for_its_unwritten_frame_drains() {
    // Fails (hangs, then "role process still running") while the released READY value is
    // u64::MAX: cuStreamWaitValue64's GEQ is cyclic, so it releases nothing.
    stranded("receive-first");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_stream_waiting_for_a_killed_publishers_frame_drains_without_another_receive() {
    // The common pattern `receive; work; stream.synchronize()` with the publisher dying in
    // between: nothing releases the wait unless the subscriber calls into the channel again
    // (a watcher of the connection, storing READY_RELEASED on hang-up, would).
    stranded("sync-only");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_forgotten_sample_does_not_leave_a_queued_wait_on_an_unregistered_page() {
    // mem::forget is safe: the receive stream's wait is recorded nowhere (70ad343), so
    // Subscriber::drop unregisters the page while the wait is still queued behind busy work.
    stranded("forget");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_sample_received_on_a_stream_and_copied_to_the_host_holds_the_finished_frame() {
    let dir = temp_dir("chan-copy-early");
    let path = dir.join("frames");
    let (publisher, _) = spawn_slow_publisher(&path, 1);
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let sub = subscribe_next(&ctx, &path);
    let sample = sub.receive(&stream, SECS).unwrap();
    // A synchronous copy (DeviceMemory::copy_to_vec) on the crate's copy stream: it waits for
    // the pool's recorded uses, but the GPU wait for the frame is recorded nowhere.
    let words = sample.copy_to_vec().unwrap();
    let seq = sample.seq();
    drop(sample);
    stream.synchronize().unwrap();
    drop(sub);
    publisher.kill();
    let errors = reference::frame_errors(&words, seq);
    assert_eq!(
        errors, 0,
        "copy_to_vec of frame {seq} read the slot before the publisher's GPU wrote it"
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_receive_that_times_out_waiting_for_the_gpu_does_not_lose_the_frame() {
    let dir = temp_dir("chan-timeout-loss");
    let path = dir.join("frames");
    let (mut publisher, _) = spawn_slow_publisher(&path, 1);
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let sub = subscribe_next(&ctx, &path);
    publisher.expect_line("PUBLISHED 1", SECS);
    // Frame 1 is announced, its GPU work takes about a second: a short poll times out.
    let err = sub.receive_host(Duration::from_millis(20)).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    // Policy::Block loses no frame: the next receive must still deliver frame 1.
    let again = sub.receive_host(Duration::from_secs(10));
    let stats = sub.stats();
    let got = again.as_ref().map(|s| s.seq()).map_err(|e| e.to_string());
    drop(again);
    drop(sub);
    publisher.kill();
    assert_eq!(
        got,
        Ok(1),
        "frame 1 was lost by the timed-out receive (missed counted: {})",
        stats.missed
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_failed_create_leaves_no_registered_control_page_behind() {
    let dir = temp_dir("chan-create-fails");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    // A plain exporter holds the name: create fails at claiming it, after the channel page
    // was registered with the driver.
    let buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1024, Transport::Auto).unwrap();
    let _exporter = Exporter::bind(&path, &buf).unwrap();
    let _ = cuda_ipc::take_drop_errors();
    for _ in 0..3 {
        let err =
            Publisher::<u32>::create(&ctx, &path, 1024, ChannelOptions::default()).unwrap_err();
        println!("refused: {err}");
    }
    let leaked: Vec<_> = cuda_ipc::take_drop_errors()
        .into_iter()
        .filter(|e| e.what.contains("control page"))
        .collect();
    assert!(
        leaked.is_empty(),
        "each failed create left a registered, mapped page: {leaked:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// Second review (branch `review`): a well-behaved subscriber whose GPU is behind.
// ---------------------------------------------------------------------------------------------

/// Never holds more than one sample (max_held 1), but its stream is about a second behind:
/// each sample's acknowledgement, queued on the stream when it is dropped, lands late.
fn lagging_acks_role() {
    let path = PathBuf::from(get("PATH"));
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let sub = subscribe_next(&ctx, &path);
    let mut busy = DeviceBuffer::<u32>::zeroed(&ctx, 1 << 30).unwrap();
    println!("SUBSCRIBED");
    queue_slow_work(&k, &stream, &mut busy);
    for _ in 0..3 {
        let sample = sub.receive(&stream, SECS).unwrap();
        println!("RECEIVED {}", sample.seq());
        drop(sample); // one held at a time, as max_held asks
    }
    println!("HELD {}", sub.stats().held);
    stream.synchronize().unwrap();
    drop(sub);
    println!("DONE");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn drop_oldest_does_not_disconnect_a_subscriber_that_never_holds_more_than_max_held() {
    // `pick` counts the samples alive on the CPU (`held`), but the publisher counts the slots
    // whose HOLD > ACK in the subscriber's page, and a dropped sample's ACK is written by the
    // subscriber's GPU after the work queued before it. A subscriber whose GPU lags holds
    // more slots than max_held without ever holding more than max_held samples: with
    // DropOldest the publisher waits for it (all older slots held) and, at the loan timeout,
    // disconnects it as a hoarder; the frames its queued kernels still read are overwritten.
    let dir = temp_dir("chan-lagging-acks");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let opts = ChannelOptions {
        slots: 4,
        max_held: 1,
        policy: Policy::DropOldest,
        ..ChannelOptions::default()
    };
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 14, opts).unwrap();
    let mut sub = RoleProcess::spawn(
        &[],
        &[
            ("CUDA_IPC_TEST_ROLE", "lagging-acks".into()),
            ("CUDA_IPC_TEST_PATH", path.display().to_string()),
        ],
    );
    sub.expect_line("SUBSCRIBED", SECS);
    p.wait_subscribers(1, SECS).unwrap();
    publish(&mut p, &k, &stream, 4);
    sub.expect_line("RECEIVED 3", SECS);
    let loan = p.loan(Duration::from_millis(200)).map(|l| l.seq());
    let stats = p.stats();
    let (ok, lines) = sub.finish(Duration::from_secs(60));
    assert!(ok, "{}", lines.join("\n"));
    assert_eq!(
        stats.left,
        0,
        "a subscriber that held one sample at a time (max_held 1) was disconnected as a \
         hoarder (loan: {loan:?}):\n{}",
        lines.join("\n")
    );
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn block_delivers_every_frame_to_sixteen_subscribers() {
    let dir = temp_dir("chan-sixteen");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let opts = ChannelOptions {
        slots: 8,
        max_subscribers: 16,
        ..ChannelOptions::default()
    };
    let frames = 200;
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 14, opts).unwrap();
    let subs: Vec<_> = (0..16)
        .map(|i| {
            let gpu = if gpus() > 1 { i % 2 } else { 0 };
            RoleProcess::spawn(&[], &sub_env(&path, gpu, frames, "next", 0, false, ""))
        })
        .collect();
    p.wait_subscribers(16, Duration::from_secs(60)).unwrap();
    publish(&mut p, &k, &stream, frames);
    for (i, s) in subs.into_iter().enumerate() {
        let r = finish(s);
        assert_eq!(
            (r.received, r.missed, r.errors, r.first, r.last),
            (frames, 0, 0, 1, frames),
            "subscriber {i}: {r:?}"
        );
        assert!(r.consecutive, "subscriber {i}: {r:?}");
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_restarted_publisher_is_a_new_channel_never_confused_with_the_old() {
    let dir = temp_dir("chan-restart");
    let path = dir.join("frames");
    let spawn = || {
        let mut p = RoleProcess::spawn(
            &[],
            &[
                ("CUDA_IPC_TEST_ROLE", "publisher".into()),
                ("CUDA_IPC_TEST_PATH", path.display().to_string()),
            ],
        );
        p.expect_line("PUBLISHING", SECS);
        p
    };
    let first = spawn();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let old = subscribe_next(&ctx, &path);
    let s = old.receive(&stream, SECS).unwrap();
    let old_seq = s.seq();
    drop(s);
    first.kill();
    // The old subscriber sees the end, whatever comes at the same path later.
    let second = spawn();
    let t = Instant::now();
    let end = loop {
        match old.receive(&stream, SECS) {
            Ok(s) => {
                assert!(
                    s.seq() > old_seq,
                    "a frame went backwards: the new instance?"
                );
                drop(s);
            }
            Err(e) => break e,
        }
        assert!(
            t.elapsed() < SECS,
            "the old subscriber never saw its publisher go"
        );
    };
    assert!(
        matches!(end, Error::PublisherGone { closed: false, .. }),
        "{end}"
    );
    // A new subscriber joins the new instance: its frames count from 1 again, intact.
    let new = subscribe_next(&ctx, &path);
    let k = ctx.kernels().unwrap();
    let mut errors = DeviceBuffer::<u32>::zeroed(&ctx, 1).unwrap();
    let mut last = 0;
    for _ in 0..20 {
        let s = new.receive(&stream, SECS).unwrap();
        assert!(s.seq() > last);
        last = s.seq();
        k.verify_frame(&stream, &s, s.seq(), &mut errors).unwrap();
    }
    stream.synchronize().unwrap();
    assert_eq!(errors.copy_to_vec().unwrap()[0], 0);
    drop((old, new));
    second.kill();
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn subscribing_to_a_shared_buffer_says_it_is_not_a_channel() {
    let dir = temp_dir("chan-not-a-channel");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let buf = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1024, Transport::Auto).unwrap();
    let _exporter = Exporter::bind(&path, &buf).unwrap();
    let t = Instant::now();
    let err = Subscriber::<u32>::subscribe(&ctx, &path, SubscribeOptions::default()).unwrap_err();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(err.to_string().contains("not a channel"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Hostile review, channel soundness (branch `pubsub-sound`). These tests use the public API,
// std and libc only: a fake publisher speaks the socket protocol with raw bytes (a frame is
// "CIPM", a kind byte, 3 zero bytes, a u32 LE payload length, the payload; fds go with
// SCM_RIGHTS) and raw sealed memfds. Their roles run through `zz_role_entry`.
// ---------------------------------------------------------------------------------------------

mod soundness {

    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use std::os::unix::net::{UnixListener, UnixStream};
    use std::path::{Path, PathBuf};

    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use cuda_ipc::prelude::*;

    /// A child process of this test binary in a role of `zz_role_entry` (the crate's
    /// [`RoleProcess`](crate::common::RoleProcess)), killed when dropped: a failing test
    /// leaves no publisher behind.
    pub struct Role(Option<crate::common::RoleProcess>);

    impl Role {
        pub fn spawn(role: &str, env: &[(&str, String)]) -> Role {
            let mut all = vec![("CUDA_IPC_TEST_ROLE", role.to_string())];
            all.extend(env.iter().map(|(k, v)| (*k, v.clone())));
            Role(Some(crate::common::RoleProcess::spawn(&[], &all)))
        }

        /// Waits for a line containing `needle`; panics with everything seen after `timeout`.
        pub fn expect(&mut self, needle: &str, timeout: Duration) -> String {
            self.0
                .as_mut()
                .expect("a role process still running")
                .expect_line(needle, timeout)
        }

        /// Waits up to `timeout` for the process to exit (a failure past it); returns whether
        /// it exited with 0 and every line it printed.
        pub fn finish(mut self, timeout: Duration) -> (bool, Vec<String>) {
            self.0
                .take()
                .expect("a role process still running")
                .finish(timeout)
        }

        /// SIGKILL, as a crash.
        pub fn kill(&mut self) {
            if let Some(p) = self.0.take() {
                p.kill();
            }
        }
    }

    impl Drop for Role {
        fn drop(&mut self) {
            self.kill();
        }
    }

    /// Runs `f` on its own thread and returns its result, or panics if it takes longer than
    /// `limit` (the thread is left behind: a hang fails the test instead of hanging it).
    pub fn within<R: Send + 'static>(
        limit: Duration,
        what: &str,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> R {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        match rx.recv_timeout(limit) {
            Ok(r) => r,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("{what} did not return within {limit:?}")
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} panicked (see above)"),
        }
    }

    /// Whether the work queued on `stream` so far finishes within `limit` (polled: never hangs).
    pub fn drains(stream: &Stream<'_>, limit: Duration) -> bool {
        let done = Event::new_untimed(stream.context()).unwrap();
        done.record(stream).unwrap();
        let t = Instant::now();
        loop {
            if done.is_complete().unwrap() {
                return true;
            }
            if t.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn flag(dir: &Path, name: &str) {
        std::fs::write(dir.join(name), b"").unwrap();
    }

    pub fn wait_flag(dir: &Path, name: &str, limit: Duration) -> bool {
        let t = Instant::now();
        while !dir.join(name).exists() {
            if t.elapsed() >= limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    pub fn env(k: &str) -> String {
        std::env::var(format!("CUDA_IPC_TEST_{k}")).unwrap_or_default()
    }

    // --- The channel's wire format and page layout, written out independently of the crate.

    /// Frame kinds of the rendezvous socket.
    pub const KIND_WELCOME: u8 = 6;
    pub const KIND_PAGE: u8 = 7;
    /// Channel page words.
    pub const MAGIC: usize = 0;
    pub const ANNOUNCED: usize = 8;
    pub const CLAIM: usize = 64;
    /// Subscriber page words.
    pub const SUB_READY: usize = 0;
    pub const SLOTS: u64 = 4;
    pub const FRAME_LEN: u64 = 16;
    pub const STRIDE: u64 = 64;

    /// A 4 KiB sealed memfd (`F_SEAL_SHRINK | F_SEAL_GROW`, as the crate requires of a peer's
    /// page), mapped read-write here: the fake publisher's view of a control page.
    pub struct FakePage {
        pub fd: OwnedFd,
        ptr: *mut libc::c_void,
    }

    impl FakePage {
        pub fn new(name: &str) -> FakePage {
            let cname = std::ffi::CString::new(name).unwrap();
            // SAFETY: a valid NUL-terminated name.
            let raw = unsafe {
                libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
            };
            assert!(
                raw >= 0,
                "memfd_create: {}",
                std::io::Error::last_os_error()
            );
            // SAFETY: a new descriptor nothing else owns.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: plain syscalls on our own descriptor.
            unsafe {
                assert_eq!(libc::ftruncate(fd.as_raw_fd(), 4096), 0);
                let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
                assert_eq!(libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals), 0);
            }
            // SAFETY: a new shared mapping of our own 4096-byte file; unmapped in Drop.
            let ptr = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    4096,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_SHARED,
                    fd.as_raw_fd(),
                    0,
                )
            };
            assert_ne!(ptr, libc::MAP_FAILED);
            FakePage { fd, ptr }
        }

        pub fn word(&self, index: usize) -> &AtomicU64 {
            assert!(index < 512);
            // SAFETY: inside the 4096-byte read-write mapping that lives as long as `self`,
            // 8-byte aligned; other processes access it only atomically too.
            unsafe { &*self.ptr.cast::<AtomicU64>().add(index) }
        }
    }

    impl Drop for FakePage {
        fn drop(&mut self) {
            // SAFETY: our own mapping; no reference from `word` outlives `self`.
            unsafe { libc::munmap(self.ptr, 4096) };
        }
    }

    /// Sends one protocol frame with `fd` attached (SCM_RIGHTS), in one `sendmsg`.
    pub fn send_frame(sock: &UnixStream, kind: u8, payload: &[u8], fd: RawFd) {
        let mut bytes = b"CIPM".to_vec();
        bytes.push(kind);
        bytes.extend_from_slice(&[0, 0, 0]);
        bytes.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        bytes.extend_from_slice(payload);
        let mut iov = libc::iovec {
            iov_base: bytes.as_mut_ptr().cast(),
            iov_len: bytes.len(),
        };
        let fd_len = std::mem::size_of::<RawFd>() as u32;
        // SAFETY: pure arithmetic.
        let space = unsafe { libc::CMSG_SPACE(fd_len) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        // SAFETY: an all-zero msghdr is valid; its pointers are set just below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds one cmsg with room for one fd (CMSG_SPACE), 8-byte
        // aligned; CMSG_FIRSTHDR points into it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(fd_len) as _;
            std::ptr::copy_nonoverlapping(
                (&fd as *const RawFd).cast::<u8>(),
                libc::CMSG_DATA(c),
                fd_len as usize,
            );
        }
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let n = unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, 0) };
        assert_eq!(
            n,
            bytes.len() as isize,
            "sendmsg: {}",
            std::io::Error::last_os_error()
        );
    }

    /// A welcome for a Block channel of 4 slots of 16 u32 (stride 64).
    pub fn welcome(newest: u64, announced: u64, pool: &[u8]) -> Vec<u8> {
        let words: [u64; 13] = [
            1,
            SLOTS,
            16,
            0,
            FRAME_LEN,
            STRIDE,
            4,
            cuda_ipc::ipc::TypeTag::of::<u32>().0,
            2,
            1,
            newest,
            announced,
            0x5eed,
        ];
        let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        b.extend_from_slice(pool);
        b
    }

    /// The fake publisher (role `fake-publisher`, SCENARIO as below): a real pool exported as
    /// `<dir>/frames.pool`, and a raw socket at `<dir>/frames.sock` that welcomes one
    /// subscriber with pages it keeps writable.
    /// - `huge-welcome`: announces frame 2^63 - 1 in the welcome (and claims 2^63 in slot 0).
    /// - `huge-announce`: ANNOUNCED = 2^63 in the channel page (frame 1 claimed in slot 0).
    /// - `huge-claim`: slot 1's claim word is 2^63 (frame 1 claimed in slot 0).
    /// - `claim-then-die`: frame 1 claimed in slot 0, never written; waits to be killed.
    /// - `lowering`: as `claim-then-die`; on the flag `hangup` it shuts the connection down
    ///   and keeps storing 0 into the subscriber's READY word of slot 0 until the flag
    ///   `stop`, then stores 1 there (releasing the wait for frame 1) and prints RELEASED.
    pub fn fake_publisher_role() {
        let dir = PathBuf::from(env("DIR"));
        let scenario = env("SCENARIO");
        let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
        let pool = SharedDeviceBuffer::<u32>::zeroed(
            &ctx,
            (SLOTS * STRIDE) as usize,
            cuda_ipc::ipc::Transport::Auto,
        )
        .unwrap();
        let exporter = Exporter::bind(dir.join("frames.pool"), &pool).unwrap();
        let listener = UnixListener::bind(dir.join("frames.sock")).unwrap();
        let chan = FakePage::new("fake channel");
        let page = FakePage::new("fake subscriber page");
        chan.word(MAGIC)
            .store(u64::from_le_bytes(*b"cudaipcC"), SeqCst);
        let (newest, announced) = match scenario.as_str() {
            "huge-welcome" => (0, i64::MAX as u64),
            _ => (0, 0),
        };
        match scenario.as_str() {
            "huge-welcome" => chan.word(CLAIM).store(1 << 63, SeqCst),
            "huge-announce" => {
                chan.word(CLAIM).store(1, SeqCst);
                chan.word(ANNOUNCED).store(1 << 63, SeqCst);
            }
            "huge-claim" => {
                chan.word(CLAIM).store(1, SeqCst);
                chan.word(CLAIM + 1).store(1 << 63, SeqCst);
            }
            _ => chan.word(CLAIM).store(1, SeqCst),
        }
        println!("FAKE LISTENING");
        let (conn, _) = listener.accept().unwrap();
        let w = welcome(newest, announced, &exporter.descriptor().encode());
        send_frame(&conn, KIND_WELCOME, &w, chan.fd.as_raw_fd());
        send_frame(&conn, KIND_PAGE, &[], page.fd.as_raw_fd());
        println!("FAKE WELCOMED");
        if scenario == "lowering" {
            assert!(wait_flag(&dir, "hangup", Duration::from_secs(60)));
            conn.shutdown(std::net::Shutdown::Both).unwrap();
            let ready = page.word(SUB_READY);
            let mut stores = 0u64;
            while !dir.join("stop").exists() {
                for _ in 0..1000 {
                    ready.store(0, SeqCst);
                }
                stores += 1000;
            }
            ready.store(1, SeqCst);
            println!("RELEASED after {stores} stores of 0");
        }
        std::thread::sleep(Duration::from_secs(120));
        drop((conn, exporter, pool));
    }

    /// Spawns the fake publisher in `dir` (created 0700) and waits until it listens.
    pub fn spawn_fake(dir: &Path, scenario: &str) -> Role {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir(dir).unwrap();
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        let mut fake = Role::spawn(
            "fake-publisher",
            &[
                ("CUDA_IPC_TEST_DIR", dir.display().to_string()),
                ("CUDA_IPC_TEST_SCENARIO", scenario.into()),
            ],
        );
        fake.expect("FAKE LISTENING", super::SECS);
        fake
    }
}

// --- Finding 1: READY words going backwards across streams.

/// The subscriber of `two_streams`: Block joins now at the latest frame and receives FRAMES
/// frames on the CPU path; DropOldest joined before frame 1, waits for the flag `go`, then
/// receives FRAMES frames on the GPU path. Each frame is checked against its number; a frame
/// whose GPU wait does not drain within 10 s prints STUCK.
fn order_subscriber_role(policy: Policy) {
    use soundness::{drains, env, wait_flag};
    let path = PathBuf::from(env("PATH"));
    let frames: usize = env("FRAMES").parse().unwrap();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let opts = SubscribeOptions {
        start: if policy == Policy::Block {
            Start::Latest
        } else {
            Start::Next
        },
        ..SubscribeOptions::default()
    };
    let sub = Subscriber::<u32>::subscribe(&ctx, &path, opts).unwrap();
    println!("SUBSCRIBED");
    if policy == Policy::DropOldest {
        assert!(wait_flag(path.parent().unwrap(), "go", SECS));
    }
    for _ in 0..frames {
        let got = if policy == Policy::Block {
            sub.receive_host(Duration::from_secs(5))
        } else {
            sub.receive(&stream, Duration::from_secs(5))
        };
        let sample = match got {
            Ok(s) => s,
            Err(e) => {
                println!("END error {e}");
                return;
            }
        };
        let seq = sample.seq();
        if !drains(&stream, Duration::from_secs(10)) {
            println!("STUCK {seq}: the stream's wait for frame {seq} never passed");
            std::process::exit(0);
        }
        let words = sample.copy_to_vec().unwrap();
        let errors = reference::frame_errors(&words, seq);
        println!("GOT {seq} missed={} errors={errors}", sample.missed());
    }
    println!("END ok");
}

/// Frame 1 of slot 0 is published on stream A behind a GPU wait released only later; frames
/// 2 and 3 (slot 1, then slot 0 again) on stream B. Without ordering, B's control writes land
/// first and A's then set slot 0's READY words back to frame 1: frame 3 is never ready.
fn two_streams(policy: Policy) {
    use cuda_ipc::ipc::Signal;
    use soundness::{drains, flag, Role};
    let dir = temp_dir("chan-two-streams");
    let path = dir.join("frames");
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let (a, b, c) = (
        Stream::new(&ctx).unwrap(),
        Stream::new(&ctx).unwrap(),
        Stream::new(&ctx).unwrap(),
    );
    let k = ctx.kernels().unwrap();
    let gate = SharedDeviceBuffer::<u32>::zeroed(&ctx, 1, Transport::Auto).unwrap();
    let opts = ChannelOptions {
        slots: 2,
        policy,
        ..ChannelOptions::default()
    };
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 12, opts).unwrap();
    // Opens the gate however this test ends (dropped before the publisher, whose drop waits
    // for stream A's control writes behind it).
    struct OpenOnDrop<'a>(&'a SharedDeviceBuffer<'a, u32>, &'a Stream<'a>);
    impl Drop for OpenOnDrop<'_> {
        fn drop(&mut self) {
            let _ = self.0.write_signal(self.1, Signal::Ready, 1);
        }
    }
    let _open = OpenOnDrop(&gate, &c);
    let role_env = |frames: u64| {
        vec![
            ("CUDA_IPC_TEST_PATH", path.display().to_string()),
            ("CUDA_IPC_TEST_FRAMES", frames.to_string()),
        ]
    };
    // DropOldest: a live subscriber that has not received anything yet (frame 1's READY
    // words are written into its page too). Block: it joins after frame 3.
    let mut early =
        (policy == Policy::DropOldest).then(|| Role::spawn("order-sub-drop-oldest", &role_env(2)));
    if let Some(s) = early.as_mut() {
        s.expect("SUBSCRIBED", SECS);
        p.wait_subscribers(1, SECS).unwrap();
    }
    let mut loan = p.loan(SECS).unwrap();
    k.fill_frame(&a, &mut loan, 1).unwrap();
    gate.wait_signal(&a, Signal::Ready, 1).unwrap();
    loan.publish(&a).unwrap();
    for seq in 2..=3 {
        let mut loan = p.loan(SECS).unwrap();
        assert_eq!((loan.seq(), loan.slot()), (seq, (seq as usize - 1) % 2));
        k.fill_frame(&b, &mut loan, seq).unwrap();
        loan.publish(&b).unwrap();
    }
    // B runs ahead (with the fix it waits, on the GPU, for A's control writes).
    let b_ahead = drains(&b, Duration::from_millis(300));
    gate.write_signal(&c, Signal::Ready, 1).unwrap();
    let drained = [&a, &b, &c].map(|s| drains(s, Duration::from_secs(10)));
    assert_eq!(
        drained, [true; 3],
        "the streams did not finish once the gate opened"
    );
    println!("stream B finished before A's frame: {b_ahead}");
    let (frames, sub) = match early {
        Some(s) => {
            flag(&dir, "go");
            (2, s)
        }
        None => {
            let mut s = Role::spawn("order-sub-block", &role_env(3));
            s.expect("SUBSCRIBED", SECS);
            p.wait_subscribers(1, SECS).unwrap();
            // Frames 4 (slot 1) and 5 (slot 0, once the subscriber has frame 3 released).
            for seq in 4..=5 {
                let loan = p.loan(Duration::from_secs(10));
                let Ok(mut loan) = loan else {
                    println!("loan of frame {seq}: {:?}", loan.map(|l| l.seq()));
                    break;
                };
                k.fill_frame(&b, &mut loan, seq).unwrap();
                loan.publish(if seq % 2 == 0 { &a } else { &b }).unwrap();
            }
            (3, s)
        }
    };
    let (ok, lines) = sub.finish(Duration::from_secs(60));
    let report = lines.join("\n");
    assert!(ok, "{report}");
    let got: Vec<&str> = lines
        .iter()
        .filter(|l| l.starts_with("GOT"))
        .map(|l| &l[..])
        .collect();
    let want: Vec<String> = match policy {
        Policy::Block => (3..=5)
            .map(|s| format!("GOT {s} missed=0 errors=0"))
            .collect(),
        Policy::DropOldest => vec![
            "GOT 2 missed=1 errors=0".into(),
            "GOT 3 missed=0 errors=0".into(),
        ],
    };
    assert_eq!(
        got,
        want,
        "frames {}: slot 0's READY words went back to frame 1 (frame 3 never ready):\n{report}",
        if frames == 2 { "2, 3" } else { "3, 4, 5" }
    );
    assert!(lines.iter().any(|l| l == "END ok"), "{report}");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn frames_of_one_slot_published_on_two_streams_keep_its_ready_words_in_order_block() {
    // A subscriber joining after frame 3 waits (CPU path) for SLOT_READY[0] >= 3: without the
    // ordering it holds 1 for good, the subscriber times out, and the publisher's Block loan
    // of frame 5 waits for it.
    two_streams(Policy::Block);
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn frames_of_one_slot_published_on_two_streams_keep_its_ready_words_in_order_drop_oldest() {
    // A live subscriber that has received nothing: DropOldest overwrites frame 1's slot with
    // frame 3, and without the ordering the subscriber's own READY word of slot 0 ends at 1:
    // its stream's GPU wait for frame 3 never passes.
    two_streams(Policy::DropOldest);
}

// --- Findings 2 and 3: frame numbers from a fake publisher, and relative releases.

/// Subscribes to the fake publisher at `dir` from a fresh context (on its own thread, see
/// `within`).
fn subscribe_fake<'c>(ctx: &'c Context, dir: &Path) -> Result<Subscriber<'c, u32>> {
    let opts = SubscribeOptions {
        timeout: Duration::from_secs(10),
        start: Start::Next,
        ..SubscribeOptions::default()
    };
    Subscriber::<u32>::subscribe(ctx, dir.join("frames"), opts)
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_fake_publisher_announcing_huge_frame_numbers_gets_typed_errors_and_drop_returns() {
    use soundness::{spawn_fake, within};
    // 1. The welcome announces 2^63 - 1 (and slot 0 claims 2^63). Before the fix the
    //    subscriber took frame 2^63 and queued a GPU wait no stored value released (the
    //    comparison is cyclic): its drop then blocked for ever.
    let dir = temp_dir("chan-huge-welcome");
    let _fake = spawn_fake(&dir, "huge-welcome");
    let err = within(
        Duration::from_secs(30),
        "subscribe + receive + drop",
        move || {
            let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
            let stream = Stream::new(&ctx).unwrap();
            let subscribed = subscribe_fake(&ctx, &dir);
            let report = match subscribed {
                Err(e) => e.to_string() + " [at subscribe]",
                Ok(sub) => {
                    let got = sub
                        .receive(&stream, Duration::from_secs(2))
                        .map(|s| s.seq());
                    let t = Instant::now();
                    drop(sub);
                    format!("receive gave {got:?}; drop took {:?}", t.elapsed())
                }
            };
            report
        },
    );
    assert!(
        err.contains("protocol error")
            && err.contains("announced frame 9223372036854775807")
            && err.ends_with("[at subscribe]"),
        "{err}"
    );
    // 2 and 3. ANNOUNCED of 2^63 in the channel page; a claim word of 2^63.
    for (scenario, expect) in [
        ("huge-announce", "announces frame 9223372036854775808"),
        ("huge-claim", "slot 1's claim word is 0x8000000000000000"),
    ] {
        let dir = temp_dir("chan-huge-page");
        let _fake = spawn_fake(&dir, scenario);
        let report = within(Duration::from_secs(30), scenario, move || {
            let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
            let stream = Stream::new(&ctx).unwrap();
            let sub = subscribe_fake(&ctx, &dir).unwrap();
            let gpu = sub
                .receive(&stream, Duration::from_secs(2))
                .map(|s| s.seq());
            let cpu = sub.receive_host(Duration::from_secs(2)).map(|s| s.seq());
            let synced = soundness::drains(&stream, Duration::from_secs(5));
            let t = Instant::now();
            drop(sub);
            (gpu, cpu, synced, t.elapsed())
        });
        let (gpu, cpu, synced, dropped) = report;
        for got in [&gpu, &cpu] {
            match got {
                Err(e @ Error::Protocol { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(expect), "{scenario}: {text}");
                    assert!(text.contains("largest frame number"), "{scenario}: {text}");
                }
                other => panic!("{scenario}: expected a protocol error, got {other:?}"),
            }
        }
        assert!(synced, "{scenario}: the stream was left waiting");
        assert!(
            dropped < Duration::from_secs(3),
            "{scenario}: drop took {dropped:?}"
        );
    }
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn a_stream_waiting_on_an_unpublished_frame_drains_when_a_fake_publisher_dies() {
    use soundness::{drains, spawn_fake, within};
    let dir = temp_dir("chan-fake-dies");
    let mut fake = spawn_fake(&dir, "claim-then-die");
    let (tx_received, rx_received) = std::sync::mpsc::channel::<()>();
    let (tx_killed, rx_killed) = std::sync::mpsc::channel::<()>();
    let subscriber = std::thread::spawn(move || {
        let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
        let stream = Stream::new(&ctx).unwrap();
        let sub = subscribe_fake(&ctx, &dir).unwrap();
        // Frame 1 is claimed, never written: the stream waits for it on the GPU.
        let sample = sub.receive(&stream, SECS).unwrap();
        assert_eq!(sample.seq(), 1);
        let waited = !drains(&stream, Duration::from_millis(300));
        tx_received.send(()).unwrap();
        rx_killed.recv().unwrap();
        // The watcher thread releases the wait: no other call into the channel.
        let drained = drains(&stream, Duration::from_secs(5));
        drop(sample);
        let end = sub
            .receive(&stream, Duration::from_secs(2))
            .map(|s| s.seq());
        let t = Instant::now();
        drop(sub);
        (waited, drained, end, t.elapsed())
    });
    rx_received
        .recv_timeout(SECS)
        .expect("the subscriber received frame 1");
    fake.kill();
    tx_killed.send(()).unwrap();
    let (waited, drained, end, dropped) =
        within(Duration::from_secs(30), "the subscriber", move || {
            subscriber.join().unwrap()
        });
    assert!(waited, "the stream did not wait for the unwritten frame");
    assert!(
        drained,
        "the stream's wait for frame 1 was not released after the publisher died"
    );
    assert!(
        matches!(end, Err(Error::PublisherGone { closed: false, .. })),
        "{end:?}"
    );
    assert!(dropped < Duration::from_secs(3), "drop took {dropped:?}");
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn subscriber_drop_stays_bounded_while_a_hostile_publisher_keeps_lowering_its_ready_words() {
    use soundness::{drains, flag, spawn_fake, within};
    let dir = temp_dir("chan-fake-lowering");
    let mut fake = spawn_fake(&dir, "lowering");
    let d = dir.clone();
    let (dropped, drained) = within(Duration::from_secs(60), "the subscriber", move || {
        let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
        let stream = Stream::new(&ctx).unwrap();
        let sub = subscribe_fake(&ctx, &d).unwrap();
        let sample = sub.receive(&stream, SECS).unwrap();
        drop(sample);
        // The publisher hangs up, then keeps storing 0 over every release of ours.
        flag(&d, "hangup");
        std::thread::sleep(Duration::from_millis(200));
        let t = Instant::now();
        drop(sub);
        let dropped = t.elapsed();
        // Our stream is the fake's hostage until it stops.
        flag(&d, "stop");
        (dropped, drains(&stream, Duration::from_secs(10)))
    });
    fake.expect("RELEASED", SECS);
    assert!(
        dropped < Duration::from_secs(8),
        "Subscriber::drop took {dropped:?} (it must stay bounded)"
    );
    assert!(
        drained,
        "the stream never drained, even once the fake released it"
    );
    println!(
        "drop took {dropped:?}; drop log: {:?}",
        cuda_ipc::take_drop_errors()
    );
}

// --- Finding 4: waits per subscriber.

/// Block, 4 slots: waits for 2 subscribers, publishes frame 1, then loans frame 2 (claimed,
/// so subscribers take it and their GPU waits for it) and publishes it only on the flag
/// `publish`.
fn stepped_publisher_role() {
    let path = PathBuf::from(soundness::env("PATH"));
    let dir = path.parent().unwrap().to_path_buf();
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let opts = ChannelOptions {
        slots: 4,
        ..ChannelOptions::default()
    };
    let mut p = Publisher::<u32>::create(&ctx, &path, 1 << 12, opts).unwrap();
    println!("PUBLISHING");
    p.wait_subscribers(2, SECS).unwrap();
    let mut loan = p.loan(SECS).unwrap();
    k.fill_frame(&stream, &mut loan, 1).unwrap();
    loan.publish(&stream).unwrap();
    let mut loan = p.loan(SECS).unwrap();
    println!("CLAIMED {}", loan.seq());
    assert!(soundness::wait_flag(
        &dir,
        "publish",
        Duration::from_secs(120)
    ));
    k.fill_frame(&stream, &mut loan, 2).unwrap();
    loan.publish(&stream).unwrap();
    stream.synchronize().unwrap();
    println!("PUBLISHED 2");
    std::thread::sleep(Duration::from_secs(120));
}

#[test]
#[ignore = "needs an NVIDIA GPU"]
fn two_subscribers_in_one_process_never_wait_for_each_others_gpu_waits() {
    use soundness::{drains, flag, Role};
    let dir = temp_dir("chan-two-subs");
    std::fs::create_dir(&dir).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    let path = dir.join("frames");
    let mut publisher = Role::spawn(
        "stepped-publisher",
        &[("CUDA_IPC_TEST_PATH", path.display().to_string())],
    );
    publisher.expect("PUBLISHING", SECS);
    let ctx = Context::new(Device::by_ordinal(0).unwrap()).unwrap();
    let stream_a = Stream::new(&ctx).unwrap();
    let k = ctx.kernels().unwrap();
    let a = subscribe_next(&ctx, &path);
    let (tx_go, rx_go) = std::sync::mpsc::channel::<()>();
    let (tx_b, rx_b) = std::sync::mpsc::channel();
    let b_path = path.clone();
    std::thread::scope(|scope| {
        // Owned here: should this closure panic, B's thread sees the channel close.
        let tx_go = tx_go;
        let ctx = &ctx;
        // Subscriber B, in the same process (the pool's imported mapping is shared with A).
        scope.spawn(move || {
            let b = subscribe_next(ctx, &b_path);
            rx_go.recv().unwrap();
            let t = Instant::now();
            let sample = b.receive_host(SECS).unwrap();
            println!("B: received frame {} after {:?}", sample.seq(), t.elapsed());
            let words = sample.copy_to_vec().unwrap();
            println!("B: copied it after {:?}", t.elapsed());
            let errors = reference::frame_errors(&words, sample.seq());
            let seq = sample.seq();
            drop(sample); // a host release: waits for B's own uses only
            let released = t.elapsed();
            println!("B: released it after {released:?}");
            let t = Instant::now();
            drop(b);
            println!("B: dropped after {:?}", t.elapsed());
            let _ = tx_b.send((seq, errors, released, t.elapsed()));
        });
        // A takes frame 1, then frame 2, claimed but not published: A's stream waits for it.
        let s = a.receive(&stream_a, SECS).unwrap();
        assert_eq!(s.seq(), 1);
        drop(s);
        publisher.expect("CLAIMED 2", SECS);
        let s2 = a.receive(&stream_a, SECS).unwrap();
        assert_eq!(s2.seq(), 2);
        let mut errors = DeviceBuffer::<u32>::zeroed(ctx, 1).unwrap();
        k.verify_frame(&stream_a, &s2, 2, &mut errors).unwrap();
        assert!(
            !drains(&stream_a, Duration::from_millis(300)),
            "A's stream did not wait for frame 2"
        );
        tx_go.send(()).unwrap();
        // B's receive_host, sample drop and drop must not wait for A's wait on frame 2.
        let b_result = rx_b.recv_timeout(Duration::from_secs(8));
        // Whatever happened, let the publisher write frame 2 (this also unblocks B if it
        // waits for A's stream), then check A.
        flag(&dir, "publish");
        publisher.expect("PUBLISHED 2", SECS);
        let a_drained = drains(&stream_a, Duration::from_secs(10));
        drop(s2);
        let a_errors = errors.copy_to_vec().unwrap()[0];
        let (seq, b_errors, released, dropped) = b_result.unwrap_or_else(|_| {
            panic!("subscriber B waited for subscriber A's GPU wait on an unpublished frame")
        });
        assert_eq!((seq, b_errors), (1, 0), "B's frame 1");
        assert!(
            released < Duration::from_secs(3),
            "B's sample drop took {released:?}"
        );
        assert!(
            dropped < Duration::from_secs(3),
            "B's drop took {dropped:?}"
        );
        assert!(
            a_drained,
            "A's stream did not complete once frame 2 was published"
        );
        assert_eq!(a_errors, 0, "A's frame 2 was read before it was written");
    });
    drop(a);
}
