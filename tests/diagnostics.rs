//! Collision diagnostics from crafted descriptors: what the importer says before the driver.

use cuda_ipc::ipc::identity::{diagnose, parse_boot_id, ProcessIdentity};
use cuda_ipc::ipc::{Descriptor, WireTransport};
use cuda_ipc::Error;

fn me() -> ProcessIdentity {
    ProcessIdentity {
        pid: 1,
        uid: 1000,
        pid_namespace: 4_026_532_001,
        boot_id: [7; 16],
    }
}

fn from(pid: u32, ns: u64, boot: [u8; 16], transport: WireTransport) -> Descriptor {
    let mut d = Descriptor::example();
    d.transport = transport;
    d.exporter_pid = pid;
    d.pid_namespace = ns;
    d.boot_id = boot;
    d
}

#[test]
fn same_pid_in_another_namespace_is_a_pid_collision_for_legacy() {
    let d = from(1, 4_026_532_999, [7; 16], WireTransport::Legacy);
    let err = diagnose(&d, &me(), "buffer \"frames\"").unwrap_err();
    let Error::PidCollision {
        pid,
        exporter_ns,
        own_ns,
        ..
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(
        (*pid, *exporter_ns, *own_ns),
        (1, 4_026_532_999, 4_026_532_001)
    );
    let text = err.to_string();
    for needle in [
        "invalid device context",
        "fd transport",
        "hostPID: true",
        "shareProcessNamespace: true",
        "PID 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in {text}");
    }
}

#[test]
fn same_pid_in_another_namespace_is_fine_for_fd() {
    let d = from(1, 4_026_532_999, [7; 16], WireTransport::Fd);
    assert!(diagnose(&d, &me(), "x").is_ok());
}

#[test]
fn unknown_namespace_with_the_same_pid_is_treated_as_a_collision() {
    let d = from(1, 0, [7; 16], WireTransport::Legacy);
    assert!(matches!(
        diagnose(&d, &me(), "x"),
        Err(Error::PidCollision { .. })
    ));
}

#[test]
fn same_pid_and_namespace_is_a_self_import_for_both_transports() {
    for t in [WireTransport::Legacy, WireTransport::Fd] {
        let d = from(1, 4_026_532_001, [7; 16], t);
        let err = diagnose(&d, &me(), "x").unwrap_err();
        assert!(matches!(err, Error::SelfImport { pid: 1, .. }), "{err:?}");
        assert!(err.to_string().contains("use the buffer directly"));
    }
}

#[test]
fn another_boot_is_another_host() {
    let d = from(77, 4_026_532_001, [8; 16], WireTransport::Legacy);
    let err = diagnose(&d, &me(), "x").unwrap_err();
    assert!(matches!(err, Error::DifferentHost { .. }), "{err:?}");
    assert!(err.to_string().contains("one machine"));
}

#[test]
fn different_pids_are_fine() {
    for t in [WireTransport::Legacy, WireTransport::Fd] {
        assert!(diagnose(&from(2, 4_026_532_999, [7; 16], t), &me(), "x").is_ok());
        assert!(diagnose(&from(2, 4_026_532_001, [7; 16], t), &me(), "x").is_ok());
    }
}

#[test]
fn this_process_identity_is_read_from_proc() {
    let me = ProcessIdentity::current();
    assert_eq!(me.pid, std::process::id());
    assert_ne!(me.pid_namespace, 0, "/proc/self/ns/pid should be readable");
    assert_ne!(me.boot_id, [0; 16], "boot_id should be readable");
    assert_eq!(
        parse_boot_id("0123456789abcdef0123456789ABCDEF"),
        Some([
            0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
            0xcd, 0xef
        ])
    );
    assert_eq!(parse_boot_id("xyz"), None);
}
