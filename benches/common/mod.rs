//! Shared by the benches: the helper process each bench re-executes itself into, the GPU check,
//! and criterion settings that fit a whole run into a few minutes.
#![allow(dead_code)]

pub mod driver;
pub mod shm;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;

/// The environment variable that puts a bench executable into its helper role.
pub const ROLE: &str = "CUDA_IPC_BENCH_ROLE";

/// `Some(role)` when this process is a bench's helper.
pub fn role() -> Option<String> {
    std::env::var(ROLE).ok()
}

/// How many GPUs there are; prints why and returns 0 when there is none (the bench then exits 0).
pub fn gpus_or_explain(bench: &str) -> usize {
    match cuda_ipc::Device::count() {
        Ok(n) if n > 0 => n,
        Ok(_) => {
            println!("{bench}: no GPU visible; nothing to measure");
            0
        }
        Err(e) => {
            println!("{bench}: skipped, no GPU: {e}");
            0
        }
    }
}

/// Short warm-up and measurement: many benches per run, on a leased GPU machine.
pub fn criterion() -> Criterion {
    criterion_with(Duration::from_millis(900), 20)
}

/// Criterion with this measurement time and sample count.
pub fn criterion_with(measurement: Duration, samples: usize) -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(measurement)
        .sample_size(samples)
        .configure_from_args()
}

/// A fresh private rendezvous directory.
pub fn temp_dir(tag: &str) -> PathBuf {
    let mut r = [0u8; 6];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut r).unwrap();
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    std::env::temp_dir().join(format!("cuda-ipc-bench-{tag}-{hex}"))
}

/// This executable again, in the helper role `role`, with `dir` as its directory.
pub struct Helper {
    child: Child,
}

impl Helper {
    pub fn spawn(role: &str, dir: &Path, extra: &[(&str, String)]) -> Helper {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env(ROLE, role)
            .env("CUDA_IPC_BENCH_DIR", dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::inherit());
        for (k, v) in extra {
            cmd.env(k, v);
        }
        Helper {
            child: cmd.spawn().expect("spawning the bench helper"),
        }
    }

    /// Sends one line to the helper's stdin (helpers that take commands read them line by
    /// line); false if the helper is gone.
    pub fn send(&mut self, line: &str) -> bool {
        match self.child.stdin.as_mut() {
            Some(stdin) => writeln!(stdin, "{line}")
                .and_then(|_| stdin.flush())
                .is_ok(),
            None => false,
        }
    }

    /// Waits for the helper's `ready` marker file.
    pub fn wait_ready(&mut self, dir: &Path) {
        let start = Instant::now();
        while !dir.join("ready").exists() {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the bench helper exited early: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the bench helper is not ready"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Helper {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the helper exits when its stdin closes
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The helper's directory (from the parent).
pub fn helper_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CUDA_IPC_BENCH_DIR").expect("CUDA_IPC_BENCH_DIR"))
}

/// Marks the helper ready, then blocks until the parent closes our stdin.
pub fn ready_and_wait(dir: &Path) {
    std::fs::write(dir.join("ready"), b"").unwrap();
    let mut sink = Vec::new();
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut sink);
}

/// CPU time this process has used so far, user + system, all threads (`getrusage`).
pub fn cpu_time() -> Duration {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes one rusage into the pointer, which is valid and aligned.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    assert_eq!(rc, 0, "getrusage(RUSAGE_SELF) failed");
    // SAFETY: zero-initialised, then filled by getrusage (a plain C struct of integers).
    let usage = unsafe { usage.assume_init() };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64)
            + Duration::from_micros(t.tv_usec.clamp(0, 999_999) as u64)
    };
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The `p`-th percentile (0..=100) of sorted values (nearest rank below); `None` if empty.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 * p / 100.0) as usize).min(sorted.len() - 1);
    Some(sorted[i])
}

/// Human-readable size for bench names.
pub fn size_name(bytes: usize) -> String {
    if bytes >= 1 << 30 {
        format!("{}GiB", bytes >> 30)
    } else if bytes >= 1 << 20 {
        format!("{}MiB", bytes >> 20)
    } else {
        format!("{}KiB", bytes >> 10)
    }
}
