//! Denial of service against a publisher's socket: one consumer process hoarding leases,
//! another uid taking every connection, a slowloris trickling its hello a byte at a time, and
//! things planted at the socket's path before a publisher starts. Each must leave room for
//! everyone else (or say what is in the way). The peers are Python processes (their own PIDs;
//! uid 65534 where another user is needed, so these tests run as root, as CI does).

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use cuda_ipc::ipc::{AllowedUsers, ExportOptions, Exporter};
use cuda_ipc::Error;
use serial_test::serial;

mod common;
use common::group::{fetches, hoarded, need_root, shared_dir, GROUP, HOARDER, MEMBER};
use common::py::{expect, python};
use common::{fd_descriptor, os, temp_dir};

fn memfd() -> OwnedFd {
    os::memfd("cuda-ipc-fair").unwrap()
}

fn private_dir(tag: &str) -> PathBuf {
    let dir = temp_dir(tag);
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
#[serial]
fn one_process_cannot_hoard_the_exporter() {
    let dir = private_dir("hoard");
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd()),
        ExportOptions {
            max_connections: 128,
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let (py, rx) = python(
        HOARDER,
        &[exporter.socket_path().to_str().unwrap(), "frames", "128"],
    );
    let (leases, busy) = hoarded(&rx);
    assert_eq!(
        (leases, busy),
        (8, 120),
        "one process took {leases} leases (max_per_process 8)"
    );
    let errors = fetches(&path, 20, 2000, None);
    assert!(
        errors.is_empty(),
        "{} of 20 others locked out: {:?}",
        errors.len(),
        &errors[..errors.len().min(2)]
    );
    drop((py, exporter));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn another_uid_gets_at_most_its_share_of_connections() {
    need_root();
    let dir = shared_dir("uid-share", 0o3770);
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd()),
        ExportOptions {
            group: Some(GROUP),
            allowed: AllowedUsers::Any,
            max_connections: 16,
            max_per_process: 64, // only the uid's share limits it here
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let (py, rx) = python(
        HOARDER,
        &[
            exporter.socket_path().to_str().unwrap(),
            "frames",
            "16",
            &MEMBER.to_string(),
        ],
    );
    let (leases, busy) = hoarded(&rx);
    assert_eq!(
        (leases, busy),
        (8, 8),
        "uid 65534 took {leases} of 16 connections (its default share is half)"
    );
    let errors = fetches(&path, 8, 2000, Some(GROUP));
    assert!(errors.is_empty(), "{errors:?}");
    drop((py, exporter));
    fs::remove_dir_all(&dir).unwrap();
}

/// Keeps `n` connections open, each trickling a hello one byte per `delay` seconds (and
/// reconnecting whenever one is closed).
const SLOWLORIS: &str = r#"
sock, name, n, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
msg = hello(name)
def trickle():
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sock)
            for b in msg:
                s.sendall(bytes([b]))
                time.sleep(delay)
        except BaseException:
            pass
        s.close()
for _ in range(n):
    threading.Thread(target=trickle, daemon=True).start()
time.sleep(0.5)
print("TRICKLING", flush=True)
time.sleep(600)
"#;

#[test]
#[serial]
fn a_slowloris_does_not_lock_out_consumers() {
    let dir = private_dir("slowloris");
    let path = dir.join("frames");
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd()),
        ExportOptions {
            max_connections: 8,
            max_per_process: 64,
            ..ExportOptions::default()
        },
    )
    .unwrap();
    let (py, rx) = python(
        SLOWLORIS,
        &[
            exporter.socket_path().to_str().unwrap(),
            "frames",
            "32",
            "1.0",
        ],
    );
    expect(&rx, "TRICKLING");
    let errors = fetches(&path, 39, 2000, None);
    assert!(
        errors.is_empty(),
        "{} of 39 consumers locked out by a 1-byte-per-second slowloris: {:?}",
        errors.len(),
        &errors[..errors.len().min(2)]
    );
    assert!(exporter.stats().dropped_full > 0, "{:?}", exporter.stats());
    drop((py, exporter));
    fs::remove_dir_all(&dir).unwrap();
}

fn name_in_use(path: &Path) -> String {
    let options = ExportOptions {
        group: Some(GROUP),
        ..ExportOptions::default()
    };
    match Exporter::bind_raw(path, &fd_descriptor(), Some(memfd()), options) {
        Err(Error::NameInUse { detail, .. }) => detail,
        other => panic!("expected NameInUse, got {other:?}"),
    }
}

#[test]
#[serial]
fn what_is_planted_at_the_socket_path_is_named_for_what_it_is() {
    need_root();
    let dir = shared_dir("planted", 0o3770);
    let path = dir.join("frames");
    // A regular file.
    fs::write(path.with_extension("sock"), b"x").unwrap();
    let detail = name_in_use(&path);
    assert!(
        detail.contains("a regular file") && detail.contains("not a socket"),
        "{detail}"
    );
    fs::remove_file(path.with_extension("sock")).unwrap();

    // A socket another user bound and never listens on.
    let (py, rx) = python(
        r#"
become(65534, 65534, [4242])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1])
print("BOUND", flush=True)
time.sleep(600)
"#,
        &[path.with_extension("sock").to_str().unwrap()],
    );
    expect(&rx, "BOUND");
    let detail = name_in_use(&path);
    assert!(detail.contains("a socket of uid 65534"), "{detail}");
    drop(py);
    fs::remove_file(path.with_extension("sock")).unwrap();

    // A process of this user listening without the lock.
    let listener = std::os::unix::net::UnixListener::bind(path.with_extension("sock")).unwrap();
    let detail = name_in_use(&path);
    assert!(
        detail.contains("is listening") && detail.contains(&format!("pid {}", std::process::id())),
        "{detail}"
    );
    drop(listener);

    // A dead publisher's socket of this user (nothing listens): replaced, no error.
    let options = ExportOptions {
        group: Some(GROUP),
        ..ExportOptions::default()
    };
    let exporter = Exporter::bind_raw(&path, &fd_descriptor(), Some(memfd()), options);
    assert!(exporter.is_ok(), "{exporter:?}");
    // And a live one holds the lock.
    let detail = name_in_use(&path);
    assert!(detail.contains("a live publisher holds"), "{detail}");
    drop(exporter);
    fs::remove_dir_all(&dir).unwrap();
}
