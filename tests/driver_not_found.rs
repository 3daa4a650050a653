//! Without the NVIDIA driver library, every entry point returns `Error::DriverNotFound` (no
//! dynamic-loader failure, no panic). The driver library is loaded once per process, so the
//! check runs in a child process (this test binary again) whose `LD_LIBRARY_PATH` is an empty
//! directory, on a machine whose loader cache and system directories hold no libcuda.

use std::path::Path;
use std::process::Command;

use cuda_ipc::error::{codes, DriverError};
use cuda_ipc::{Device, Error};

const CHILD: &str = "CUDA_IPC_TEST_DRIVER_NOT_FOUND_CHILD";
const TEST: &str = "without_the_driver_library_every_entry_point_gives_driver_not_found";
const DONE: &str = "child: every DriverNotFound check passed";

/// Where the system itself provides libcuda.so.1 (a machine with the NVIDIA driver).
fn system_libcuda() -> Option<String> {
    let cache = std::fs::read("/etc/ld.so.cache").unwrap_or_default();
    if cache.windows(12).any(|w| w == b"libcuda.so.1") {
        return Some("/etc/ld.so.cache".to_string());
    }
    [
        "/lib",
        "/usr/lib",
        "/lib64",
        "/usr/lib64",
        "/usr/lib/x86_64-linux-gnu",
    ]
    .iter()
    .map(|dir| Path::new(dir).join("libcuda.so.1"))
    .find(|p| p.exists())
    .map(|p| p.display().to_string())
}

#[test]
fn without_the_driver_library_every_entry_point_gives_driver_not_found() {
    if let Some(empty) = std::env::var_os(CHILD) {
        return child(Path::new(&empty));
    }
    // Nothing loads libcuda before the first driver call: the binary does not link it (with
    // the CI environment's LD_LIBRARY_PATH, a NEEDED libcuda would be mapped at start).
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    assert!(
        !maps.contains("libcuda"),
        "libcuda is mapped before any driver call:\n{maps}"
    );
    if let Some(place) = system_libcuda() {
        eprintln!(
            "skipped: this machine has a system libcuda.so.1 ({place}), which cannot be hidden"
        );
        return;
    }
    let empty = std::env::temp_dir().join(format!("cuda-ipc-no-driver-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", TEST, "--nocapture", "--test-threads=1"])
        .env(CHILD, &empty)
        .env("LD_LIBRARY_PATH", &empty)
        .output()
        .expect("run this test binary again");
    let _ = std::fs::remove_dir(&empty);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stdout.contains(DONE),
        "child failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
}

fn child(empty: &Path) {
    let err = Device::count().expect_err("no driver library is visible");
    let Error::DriverNotFound { searched, reason } = &err else {
        panic!("expected Error::DriverNotFound, got {err:?}");
    };
    assert!(
        searched.contains("libcuda.so.1, then libcuda.so"),
        "{searched}"
    );
    assert!(
        searched.contains(&format!(
            "LD_LIBRARY_PATH={:?}",
            empty.display().to_string()
        )),
        "{searched}"
    );
    assert!(
        reason.contains("libcuda.so.1: cannot open shared object file"),
        "{reason}"
    );

    let text = err.to_string();
    assert!(text.contains("Install the NVIDIA driver"), "{text}");
    assert!(text.contains("NVIDIA container toolkit"), "{text}");
    assert_eq!(format!("{err:?}"), format!("DriverNotFound: {text}"));

    // Every entry point that needs the driver says the same, and none panics.
    assert!(matches!(Device::all(), Err(Error::DriverNotFound { .. })));
    assert!(matches!(
        Device::by_ordinal(0),
        Err(Error::DriverNotFound { .. })
    ));
    let uuid: cuda_ipc::GpuUuid = "GPU-00000000-0000-0000-0000-000000000000".parse().unwrap();
    assert!(matches!(
        Device::by_uuid(&uuid),
        Err(Error::DriverNotFound { .. })
    ));
    assert!(matches!(
        cuda_ipc::device::driver_version(),
        Err(Error::DriverNotFound { .. })
    ));

    // A driver call made anyway never reaches a driver, and its error says why.
    let e = DriverError::new("cuInit", codes::NOT_FOUND);
    assert!(e.is_driver_not_loaded());
    assert_eq!(e.missing_entry_point(), None);
    let text = e.to_string();
    assert!(
        text.starts_with("cuInit failed: the NVIDIA driver library could not be loaded"),
        "{text}"
    );
    assert!(
        text.contains("libcuda.so.1: cannot open shared object file"),
        "{text}"
    );
    // Other codes are what they are.
    assert!(!DriverError::new("cuInit", codes::NO_DEVICE).is_driver_not_loaded());
    println!("{DONE}");
}
