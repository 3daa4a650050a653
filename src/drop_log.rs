//! Errors that happen while dropping.
//!
//! `Drop` cannot return an error and must never panic, yet a failed `cuMemFree` or
//! `cuIpcCloseMemHandle` is worth knowing about (it may mean leaked GPU memory). Every such
//! failure is written to standard error and recorded here; a service can poll
//! [`take_drop_errors`] and put them in its own logs or metrics.
//!
//! ```
//! let before = cuda_ipc::drop_error_count();
//! // ... drop buffers ...
//! assert!(cuda_ipc::drop_error_count() >= before);
//! for e in cuda_ipc::take_drop_errors() {
//!     eprintln!("cleanup failed: {e}");
//! }
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How many drop errors are kept for [`take_drop_errors`]; older ones are counted, not kept.
pub const KEPT_DROP_ERRORS: usize = 64;

static COUNT: AtomicU64 = AtomicU64::new(0);
static KEPT: Mutex<Vec<DropError>> = Mutex::new(Vec::new());

/// One failure during a drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DropError {
    /// What was being released, e.g. `"DeviceBuffer (cuMemFree)"`.
    pub what: &'static str,
    /// The error, rendered.
    pub message: String,
}

impl std::fmt::Display for DropError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "dropping {}: {}", self.what, self.message)
    }
}

/// Records a failure during a drop: counts it, keeps it (up to [`KEPT_DROP_ERRORS`]) and writes
/// it to standard error. Never panics.
pub(crate) fn record(what: &'static str, error: impl std::fmt::Display) {
    let entry = DropError {
        what,
        message: error.to_string(),
    };
    COUNT.fetch_add(1, Ordering::Relaxed);
    // A write error on stderr has nowhere else to go; the error is still counted and kept.
    let _ = writeln!(std::io::stderr(), "cuda-ipc: {entry}");
    let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if kept.len() < KEPT_DROP_ERRORS {
        kept.push(entry);
    }
}

/// Records the error of a cleanup step, if it failed.
pub(crate) fn check<E: std::fmt::Display>(what: &'static str, result: Result<(), E>) {
    if let Err(e) = result {
        record(what, e);
    }
}

/// How many drop errors happened in this process so far.
pub fn drop_error_count() -> u64 {
    COUNT.load(Ordering::Relaxed)
}

/// Takes the kept drop errors, oldest first, leaving none kept.
pub fn take_drop_errors() -> Vec<DropError> {
    let mut kept = KEPT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    std::mem::take(&mut *kept)
}
