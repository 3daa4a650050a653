//! Deadlines from caller-given timeouts, which may be absurdly large (`Duration::MAX`).

use std::time::{Duration, Instant};

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
