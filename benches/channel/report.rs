//! The run's figures and the summary table printed at the end (Markdown, for
//! docs/benchmarks.md), also written to the output directory with the percentiles.

use std::fmt::Write as _;
use std::path::Path;

/// One latency figure.
#[derive(Debug, Clone)]
pub struct LatencyRow {
    pub place: &'static str,
    pub method: String,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub mean_us: Option<f64>,
    pub n: usize,
    pub note: String,
}

/// One throughput figure (and the CPU window after it).
#[derive(Debug, Clone)]
pub struct ThroughputRow {
    pub frame: &'static str,
    pub subscribers: usize,
    pub gpus: String,
    pub method: &'static str,
    pub is_channel: bool,
    pub verified: bool,
    pub frames_per_s: Option<f64>,
    pub errors: u64,
    pub addresses: u64,
    pub cpu_max: Option<f64>,
    pub cpu_mean: Option<f64>,
    pub cpu_us_per_frame: Option<f64>,
    pub publisher_cpu: Option<f64>,
    pub note: String,
}

/// One run of the torch script.
#[derive(Debug, Clone)]
pub struct TorchRow {
    pub label: String,
    pub frame: &'static str,
    pub subscribers: usize,
    /// `same GPU` / `peer GPU` for the latency runs, empty for throughput runs.
    pub place: &'static str,
    pub frames_per_s: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub errors: Option<u64>,
    pub copied_bytes_per_frame: Option<u64>,
    pub cpu_max: Option<f64>,
    pub error: Option<String>,
    pub json: String,
}

/// What a ping-pong said about the GPU timers.
#[derive(Debug, Clone)]
pub struct TimerReport {
    pub place: &'static str,
    /// Consumer's timer − producer's, from the quickest round trips (b − (a + c) / 2).
    pub offset_ns: i64,
    pub round_trip_ns: i64,
    /// The timer's update step seen in the stamps.
    pub tick_ns: u64,
    pub tolerance_ns: i64,
    /// Whether the one-way figures come from the stamps (else from round trip / 2).
    pub agree: bool,
}

/// Everything the run found.
#[derive(Debug, Default)]
pub struct Report {
    pub gpus: Vec<String>,
    pub slots: usize,
    pub latency: Vec<LatencyRow>,
    pub throughput: Vec<ThroughputRow>,
    pub torch: Vec<TorchRow>,
    /// The ping-pongs' timer checks.
    pub timers: Vec<TimerReport>,
    pub notes: Vec<String>,
}

pub fn us(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.abs() >= 1000.0 => format!("{:.2} ms", v / 1e3),
        Some(v) if v.abs() >= 100.0 => format!("{v:.0} µs"),
        Some(v) => format!("{v:.2} µs"),
    }
}

pub fn rate(v: Option<f64>) -> String {
    let Some(v) = v else { return "–".into() };
    let n = v.round() as u64;
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(ch);
    }
    out + "/s"
}

fn pct(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1} %"))
}

fn ratio(num: Option<f64>, den: Option<f64>) -> String {
    match (num, den) {
        (Some(n), Some(d)) if d > 0.0 && n > 0.0 => format!("{:.1}×", n / d),
        _ => "–".into(),
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok {
        "✓"
    } else {
        "✗"
    }
}

impl Report {
    pub fn note(&mut self, note: String) {
        println!("channel: {note}");
        self.notes.push(note);
    }

    fn channel_latency(&self, place: &str) -> Option<&LatencyRow> {
        self.latency
            .iter()
            .find(|r| r.place == place && r.method.starts_with("channel"))
    }

    fn channel_rate(&self, frame: &str, subs: usize) -> Option<f64> {
        self.throughput
            .iter()
            .find(|r| r.frame == frame && r.subscribers == subs && r.is_channel && r.verified)
            .and_then(|r| r.frames_per_s)
    }

    /// The Markdown summary.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "## channel bench summary\n");
        let _ = writeln!(
            s,
            "GPUs: {}. Channel: {} slots, Policy::Block. Publisher on GPU0.\n",
            self.gpus.join("; "),
            self.slots
        );
        self.render_latency(&mut s);
        self.render_throughput(&mut s);
        self.render_cpu(&mut s);
        if !self.notes.is_empty() {
            let _ = writeln!(s, "Notes:");
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    fn render_latency(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "### Latency: publish → the subscriber's first instruction on the frame (4 KiB frames, paced)\n"
        );
        let _ = writeln!(
            s,
            "| where | method | p50 | p99 | mean | frames | p50 ÷ channel's | target | note |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|");
        for place in ["same GPU", "peer GPU"] {
            let main = self.channel_latency(place);
            let chan = main.and_then(|r| r.p50_us);
            let target = if place == "same GPU" { 10.0 } else { 20.0 };
            for r in self.latency.iter().filter(|r| r.place == place) {
                let is_chan = r.method.starts_with("channel");
                let t = if is_chan {
                    match (r.p50_us, r.p99_us) {
                        (Some(a), Some(b)) => format!(
                            "≤ {target} µs: p50 {} p99 {}",
                            verdict(a <= target),
                            verdict(b <= target)
                        ),
                        _ => "–".into(),
                    }
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                    r.place,
                    r.method,
                    us(r.p50_us),
                    us(r.p99_us),
                    us(r.mean_us),
                    r.n,
                    if main.is_some_and(|m| std::ptr::eq(m, r)) {
                        "1.0×".into()
                    } else {
                        ratio(r.p50_us, chan)
                    },
                    t,
                    r.note
                );
            }
            for t in self.torch.iter().filter(|t| t.place == place) {
                let _ = writeln!(
                    s,
                    "| {} | (c) torch.multiprocessing Queue (CPU clock: put → get) | {} | {} | – | – | {} |  | {} |",
                    place,
                    us(t.p50_us),
                    us(t.p99_us),
                    ratio(t.p50_us, chan),
                    t.error.clone().unwrap_or_default()
                );
            }
        }
        for t in &self.timers {
            let _ = writeln!(
                s,
                "\nTimers ({}): b − (a + c) / 2 over the quickest round trips = {:+.2} µs (round \
                 trip {:.2} µs; timer step {} ns){}.",
                t.place,
                t.offset_ns as f64 / 1e3,
                t.round_trip_ns as f64 / 1e3,
                t.tick_ns,
                match (t.place, t.agree) {
                    ("same GPU", _) => " — the ping-pong's own asymmetry".to_string(),
                    (_, true) => format!(
                        " — within {:.2} µs (plus the same-GPU asymmetry): the GPUs' timers \
                         agree, one-way latency from the stamps",
                        t.tolerance_ns as f64 / 1e3
                    ),
                    (_, false) => format!(
                        " — beyond {:.2} µs: the timers disagree, the channel's one-way figure \
                         is round trip / 2 and the baselines' stamps are corrected by the offset",
                        t.tolerance_ns as f64 / 1e3
                    ),
                }
            );
        }
        let _ = writeln!(s);
    }

    fn render_throughput(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "### Throughput: frames/s delivered to each subscriber (Policy::Block: every subscriber gets every frame)\n"
        );
        let _ = writeln!(
            s,
            "| frames | subscribers | method | frames/s to each | channel ÷ this | wrong words | frame addresses seen | bytes copied per frame | target | note |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|---|---|---|");
        let mut keys: Vec<(&str, usize)> = Vec::new();
        for r in &self.throughput {
            if !keys.contains(&(r.frame, r.subscribers)) {
                keys.push((r.frame, r.subscribers));
            }
        }
        for t in self.torch.iter().filter(|t| t.place.is_empty()) {
            if !keys.contains(&(t.frame, t.subscribers)) {
                keys.push((t.frame, t.subscribers));
            }
        }
        for (frame, subs) in keys {
            let chan = self.channel_rate(frame, subs);
            for r in self
                .throughput
                .iter()
                .filter(|r| r.frame == frame && r.subscribers == subs)
            {
                let target = match (r.is_channel, frame) {
                    (true, "4KiB") => r
                        .frames_per_s
                        .map(|v| format!("≥ 100,000/s {}", verdict(v >= 100_000.0)))
                        .unwrap_or_default(),
                    (true, _) if subs >= 8 => r
                        .frames_per_s
                        .map(|v| format!("≥ 1,000/s to each {}", verdict(v >= 1_000.0)))
                        .unwrap_or_default(),
                    _ => String::new(),
                };
                let _ = writeln!(
                    s,
                    "| {} | {} ({}) | {} | {} | {} | {} | {} | 0 | {} | {} |",
                    frame,
                    subs,
                    r.gpus,
                    r.method,
                    rate(r.frames_per_s),
                    if r.is_channel {
                        "–".into()
                    } else {
                        ratio(chan, r.frames_per_s)
                    },
                    if r.verified {
                        r.errors.to_string()
                    } else {
                        "not checked".into()
                    },
                    r.addresses,
                    target,
                    r.note
                );
            }
            for t in self
                .torch
                .iter()
                .filter(|t| t.place.is_empty() && t.frame == frame && t.subscribers == subs)
            {
                let _ = writeln!(
                    s,
                    "| {} | {} | (c) torch.multiprocessing Queue | {} | {} | {} | – | {} |  | {} |",
                    frame,
                    subs,
                    rate(t.frames_per_s),
                    ratio(chan, t.frames_per_s),
                    t.errors.map_or("–".into(), |e| e.to_string()),
                    t.copied_bytes_per_frame.map_or("–".into(), |b| if b == 0 {
                        "0".into()
                    } else {
                        format!("{:.1} MiB (all subscribers)", b as f64 / 1048576.0)
                    }),
                    t.error.clone().unwrap_or_default()
                );
            }
        }
        let _ = writeln!(
            s,
            "\n\"frame addresses seen\": distinct device addresses a subscriber read frames at (the \
             channel's: at most its slots, frames are read in place in the pool). \"bytes copied\": \
             the bench issues no copy on any Rust path; torch's peer-GPU subscribers copy to their GPU.\n"
        );
    }

    fn render_cpu(&self, s: &mut String) {
        let _ = writeln!(
            s,
            "### CPU cost per subscriber (getrusage user+sys over a window at the measured rate ÷ wall time)\n"
        );
        let _ = writeln!(
            s,
            "| frames | subscribers | method | subscriber CPU, max (mean) | CPU per frame, max | publisher CPU | target |"
        );
        let _ = writeln!(s, "|---|---|---|---|---|---|---|");
        for r in &self.throughput {
            let target = if r.is_channel {
                r.cpu_max
                    .map(|v| format!("≤ 5 % {}", verdict(v <= 5.0)))
                    .unwrap_or_default()
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} ({}) | {} | {} | {} |",
                r.frame,
                r.subscribers,
                r.method,
                pct(r.cpu_max),
                pct(r.cpu_mean),
                us(r.cpu_us_per_frame),
                pct(r.publisher_cpu),
                target
            );
        }
        for t in self.torch.iter().filter(|t| t.place.is_empty()) {
            let _ = writeln!(
                s,
                "| {} | {} | (c) torch.multiprocessing Queue | {} | – | – |  |",
                t.frame,
                t.subscribers,
                pct(t.cpu_max)
            );
        }
        let _ = writeln!(s);
    }

    /// The percentiles, one line per latency case.
    pub fn percentiles(&self) -> String {
        let mut s = String::new();
        for r in &self.latency {
            let _ = writeln!(
                s,
                "latency\t{}\t{}\tp50_us={}\tp99_us={}\tmean_us={}\tn={}",
                r.place,
                r.method,
                r.p50_us.map_or("-".into(), |v| format!("{v:.3}")),
                r.p99_us.map_or("-".into(), |v| format!("{v:.3}")),
                r.mean_us.map_or("-".into(), |v| format!("{v:.3}")),
                r.n
            );
        }
        for t in &self.torch {
            let _ = writeln!(s, "torch\t{}\t{}", t.label, t.json);
        }
        s
    }

    /// Prints the summary and writes it, with the percentiles, under `dir`.
    pub fn finish(&self, dir: &Path) {
        let summary = self.render();
        println!("\n{summary}");
        let written = std::fs::create_dir_all(dir)
            .and_then(|_| std::fs::write(dir.join("summary.md"), &summary))
            .and_then(|_| std::fs::write(dir.join("percentiles.tsv"), self.percentiles()));
        match written {
            Ok(()) => println!(
                "channel: summary and percentiles written to {}/{{summary.md,percentiles.tsv}}",
                dir.display()
            ),
            Err(e) => println!("channel: could not write to {}: {e}", dir.display()),
        }
    }
}
