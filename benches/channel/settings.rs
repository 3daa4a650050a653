//! What a run measures and for how long: defaults that fit the whole bench into a few minutes
//! on a 2-GPU machine, each changeable through a `CHANNEL_BENCH_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

/// 4 KiB frames, in 32-bit words.
pub const SMALL_WORDS: usize = 1024;
/// 4K RGBA frames (3840 × 2160 × 4 bytes), in 32-bit words.
pub const UHD_WORDS: usize = 3840 * 2160;

/// The run's settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Criterion warm-up per case.
    pub warm_up: Duration,
    /// Criterion measurement time per throughput case.
    pub measure: Duration,
    /// Criterion measurement time per latency case (of summed GPU-timed latency: the wall
    /// time is several times longer, the frames being paced).
    pub latency_measure: Duration,
    /// Criterion samples per case (at least 10).
    pub samples: usize,
    /// Length of the CPU-cost window after each throughput case.
    pub cpu_window: Duration,
    /// Channel slots.
    pub slots: usize,
    /// Subscriber counts for the 4K frames.
    pub uhd_subscribers: Vec<usize>,
    /// Extra sleep between latency rounds, after the previous round trip completed.
    pub pace: Duration,
    /// The spaced-out latency run after criterion's: this long between frames (0: none) …
    pub spaced_interval: Duration,
    /// … for this many frames.
    pub spaced_rounds: u64,
    /// Run only the cases whose key contains one of these (all when empty).
    pub only: Vec<String>,
    /// Baselines to run: `file`, `notify`, `torch`.
    pub baselines: Vec<String>,
    /// The torch baseline script, and the Python that runs it.
    pub torch_script: Option<PathBuf>,
    pub python: String,
    /// Throughput measurement time of the torch baseline, per case.
    pub torch_seconds: f64,
    /// Where the summary and the percentiles go.
    pub out_dir: PathBuf,
    /// Timeout of every wait (a stuck case fails instead of hanging).
    pub timeout: Duration,
}

fn var(name: &str) -> Option<String> {
    std::env::var(format!("CHANNEL_BENCH_{name}"))
        .ok()
        .filter(|v| !v.trim().is_empty())
}

fn millis(name: &str, default: u64) -> Duration {
    Duration::from_millis(
        var(name)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(default),
    )
}

fn list(name: &str, default: &str) -> Vec<String> {
    var(name)
        .unwrap_or_else(|| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The torch script: `CHANNEL_BENCH_TORCH_SCRIPT`, else `benches/baselines/torch_queue.py`
/// under the working directory (`cargo bench`), else `baselines/torch_queue.py` beside or
/// above the executable (a bundle).
fn torch_script() -> Option<PathBuf> {
    if let Some(p) = var("TORCH_SCRIPT") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = vec![PathBuf::from("benches/baselines/torch_queue.py")];
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(3) {
            candidates.push(dir.join("baselines/torch_queue.py"));
        }
    }
    candidates.into_iter().find(|p| p.is_file())
}

impl Settings {
    /// The defaults, overridden by the environment.
    pub fn from_env() -> Settings {
        let slots = var("SLOTS")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(8usize)
            .clamp(1, 64);
        Settings {
            warm_up: millis("WARMUP_MS", 200),
            measure: millis("MEASURE_MS", 800),
            latency_measure: millis("LATENCY_MS", 300),
            samples: var("SAMPLES")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(10usize)
                .max(10),
            cpu_window: millis("CPU_MS", 1000),
            slots,
            uhd_subscribers: list("SUBS", "1,4,8")
                .iter()
                .filter_map(|s| s.parse().ok())
                .filter(|&n: &usize| (1..=64).contains(&n))
                .collect(),
            pace: Duration::from_micros(
                var("PACE_US")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0),
            ),
            spaced_interval: Duration::from_micros(
                var("SPACED_US")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(1000),
            ),
            spaced_rounds: var("SPACED_ROUNDS")
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(1000),
            only: list("ONLY", ""),
            baselines: list("BASELINES", "file,notify,torch"),
            torch_script: torch_script(),
            python: var("PYTHON").unwrap_or_else(|| "python3".into()),
            torch_seconds: var("TORCH_SECS")
                .and_then(|v| v.trim().parse().ok())
                .filter(|s: &f64| *s > 0.0)
                .unwrap_or(1.0),
            out_dir: var("OUT")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("target/criterion/channel")),
            timeout: Duration::from_secs(
                var("TIMEOUT_S")
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(20),
            ),
        }
    }

    /// Whether the case `key` (e.g. `latency/peer-gpu`, `throughput/4K x8`) runs.
    pub fn wants(&self, key: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| key.contains(o.as_str()))
    }

    /// Whether baseline `name` (`file`, `notify`, `torch`) runs.
    pub fn baseline(&self, name: &str) -> bool {
        self.baselines.iter().any(|b| b == name)
    }
}
