//! Who a process is, as far as CUDA IPC cares: PID, PID namespace, boot, uid.
//!
//! The driver refuses a legacy IPC handle whose exporter PID equals the importer's own PID,
//! taking it for a self-import. Two containers whose main processes are both PID 1 in their own
//! PID namespaces always collide. The descriptor carries the exporter's identity, so the
//! importer can tell the cause before calling the driver ([`diagnose`]).

use std::os::unix::fs::MetadataExt;

use super::descriptor::{Descriptor, WireTransport};
use crate::error::{Error, Result};

/// The identity of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessIdentity {
    /// PID in the process's own PID namespace.
    pub pid: u32,
    /// Effective uid.
    pub uid: u32,
    /// Inode of `/proc/self/ns/pid`; 0 if it cannot be read.
    pub pid_namespace: u64,
    /// `/proc/sys/kernel/random/boot_id`; zeros if it cannot be read.
    pub boot_id: [u8; 16],
}

impl ProcessIdentity {
    /// This process. Read from `/proc` once per process (a forked child, whose PID differs,
    /// reads it again).
    pub fn current() -> ProcessIdentity {
        static CACHED: std::sync::Mutex<Option<ProcessIdentity>> = std::sync::Mutex::new(None);
        let mut cached = CACHED.lock().unwrap_or_else(|p| p.into_inner());
        match *cached {
            Some(id) if id.pid == std::process::id() && id.uid == crate::os::effective_uid() => id,
            _ => {
                let id = Self::read();
                *cached = Some(id);
                id
            }
        }
    }

    fn read() -> ProcessIdentity {
        ProcessIdentity {
            pid: std::process::id(),
            uid: crate::os::effective_uid(),
            pid_namespace: std::fs::metadata("/proc/self/ns/pid")
                .map(|m| m.ino())
                .unwrap_or(0),
            boot_id: std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()
                .and_then(|s| parse_boot_id(&s))
                .unwrap_or([0; 16]),
        }
    }

    /// The exporter's identity as a descriptor records it.
    pub fn of_exporter(d: &Descriptor) -> ProcessIdentity {
        ProcessIdentity {
            pid: d.exporter_pid,
            uid: d.exporter_uid,
            pid_namespace: d.pid_namespace,
            boot_id: d.boot_id,
        }
    }
}

/// Parses a boot id (`xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`).
pub fn parse_boot_id(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.trim().chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks, before any driver call, whether importing what `d` describes into the process `own`
/// can work:
/// - another boot id: [`Error::DifferentHost`];
/// - the same PID in the same PID namespace: [`Error::SelfImport`];
/// - the same PID in another (or an unknown) PID namespace, legacy transport:
///   [`Error::PidCollision`]. The fd transport does not depend on PIDs.
pub fn diagnose(d: &Descriptor, own: &ProcessIdentity, what: &str) -> Result<()> {
    let exporter = ProcessIdentity::of_exporter(d);
    if exporter.boot_id != [0; 16] && own.boot_id != [0; 16] && exporter.boot_id != own.boot_id {
        return Err(Error::DifferentHost {
            what: what.to_string(),
            exporter_boot: hex(&exporter.boot_id),
            own_boot: hex(&own.boot_id),
        });
    }
    if exporter.pid != own.pid {
        return Ok(());
    }
    let same_namespace = exporter.pid_namespace != 0 && exporter.pid_namespace == own.pid_namespace;
    if same_namespace {
        return Err(Error::SelfImport {
            what: what.to_string(),
            pid: own.pid,
        });
    }
    if d.transport == WireTransport::Legacy {
        return Err(Error::PidCollision {
            what: what.to_string(),
            pid: own.pid,
            exporter_ns: exporter.pid_namespace,
            own_ns: own.pid_namespace,
        });
    }
    Ok(())
}

/// What to tell a user when the driver refuses a legacy import despite [`diagnose`].
pub fn legacy_open_hint(d: &Descriptor, own: &ProcessIdentity) -> String {
    format!(
        "The exporter is PID {} (PID namespace {}) and this process is PID {} (namespace {}). \
         If the exporter has exited, publish again; if the two processes share a PID (pods \
         with hostPID: false), use the fd transport, hostPID: true or shareProcessNamespace: \
         true",
        d.exporter_pid, d.pid_namespace, own.pid, own.pid_namespace
    )
}

#[cfg(test)]
mod tests {
    //! Collision diagnostics from crafted descriptors: what the importer says before the driver.

    use super::{diagnose, parse_boot_id, ProcessIdentity};
    use crate::ipc::{Descriptor, WireTransport};
    use crate::Error;

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
}
