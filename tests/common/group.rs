//! The sharing-group attacks' common ground: a group (4242) whose member (uid 65534, a Python
//! peer that calls `setuid`) plays the hostile neighbour, the exporter and consumer options of
//! that group, and the Python hoarder of connections. These tests run as root, as CI does.

use std::fs;
use std::io::{Read, Seek, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use cuda_ipc::ipc::{fetch, AllowedUsers, ExportOptions, ImportOptions, Offer};

use super::py::python;
use super::{os, temp_dir};

/// The sharing group (a pod's `fsGroup`).
pub const GROUP: u32 = 4242;
/// The hostile member of the group.
pub const MEMBER: u32 = 65534;

/// These tests play other users with `setuid`.
pub fn need_root() {
    assert_eq!(
        os::effective_uid(),
        0,
        "this test plays other users with setuid: run it as root (CI does)"
    );
}

/// A memory file holding `text` (stands in for a CUDA export; the rendezvous never looks
/// inside).
pub fn memfd_with(text: &str) -> OwnedFd {
    let mut f = fs::File::from(os::memfd("cuda-ipc-test").unwrap());
    f.write_all(text.as_bytes()).unwrap();
    OwnedFd::from(f)
}

/// What an offer's "memory" says.
pub fn text_of(offer: &Offer) -> String {
    let mut f = fs::File::from(offer.fd().unwrap().try_clone_to_owned().unwrap());
    f.rewind().unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    s
}

/// An exporter sharing through the group with its members.
pub fn group_options() -> ExportOptions {
    ExportOptions {
        group: Some(GROUP),
        allowed: AllowedUsers::Group(GROUP),
        ..ExportOptions::default()
    }
}

/// A consumer of the group, with a timeout of `ms`.
pub fn group_import(ms: u64) -> ImportOptions {
    ImportOptions {
        group: Some(GROUP),
        ..ImportOptions::with_timeout(Duration::from_millis(ms))
    }
}

/// A directory as a deployment prepares a shared volume: root-owned, of the group, `mode`.
pub fn shared_dir(tag: &str, mode: u32) -> PathBuf {
    let dir = temp_dir(tag);
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(GROUP)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
    dir
}

/// Runs `script` as the member (in the group) with `args`; waits (20 s at most) for it to end
/// and returns what it printed.
pub fn as_member(script: &str, args: &[&str]) -> String {
    let (py, rx) = python(
        &format!("become({MEMBER}, {MEMBER}, [{GROUP}])\n{script}\nprint('DONE', flush=True)"),
        args,
    );
    let mut out = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the member's script said nothing");
        if line.contains("DONE") {
            break;
        }
        out.push(line);
    }
    drop(py);
    out.join("\n")
}

/// One process that connects `n` times to the socket `sock`, says hello for `name` on each and
/// keeps every connection that is given an offer (a lease); as `uid` (in the group) when a
/// fourth argument names one. Prints `HOARDING <leases> <refused>`, then holds them.
pub const HOARDER: &str = r#"
sock, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
if len(sys.argv) > 4:
    become(int(sys.argv[4]), int(sys.argv[4]), [4242])
kept, busy = [], 0
for _ in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(sock)
    try:
        s.sendall(hello(name))
        kind, body, fds = read_frame(s)
    except BaseException:
        busy += 1
        continue
    if kind == OFFER:
        kept.append((s, fds))
    else:
        busy += 1
print("HOARDING", len(kept), busy, flush=True)
time.sleep(600)
"#;

/// What a hoarder (or a collector) said: `(leases, refused)`.
pub fn hoarded(rx: &Receiver<String>) -> (usize, usize) {
    let line = loop {
        let l = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the hoarder said nothing");
        if l.starts_with("HOARDING") {
            break l;
        }
    };
    let mut words = line.split_whitespace().skip(1);
    let mut next = || words.next().unwrap().parse::<usize>().unwrap();
    (next(), next())
}

/// Fetches `n` times from this process, each within `ms`; returns the errors.
pub fn fetches(path: &Path, n: usize, ms: u64, group: Option<u32>) -> Vec<String> {
    let opts = ImportOptions {
        group,
        ..ImportOptions::with_timeout(Duration::from_millis(ms))
    };
    (0..n)
        .filter_map(|_| fetch::<u32>(path, &opts).err().map(|e| e.to_string()))
        .collect()
}
