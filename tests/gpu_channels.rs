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
use cuda_ipc::pubsub::{ChannelOptions, Policy, Publisher, Start, SubscribeOptions, Subscriber};

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
    let fds_before = cuda_ipc::os::open_fd_count().unwrap();
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
    let fds_after = cuda_ipc::os::open_fd_count().unwrap();
    println!(
        "SUBRESULT received={received} missed={missed} errors={} first={first} last={last} \
         in_order={in_order} consecutive={consecutive} end={end} fds_before={fds_before} \
         fds_after={fds_after}",
        gpu_errors + host_errors
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
        cuda_ipc::os::effective_uid(),
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
    let fds0 = cuda_ipc::os::open_fd_count().unwrap();
    let (free0, _) = {
        let _b = ctx.bind().unwrap();
        cuda_ipc::result::mem_get_info().unwrap()
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
    let fds1 = cuda_ipc::os::open_fd_count().unwrap();
    let (free1, _) = {
        let _b = ctx.bind().unwrap();
        cuda_ipc::result::mem_get_info().unwrap()
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

fn welcome_bytes() -> Vec<u8> {
    let words: [u64; 13] = [
        1,
        4,
        16,
        0,
        16,
        64,
        4,
        cuda_ipc::ipc::TypeTag::of::<u32>().0,
        2,
        1,
        0,
        0,
        5,
    ];
    let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
    b.extend_from_slice(&[0u8; cuda_ipc::ipc::DESCRIPTOR_LEN]);
    b
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
    use cuda_ipc::ipc::framing::{send, Kind};
    use std::os::fd::AsFd;
    // 1. Garbage instead of a welcome.
    let dir = temp_dir("chan-fake1");
    let t = fake_publisher(&dir, |s| {
        let fd = cuda_ipc::os::shared_words_file("x", 4096).unwrap();
        send(s, Kind::Welcome, b"garbage", Some(fd.as_fd())).unwrap();
    });
    assert!(matches!(subscribe_to_fake(&dir), Error::Protocol { .. }));
    t.join().unwrap();
    // 2. A well-formed welcome with a page the publisher could shrink under us (SIGBUS).
    let dir = temp_dir("chan-fake2");
    let t = fake_publisher(&dir, |s| {
        let fd = cuda_ipc::os::memfd("unsealed").unwrap();
        let f = std::fs::File::from(fd);
        f.set_len(4096).unwrap();
        send(s, Kind::Welcome, &welcome_bytes(), Some(f.as_fd())).unwrap();
        let page = cuda_ipc::os::shared_words_file("p", 4096).unwrap();
        send(s, Kind::Page, &[], Some(page.as_fd())).unwrap();
    });
    let err = subscribe_to_fake(&dir);
    assert!(err.to_string().contains("sealed"), "{err}");
    t.join().unwrap();
    // 3. Sealed pages, but no channel behind them.
    let dir = temp_dir("chan-fake3");
    let t = fake_publisher(&dir, |s| {
        let chan = cuda_ipc::os::shared_words_file("c", 4096).unwrap();
        send(s, Kind::Welcome, &welcome_bytes(), Some(chan.as_fd())).unwrap();
        let page = cuda_ipc::os::shared_words_file("p", 4096).unwrap();
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
    use cuda_ipc::ipc::framing::{FrameReader, Kind};
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
    let mut r = FrameReader::new();
    let mut welcome = r.read_within(&s, SECS, "publisher").unwrap();
    assert_eq!(welcome.kind, Kind::Welcome);
    let chan_fd = welcome.fds.remove(0);
    let mut page = r.read_within(&s, SECS, "publisher").unwrap();
    let page_fd = page.fds.remove(0);
    // The channel page cannot be mapped writable.
    assert!(cuda_ipc::os::SharedMapping::map(std::os::fd::AsFd::as_fd(&chan_fd), 4096).is_err());
    let mine = cuda_ipc::os::SharedMapping::map(std::os::fd::AsFd::as_fd(&page_fd), 4096).unwrap();
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
