//! Reliability without a GPU: a consumer killed while holding a lease, a process out of file
//! descriptors, a rendezvous directory of another user. The foreign peers are small Python
//! programs speaking the rendezvous protocol, so they can be killed without harming this
//! process.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cuda_ipc::ipc::{fetch, ExportOptions, Exporter, ImportOptions};
use cuda_ipc::Error;
use serial_test::serial;

mod common;
use common::os::{self, write_private};
use common::py::{expect, python};
use common::{fd_descriptor, temp_dir};

fn private_dir(tag: &str) -> std::path::PathBuf {
    let dir = temp_dir(tag);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

#[test]
#[serial]
fn a_consumer_killed_while_holding_a_lease_releases_it() {
    let dir = temp_dir("killed-consumer");
    let path = dir.join("frames");
    let memfd = os::memfd("lease").unwrap();
    let exporter = Exporter::bind_raw(
        &path,
        &fd_descriptor(),
        Some(memfd),
        ExportOptions::default(),
    )
    .unwrap();
    let consumer = r#"
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(sys.argv[1])
s.sendall(hello("frames"))
kind, body, fds = read_frame(s)
assert kind == OFFER and len(fds) == 1, (kind, fds)
print("LEASED", flush=True)
time.sleep(600)
"#;
    let (mut child, rx) = python(consumer, &[exporter.socket_path().to_str().unwrap()]);
    expect(&rx, "LEASED");
    let stats = exporter.wait_consumers(1, Duration::from_secs(5)).unwrap();
    assert_eq!(stats.active_leases, 1);
    child.0.kill().unwrap(); // SIGKILL: no goodbye, the kernel closes its socket
    child.0.wait().unwrap();
    let stats = exporter
        .wait_released(Duration::from_secs(5))
        .expect("the dead consumer's lease must end");
    assert_eq!((stats.active_leases, stats.total_leases), (0, 1));
    drop(exporter);
    std::fs::remove_dir_all(&dir).unwrap();
}

struct RestoreLimit(u64);
impl Drop for RestoreLimit {
    fn drop(&mut self) {
        os::set_nofile_soft_limit(self.0).unwrap();
    }
}

#[test]
#[serial]
fn running_out_of_file_descriptors_gives_a_clear_error_and_recovers() {
    let dir = private_dir("rlimit");
    let path = dir.join("frames");
    write_private(&path.with_extension("desc"), &fd_descriptor().encode()).unwrap();
    // A foreign exporter, so that only the consumer (this process) runs short of descriptors.
    let exporter = r#"
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o600); l.listen(16)
print("LISTENING", flush=True)
m = os.memfd_create("x")
keep = []
while True:
    c, _ = l.accept()
    kind, body, fds = read_frame(c)
    socket.send_fds(c, [offer(bytes.fromhex(sys.argv[2]))], [m])
    keep.append(c)
"#;
    let desc_hex: String = std::fs::read(path.with_extension("desc"))
        .unwrap()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let (child, rx) = python(
        exporter,
        &[path.with_extension("sock").to_str().unwrap(), &desc_hex],
    );
    expect(&rx, "LISTENING");
    let opts = ImportOptions::with_timeout(Duration::from_secs(5));
    let baseline = os::open_fd_count().unwrap();
    let (soft, _) = os::nofile_limit().unwrap();
    {
        let _restore = RestoreLimit(soft);
        // Take every descriptor below a lowered limit.
        let highest = std::fs::read_dir("/proc/self/fd")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
            .max()
            .unwrap();
        os::set_nofile_soft_limit(highest + 8).unwrap();
        let mut fillers = Vec::new();
        loop {
            match std::fs::File::open("/dev/null") {
                Ok(f) => fillers.push(f),
                Err(e) => {
                    assert_eq!(e.raw_os_error(), Some(libc::EMFILE), "{e}");
                    break;
                }
            }
        }
        // None left: the import cannot even read the descriptor; the error says why.
        let err = fetch::<u32>(&path, &opts).unwrap_err();
        assert!(err.to_string().contains("RLIMIT_NOFILE"), "{err}");
        // One left: the socket takes it, and the memory's fd cannot be received.
        fillers.pop();
        let err = fetch::<u32>(&path, &opts).unwrap_err();
        assert!(err.to_string().contains("RLIMIT_NOFILE"), "{err}");
        drop(fillers);
    }
    // With descriptors free again, the same import works, and nothing leaked.
    let offer = fetch::<u32>(&path, &opts).unwrap();
    assert!(offer.fd().is_some());
    drop(offer);
    assert_eq!(os::open_fd_count().unwrap(), baseline);
    drop(child);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn a_directory_owned_by_another_user_is_refused() {
    assert_eq!(
        os::effective_uid(),
        0,
        "this test chowns a directory: run it as root (CI does)"
    );
    let dir = private_dir("foreign");
    std::os::unix::fs::chown(&dir, Some(65534), Some(65534)).unwrap();
    let err = Exporter::bind_raw(
        dir.join("frames"),
        &fd_descriptor(),
        Some(os::memfd("owned").unwrap()),
        ExportOptions::default(),
    )
    .unwrap_err();
    let Error::UnsafeDirectory { reason, .. } = &err else {
        panic!("{err:?}")
    };
    assert!(reason.contains("owned by uid 65534"), "{reason}");
    std::fs::remove_dir_all(&dir).unwrap();
    let _ = Path::new("/");
}
