//! Helpers shared by the integration tests: private temporary directories, and child
//! processes of the test binary itself in a role (the re-exec pattern of the GPU tests); the
//! Linux calls ([`os`]), the raw socket protocol ([`wire`]) and the few raw driver calls
//! ([`driver`]) the tests make without the crate.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod driver;
pub mod group;
pub mod os;
pub mod py;
pub mod wire;

pub fn temp_dir(tag: &str) -> PathBuf {
    let r: [u8; 6] = os::random_bytes().unwrap();
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    std::env::temp_dir().join(format!("cuda-ipc-test-{tag}-{hex}"))
}

/// A child process of this binary in a role; its output is collected by a thread.
pub struct RoleProcess {
    child: Child,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl RoleProcess {
    pub fn spawn(wrapper: &[&str], env: &[(&str, String)]) -> RoleProcess {
        let exe = std::env::current_exe().unwrap();
        let mut cmd = match wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        cmd.args([
            "--exact",
            "zz_role_entry",
            "--include-ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .expect("spawning a role process");
        let (tx, rx) = std::sync::mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let tx = tx.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
        }
        RoleProcess {
            child,
            lines: rx,
            seen: Vec::new(),
        }
    }

    /// Waits for a line containing `needle`; panics with everything seen after `timeout`.
    pub fn expect_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.seen.iter().find(|l| l.contains(needle)) {
                return l.clone();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    println!("    | {l}");
                    self.seen.push(l)
                }
                Err(_) => panic!(
                    "no line with {needle:?} within {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    pub fn finish(mut self, timeout: Duration) -> (bool, Vec<String>) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
                    println!("    | {l}");
                    self.seen.push(l);
                }
                return (status.success(), self.seen);
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "role process still running after {timeout:?}; saw:\n{}",
                    self.seen.join("\n")
                );
            }
            while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(20)) {
                println!("    | {l}");
                self.seen.push(l);
            }
        }
    }

    /// Whether a line for which `pred` holds has been printed so far (no waiting).
    pub fn saw(&mut self, pred: impl Fn(&str) -> bool) -> bool {
        while let Ok(l) = self.lines.try_recv() {
            println!("    | {l}");
            self.seen.push(l);
        }
        self.seen.iter().any(|l| pred(l))
    }

    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A descriptor of the fd transport from "another process" (a PID that is not ours, this
/// machine's boot), for tests of the rendezvous without a GPU.
pub fn fd_descriptor() -> cuda_ipc::ipc::Descriptor {
    let mut d = cuda_ipc::ipc::Descriptor::example();
    d.transport = cuda_ipc::ipc::WireTransport::Fd;
    d.handle = [0; 64];
    d.exporter_pid = std::process::id().wrapping_add(1_000_000);
    d.boot_id = os::boot_id();
    d.exporter_uid = os::effective_uid();
    d.buffer_id = os::random_bytes().unwrap();
    d
}
