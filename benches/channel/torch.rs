//! Baseline (c): `benches/baselines/torch_queue.py` (torch.multiprocessing Queues of CUDA
//! tensors), run once per configuration when Python can import torch; its one JSON line per
//! run goes into the summary.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::report::{Report, TorchRow};
use crate::settings::{Settings, SMALL_WORDS, UHD_WORDS};

/// The number after `"key":` in a JSON line (`None` for null or absent).
pub fn json_number(line: &str, key: &str) -> Option<f64> {
    let rest = json_value(line, key)?;
    let end = rest
        .find(|ch: char| !(ch.is_ascii_digit() || "+-.eE".contains(ch)))
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// The numbers of the list after `"key":`.
pub fn json_numbers(line: &str, key: &str) -> Vec<f64> {
    let Some(rest) = json_value(line, key).and_then(|r| r.strip_prefix('[')) else {
        return Vec::new();
    };
    let end = rest.find(']').unwrap_or(rest.len());
    rest[..end]
        .split(',')
        .filter_map(|x| x.trim().parse().ok())
        .collect()
}

/// The string after `"key":`, unescaped only for `\"` and `\\`.
pub fn json_string(line: &str, key: &str) -> Option<String> {
    let rest = json_value(line, key)?.strip_prefix('"')?;
    let mut out = String::new();
    let mut chars = rest.chars();
    while let Some(ch) = chars.next() {
        match ch {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

fn json_value<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{key}\":"))?;
    Some(line[at + key.len() + 3..].trim_start())
}

/// Why torch cannot run here, or the script to run.
fn available(s: &Settings) -> Result<&Path, String> {
    let script = s.torch_script.as_deref().ok_or(
        "benches/baselines/torch_queue.py not found (set CHANNEL_BENCH_TORCH_SCRIPT)".to_string(),
    )?;
    let ok = Command::new(&s.python)
        .args([
            "-c",
            "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 3)",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| format!("{} not runnable: {e}", s.python))?;
    match ok.code() {
        Some(0) => Ok(script),
        Some(3) => Err("torch sees no CUDA device".into()),
        _ => Err(format!("{} cannot import torch", s.python)),
    }
}

/// Runs the script with `args`, within `limit`; returns its last stdout line.
fn run_script(
    s: &Settings,
    script: &Path,
    args: &[String],
    limit: Duration,
) -> Result<String, String> {
    let mut child = Command::new(&s.python)
        .arg(script)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", s.python))?;
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("killed after {limit:?}"));
            }
        }
    }
    let text = reader.join().unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'))
        .map(str::to_string)
        .ok_or_else(|| "no JSON line on stdout".to_string())
}

fn row(
    label: &str,
    frame: &'static str,
    subscribers: usize,
    place: &'static str,
    line: &str,
) -> TorchRow {
    TorchRow {
        label: label.to_string(),
        frame,
        subscribers,
        place,
        frames_per_s: json_number(line, "frames_per_s_each"),
        p50_us: json_number(line, "p50"),
        p99_us: json_number(line, "p99"),
        errors: json_number(line, "verify_errors").map(|v| v as u64),
        copied_bytes_per_frame: json_number(line, "copied_bytes_per_frame").map(|v| v as u64),
        cpu_max: json_numbers(line, "cpu_percent_each")
            .into_iter()
            .fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
        error: json_string(line, "error"),
        json: line.to_string(),
    }
}

/// Every torch case: latency (same GPU, peer GPU) with 4 KiB frames, throughput with the
/// throughput cases' configurations.
pub fn run(s: &Settings, gpus: usize, report: &mut Report) {
    if !s.baseline("torch") || !s.wants("torch") {
        return;
    }
    let script = match available(s) {
        Ok(p) => p,
        Err(why) => {
            report.note(format!("(c) torch baseline not run: {why}"));
            return;
        }
    };
    let secs = format!("{}", s.torch_seconds);
    let slots = s.slots.to_string();
    let mut cases: Vec<(String, &'static str, usize, &'static str, Vec<String>)> = Vec::new();
    let small = (SMALL_WORDS * 4).to_string();
    cases.push((
        "latency same GPU".into(),
        "4KiB",
        1,
        "same GPU",
        vec![
            "--mode".into(),
            "latency".into(),
            "--frame-bytes".into(),
            small.clone(),
            "--subscriber-gpus".into(),
            "0".into(),
        ],
    ));
    if gpus >= 2 {
        cases.push((
            "latency peer GPU".into(),
            "4KiB",
            1,
            "peer GPU",
            vec![
                "--mode".into(),
                "latency".into(),
                "--frame-bytes".into(),
                small.clone(),
                "--subscriber-gpus".into(),
                "1".into(),
            ],
        ));
    }
    let spread = if gpus >= 2 { "0,1" } else { "0" };
    for cfg in crate::throughput::configs(s) {
        let bytes = (cfg.words * 4).to_string();
        let sub_gpus = if cfg.words == UHD_WORDS { spread } else { "0" };
        cases.push((
            format!("throughput {} x{}", cfg.frame, cfg.subscribers),
            cfg.frame,
            cfg.subscribers,
            "",
            vec![
                "--mode".into(),
                "throughput".into(),
                "--frame-bytes".into(),
                bytes,
                "--subscribers".into(),
                cfg.subscribers.to_string(),
                "--subscriber-gpus".into(),
                sub_gpus.into(),
                "--seconds".into(),
                secs.clone(),
                "--slots".into(),
                slots.clone(),
            ],
        ));
    }
    for (label, frame, subs, place, mut args) in cases {
        args.extend(["--label".to_string(), label.clone()]);
        println!("channel: (c) torch baseline: {label} …");
        // Python, torch and CUDA start in every subscriber process: allow for it.
        let limit = Duration::from_secs(120).max(s.timeout);
        match run_script(s, script, &args, limit) {
            Ok(line) => {
                println!("{line}");
                report.torch.push(row(&label, frame, subs, place, &line));
            }
            Err(e) => report.note(format!("(c) torch {label}: {e}")),
        }
    }
}
