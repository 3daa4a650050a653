//! Substitution: a member of the sharing group (or anything that can rename entries where a
//! victim looks) tries to make a consumer import ANOTHER buffer of the trusted exporter under
//! the name it asked for — by renaming another exporter's files or socket over the name, or by
//! swapping exporter directories — and an exporter that offers something else than the
//! descriptor names. Each must end in a typed error, never in the other buffer. The attacker
//! is a Python peer as uid 65534 in the group (so these tests run as root, as CI does).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use cuda_ipc::ipc::{fetch, ExportOptions, Exporter, ImportOptions};
use cuda_ipc::Error;
use serial_test::serial;

mod common;
use common::group::{
    as_member, group_import, group_options, memfd_with, need_root, shared_dir, text_of,
};
use common::py::{expect, hex, python};
use common::{fd_descriptor, os, temp_dir};

const ROUNDS: usize = 20;

fn import_options() -> ImportOptions {
    group_import(500)
}

/// Two buffers of one trusted exporter (this process) in `dir`: "frames" and "weights".
fn two_exports(dir: &Path) -> (Exporter, Exporter) {
    let frames = Exporter::bind_raw(
        dir.join("frames"),
        &fd_descriptor(),
        Some(memfd_with("frames")),
        group_options(),
    )
    .unwrap();
    let weights = Exporter::bind_raw(
        dir.join("weights"),
        &fd_descriptor(),
        Some(memfd_with("weights")),
        group_options(),
    )
    .unwrap();
    (frames, weights)
}

const RENAME_BOTH: &str = r#"
d = sys.argv[1]
for ext in (".sock", ".desc"):
    try:
        os.rename(os.path.join(d, "weights" + ext), os.path.join(d, "frames" + ext))
        print("RENAMED", ext, flush=True)
    except OSError as e:
        print("DENIED", ext, e.strerror, flush=True)
"#;

#[test]
#[serial]
fn a_member_renaming_another_buffers_files_over_the_name_never_gets_it_imported() {
    need_root();
    // The directory our own error text used to recommend: setgid, group-writable, NOT sticky.
    // An exporter no longer publishes there...
    let dir = shared_dir("subst-2770", 0o2770);
    let err = Exporter::bind_raw(
        dir.join("frames"),
        &fd_descriptor(),
        Some(memfd_with("frames")),
        group_options(),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::UnsafeDirectory { reason, .. } if reason.contains("sticky") && reason.contains("3770")),
        "{err:?}"
    );
    // ...and where one did (the directory lost its sticky bit afterwards), a member renames
    // the other buffer's socket and descriptor over the name: the consumer refuses the
    // directory, 20 times out of 20, and never receives the other buffer.
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o3770)).unwrap();
    let mut got_weights = 0;
    let mut refused = 0;
    for _ in 0..ROUNDS {
        let (frames, weights) = two_exports(&dir);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o2770)).unwrap();
        let out = as_member(RENAME_BOTH, &[dir.to_str().unwrap()]);
        assert!(out.contains("RENAMED .sock"), "{out}");
        match fetch::<u32>(dir.join("frames"), &import_options()) {
            Ok(offer) if text_of(&offer) == "weights" => got_weights += 1,
            Ok(offer) => panic!("imported {:?}", text_of(&offer)),
            Err(Error::UnsafeDirectory { reason, .. }) => {
                assert!(reason.contains("sticky"), "{reason}");
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
        drop((frames, weights));
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o3770)).unwrap();
        for entry in fs::read_dir(&dir).unwrap() {
            let _ = fs::remove_file(entry.unwrap().path());
        }
    }
    assert_eq!(
        got_weights, 0,
        "{got_weights} of {ROUNDS} imports of \"frames\" got \"weights\""
    );
    assert_eq!(refused, ROUNDS);
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn in_a_sticky_directory_a_member_cannot_rename_the_exporters_files_at_all() {
    need_root();
    let dir = shared_dir("subst-3770", 0o3770);
    let (frames, weights) = two_exports(&dir);
    let out = as_member(RENAME_BOTH, &[dir.to_str().unwrap()]);
    assert!(!out.contains("RENAMED"), "{out}");
    let offer = fetch::<u32>(dir.join("frames"), &import_options()).unwrap();
    assert_eq!(text_of(&offer), "frames");
    drop((offer, frames, weights));
    fs::remove_dir_all(&dir).unwrap();
}

#[test]
#[serial]
fn another_buffers_socket_under_the_name_refuses_its_peers() {
    // Whoever can rename entries (here: the directory's owner itself, to isolate this check
    // from the directory rules) moves "weights"' socket over "frames"': the hello names
    // "frames", and the weights exporter refuses it; the consumer never maps "weights".
    let dir = temp_dir("subst-sock");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let mut refused = 0;
    for _ in 0..ROUNDS {
        let frames = Exporter::bind_raw(
            dir.join("frames"),
            &fd_descriptor(),
            Some(memfd_with("frames")),
            ExportOptions::default(),
        )
        .unwrap();
        let weights = Exporter::bind_raw(
            dir.join("weights"),
            &fd_descriptor(),
            Some(memfd_with("weights")),
            ExportOptions::default(),
        )
        .unwrap();
        fs::rename(dir.join("weights.sock"), dir.join("frames.sock")).unwrap();
        match fetch::<u32>(
            dir.join("frames"),
            &ImportOptions::with_timeout(Duration::from_millis(500)),
        ) {
            Ok(offer) => panic!("imported {:?} under \"frames\"", text_of(&offer)),
            Err(Error::Refused { reason, .. }) => {
                assert!(
                    reason.contains("serves \"weights\", not \"frames\""),
                    "{reason}"
                );
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
        drop((frames, weights));
        for entry in fs::read_dir(&dir).unwrap() {
            let _ = fs::remove_file(entry.unwrap().path());
        }
    }
    assert_eq!(refused, ROUNDS);
    fs::remove_dir_all(&dir).unwrap();
}

/// A fake exporter as root (a trusted uid) that answers any hello with `offer` and a memfd.
const FAKE_OFFER: &str = r#"
base, offer = sys.argv[1], bytes.fromhex(sys.argv[2])
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(base + ".sock"); l.listen(16)
m = os.memfd_create("other"); os.write(m, b"other")
print("SERVING", flush=True)
while True:
    c, _ = l.accept()
    try:
        read_frame(c)
        socket.send_fds(c, [frame(2, offer)], [m])
    except BaseException:
        pass
"#;

#[test]
#[serial]
fn an_offer_that_is_not_the_descriptor_read_is_refused() {
    // The descriptor file names one buffer; the socket offers another of the same (trusted)
    // exporter uid: another buffer id, or the same id at an older generation.
    let dir = temp_dir("subst-offer");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.join("frames");
    let mut file = fd_descriptor();
    file.generation = 5;
    let mut other_id = file;
    other_id.buffer_id[0] ^= 0xff;
    let mut older = file;
    older.generation = 4;
    // A newer generation is what a restart looks like: re-read until the deadline, then refused.
    let mut newer = file;
    newer.generation = 6;
    for (tag, offered, hint) in [
        ("another buffer", other_id, "renamed another exporter's"),
        ("an older generation", older, "renamed another exporter's"),
        (
            "a newer generation that never appears in the file",
            newer,
            "kept republishing",
        ),
    ] {
        let desc = path.with_extension("desc");
        fs::write(&desc, file.encode()).unwrap();
        fs::set_permissions(&desc, fs::Permissions::from_mode(0o600)).unwrap();
        let (py, rx) = python(
            FAKE_OFFER,
            &[path.to_str().unwrap(), &hex(&offered.encode())],
        );
        expect(&rx, "SERVING");
        let err = fetch::<u32>(
            &path,
            &ImportOptions::with_timeout(Duration::from_millis(500)),
        )
        .unwrap_err();
        assert!(
            matches!(&err, Error::OfferMismatch { hint: h, .. } if h.contains(hint)),
            "{tag}: {err:?}"
        );
        drop(py);
        let _ = fs::remove_file(path.with_extension("sock"));
    }
    fs::remove_dir_all(&dir).unwrap();
}

const SWAP_DIRS: &str = r#"
base = sys.argv[1]
a, b, t = (os.path.join(base, n) for n in ("a", "b", ".t"))
try:
    os.rename(a, t); os.rename(b, a); os.rename(t, b)
    print("SWAPPED", flush=True)
except OSError as e:
    print("DENIED", e.strerror, flush=True)
"#;

#[test]
#[serial]
fn swapping_exporter_directories_under_a_group_writable_ancestor_is_refused() {
    need_root();
    // /shared (group-writable, not sticky) holds two exporters' directories, a/ and b/, both
    // publishing "frames". A member swaps them: a consumer of a/frames must not get b's.
    let base = shared_dir("subst-swap", 0o3770);
    // Exporters no longer publish under such an ancestor: they bound while it was sticky.
    let err = {
        fs::set_permissions(&base, fs::Permissions::from_mode(0o2770)).unwrap();
        let e = Exporter::bind_raw(
            base.join("c").join("frames"),
            &fd_descriptor(),
            Some(memfd_with("c")),
            ExportOptions::default(),
        )
        .unwrap_err();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o3770)).unwrap();
        e
    };
    assert!(matches!(err, Error::UnsafeDirectory { .. }), "{err:?}");
    let mut got_other = 0;
    let mut refused = 0;
    for _ in 0..ROUNDS {
        let a = Exporter::bind_raw(
            base.join("a").join("frames"),
            &fd_descriptor(),
            Some(memfd_with("a")),
            ExportOptions::default(),
        )
        .unwrap();
        let b = Exporter::bind_raw(
            base.join("b").join("frames"),
            &fd_descriptor(),
            Some(memfd_with("b")),
            ExportOptions::default(),
        )
        .unwrap();
        fs::set_permissions(&base, fs::Permissions::from_mode(0o2770)).unwrap();
        let out = as_member(SWAP_DIRS, &[base.to_str().unwrap()]);
        assert!(out.contains("SWAPPED"), "{out}");
        match fetch::<u32>(base.join("a").join("frames"), &import_options()) {
            Ok(offer) if text_of(&offer) == "b" => got_other += 1,
            Ok(offer) => panic!("imported {:?}", text_of(&offer)),
            Err(Error::UnsafeDirectory { reason, .. }) => {
                assert!(reason.contains("sticky"), "{reason}");
                refused += 1;
            }
            Err(e) => panic!("unexpected error: {e:?}"),
        }
        drop((a, b));
        fs::set_permissions(&base, fs::Permissions::from_mode(0o3770)).unwrap();
        fs::remove_dir_all(base.join("a")).unwrap();
        fs::remove_dir_all(base.join("b")).unwrap();
    }
    assert_eq!(
        got_other, 0,
        "{got_other} of {ROUNDS} imports got b's buffer"
    );
    assert_eq!(refused, ROUNDS);
    fs::remove_dir_all(&base).unwrap();
}

/// A fake exporter (this process, trusted) whose offer is right but whose "memory" is a
/// directory's descriptor.
#[test]
#[serial]
fn a_directory_sent_as_the_memory_is_refused_before_the_driver() {
    let dir = temp_dir("subst-dirfd");
    fs::create_dir_all(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    let path = dir.join("frames");
    let d = fd_descriptor();
    let desc = path.with_extension("desc");
    fs::write(&desc, d.encode()).unwrap();
    fs::set_permissions(&desc, fs::Permissions::from_mode(0o600)).unwrap();
    let script = r#"
base, offer = sys.argv[1], bytes.fromhex(sys.argv[2])
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
l.bind(base + ".sock"); l.listen(16)
d = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
print("SERVING", flush=True)
while True:
    c, _ = l.accept()
    try:
        read_frame(c)
        socket.send_fds(c, [frame(2, offer)], [d])
    except BaseException:
        pass
"#;
    let (py, rx) = python(script, &[path.to_str().unwrap(), &hex(&d.encode())]);
    expect(&rx, "SERVING");
    let before = os::open_fd_count().unwrap();
    let err = fetch::<u32>(
        &path,
        &ImportOptions::with_timeout(Duration::from_millis(500)),
    )
    .unwrap_err();
    assert!(
        matches!(&err, Error::Protocol { detail, .. } if detail.contains("a directory")),
        "{err:?}"
    );
    assert_eq!(
        os::open_fd_count().unwrap(),
        before,
        "the refused fd leaked"
    );
    drop(py);
    fs::remove_dir_all(&dir).unwrap();
}
