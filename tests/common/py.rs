//! Foreign peers written in Python: they speak the rendezvous protocol from another process
//! (and, after `os.setuid`, as another user), so a test can play a hostile neighbour or kill a
//! peer without harming the test process.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// What every script starts with (after the imports, the framing of
/// [`PY_WIRE`](super::wire::PY_WIRE)): a helper that becomes another user (uid and gid,
/// supplementary groups as given).
pub const PY_PRELUDE: &str = r#"
def become(uid, gid, groups=()):
    os.setgroups(list(groups)); os.setgid(gid); os.setuid(uid)
"#;

/// The modules the scripts use.
const PY_IMPORTS: &str = "import os, socket, struct, sys, time, threading";

/// A Python peer, killed when dropped (also when a test panics).
pub struct Py(pub Child);

impl Drop for Py {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `script` (after the imports, the framing and [`PY_PRELUDE`]) with `args`; its stdout
/// lines arrive on the receiver.
pub fn python(script: &str, args: &[&str]) -> (Py, Receiver<String>) {
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "{PY_IMPORTS}\n{}\n{PY_PRELUDE}\n{script}",
            super::wire::PY_WIRE
        ))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 is needed for these tests");
    let (tx, rx) = std::sync::mpsc::channel();
    let out = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    (Py(child), rx)
}

/// Waits (at most 20 s) for a line containing `needle`.
pub fn expect(rx: &Receiver<String>, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("python never said {needle:?}"));
        if line.contains(needle) {
            return;
        }
    }
}

/// Lowercase hex of `bytes` (to hand a descriptor to a Python peer on its command line).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
