//! Shared by the frame publisher and subscriber examples: the channel's name and frame layout,
//! a small command-line reader, and latency percentiles.
//!
//! A frame is `Publisher::<u64>` elements: `frame_bytes / 8` data elements filled with
//! `Kernels::fill_frame` for the frame's sequence number, then one element holding the
//! publisher GPU's `%globaltimer` (ns) when the frame was complete
//! (`Kernels::stamp_time`). Subscribers verify the data part with `Kernels::verify_frame`
//! and subtract the stamp from their own GPU's timer for the latency.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// The channel's name in the rendezvous directory (its socket `<dir>/frames.sock`, its pool `<dir>/frames.pool.*`).
pub const CHANNEL: &str = "frames";
/// Bytes of a 4K RGBA frame (3840 × 2160 × 4), the default.
pub const FRAME_4K_RGBA: usize = 3840 * 2160 * 4;

/// Elements (u64) of a channel frame of `frame_bytes` data bytes: the data, then the stamp.
pub fn frame_len(frame_bytes: usize) -> usize {
    frame_bytes / 8 + 1
}

/// The rendezvous directory when `--dir` is not given: `$CUDA_IPC_DIR`, else the default of
/// the other examples.
pub fn default_dir() -> PathBuf {
    std::env::var_os("CUDA_IPC_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(super::DEFAULT_DIR))
}

/// `std::env::args()`, read flag by flag. Errors print the problem and the usage and exit 2.
pub struct Cli {
    program: &'static str,
    usage: String,
    args: std::vec::IntoIter<String>,
}

impl Cli {
    pub fn new(program: &'static str, usage: String) -> Cli {
        Cli {
            program,
            usage,
            args: std::env::args().skip(1).collect::<Vec<_>>().into_iter(),
        }
    }

    /// The next flag; prints the usage and exits 0 on `-h`/`--help`.
    pub fn next_flag(&mut self) -> Option<String> {
        let flag = self.args.next()?;
        if flag == "-h" || flag == "--help" {
            print!("{}", self.usage);
            std::process::exit(0)
        }
        Some(flag)
    }

    pub fn fail(&self, msg: impl std::fmt::Display) -> ! {
        eprintln!("{}: {msg}\n\n{}", self.program, self.usage);
        std::process::exit(2)
    }

    /// The value after `flag`.
    pub fn value(&mut self, flag: &str) -> String {
        match self.args.next() {
            Some(v) => v,
            None => self.fail(format!("{flag} needs a value")),
        }
    }

    /// The value after `flag`, parsed and accepted by `ok`.
    pub fn parse<T: FromStr>(&mut self, flag: &str, what: &str, ok: impl Fn(&T) -> bool) -> T {
        let v = self.value(flag);
        match v.parse::<T>() {
            Ok(x) if ok(&x) => x,
            _ => self.fail(format!("{flag} takes {what}, not {v:?}")),
        }
    }

    /// Seconds after `flag`: positive and finite.
    pub fn seconds(&mut self, flag: &str) -> Duration {
        let s: f64 = self.parse(flag, "a positive number of seconds", |s: &f64| {
            *s > 0.0 && s.is_finite() && *s < 1e9
        });
        Duration::from_secs_f64(s)
    }
}

/// The `q`-quantile (0..=1) of sorted `values` (nearest rank), or `None` when empty.
pub fn quantile(sorted: &[i64], q: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted.get(rank).copied()
}
