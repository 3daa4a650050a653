//! Deadlines from caller-given timeouts, which may be absurdly large (`Duration::MAX`).

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// A hundred years: "never", as far as any wait of this crate is concerned.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `Instant::now() + timeout`, saturating at a hundred years from now instead of panicking on
/// overflow (as `Instant + Duration::MAX` does).
pub(crate) fn after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout.min(FOREVER))
        .or_else(|| now.checked_add(Duration::from_secs(3600)))
        .unwrap_or(now)
}

/// Waits on `changed` until `done` holds for the value under `lock` (a poisoned lock is still
/// used: the values this crate guards have no broken states), or fails with
/// [`Error::Timeout`] after `timeout`, saying `what` of the value it last saw.
pub(crate) fn wait_for<'a, T>(
    lock: &'a Mutex<T>,
    changed: &Condvar,
    timeout: Duration,
    done: impl Fn(&T) -> bool,
    what: impl Fn(&T) -> String,
) -> Result<MutexGuard<'a, T>> {
    let deadline = after(timeout);
    let mut guard = lock.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        if done(&guard) {
            return Ok(guard);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Error::Timeout {
                what: what(&guard),
                waited: timeout,
            });
        }
        guard = changed
            .wait_timeout(guard, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_timeouts_saturate_instead_of_panicking() {
        let d = after(Duration::MAX);
        assert!(d > Instant::now() + Duration::from_secs(365 * 24 * 3600));
        let small = after(Duration::from_millis(5));
        assert!(small <= Instant::now() + Duration::from_millis(5));
    }
}
