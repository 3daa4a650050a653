//! CPU regression tests of the "correct by construction" review: what safe code may no longer
//! do with memory it does not own, and inputs that used to panic.

use cuda_ipc::ipc::{Descriptor, ExportOptions, Exporter};
use cuda_ipc::launch::LaunchConfig;

mod common;
use common::temp_dir;

/// A legacy descriptor published through the safe `bind_raw` would let consumers map memory
/// whose owner knows nothing of their leases: refused, with the way out named.
#[test]
fn bind_raw_refuses_legacy_descriptors() {
    let dir = temp_dir("raw-legacy");
    let d = Descriptor::example(); // legacy transport, with a handle
    let err = Exporter::bind_raw(dir.join("frames"), &d, None, ExportOptions::default())
        .expect_err("a legacy descriptor through the safe bind_raw");
    let text = err.to_string();
    assert!(text.contains("bind_raw_legacy"), "{text}");
    assert!(!dir.join("frames.desc").exists(), "nothing was published");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Absurd launch shapes are errors, never an arithmetic overflow.
#[test]
fn huge_launch_shapes_are_errors_not_panics() {
    let config = LaunchConfig {
        grid: (1, 1, 1),
        block: (u32::MAX, u32::MAX, 2),
        shared_mem_bytes: 0,
    };
    let err = config.validate().unwrap_err().to_string();
    assert!(err.contains("threads per block"), "{err}");
    assert_eq!(config.total_threads(), u64::MAX);
}
