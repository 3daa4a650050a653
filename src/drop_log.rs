//! Errors that happen while dropping.
//!
//! `Drop` cannot return an error and must never panic, yet a failed `cuMemFree` or
//! `cuIpcCloseMemHandle` is worth knowing about (it may mean leaked GPU memory). Every such
//! failure is logged through the [`log`](https://docs.rs/log) facade (`log::error!`, target
//! `cuda_ipc`: it reaches whatever logger the application installed, and nothing is printed
//! without one), counted ([`drop_error_count`]) and kept (up to [`KEPT_DROP_ERRORS`], until
//! [`take_drop_errors`] takes them), so that a service can also put them in its own metrics.
//!
//! ```
//! let before = cuda_ipc::drop_error_count();
//! // ... drop buffers ...
//! assert!(cuda_ipc::drop_error_count() >= before);
//! for e in cuda_ipc::take_drop_errors() {
//!     eprintln!("cleanup failed: {e}");
//! }
//! ```

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

/// Records a failure during a drop: counts it, keeps it (up to [`KEPT_DROP_ERRORS`]) and logs
/// it (`log::error!`, target `cuda_ipc`). Never panics.
pub(crate) fn record(what: &'static str, error: impl std::fmt::Display) {
    let entry = DropError {
        what,
        message: error.to_string(),
    };
    COUNT.fetch_add(1, Ordering::Relaxed);
    log::error!(target: "cuda_ipc", "{entry}");
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

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    /// Keeps what is logged at target `cuda_ipc`.
    struct Capture(Mutex<Vec<(log::Level, String)>>);

    impl log::Log for Capture {
        fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
            metadata.target() == "cuda_ipc"
        }
        fn log(&self, record: &log::Record<'_>) {
            if self.enabled(record.metadata()) {
                let mut seen = self.0.lock().unwrap_or_else(|p| p.into_inner());
                seen.push((record.level(), record.args().to_string()));
            }
        }
        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

    #[test]
    fn a_drop_error_is_logged_counted_and_kept() {
        // The only logger of this test binary; set once.
        let _ = log::set_logger(&CAPTURE);
        log::set_max_level(log::LevelFilter::Trace);
        let before = super::drop_error_count();
        super::record("TestBuffer (cuMemFree)", "CUDA_ERROR_ILLEGAL_ADDRESS");
        assert!(super::drop_error_count() > before);
        let text = "dropping TestBuffer (cuMemFree): CUDA_ERROR_ILLEGAL_ADDRESS";
        let seen = CAPTURE.0.lock().unwrap().clone();
        assert!(
            seen.contains(&(log::Level::Error, text.to_string())),
            "{seen:?}"
        );
        let kept = super::take_drop_errors();
        assert!(kept.iter().any(|e| e.to_string() == text), "{kept:?}");
    }
}
