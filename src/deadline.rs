//! Deadlines from caller-given timeouts (which may be absurdly large, `Duration::MAX`), and
//! the crate's ways of waiting until one: a condition variable with a timeout ([`wait_for`]),
//! a growing pause between retries of something slow ([`Pause`]: files, sockets), and a
//! spin-then-sleep step for words that change fast ([`backoff`]: control words, GPU writes).

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

/// One step of waiting for a word another thread, process or GPU writes: spins briefly, then
/// yields, then sleeps a little longer each time (5 to 50 µs), never past `deadline`.
pub(crate) fn backoff(spins: &mut u32, deadline: Instant) {
    *spins = spins.saturating_add(1);
    if *spins < 64 {
        std::hint::spin_loop();
    } else if *spins < 128 {
        std::thread::yield_now();
    } else {
        let step = Duration::from_micros(u64::from((*spins - 128).min(9)) * 5 + 5);
        let left = deadline.saturating_duration_since(Instant::now());
        std::thread::sleep(step.min(left));
    }
}

/// A pause between retries that grows (doubling from `first` up to `max`) and never sleeps past
/// a deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pause {
    next: Duration,
    max: Duration,
}

impl Pause {
    /// Starts at `first`, doubles up to `max`.
    pub(crate) fn new(first: Duration, max: Duration) -> Pause {
        Pause { next: first, max }
    }

    /// Polling for something another process makes (a file, a socket): 1 ms up to 50 ms.
    pub(crate) fn polling() -> Pause {
        Pause::new(Duration::from_millis(1), Duration::from_millis(50))
    }

    /// Sleeps the next pause, cut at `deadline`; false (without sleeping) once it has passed.
    pub(crate) fn sleep(&mut self, deadline: Instant) -> bool {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        std::thread::sleep(self.next.min(left));
        self.next = (self.next * 2).min(self.max);
        true
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

    #[test]
    fn a_pause_grows_and_never_sleeps_past_the_deadline() {
        let mut p = Pause::new(Duration::from_millis(1), Duration::from_millis(4));
        let deadline = after(Duration::from_millis(30));
        let start = Instant::now();
        let mut rounds = 0;
        while p.sleep(deadline) {
            rounds += 1;
        }
        assert!(rounds >= 5, "{rounds} pauses of at most 4 ms in 30 ms");
        assert!(start.elapsed() < Duration::from_millis(200));
        assert!(!p.sleep(Instant::now()), "a passed deadline does not sleep");
    }
}
