//! The rendezvous without a GPU: publishing, leases, permissions, timeouts, and the fd
//! channel with ordinary descriptors (memfd), against well-behaved and hostile peers.

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cuda_ipc::ipc::{fetch, AllowedUsers, DescriptorError, ExportOptions, Exporter, ImportOptions};
use cuda_ipc::Error;
use serial_test::serial;

mod common;
use common::os::{self, write_private};
use common::wire::{self, Kind};
use common::{fd_descriptor, temp_dir};

fn memfd_with(text: &[u8]) -> std::os::fd::OwnedFd {
    let fd = os::memfd("cuda-ipc-test").unwrap();
    let mut f = fs::File::from(fd);
    f.write_all(text).unwrap();
    std::os::fd::OwnedFd::from(f)
}

fn opts(ms: u64) -> ImportOptions {
    ImportOptions::with_timeout(Duration::from_millis(ms))
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Waits (bounded) until the exporter's stats satisfy `f`.
fn eventually(exporter: &Exporter, f: impl Fn(&cuda_ipc::ipc::ExportStats) -> bool) {
    let start = Instant::now();
    while !f(&exporter.stats()) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "stats stuck at {:?}",
            exporter.stats()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
#[serial]
fn publish_fetch_lease_and_release_with_a_memfd() {
    let fds_before = os::open_fd_count().unwrap();
    let dir = temp_dir("basic");
    let path = dir.join("frames");
    let d = fd_descriptor();
    {
        let exporter = Exporter::bind_raw(
            &path,
            &d,
            Some(memfd_with(b"hello gpu")),
            ExportOptions::default(),
        )
        .unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(exporter.descriptor_path()), 0o600);
        assert_eq!(mode(exporter.socket_path()), 0o600);
        assert_eq!(exporter.descriptor().generation, 1);
        assert_eq!(mode(&path.with_extension("lock")), 0o600);
        // Atomic publish leaves no temporary files behind.
        let mut names: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["frames.desc", "frames.lock", "frames.sock"]);

        let offer = fetch::<u32>(&path, &opts(2000)).unwrap();
        assert_eq!(offer.descriptor().buffer_id, d.buffer_id);
        assert_eq!(offer.descriptor().generation, 1);
        let mut f = fs::File::from(offer.fd().unwrap().try_clone_to_owned().unwrap());
        f.rewind().unwrap();
        let mut text = String::new();
        f.read_to_string(&mut text).unwrap();
        assert_eq!(text, "hello gpu");
        drop(f);

        let stats = exporter.wait_consumers(1, Duration::from_secs(2)).unwrap();
        assert_eq!((stats.active_leases, stats.total_leases), (1, 1));
        assert!(matches!(
            exporter.wait_released(Duration::from_millis(50)),
            Err(Error::Timeout { .. })
        ));
        drop(offer); // the consumer lets go: socket EOF ends the lease
        let stats = exporter.wait_released(Duration::from_secs(2)).unwrap();
        assert_eq!((stats.active_leases, stats.total_leases), (0, 1));
    }
    assert!(!path.with_extension("desc").exists());
    assert!(!path.with_extension("sock").exists());
    // The lock file stays: it records the generation for the next exporter of the name.
    fs::remove_file(path.with_extension("lock")).unwrap();
    fs::remove_dir(&dir).unwrap();
    assert_eq!(
        os::open_fd_count().unwrap(),
        fds_before,
        "descriptors leaked"
    );
}

#[test]
#[serial]
fn ready_notifications_reach_current_and_later_consumers() {
    let dir = temp_dir("ready");
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"x")),
        ExportOptions::default(),
    )
    .unwrap();
    let mut first = fetch::<u32>(&path, &opts(2000)).unwrap();
    assert!(matches!(
        first.wait_ready(1, Duration::from_millis(50)),
        Err(Error::Timeout { .. })
    ));
    exporter.notify_ready(3).unwrap();
    assert_eq!(first.wait_ready(2, Duration::from_secs(2)).unwrap(), 3);
    let mut late = fetch::<u32>(&path, &opts(2000)).unwrap();
    assert_eq!(late.wait_ready(3, Duration::from_secs(2)).unwrap(), 3);
    drop(exporter);
    // The exporter is gone: waiting for more fails fast instead of hanging.
    let err = first.wait_ready(4, Duration::from_secs(2)).unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn a_restarted_producer_publishes_the_next_generation_and_replaces_a_stale_socket() {
    let dir = temp_dir("gen");
    let path = dir.join("frames");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    // What a crashed producer leaves behind: its descriptor (generation 5) and a dead socket.
    let mut old = fd_descriptor();
    old.generation = 5;
    write_private(&path.with_extension("desc"), &old.encode()).unwrap();
    drop(UnixListener::bind(path.with_extension("sock")).unwrap());

    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"x")),
        ExportOptions::default(),
    )
    .unwrap();
    assert_eq!(exporter.descriptor().generation, 6);
    let offer = fetch::<u32>(&path, &opts(2000)).unwrap();
    assert_eq!(offer.descriptor().generation, 6);

    // A second live exporter of the same name is refused.
    let err = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"y")),
        ExportOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::NameInUse { detail, .. } if detail.contains("a live publisher holds")),
        "{err}"
    );
    drop(offer);
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn waiting_for_a_missing_name_times_out_with_a_clear_error() {
    let dir = temp_dir("missing");
    let start = Instant::now();
    let err = fetch::<u32>(dir.join("nobody"), &opts(300)).unwrap_err();
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    let Error::Timeout { what, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        what.contains("nobody.desc") && what.contains("producer running"),
        "{what}"
    );
}

#[test]
#[serial]
fn a_dead_exporter_gives_a_timeout_naming_the_socket() {
    let dir = temp_dir("dead");
    let path = dir.join("frames");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    write_private(&path.with_extension("desc"), &fd_descriptor().encode()).unwrap();
    drop(UnixListener::bind(path.with_extension("sock")).unwrap()); // nobody listens
    let err = fetch::<u32>(&path, &opts(300)).unwrap_err();
    assert!(err.to_string().contains("has the producer exited"), "{err}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn a_disallowed_uid_is_refused() {
    let dir = temp_dir("uid");
    let path = dir.join("frames");
    let me = os::effective_uid();
    let options = ExportOptions {
        allowed: AllowedUsers::Uids(vec![me.wrapping_add(1)]),
        ..ExportOptions::default()
    };
    let exporter =
        Exporter::bind_raw(&path, &fd_descriptor(), Some(memfd_with(b"x")), options).unwrap();
    let err = fetch::<u32>(&path, &opts(2000)).unwrap_err();
    let Error::Refused { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(reason.contains(&format!("uid {me}")), "{reason}");
    eventually(&exporter, |s| s.refused_uid == 1);
    assert_eq!(exporter.stats().total_leases, 0);
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn a_type_mismatch_is_refused_before_connecting() {
    let dir = temp_dir("type");
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"x")),
        ExportOptions::default(),
    )
    .unwrap();
    let err = fetch::<f32>(&path, &opts(2000)).unwrap_err();
    assert!(
        matches!(err, Error::Descriptor(DescriptorError::TypeMismatch { .. })),
        "{err:?}"
    );
    let err = fetch::<u32>(
        &path,
        &ImportOptions {
            expected_len: Some(7),
            ..opts(2000)
        },
    )
    .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Descriptor(DescriptorError::LengthMismatch { .. })
        ),
        "{err:?}"
    );
    assert_eq!(exporter.stats().total_leases, 0);
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn directories_others_can_write_are_refused() {
    let dir = temp_dir("perm");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
    let path = dir.join("frames");
    let err = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"x")),
        ExportOptions::default(),
    )
    .unwrap_err();
    let Error::UnsafeDirectory { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(
        reason.contains("0777") && reason.contains("chmod go-w"),
        "{reason}"
    );
    // A consumer refuses it too, even when a descriptor is there.
    write_private(&path.with_extension("desc"), &fd_descriptor().encode()).unwrap();
    assert!(matches!(
        fetch::<u32>(&path, &opts(500)),
        Err(Error::UnsafeDirectory { .. })
    ));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn names_are_checked() {
    for bad in [
        ".hidden",
        "a/b/",
        "has space",
        "x".repeat(65).as_str(),
        "semi;colon",
    ] {
        let err = fetch::<u32>(temp_dir("names").join(bad), &opts(10)).unwrap_err();
        assert!(
            matches!(err, Error::InvalidArgument(_) | Error::Timeout { .. }),
            "{bad}: {err:?}"
        );
    }
}

/// Sends raw bytes as a client, returning the stream (so the caller decides when it closes).
fn raw_client(sock: &Path, bytes: &[u8]) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.write_all(bytes).unwrap();
    s
}

#[test]
#[serial]
fn hostile_clients_do_not_stop_the_exporter_or_leak() {
    let dir = temp_dir("hostile");
    let path = dir.join("frames");
    let options = ExportOptions {
        handshake_timeout: Duration::from_millis(300),
        max_connections: 64,
        ..ExportOptions::default()
    };
    let exporter =
        Exporter::bind_raw(&path, &fd_descriptor(), Some(memfd_with(b"x")), options).unwrap();
    let fds_before = os::open_fd_count().unwrap();
    let sock = exporter.socket_path().to_path_buf();
    {
        let silent = UnixStream::connect(&sock).unwrap();
        let garbage = raw_client(&sock, b"GET / HTTP/1.1\r\n\r\n");
        let mut huge = wire::hello("frames");
        huge[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        let huge = raw_client(&sock, &huge);
        let half = wire::hello("frames");
        drop(raw_client(&sock, &half[..7])); // hangs up mid-message
        let wrong_kind = raw_client(&sock, &wire::frame(Kind::Offer, &[0; 8]));
        let with_fd = UnixStream::connect(&sock).unwrap();
        let memfd = os::memfd("intruder").unwrap();
        os::send_with_fds(with_fd.as_fd(), &wire::hello("frames"), &[memfd.as_fd()]).unwrap();
        // Hundreds of connections: beyond max_connections they are closed at once.
        let flood: Vec<UnixStream> = (0..200)
            .filter_map(|_| UnixStream::connect(&sock).ok())
            .collect();

        // A well-behaved consumer is still served while all of that is going on.
        let offer = fetch::<u32>(&path, &opts(5000)).unwrap();
        assert!(offer.fd().is_some());
        drop(offer);
        eventually(&exporter, |s| s.dropped_bad >= 4 && s.dropped_full > 0);
        drop((silent, garbage, huge, wrong_kind, with_fd, flood, memfd));
    }
    // The silent ones are dropped after the handshake timeout; all leases end.
    eventually(&exporter, |s| s.active_leases == 0 && s.total_leases == 1);
    std::thread::sleep(Duration::from_millis(400));
    eventually(&exporter, |_| os::open_fd_count().unwrap() <= fds_before);
    assert_eq!(
        os::open_fd_count().unwrap(),
        fds_before,
        "exporter leaked descriptors"
    );
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

/// A fake exporter that answers one hello with whatever `answer` sends.
/// Its descriptor file holds `desc` (what an honest offer would repeat).
fn fake_exporter(
    tag: &str,
    desc: &[u8],
    answer: impl FnOnce(UnixStream) + Send + 'static,
) -> (PathBuf, std::thread::JoinHandle<()>) {
    let dir = temp_dir(tag);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.join("frames");
    write_private(&path.with_extension("desc"), desc).unwrap();
    let listener = UnixListener::bind(path.with_extension("sock")).unwrap();
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let _hello = wire::read_frame(&s, Duration::from_secs(5));
        answer(s);
    });
    (path, t)
}

#[test]
#[serial]
fn hostile_exporters_get_typed_errors_and_every_fd_is_closed() {
    let fds_before = os::open_fd_count().unwrap();
    let offer_bytes = fd_descriptor().encode().to_vec();
    type Answer = Box<dyn FnOnce(UnixStream) + Send>;
    let cases: Vec<(&str, Answer, &str)> = vec![
        (
            "zero-fds",
            {
                let b = offer_bytes.clone();
                Box::new(move |s: UnixStream| wire::send(&s, Kind::Offer, &b, None).unwrap())
            },
            "carried 0",
        ),
        (
            "two-fds",
            {
                let b = offer_bytes.clone();
                Box::new(move |s: UnixStream| {
                    let (a, c) = (os::memfd("a").unwrap(), os::memfd("b").unwrap());
                    os::send_with_fds(
                        s.as_fd(),
                        &wire::frame(Kind::Offer, &b),
                        &[a.as_fd(), c.as_fd()],
                    )
                    .unwrap();
                })
            },
            "2 file descriptors",
        ),
        (
            "garbage",
            Box::new(|mut s: UnixStream| s.write_all(&[0xAB; 64]).unwrap()),
            "bad frame magic",
        ),
        (
            "truncated",
            {
                let b = offer_bytes.clone();
                Box::new(move |mut s: UnixStream| {
                    s.write_all(&wire::frame(Kind::Offer, &b)[..40]).unwrap()
                })
            },
            "middle of a message",
        ),
        (
            "bad-descriptor",
            Box::new(|s: UnixStream| {
                let m = os::memfd("m").unwrap();
                wire::send(&s, Kind::Offer, &[1, 2, 3], Some(m.as_fd())).unwrap()
            }),
            "truncated",
        ),
        (
            "stall",
            Box::new(|s: UnixStream| {
                std::thread::sleep(Duration::from_millis(700));
                drop(s)
            }),
            "timed out",
        ),
    ];
    for (tag, answer, needle) in cases {
        let (path, t) = fake_exporter(tag, &offer_bytes, answer);
        let err = fetch::<u32>(&path, &opts(400)).unwrap_err();
        assert!(err.to_string().contains(needle), "{tag}: {err}");
        t.join().unwrap();
        fs::remove_dir_all(path.parent().unwrap()).unwrap();
    }
    assert_eq!(
        os::open_fd_count().unwrap(),
        fds_before,
        "a received fd leaked"
    );
}

#[test]
#[serial]
fn imports_racing_restarts_never_count_as_consumers_that_did_not_get_the_buffer() {
    // A producer republishes the name 300 times, each time waiting until one consumer has
    // used and released the buffer (`wait_released`); a consumer imports in a loop and counts
    // the buffers it got. A consumer that read one generation's descriptor and reached the
    // next generation's socket must not be counted as a consumer of that buffer (it did not
    // get it): else the producer moves on, the consumer misses a buffer and waits forever.
    let dir = temp_dir("restarts");
    let path = dir.join("soak");
    let cycles = 300u64;
    let producer = {
        let path = path.clone();
        std::thread::spawn(move || {
            for _ in 0..cycles {
                let e = Exporter::bind_raw(
                    &path,
                    &fd_descriptor(),
                    Some(memfd_with(b"x")),
                    ExportOptions::default(),
                )
                .unwrap();
                e.wait_released(Duration::from_secs(20)).unwrap();
            }
        })
    };
    let start = Instant::now();
    let (mut last, mut got) = ([0u8; 16], 0);
    while got < cycles {
        assert!(
            start.elapsed() < Duration::from_secs(60) && !producer.is_finished(),
            "stuck after {got} of {cycles} buffers (the producer counted a consumer that did \
             not get its buffer, or hangs)"
        );
        let offer = match fetch::<u32>(&path, &opts(2000)) {
            Ok(o) => o,
            // A restart under way: its socket closed, or is not there yet.
            Err(Error::Timeout { .. } | Error::Io { .. } | Error::Protocol { .. }) => continue,
            Err(e) => panic!("{e:?}"),
        };
        if offer.descriptor().buffer_id != last {
            last = offer.descriptor().buffer_id;
            got += 1;
        }
    }
    producer.join().unwrap();
    fs::remove_dir_all(&dir).unwrap();
}
