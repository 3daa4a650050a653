//! A hostile neighbour and a careless user against the rendezvous, without a GPU: a second uid
//! that flips a symlink or answers on a socket, a same-uid peer flooding the exporter, a FIFO
//! where the descriptor should be, a full listen backlog, exporters racing for one name, huge
//! allow-lists and endless timeouts. The second uid (65534) comes from a Python peer that
//! calls `setuid`, so these tests run as root (CI does).

use std::fs;
use std::io::{Read, Seek};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cuda_ipc::ipc::{fetch, AllowedUsers, Descriptor, ExportOptions, Exporter, ImportOptions};
use cuda_ipc::Error;
use serial_test::serial;

mod common;
use common::os::{self, write_private};
use common::py::{expect, hex, python};
use common::{fd_descriptor, temp_dir};

const NOBODY: u32 = 65534;

fn memfd_with(text: &[u8]) -> std::os::fd::OwnedFd {
    let fd = os::memfd("cuda-ipc-test").unwrap();
    let mut f = fs::File::from(fd);
    std::io::Write::write_all(&mut f, text).unwrap();
    std::os::fd::OwnedFd::from(f)
}

fn fd_text(fd: std::os::fd::BorrowedFd<'_>) -> String {
    let mut f = fs::File::from(fd.try_clone_to_owned().unwrap());
    f.rewind().unwrap();
    let mut text = String::new();
    f.read_to_string(&mut text).unwrap();
    text
}

fn opts(ms: u64) -> ImportOptions {
    ImportOptions::with_timeout(Duration::from_millis(ms))
}

fn dir_with_mode(path: &Path, mode: u32) {
    fs::create_dir_all(path).unwrap();
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
}

fn need_root() {
    assert_eq!(
        os::effective_uid(),
        0,
        "this test plays a second user with setuid: run it as root (CI does)"
    );
}

/// Runs `f` on a thread and waits at most `limit` for it: a hang is a failure, not a stuck
/// test run.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("still blocked after {limit:?}: a wait without a deadline"))
}

/// The attacker (uid 65534): its own directory `evil` under `base` with a copy of the real
/// descriptor and a socket that hands out a memfd saying "evil", and a thread flipping
/// `base/link` between `real_target` and `evil` (or, with `own_link`, creating the link
/// itself).
const FLIPPER: &str = r#"
base, desc, real_target = sys.argv[1], bytes.fromhex(sys.argv[2]), sys.argv[3]
become(65534, 65534)
evil = os.path.join(base, "evil")
os.mkdir(evil, 0o700)
with open(os.path.join(evil, "frames.desc"), "wb") as f:
    f.write(desc)
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(os.path.join(evil, "frames.sock")); l.listen(128)
m = os.memfd_create("evil"); os.write(m, b"evil")
def serve():
    while True:
        c, _ = l.accept()
        try:
            read_frame(c)
            socket.send_fds(c, [offer(desc)], [m])
        except BaseException:
            pass
        c.close()
threading.Thread(target=serve, daemon=True).start()
link, tmp = os.path.join(base, "link"), os.path.join(base, ".flip")
targets, i = [real_target, evil], 0
print("FLIPPING", flush=True)
while True:
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(targets[i % 2], tmp)
    os.rename(tmp, link)
    i += 1
"#;

/// Imports `rounds` times through `base/link` while the attacker flips it; returns (imports
/// that got the real memory, imports that got the attacker's, the errors seen).
/// Imports through a link an attacker keeps flipping, `rounds` times (or, with `extra`, up to
/// `extra` more until one import succeeds: on a loaded machine the attacker may win every race
/// for a while, which is not what the test is about).
fn imports_under_flipping(
    base_mode: u32,
    rounds: usize,
    extra: usize,
) -> (usize, usize, Vec<String>) {
    let base = temp_dir("flip");
    dir_with_mode(&base, 0o755);
    let real = base.join("real");
    let exporter = Exporter::bind_raw(
        real.join("frames"),
        &fd_descriptor(),
        Some(memfd_with(b"real")),
        ExportOptions {
            max_connections: 4096,
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let desc = fs::read(exporter.descriptor_path()).unwrap();
    // The shared volume: writable by everyone, like an emptyDir (0777) or /tmp (1777).
    fs::set_permissions(&base, fs::Permissions::from_mode(base_mode)).unwrap();
    if base_mode & 0o1000 == 0 {
        // The administrator's link; without the sticky bit anyone may replace it.
        std::os::unix::fs::symlink(&real, base.join("link")).unwrap();
    }
    let (attacker, rx) = python(
        FLIPPER,
        &[base.to_str().unwrap(), &hex(&desc), real.to_str().unwrap()],
    );
    expect(&rx, "FLIPPING");
    let (mut good, mut evil, mut errors) = (0, 0, Vec::new());
    let mut offers = Vec::new();
    for round in 0..rounds + extra {
        if round >= rounds && good > 0 {
            break;
        }
        match fetch::<u32>(base.join("link").join("frames"), &opts(200)) {
            Ok(offer) => {
                match fd_text(offer.fd().unwrap()).as_str() {
                    "real" => good += 1,
                    _ => evil += 1,
                }
                offers.push(offer);
                if offers.len() > 64 {
                    offers.clear();
                }
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    drop((attacker, offers, exporter));
    let _ = fs::remove_dir_all(&base);
    (good, evil, errors)
}

#[test]
#[serial]
fn a_flipping_symlink_in_a_world_writable_volume_never_hands_over_the_attackers_fd() {
    need_root();
    let (good, evil, errors) = imports_under_flipping(0o777, 1000, 0);
    assert_eq!(evil, 0, "{evil} of 1000 imports got the attacker's fd");
    // The volume lets anyone swap the directory, and the link is the attacker's once it has
    // flipped it: the import refuses both, and says why.
    assert_eq!(good, 0);
    assert!(
        errors.iter().all(
            |e| (e.contains("writable by others") && e.contains("sticky"))
                || e.contains("a symbolic link owned by uid 65534")
        ),
        "{:?}",
        &errors[..errors.len().min(5)]
    );
}

#[test]
#[serial]
fn a_flipping_symlink_in_a_sticky_volume_never_hands_over_the_attackers_fd() {
    need_root();
    let (good, evil, errors) = imports_under_flipping(0o1777, 1000, 0);
    assert_eq!(evil, 0, "{evil} imports got the attacker's fd");
    // The attacker made the link itself: a link of another uid is never followed, whichever
    // way it points, so every import is refused and names the link's owner.
    assert_eq!(good, 0);
    assert!(
        errors
            .iter()
            .all(|e| e.contains("a symbolic link owned by uid 65534")),
        "{:?}",
        &errors[..errors.len().min(5)]
    );
}

/// A socket in a trusted directory, bound by root and then served (`listen`) as uid 65534,
/// under a descriptor that names `claimed_uid` as the exporter.
fn impostor(tag: &str, claimed_uid: u32) -> (PathBuf, common::py::Py) {
    let dir = temp_dir(tag);
    dir_with_mode(&dir, 0o700);
    let path = dir.join("frames");
    let mut d = fd_descriptor();
    d.exporter_uid = claimed_uid;
    write_private(&path.with_extension("desc"), &d.encode()).unwrap();
    let script = r#"
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(sys.argv[1])
become(65534, 65534)
l.listen(16)
m = os.memfd_create("impostor")
print("LISTENING", flush=True)
while True:
    c, _ = l.accept()
    try:
        read_frame(c)
        socket.send_fds(c, [offer(bytes.fromhex(sys.argv[2]))], [m])
    except BaseException:
        pass
"#;
    let (py, rx) = python(
        script,
        &[
            path.with_extension("sock").to_str().unwrap(),
            &hex(&d.encode()),
        ],
    );
    expect(&rx, "LISTENING");
    (path, py)
}

#[test]
#[serial]
fn a_socket_served_by_another_uid_than_the_descriptor_names_is_refused() {
    need_root();
    let (path, py) = impostor("impostor", os::effective_uid());
    let err = fetch::<u32>(&path, &opts(2000)).expect_err("the impostor's memory was accepted");
    let text = err.to_string();
    assert!(text.contains("uid 65534"), "{text}");
    drop(py);
    fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
#[serial]
fn an_exporter_of_an_untrusted_uid_is_refused_even_when_the_descriptor_agrees() {
    need_root();
    let (path, py) = impostor("untrusted", NOBODY);
    let err = fetch::<u32>(&path, &opts(2000)).expect_err("an untrusted exporter was accepted");
    assert!(err.to_string().contains("65534"), "{err}");
    drop(py);
    fs::remove_dir_all(path.parent().unwrap()).unwrap();
}

#[test]
#[serial]
fn a_connect_and_close_flood_does_not_starve_a_consumer() {
    let dir = temp_dir("flood");
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"x")),
        ExportOptions {
            max_connections: 8,
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let sock = exporter.socket_path().to_path_buf();
    let stop = Arc::new(AtomicBool::new(false));
    let flooders: Vec<_> = (0..2)
        .map(|_| {
            let (sock, stop) = (sock.clone(), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = UnixStream::connect(&sock);
                }
            })
        })
        .collect();
    let mut failures = Vec::new();
    for _ in 0..50 {
        match fetch::<u32>(&path, &opts(3000)) {
            Ok(offer) => drop(offer),
            Err(e) => failures.push(e.to_string()),
        }
    }
    stop.store(true, Ordering::Relaxed);
    for f in flooders {
        f.join().unwrap();
    }
    assert!(
        failures.is_empty(),
        "{} of 50 fetches failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn a_full_exporter_says_it_is_busy() {
    let dir = temp_dir("busy");
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"x")),
        ExportOptions {
            max_connections: 2,
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let held: Vec<_> = (0..2)
        .map(|_| fetch::<u32>(&path, &opts(2000)).unwrap())
        .collect();
    let err = fetch::<u32>(&path, &opts(500)).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("busy") && text.contains("max_connections"),
        "{text}"
    );
    drop(held);
    // Once the leases end, a consumer is served again.
    fetch::<u32>(&path, &opts(2000)).unwrap();
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn a_fifo_at_the_descriptor_path_hangs_neither_fetch_nor_bind() {
    let dir = temp_dir("fifo");
    dir_with_mode(&dir, 0o700);
    let path = dir.join("frames");
    let fifo = path.with_extension("desc");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let p = path.clone();
    let start = Instant::now();
    let result = within(Duration::from_secs(5), move || {
        fetch::<u32>(&p, &opts(300)).map(|_| ())
    });
    let err = result.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "{err}");
    assert!(err.to_string().contains("not a regular file"), "{err}");
    let p = path.clone();
    let bound = within(Duration::from_secs(5), move || {
        Exporter::bind_raw(
            &p,
            &fd_descriptor(),
            Some(memfd_with(b"x")),
            ExportOptions::default(),
        )
        .map(|e| e.descriptor().generation)
    });
    // The exporter replaces the FIFO with its descriptor.
    assert!(bound.is_ok(), "{bound:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn a_listener_with_a_full_backlog_does_not_block_connect_past_the_timeout() {
    let dir = temp_dir("backlog");
    dir_with_mode(&dir, 0o700);
    let path = dir.join("frames");
    write_private(&path.with_extension("desc"), &fd_descriptor().encode()).unwrap();
    // A listener that never accepts, its backlog filled by its own non-blocking connects.
    let script = r#"
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(sys.argv[1]); l.listen(0)
keep = []
while True:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.setblocking(False)
    try:
        c.connect(sys.argv[1])
    except BlockingIOError:
        break
    keep.append(c)
print("FULL", len(keep), flush=True)
time.sleep(600)
"#;
    let (py, rx) = python(script, &[path.with_extension("sock").to_str().unwrap()]);
    expect(&rx, "FULL");
    let p = path.clone();
    let start = Instant::now();
    let err = within(Duration::from_secs(5), move || {
        fetch::<u32>(&p, &opts(300)).map(|_| ())
    })
    .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "{err}");
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    drop(py);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn exporters_racing_to_replace_a_stale_socket_never_both_bind() {
    let dir = temp_dir("race");
    dir_with_mode(&dir, 0o700);
    let path = dir.join("frames");
    for round in 0..40 {
        // What a crashed producer leaves: a socket nobody listens on.
        drop(std::os::unix::net::UnixListener::bind(path.with_extension("sock")).unwrap());
        let barrier = Arc::new(Barrier::new(4));
        let racers: Vec<_> = (0..4)
            .map(|_| {
                let (p, b) = (path.clone(), Arc::clone(&barrier));
                std::thread::spawn(move || {
                    b.wait();
                    Exporter::bind_raw(
                        &p,
                        &fd_descriptor(),
                        Some(memfd_with(b"x")),
                        ExportOptions::default(),
                    )
                })
            })
            .collect();
        let results: Vec<_> = racers.into_iter().map(|t| t.join().unwrap()).collect();
        let winners: Vec<&Exporter> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert_eq!(
            winners.len(),
            1,
            "round {round}: {} exporters bound: {results:?}",
            winners.len()
        );
        // The name is served by the winner.
        let offer = fetch::<u32>(&path, &opts(2000)).unwrap();
        assert_eq!(
            offer.descriptor().buffer_id,
            winners[0].descriptor().buffer_id
        );
        drop(offer);
        drop(results);
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn a_huge_allow_list_and_a_refused_peer_do_not_kill_the_exporter() {
    let dir = temp_dir("allowlist");
    let path = dir.join("frames");
    let me = os::effective_uid();
    let allowed: Vec<u32> = (1..=2000).map(|i| me.wrapping_add(i)).collect();
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"x")),
        ExportOptions {
            allowed: AllowedUsers::Uids(allowed),
            ..ExportOptions::default()
        },
    )
    .unwrap();
    for _ in 0..2 {
        // Refused twice: the exporter survives the first refusal.
        let err = fetch::<u32>(&path, &opts(2000)).unwrap_err();
        let Error::Refused { reason, .. } = &err else {
            panic!("{err:?}")
        };
        // The refused peer learns that it is not allowed, and nothing about who is.
        assert!(reason.contains("not allowed"), "{reason}");
        assert!(reason.len() < 300, "{} bytes", reason.len());
        assert!(
            !reason.contains(&me.wrapping_add(1).to_string()) && !reason.contains("Uids"),
            "{reason}"
        );
    }
    assert_eq!(exporter.stats().refused_uid, 2);
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn endless_timeouts_do_not_panic() {
    let dir = temp_dir("endless");
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"x")),
        ExportOptions {
            handshake_timeout: Duration::MAX,
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let offer = fetch::<u32>(&path, &ImportOptions::with_timeout(Duration::MAX)).unwrap();
    let stats = exporter.wait_consumers(1, Duration::MAX).unwrap();
    assert_eq!(stats.total_leases, 1);
    drop(offer);
    exporter.wait_released(Duration::MAX).unwrap();
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn generations_increase_across_a_clean_restart() {
    let dir = temp_dir("generation");
    let path = dir.join("frames");
    let mut seen = Vec::new();
    for _ in 0..3 {
        let exporter = Exporter::bind_raw(
            &path,
            &fd_descriptor(),
            Some(memfd_with(b"x")),
            ExportOptions::default(),
        )
        .unwrap();
        seen.push(exporter.descriptor().generation);
        // A clean drop removes the descriptor and the socket.
        drop(exporter);
        assert!(!path.with_extension("desc").exists());
    }
    assert!(seen.windows(2).all(|w| w[1] > w[0]), "{seen:?}");
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_bad_checksum_is_called_corruption_not_tampering() {
    let mut bytes = Descriptor::example().encode();
    bytes[40] ^= 1;
    let err = Descriptor::decode(&bytes).unwrap_err().to_string();
    assert!(err.contains("corrupted"), "{err}");
    assert!(!err.contains("tamper"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Group sharing (pods of one claim running as different uids, sharing an fsGroup).

const GROUP: u32 = 4242;

/// A consumer as uid 65534 with the given supplementary groups: prints GOT <memfd text>, or
/// DENIED <errno name> where it cannot reach the files, or REFUSED <reason>.
const PY_CONSUMER: &str = r#"
import errno
become(65534, 65534, [int(g) for g in sys.argv[2].split(",") if g])
try:
    open(sys.argv[1] + ".desc", "rb").read()
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sys.argv[1] + ".sock")
except OSError as e:
    print("DENIED", errno.errorcode[e.errno], flush=True); sys.exit(0)
try:
    s.sendall(hello(os.path.basename(sys.argv[1])))
except OSError:
    pass  # refused before the hello arrived: the refusal is still readable
kind, body, fds = read_frame(s)
if kind == REFUSE:
    print("REFUSED", body.decode(), flush=True); sys.exit(0)
os.lseek(fds[0], 0, 0)
print("GOT", os.read(fds[0], 64).decode(), flush=True)
"#;

fn py_consume(path: &Path, groups: &str) -> String {
    let (py, rx) = python(PY_CONSUMER, &[path.to_str().unwrap(), groups]);
    let line = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("the python consumer said nothing");
    drop(py);
    line
}

#[test]
#[serial]
fn group_sharing_lets_a_member_of_another_uid_import_and_no_one_else() {
    use std::os::unix::fs::MetadataExt;
    need_root();
    let dir = temp_dir("group");
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"shared")),
        ExportOptions {
            group: Some(GROUP),
            allowed: AllowedUsers::Group(GROUP),
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let meta = |p: &Path| fs::symlink_metadata(p).unwrap();
    assert_eq!(
        (meta(&dir).mode() & 0o7777, meta(&dir).gid()),
        (0o3770, GROUP)
    );
    let desc = meta(exporter.descriptor_path());
    assert_eq!((desc.mode() & 0o777, desc.gid()), (0o640, GROUP));
    let sock = meta(exporter.socket_path());
    assert_eq!((sock.mode() & 0o777, sock.gid()), (0o660, GROUP));

    // Uid 65534 in the group: reads the descriptor, passes SO_PEERCRED/SO_PEERGROUPS.
    assert_eq!(py_consume(&path, &GROUP.to_string()), "GOT shared");
    exporter.wait_consumers(1, Duration::from_secs(5)).unwrap();
    // The same uid outside the group cannot even reach the files.
    assert_eq!(py_consume(&path, "4243"), "DENIED EACCES");
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn group_sharing_allows_only_the_listed_uids_when_told_so() {
    need_root();
    let dir = temp_dir("group-uids");
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd_with(b"shared")),
        ExportOptions {
            group: Some(GROUP),
            allowed: AllowedUsers::Uids(vec![12345]),
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let line = py_consume(&path, &GROUP.to_string());
    assert!(
        line.starts_with("REFUSED uid 65534 is not allowed"),
        "{line}"
    );
    assert!(!line.contains("12345"), "{line}");
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}

/// An exporter as uid 65534 in the group, in a directory 3770 root:GROUP.
fn foreign_group_exporter(tag: &str) -> (PathBuf, common::py::Py) {
    use std::os::unix::fs::chown;
    let dir = temp_dir(tag);
    fs::create_dir(&dir).unwrap();
    chown(&dir, Some(0), Some(GROUP)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o3770)).unwrap();
    let path = dir.join("frames");
    let mut d = fd_descriptor();
    d.exporter_uid = NOBODY;
    let script = r#"
become(65534, 65534, [4242])
base, desc = sys.argv[1], bytes.fromhex(sys.argv[2])
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(base + ".sock"); os.chmod(base + ".sock", 0o660); l.listen(16)
fd = os.open(base + ".desc", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
os.write(fd, desc); os.close(fd)
m = os.memfd_create("x"); os.write(m, b"from-nobody")
print("SERVING", flush=True)
while True:
    c, _ = l.accept()
    try:
        read_frame(c)
        socket.send_fds(c, [offer(desc)], [m])
    except BaseException:
        pass
"#;
    let (py, rx) = python(script, &[path.to_str().unwrap(), &hex(&d.encode())]);
    expect(&rx, "SERVING");
    (path, py)
}

#[test]
#[serial]
fn a_consumer_imports_from_another_uid_only_with_the_group_and_the_uid_named() {
    need_root();
    let (path, py) = foreign_group_exporter("xgroup");
    let with = |group: Option<u32>, trusted: Vec<u32>| ImportOptions {
        group,
        trusted_exporters: trusted,
        ..opts(1000)
    };
    // A group-writable directory is refused unless the consumer expects that group.
    let err = fetch::<u32>(&path, &with(None, vec![NOBODY])).unwrap_err();
    assert!(
        matches!(&err, Error::UnsafeDirectory { reason, .. } if reason.contains("ImportOptions::group")),
        "{err:?}"
    );
    let err = fetch::<u32>(&path, &with(Some(GROUP + 1), vec![NOBODY])).unwrap_err();
    assert!(matches!(err, Error::UnsafeDirectory { .. }), "{err:?}");
    // The right group, but uid 65534 is not trusted: its descriptor is not even read.
    let err = fetch::<u32>(&path, &with(Some(GROUP), vec![])).unwrap_err();
    assert!(err.to_string().contains("owned by uid 65534"), "{err}");
    // Both named: the import works.
    let offer = fetch::<u32>(&path, &with(Some(GROUP), vec![NOBODY])).unwrap();
    assert_eq!(fd_text(offer.fd().unwrap()), "from-nobody");
    drop((offer, py));
    fs::remove_dir_all(path.parent().unwrap()).unwrap();
}
